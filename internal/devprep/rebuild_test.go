package devprep

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

// rebuildAtAnySize lets the small test databases take the index rebuild path.
func rebuildAtAnySize(t *testing.T) {
	minDevices, share := rebuildMinDevices, rebuildMinShare
	rebuildMinDevices, rebuildMinShare = 1, 2
	t.Cleanup(func() { rebuildMinDevices, rebuildMinShare = minDevices, share })
}

// generatedDevices adds the worked example and n devices with values in every indexed
// column (alias, owner, image digests, catalog references, service conditions), a few
// deleted, decommissioned or already awaiting, so that every index of devices has entries.
func generatedDevices(t *testing.T, e *env, n int) {
	workedExample(t, e)
	_, err := e.admin.Exec(context.Background(), `INSERT INTO devices (org_id, name, alias, owner, labels, annotations, generation, resource_version,
		created_at, updated_at, deleted_at, spec, status, service_conditions, render_timestamp)
		SELECT $1::uuid, 'gen-' || lpad(i::text, 5, '0'),
			CASE WHEN i % 3 = 0 THEN NULL ELSE 'alias-' || (i % 17) END,
			CASE WHEN i % 4 = 0 THEN NULL ELSE 'Fleet/fleet-' || (i % 5) END,
			jsonb_build_object('site', 's' || (i % 7), 'n', i::text),
			CASE WHEN i % 29 = 0 THEN '{"device-controller/awaitingReconnect": "true"}'::jsonb
				WHEN i % 11 = 0 THEN jsonb_build_object('device-controller/renderedVersion', (i % 9)::text) END,
			1, CASE WHEN i % 13 = 0 THEN NULL ELSE i END,
			now(), now(), CASE WHEN i % 31 = 0 THEN now() END,
			jsonb_build_object('os', jsonb_build_object('image', 'img:' || (i % 5), 'catalogItemRef', jsonb_build_object('catalog', 'c' || (i % 3), 'item', 'it' || (i % 4))),
				'applications', jsonb_build_array(jsonb_build_object('name', 'app', 'catalogItemRef', jsonb_build_object('catalog', 'c1', 'item', 'a' || (i % 6)),
					'volumes', jsonb_build_array(jsonb_build_object('name', 'v', 'image', jsonb_build_object('catalogItemRef', jsonb_build_object('catalog', 'c2', 'item', 'v' || (i % 2)))))))),
			CASE WHEN i % 23 = 0 THEN NULL
				ELSE $2::jsonb || jsonb_build_object('os', jsonb_build_object('image', 'img:' || (i % 5), 'imageDigest', CASE WHEN i % 2 = 0 THEN '' ELSE 'sha256:' || md5(i::text) END),
					'lifecycle', jsonb_build_object('status', CASE WHEN i % 37 = 0 THEN 'Decommissioning' ELSE 'Enrolled' END)) END,
			jsonb_build_object('conditions', jsonb_build_array(jsonb_build_object('type', 'Ready', 'status', (i % 2 = 0)::text))),
			'0001-01-01 00:00:00+00'
		FROM generate_series(1, $3::int) AS i`, DefaultOrgID, typicalStatus, n)
	require.NoError(t, err)
	// Fixed times, so that two databases built this way hold the same rows.
	for _, q := range []string{
		`UPDATE device_timestamps SET last_seen = CASE WHEN last_seen IS NOT NULL OR right(name, 1) IN ('1', '3', '5') THEN '2026-01-02 03:04:05+00'::timestamptz END`,
		`UPDATE devices SET created_at = '2026-01-01 00:00:00+00', updated_at = '2026-01-01 00:00:00+00', deleted_at = CASE WHEN deleted_at IS NOT NULL THEN '2026-01-01 12:00:00+00'::timestamptz END`,
		`UPDATE enrollment_requests SET created_at = '2026-01-01 00:00:00+00', updated_at = '2026-01-01 00:00:00+00', deleted_at = CASE WHEN deleted_at IS NOT NULL THEN '2026-01-01 12:00:00+00'::timestamptz END`,
		`UPDATE organizations SET created_at = '2026-01-01 00:00:00+00', updated_at = '2026-01-01 00:00:00+00'`,
	} {
		_, err = e.admin.Exec(context.Background(), q)
		require.NoError(t, err)
	}
}

// twoGenerated is two databases holding the same generatedDevices(n).
func twoGenerated(t *testing.T, n int) (*env, *env) {
	a, b := newEnv(t), newEnv(t)
	generatedDevices(t, a, n)
	generatedDevices(t, b, n)
	require.Equal(t, a.snapshot(t).contents, b.snapshot(t).contents, "the two inputs differ")
	return a, b
}

// devicesLeft counts the devices a run would still prepare.
func (e *env) devicesLeft(t *testing.T) int {
	var n int
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT count(*) FROM devices AS d WHERE `+devQualifies).Scan(&n))
	return n
}

// assertSameOutcome checks that got, a database prepared from before, holds what want, the
// same input prepared the other way, holds: schema, rows, event and KV keys.
func assertSameOutcome(t *testing.T, want, got *env, before snapshot) {
	after := got.snapshot(t)
	assert.NotEqual(t, before.contents["public.devices"], after.contents["public.devices"], "nothing was prepared")
	w := want.snapshot(t)
	assert.True(t, w.schema == after.schema, "pg_dump --schema-only differs")
	assert.True(t, before.schema == after.schema, "pg_dump --schema-only differs from before")
	assert.Equal(t, w.contents, after.contents)
	assert.Equal(t, w.events, after.events)
	assert.Equal(t, want.kvKeys(t), got.kvKeys(t))
}

// superuserTx is a transaction of a session of its own, rolled back at the end of the test.
func (e *env) superuserTx(t *testing.T) pgx.Tx {
	ctx := context.Background()
	c, err := e.pg.SuperuserConn(ctx, e.dbName)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	tx, err := c.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// rebuildableBtrees are the btree indexes of devices not backing a constraint, as the
// fixture schema has them.
func rebuildableBtrees(t *testing.T, e *env) []string {
	rows, err := e.admin.Query(context.Background(), `SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam
		WHERE x.indrelid = 'public.devices'::regclass AND am.amname = 'btree' AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid) ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, names)
	return names
}

// snapshot is what must be the same after either path: the schema (pg_dump
// --schema-only: every index's definition, owners, grants, comments), every table's rows
// but the SystemRestored event, and that event without its timestamps.
type snapshot struct {
	schema   string
	contents map[string]string
	events   string
}

func (e *env) snapshot(t *testing.T) snapshot {
	ctx := context.Background()
	schema, err := e.pg.SchemaDump(ctx, e.dbName)
	require.NoError(t, err)
	contents, err := e.pg.Contents(ctx, e.dbName, map[string]string{"public.events": "x.reason <> 'SystemRestored'"})
	require.NoError(t, err)
	var events string
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT coalesce(string_agg(concat_ws('|', org_id, name, reason, type, message, involved_object_kind, involved_object_name, annotations), E'\n' ORDER BY name), '')
		FROM events WHERE reason = 'SystemRestored'`).Scan(&events))
	return snapshot{schema: schema, contents: contents, events: events}
}

// The rebuild path gives the database the row-by-row path gives, on the same input: same
// schema and index definitions, same rows; and the rebuilt indexes hold every row.
func TestIndexRebuildGivesTheSameDatabase(t *testing.T) {
	rebuildAtAnySize(t)
	ctx := context.Background()
	rowByRow, rebuilt := twoGenerated(t, 600)
	before := rebuilt.snapshot(t)
	btrees := rebuildableBtrees(t, rebuilt)

	// flightctl_app does not own devices: its run maintains the indexes row by row.
	opts := rowByRow.options(t)
	opts.RestoreID = "restore-1"
	resApp, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Zero(t, resApp.IndexesRebuilt)

	db, kv := rebuilt.connectWith(t, rebuilt.ownerConnOptions())
	resOwner, err := Run(ctx, Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true, RestoreID: "restore-1"})
	require.NoError(t, err)
	assert.Equal(t, len(btrees), resOwner.IndexesRebuilt)

	resApp.IndexesRebuilt = resOwner.IndexesRebuilt
	assert.Equal(t, resApp, resOwner)
	assert.Greater(t, resOwner.DevicesUpdated, 500)
	assertSameOutcome(t, rowByRow, rebuilt, before)

	// Every live row is in each rebuilt index (amcheck, created after the comparison).
	_, err = rebuilt.admin.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS amcheck`)
	require.NoError(t, err)
	for _, name := range btrees {
		_, err := rebuilt.admin.Exec(ctx, `SELECT bt_index_check($1::regclass, true)`, "public."+name)
		require.NoError(t, err, name)
	}
}

// Another session's lock on devices makes the run maintain the indexes row by row rather
// than wait.
func TestIndexRebuildGivesWayToALock(t *testing.T) {
	rebuildAtAnySize(t)
	ctx := context.Background()
	e := newEnv(t)
	generatedDevices(t, e, 50)
	tx := e.superuserTx(t)
	var n int
	require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM devices`).Scan(&n)) // holds ACCESS SHARE until the end

	db, kv := e.connectWith(t, e.ownerConnOptions())
	res, err := Run(ctx, Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true})
	require.NoError(t, err)
	assert.Zero(t, res.IndexesRebuilt)
	assert.Greater(t, res.DevicesUpdated, 40)
	assert.Equal(t, res.DevicesUpdated, res.KeysVerified-res.DevicesAlreadyAwaiting)
}

// interruptAfterFirstIndex sets afterIndexBuilt to call stop once, after the first index
// is built again, and says whether it was called.
func interruptAfterFirstIndex(t *testing.T, stop func(ctx context.Context)) func() bool {
	var once sync.Once
	called := false
	afterIndexBuilt = func(ctx context.Context, name string) {
		once.Do(func() { called = true; stop(ctx) })
	}
	t.Cleanup(func() { afterIndexBuilt = nil })
	return func() bool { return called }
}

// A run cancelled in the middle of the index rebuild commits nothing: rows, indexes and
// the KV store are as before; the next run prepares everything.
func TestCancelledDuringIndexRebuild(t *testing.T) {
	rebuildAtAnySize(t)
	e := newEnv(t)
	generatedDevices(t, e, 200)
	testInterruptedRebuild(t, e, func(db *pgx.Conn, cancel context.CancelFunc) func(context.Context) {
		return func(context.Context) { cancel() }
	})
}

// The same with the database session killed with SIGKILL (on a cluster of its own, since
// PostgreSQL restarts every session of the cluster after it).
func TestKilledDuringIndexRebuild(t *testing.T) {
	rebuildAtAnySize(t)
	testbed.Need(t, testbed.PostgresBinDir+"/initdb", "redis-server")
	startCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := testbed.StartPostgres(startCtx, testbed.PostgresOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = pg.Stop() })
	e := newEnvOn(t, pg, t.Cleanup)
	generatedDevices(t, e, 200)
	testInterruptedRebuild(t, e, func(db *pgx.Conn, _ context.CancelFunc) func(context.Context) {
		return func(context.Context) {
			pid := int(db.PgConn().PID())
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
			// Until the postmaster has reaped the session it has not begun the restart of
			// the cluster, and a session opened in between would be ended by that restart.
			require.True(t, testbed.WaitGone(pid, time.Minute), "session %d still there", pid)
		}
	})
}

func testInterruptedRebuild(t *testing.T, e *env, interrupt func(db *pgx.Conn, cancel context.CancelFunc) func(context.Context)) {
	ctx := context.Background()
	require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	before := e.snapshot(t)
	fp := e.fingerprint(t)
	keys := e.kvKeys(t)

	db, kv := e.connectWith(t, e.ownerConnOptions())
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	interrupted := interruptAfterFirstIndex(t, interrupt(db, cancel))
	_, err := Run(runCtx, Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true, RestoreID: "r"})
	require.Error(t, err)
	require.True(t, interrupted(), "the run did not reach the index rebuild")
	t.Log(err)

	// The cluster accepts sessions again once it has recovered (after a kill).
	require.Eventually(t, func() bool {
		c, err := e.pg.SuperuserConn(ctx, e.dbName)
		if err != nil {
			return false
		}
		c.Close(ctx)
		return true
	}, time.Minute, 50*time.Millisecond)
	admin, err := e.pg.SuperuserConn(ctx, e.dbName)
	require.NoError(t, err)
	e.admin.Close(ctx)
	e.admin = admin
	t.Cleanup(func() { admin.Close(context.Background()) })

	assert.Equal(t, fp, e.fingerprint(t), "rows changed")
	now := e.snapshot(t)
	assert.True(t, before.schema == now.schema, "pg_dump --schema-only changed")
	assert.Equal(t, before.contents, now.contents, "the rows changed")
	assert.Equal(t, before.events, now.events, "the events changed")
	assert.Equal(t, keys, e.kvKeys(t), "the KV store changed")

	afterIndexBuilt = nil
	db2, kv2 := e.connectWith(t, e.ownerConnOptions())
	res, err := Run(ctx, Options{DB: db2, KV: kv2, FlushKV: true, CreateEvent: true, RestoreID: "r"})
	require.NoError(t, err)
	assert.Greater(t, res.IndexesRebuilt, 0)
	assert.Greater(t, res.DevicesUpdated, 150)
	assert.True(t, res.EventCreated)
	assert.True(t, before.schema == e.snapshot(t).schema, "the indexes differ after the run")
	assert.Zero(t, e.devicesLeft(t))
	assert.NotContains(t, e.kvKeys(t), "v1/stale/cache")
}

// With the application running (a restore's device preparation alone with
// allow_running_units), even the table's owner keeps the indexes: building them again
// would lock devices against the server's reads until the commit.
func TestIndexRebuildNotWhileTheServerRuns(t *testing.T) {
	rebuildAtAnySize(t)
	ctx := context.Background()
	e := newEnv(t)
	generatedDevices(t, e, 50)
	oids := func() []int64 {
		rows, err := e.admin.Query(ctx, `SELECT indexrelid::int8 FROM pg_index WHERE indrelid = 'public.devices'::regclass ORDER BY 1`)
		require.NoError(t, err)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		return ids
	}
	before := oids()

	db, kv := e.connectWith(t, e.ownerConnOptions())
	res, err := Run(ctx, Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true, ServerRunning: true})
	require.NoError(t, err)
	assert.Zero(t, res.IndexesRebuilt)
	assert.Greater(t, res.DevicesUpdated, 40)
	assert.Equal(t, before, oids(), "no index of devices was dropped and built again")
}
