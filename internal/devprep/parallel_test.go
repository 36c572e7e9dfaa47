package devprep

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/pgload"
)

// splitAtAnySize lets the small test databases split the device update.
func splitAtAnySize(t *testing.T) {
	minDevices := parallelMinDevices
	parallelMinDevices = 1
	t.Cleanup(func() { parallelMinDevices = minDevices })
}

func TestUpdateSessions(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ requested, toUpdate, want int }{
		{requested: 1, toUpdate: 1000000, want: 1},
		{requested: 4, toUpdate: 100000, want: 4},
		{requested: 4, toUpdate: 50000, want: 2}, // no fewer than parallelMinDevices each
		{requested: 8, toUpdate: 19999, want: 1},
		{requested: 3, toUpdate: 0, want: 1},
	} {
		got, err := updateSessions(ctx, nil, c.requested, c.toUpdate)
		require.NoError(t, err)
		assert.Equal(t, c.want, got, "%d sessions asked for %d devices", c.requested, c.toUpdate)
	}

	// The default is the loader's, from this machine's CPUs and the server's free connections.
	e := newEnv(t)
	db, _ := e.connect(t)
	var free int
	require.NoError(t, db.QueryRow(ctx, pgload.FreeConnectionsSQL).Scan(&free))
	got, err := updateSessions(ctx, db, 0, 1000000)
	require.NoError(t, err)
	assert.Equal(t, pgload.DefaultConnections(runtime.NumCPU(), free), got)
	assert.GreaterOrEqual(t, got, 2, "free connections: %d", free)
}

// The split update gives the database the one-transaction update gives, on the same input.
func TestSplitUpdateGivesTheSameDatabase(t *testing.T) {
	splitAtAnySize(t)
	ctx := context.Background()
	alone, split := twoGenerated(t, 600)
	before := split.snapshot(t)

	opts := alone.options(t)
	opts.RestoreID, opts.Connections = "restore-1", 1
	resAlone, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Zero(t, resAlone.DeviceUpdateSessions)

	opts = split.options(t)
	opts.RestoreID, opts.Connections = "restore-1", 3
	resSplit, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, 3, resSplit.DeviceUpdateSessions)

	resAlone.DeviceUpdateSessions = resSplit.DeviceUpdateSessions
	assert.Equal(t, resAlone, resSplit)
	assert.Greater(t, resSplit.DevicesUpdated, 500)
	assertSameOutcome(t, alone, split, before)
}

// failOnUpdateOf makes every update of the device named name fail.
func failOnUpdateOf(t *testing.T, e *env, name string) (remove func()) {
	ctx := context.Background()
	_, err := e.admin.Exec(ctx, `CREATE FUNCTION refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'update of % refused', OLD.name; END $$`)
	require.NoError(t, err)
	_, err = e.admin.Exec(ctx, `CREATE TRIGGER refuse_update BEFORE UPDATE ON devices FOR EACH ROW WHEN (OLD.name = '`+name+`') EXECUTE FUNCTION refuse_update()`)
	require.NoError(t, err)
	return func() {
		_, err := e.admin.Exec(ctx, `DROP TRIGGER refuse_update ON devices; DROP FUNCTION refuse_update()`)
		require.NoError(t, err)
	}
}

// appSessions counts the server's sessions of flightctl_app.
func appSessions(t *testing.T, e *env) int {
	var n int
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE usename = 'flightctl_app'`).Scan(&n))
	return n
}

// A failure in any one session of a split update, the run's own or another, commits
// nothing in any session and leaves the KV store alone; the extra sessions are closed, and
// the next run prepares everything.
func TestSplitUpdateFailureRollsBackEverySession(t *testing.T) {
	splitAtAnySize(t)
	ctx := context.Background()
	for _, c := range []struct{ where, device string }{
		{"the run's own session", "dev-annot-false"}, // among the first devices in key order
		{"the last session", "dev-b1"},               // the last device in key order
	} {
		t.Run(c.where, func(t *testing.T) {
			e := newEnv(t)
			generatedDevices(t, e, 600)
			require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
			before, fp, keys := e.snapshot(t), e.fingerprint(t), e.kvKeys(t)
			remove := failOnUpdateOf(t, e, c.device)

			opts := e.options(t)
			opts.RestoreID, opts.Connections = "r", 3
			res, err := Run(ctx, opts)
			require.Error(t, err)
			assert.Nil(t, res)
			assert.Contains(t, err.Error(), "update of "+c.device+" refused")
			assert.Contains(t, err.Error(), "nothing was committed")
			assert.NotContains(t, err.Error(), "context canceled")

			remove()
			assert.Equal(t, fp, e.fingerprint(t), "rows changed")
			assert.Equal(t, before.contents, e.snapshot(t).contents)
			assert.Equal(t, keys, e.kvKeys(t), "the KV store changed")
			assert.Equal(t, map[int]int{0: 1}, e.kvDatabases(t), "the spare database the keys were staged in is empty again")
			// Only the caller's own connection is left.
			require.Eventually(t, func() bool { return appSessions(t, e) == 1 }, time.Minute, 20*time.Millisecond)

			res, err = Run(ctx, opts)
			require.NoError(t, err)
			assert.Equal(t, 3, res.DeviceUpdateSessions)
			assert.Greater(t, res.DevicesUpdated, 500)
			assert.True(t, res.EventCreated)
			assert.Zero(t, e.devicesLeft(t))
			assert.NotContains(t, e.kvKeys(t), "v1/stale/cache")
		})
	}
}

// A session of the split update that meets a row another transaction holds waits for it,
// and then prepares the row with that transaction's change: the row stays in its range.
func TestSplitUpdateWaitsForAWriterAndKeepsItsChange(t *testing.T) {
	splitAtAnySize(t)
	ctx := context.Background()
	e := newEnv(t)
	generatedDevices(t, e, 300)
	tx := e.superuserTx(t)
	_, err := tx.Exec(ctx, `UPDATE devices SET owner = 'Fleet/written-meanwhile' WHERE org_id = $1 AND name = 'dev-b1'`, orgBLower)
	require.NoError(t, err)

	opts := e.options(t)
	opts.Connections = 3
	done := make(chan error, 1)
	var res *Result
	go func() {
		var err error
		res, err = Run(ctx, opts)
		done <- err
	}()
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE usename = 'flightctl_app' AND wait_event_type = 'Lock'`).Scan(&waiting))
		return waiting == 1
	}, time.Minute, 20*time.Millisecond, "no session of the run waits for the writer")
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done)
	assert.Equal(t, 3, res.DeviceUpdateSessions)

	var owner, annotation string
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT owner, annotations ->> $2 FROM devices WHERE org_id = $1 AND name = 'dev-b1'`,
		orgBLower, AnnotationAwaitingReconnect).Scan(&owner, &annotation))
	assert.Equal(t, "Fleet/written-meanwhile", owner)
	assert.Equal(t, "true", annotation)
	assert.Zero(t, e.devicesLeft(t))
}

// When only some sessions of a split update committed (a kill between the commits), the
// next run prepares the rest: rows and keys as after one whole run.
func TestPartlyCommittedSplitIsFinishedByRunningAgain(t *testing.T) {
	splitAtAnySize(t)
	ctx := context.Background()
	whole, partly := twoGenerated(t, 400)
	opts := whole.options(t)
	opts.Connections = 1
	_, err := Run(ctx, opts)
	require.NoError(t, err)

	awaiting := func() int {
		var n int
		require.NoError(t, partly.admin.QueryRow(ctx, `SELECT count(*) FROM devices AS d WHERE d.deleted_at IS NULL AND `+devAnnotated).Scan(&n))
		return n
	}
	awaitingBefore := awaiting()
	// What the first of two sessions commits: the devices of the first organization.
	var updated, cleared int
	require.NoError(t, partly.admin.QueryRow(ctx, updateDeviceRangeSQL, deviceRange{toOrg: orgBLower}.args()...).Scan(&updated, &cleared))
	require.Greater(t, updated, 300)
	opts = partly.options(t)
	opts.Connections = 2
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, 1, res.DevicesUpdated, "only the device of the other organization was left")
	assert.Equal(t, awaitingBefore+updated, res.DevicesAlreadyAwaiting)

	want, got := whole.snapshot(t), partly.snapshot(t)
	for _, table := range []string{"public.devices", "public.device_timestamps", "public.enrollment_requests"} {
		assert.Equal(t, want.contents[table], got.contents[table], table)
	}
	assert.Equal(t, whole.kvKeys(t), partly.kvKeys(t))
}
