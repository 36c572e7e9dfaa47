package devprep

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Device preparation updates nearly every row of devices, and a non-HOT update adds an
// entry for the new row version to every index of the table. For the btree indexes that
// costs more than building them again from the table in one sort (bench/RESULTS.md,
// "Devices-only without incremental index maintenance"); for the GIN indexes it does not
// (their pending list already batches the inserts, and a build in the same transaction
// also indexes the old row versions), so they stay. Run's transaction therefore drops the
// btree indexes that nothing depends on before the device update and creates each again,
// same name and definition, before the commit: DDL is transactional, so a failure or a
// kill at any point leaves the indexes as they were.

// Below these, the indexes are maintained row by row: a build reads the whole table (and
// the old row versions), a row-by-row update only the rows it changes.
var (
	rebuildMinDevices = 10000
	// rebuildMinShare: rebuild only when at least 1/rebuildMinShare of the rows change.
	rebuildMinShare = 2
)

// afterIndexBuilt, when set (by tests), is called after each index is built again.
var afterIndexBuilt func(ctx context.Context, name string)

// rebuildableIndexesSQL lists the btree indexes of devices that can be dropped and created
// again from their pg_get_indexdef with nothing else to restore: not backing a
// constraint, not unique, valid, not the clustering or replica identity index, in the
// database's default tablespace, without a comment, per-column statistics target,
// security label or partition parent, and with no object depending on them. Only when
// the session may do so: as the owner of devices (or a member of its owner role).
const rebuildableIndexesSQL = `SELECT quote_ident(n.nspname) || '.' || quote_ident(i.relname), pg_get_indexdef(i.oid)
FROM pg_index AS x
JOIN pg_class AS i ON i.oid = x.indexrelid
JOIN pg_namespace AS n ON n.oid = i.relnamespace
JOIN pg_am AS am ON am.oid = i.relam
JOIN pg_class AS t ON t.oid = x.indrelid
WHERE x.indrelid = 'public.devices'::regclass
	AND pg_has_role(current_user, t.relowner, 'USAGE')
	AND am.amname = 'btree'
	AND NOT x.indisunique AND NOT x.indisprimary AND NOT x.indisexclusion
	AND x.indisvalid AND x.indisready AND x.indislive
	AND NOT x.indisclustered AND NOT x.indisreplident
	AND i.reltablespace = 0
	AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conindid = i.oid)
	AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = i.oid)
	AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.classid = 'pg_class'::regclass AND d.objid = i.oid AND d.deptype NOT IN ('a', 'n'))
	AND NOT EXISTS (SELECT 1 FROM pg_description AS ds WHERE ds.classoid = 'pg_class'::regclass AND ds.objoid = i.oid)
	AND NOT EXISTS (SELECT 1 FROM pg_seclabel AS sl WHERE sl.classoid = 'pg_class'::regclass AND sl.objoid = i.oid)
	AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = i.oid AND COALESCE(a.attstattarget, -1) >= 0)
	AND NOT EXISTS (SELECT 1 FROM pg_inherits AS h WHERE h.inhrelid = i.oid)
ORDER BY i.relname`

// The index builds' memory, for this transaction only, when the server's setting is lower.
// With it PostgreSQL also builds a btree with parallel workers
// (max_parallel_maintenance_workers).
const rebuildMaintenanceWorkMem = "256MB"

const raiseMaintenanceWorkMemSQL = `SELECT set_config('maintenance_work_mem', '` + rebuildMaintenanceWorkMem + `', true)
WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < pg_size_bytes('` + rebuildMaintenanceWorkMem + `')`

// The devices-only run normally has the table to itself (the server's units are stopped);
// when something else holds a lock on devices, the indexes are maintained row by row
// rather than waiting for it.
const lockDevicesSQL = `LOCK TABLE public.devices IN ACCESS EXCLUSIVE MODE NOWAIT`

// savedIndex is one dropped index and the statement that creates it again.
type savedIndex struct{ name, def string }

// indexRebuild is what dropIndexes dropped, for buildIndexes.
type indexRebuild struct{ indexes []savedIndex }

// wantsRebuild says whether updating toUpdate of total device rows is cheaper with the
// btree indexes built again.
func wantsRebuild(toUpdate, total int) bool {
	return toUpdate >= rebuildMinDevices && toUpdate*rebuildMinShare >= total
}

// dropIndexes drops, inside tx, the btree indexes of devices that buildIndexes creates
// again, when that is cheaper and allowed; otherwise it drops nothing.
func dropIndexes(ctx context.Context, tx pgx.Tx, opts *Options, toUpdate, total int, stage *keyStage) (*indexRebuild, error) {
	r := &indexRebuild{}
	if !wantsRebuild(toUpdate, total) {
		return r, nil
	}
	log := opts.logger()
	if opts.ServerRunning {
		log.Info("the indexes of devices are maintained row by row: the application is running, and building them again would lock devices against its reads until the commit")
		return r, nil
	}
	rows, err := tx.Query(ctx, rebuildableIndexesSQL)
	if err != nil {
		return nil, fmt.Errorf("list the indexes of devices: %w", err)
	}
	for rows.Next() {
		var s savedIndex
		if err := rows.Scan(&s.name, &s.def); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list the indexes of devices: %w", err)
		}
		r.indexes = append(r.indexes, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list the indexes of devices: %w", err)
	}
	if len(r.indexes) == 0 {
		log.Info("the indexes of devices are maintained row by row: this database user cannot build any of them again (only the owner of the table can, such as db_user flightctl_migrator; that is faster on large fleets)")
		return r, nil
	}
	// The lock keeps the stage's listing of devices out until the commit.
	stage.waitListed()
	// A savepoint, so that a lock held elsewhere only means the slower way.
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("savepoint: %w", err)
	}
	if _, err := sp.Exec(ctx, lockDevicesSQL); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
			if rbErr := sp.Rollback(ctx); rbErr != nil {
				return nil, fmt.Errorf("roll back to savepoint: %w", rbErr)
			}
			log.Info("the indexes of devices are maintained row by row: another session holds a lock on devices")
			r.indexes = nil
			return r, nil
		}
		return nil, fmt.Errorf("lock devices: %w", err)
	}
	if err := sp.Commit(ctx); err != nil { // releases the savepoint, keeps the lock
		return nil, fmt.Errorf("release savepoint: %w", err)
	}
	if _, err := tx.Exec(ctx, raiseMaintenanceWorkMemSQL); err != nil {
		return nil, fmt.Errorf("set maintenance_work_mem: %w", err)
	}
	for _, s := range r.indexes {
		if _, err := tx.Exec(ctx, "DROP INDEX "+s.name); err != nil {
			return nil, fmt.Errorf("drop index %s before the update (nothing was committed): %w", s.name, err)
		}
	}
	log.Debug("btree indexes of devices dropped for the update", "indexes", len(r.indexes))
	return r, nil
}

// buildIndexes creates again, inside the same transaction, what dropIndexes dropped.
func (r *indexRebuild) buildIndexes(ctx context.Context, tx pgx.Tx) error {
	for _, s := range r.indexes {
		if _, err := tx.Exec(ctx, s.def); err != nil {
			return fmt.Errorf("build index %s again (nothing was committed): %w", s.name, err)
		}
		if afterIndexBuilt != nil {
			afterIndexBuilt(ctx, s.name)
		}
	}
	return nil
}
