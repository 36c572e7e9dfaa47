package restore_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

func parallelOptions(ctx context.Context, e *env, path string, n int) (restore.Options, *testbed.LogRecorder) {
	rec := &testbed.LogRecorder{T: e.t}
	logger := slog.New(slog.NewTextHandler(rec, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return restore.Options{ArchivePath: path, Target: target(ctx, e.t, e.cfg, logger), StateDir: e.cfg.StateDir, FlushKV: true,
		LoadConnections: n, Logger: logger}, rec
}

func TestRestoreOverSeveralSessions(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	opts, rec := parallelOptions(ctx, e, path, 3)
	_, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertRestored(ctx)
	require.Contains(t, rec.String(), "dump loaded over several sessions")
	require.Contains(t, rec.String(), "sessions=3")
	// The database part of device preparation ran on the temporary database, before the
	// units were stopped; only the KV part ran in the downtime.
	log := rec.String()
	early := strings.Index(log, "database prepared in the temporary database")
	stop := strings.Index(log, "step=stop_units")
	require.Positive(t, early)
	require.Greater(t, stop, early)
	require.Contains(t, log[early:], "devices_updated=18")
}

func TestRestoreOverOneSessionIsPsql(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	opts, rec := parallelOptions(ctx, e, path, 1)
	_, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertRestored(ctx)
	require.NotContains(t, rec.String(), "several sessions")
}

func TestRestoreParallelLoadErrorHalfwayLeavesLiveDatabase(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	dump := e.dump(ctx)
	// A devices row with too few fields in the middle of the data: the load stops there.
	i := bytes.Index(dump, []byte("COPY public.devices "))
	require.Positive(t, i)
	nl := bytes.IndexByte(dump[i:], '\n') + i + 1
	bad := append(append(append([]byte{}, dump[:nl]...), []byte("too\tfew\n")...), dump[nl:]...)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), bad)
	e.damage(ctx)
	before := e.snapshot(ctx)

	opts, rec := parallelOptions(ctx, e, path, 3)
	stopped := false
	opts.Checkpoint = func(name string) error {
		stopped = stopped || name == "stop_units:recorded"
		return nil
	}
	res, err := restore.Run(ctx, opts)
	require.Error(t, err)
	require.Contains(t, err.Error(), "load_database")
	require.Contains(t, err.Error(), "devices")
	require.False(t, stopped, "a dump that does not load stops nothing")
	require.Contains(t, rec.String(), "loading the dump over several database sessions")
	e.assertRolledBackUnchanged(ctx, res, before)
	require.Equal(t, []string{"flightctl"}, e.databases(ctx), "the temporary database is dropped")
}

// Device preparation's update runs in the loader's slot between data and indexes; the reads
// that follow it (the counts and the devices whose keys the KV part writes) run on a session
// of their own once it is committed, beside the index phase, and the KV part still gets
// every key.
func TestRestorePreparedReadsOwnSession(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	opts, rec := parallelOptions(ctx, e, path, 2)
	rr := &recordingRunner{inner: runner.Exec{}, phase: "all"}
	opts.Target.(*estate.PodmanRestore).Runner = rr
	_, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertRestored(ctx)
	update, reads, event := -1, -1, -1
	for i, c := range rr.in("all") {
		if strings.Contains(c, "WITH updated AS (") {
			require.NotContains(t, c, "concat_ws", "the update and the reads in one session")
			// Beside the index builds of events, the update must not wait for their lock.
			require.NotContains(t, c, "INSERT INTO events", "the update writes only its own tables")
			update = i
		}
		if strings.Contains(c, "SELECT concat_ws('|'") {
			reads = i
		}
		if strings.Contains(c, "INSERT INTO events") {
			event = i
		}
		require.NotContains(t, c, "--version", "psql's version comes with the temporary database's creation")
	}
	require.GreaterOrEqual(t, update, 0, "device preparation's update ran")
	require.Greater(t, reads, update, "the reads ran on their own session after the update")
	require.Greater(t, event, update, "the event recorded after the update")
	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer conn.Close(ctx)
	var msg string
	require.NoError(t, conn.QueryRow(ctx, `SELECT message FROM events WHERE reason = 'SystemRestored'`).Scan(&msg))
	require.Equal(t, devprep.EventMessage(18), msg, "the event counts the devices the update changed")
	log := rec.String()
	early := strings.Index(log, "database prepared in the temporary database")
	require.Positive(t, early)
	require.Greater(t, strings.Index(log, "step=stop_units"), early)
	require.Contains(t, log[early:], "devices_updated=18")
}
