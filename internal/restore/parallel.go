package restore

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/pgload"
)

// ParallelLoader is a Database that can load a checked dump over several sessions at once
// (internal/pgload) instead of one psql reading it.
type ParallelLoader interface {
	// LoadConnections is the number of sessions a load uses when requested are asked
	// for (0: the default from the CPUs and the server's free connections); 1 is the
	// serial path (Database.Load).
	LoadConnections(ctx context.Context, requested int) (int, error)
	// LoadChecked loads what src yields into database name.
	LoadChecked(ctx context.Context, name string, src *pgdump.Checked, opts ParallelLoadOptions) (pgload.Stats, error)
	// RunSQL runs sql in database name as the admin user and returns its output.
	RunSQL(ctx context.Context, name, sql string) (string, error)
}

// PreparedDatabaseFinisher is a DevicePreparer that finishes a preparation whose
// database part already ran (DevicePrepRequest.DatabasePrepared): it clears the KV store
// and writes the keys although no row needs updating any more. With one, the restore runs
// the database part on the temporary database during its load, before anything is
// stopped, and only the KV part in the downtime.
type PreparedDatabaseFinisher interface {
	FinishesPreparedDatabase() bool
}

// DatabaseLoad is how a restore loaded the dump (Result.DatabaseLoad).
type DatabaseLoad struct {
	// Sessions is the number of database sessions the dump was loaded over (1: one psql
	// reading it, as psql -f); 0 when this run did not load it (a re-run that finished an
	// interrupted restore whose load was already done).
	Sessions int `json:"sessions"`
	// DevicePrep is where the database part of device preparation ran:
	// DevicePrepTemporaryDatabase or DevicePrepInDowntime.
	DevicePrep string `json:"device_preparation_database,omitempty"`
}

// Where the database part of device preparation ran (DatabaseLoad.DevicePrep).
const (
	// DevicePrepTemporaryDatabase: on the temporary database, between the load of its data
	// and the build of its indexes, before anything was stopped; only the KV part ran while
	// the units were stopped.
	DevicePrepTemporaryDatabase = "temporary_database"
	// DevicePrepInDowntime: on the restored database after the swap, while the units were
	// stopped.
	DevicePrepInDowntime = "downtime"
)

func (r *run) loadReport() *DatabaseLoad {
	if r.res.DatabaseLoad == nil {
		r.res.DatabaseLoad = &DatabaseLoad{}
	}
	return r.res.DatabaseLoad
}

// RunSQL runs sql in database name as the admin user.
func (d *PsqlDatabase) RunSQL(ctx context.Context, name, sql string) (string, error) {
	return d.query(ctx, name, sql)
}

// ParallelLoadOptions configure LoadChecked.
type ParallelLoadOptions struct {
	Connections int
	// AfterData runs once all table data is in, before the first index is built.
	AfterData func(ctx context.Context) error
	// AfterDataTables, when set, are the tables AfterData writes: it then runs beside the
	// index builds of the other tables (pgload.Options.AfterDataTables).
	AfterDataTables []string
}

var _ ParallelLoader = (*PsqlDatabase)(nil)

// LoadConnections picks the number of psql sessions of a load: requested when given,
// else pgload.DefaultConnections from this machine's CPUs and the connections the
// server has free.
func (d *PsqlDatabase) LoadConnections(ctx context.Context, requested int) (int, error) {
	if requested > 0 {
		return sessionsFor(requested, ""), nil
	}
	out, err := d.query(ctx, "postgres", pgload.FreeConnectionsSQL+";")
	if err != nil {
		return 0, fmt.Errorf("count the database server's free connections: %w", err)
	}
	return sessionsFor(requested, out), nil
}

// sessionsFor is LoadConnections' answer for requested, free being the server's answer
// to pgload.FreeConnectionsSQL (unknown when it is not a number).
func sessionsFor(requested int, free string) int {
	if requested > 0 {
		return min(requested, pgload.MaxConnections)
	}
	n, err := strconv.Atoi(strings.TrimSpace(free))
	if err != nil {
		n = -1
	}
	return pgload.DefaultConnections(runtime.NumCPU(), n)
}

// LoadChecked loads the checked dump src into name over opts.Connections psql sessions
// built by Command, each in restricted mode when this psql knows it.
func (d *PsqlDatabase) LoadChecked(ctx context.Context, name string, src *pgdump.Checked, opts ParallelLoadOptions) (pgload.Stats, error) {
	st, err := pgload.Load(ctx, src, pgload.Options{
		Database:        name,
		Connections:     opts.Connections,
		Command:         d.Command,
		Runner:          d.Runner,
		Restrict:        d.RestrictsMetaCommands(ctx),
		AfterData:       opts.AfterData,
		AfterDataTables: opts.AfterDataTables,
		Logger:          d.logger(),
	})
	if err != nil {
		return st, fmt.Errorf("load the dump into %s: %w", name, err)
	}
	return st, nil
}
