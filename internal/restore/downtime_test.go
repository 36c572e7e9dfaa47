package restore_test

import (
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// recordingRunner runs commands and records each one with the phase of the restore it
// ran in.
type recordingRunner struct {
	inner runner.Runner
	mu    sync.Mutex
	phase string
	cmds  map[string][]string
}

func (r *recordingRunner) setPhase(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.phase = p
}

func (r *recordingRunner) Run(ctx context.Context, c runner.Cmd) error {
	r.mu.Lock()
	if r.cmds == nil {
		r.cmds = map[string][]string{}
	}
	var sql string
	if sr, ok := c.Stdin.(*strings.Reader); ok {
		b, _ := io.ReadAll(sr)
		_, _ = sr.Seek(0, io.SeekStart)
		sql = string(b)
		if len(sql) > 80 {
			sql = sql[:80]
		}
	} else if c.Stdin == nil {
		sql = strings.Join(c.Args, " ")
	}
	r.cmds[r.phase] = append(r.cmds[r.phase], c.Name+" "+strings.ReplaceAll(sql, "\n", " "))
	r.mu.Unlock()
	return r.inner.Run(ctx, c)
}

func (r *recordingRunner) in(phase string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.cmds[phase]...)
}

// While the server is down (first unit stopped to units started again) a restore starts no
// database command: the swap, with both renames, the owner and the grants, runs in one psql
// started before the stop. The passwords are set before the stop, while the units still run. A session still
// connected to the live database when the units are stopped (a client the stop did not
// end) is ended by the swap, which then renames.
func TestRestoreDowntimeStartsNoDatabaseCommand(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)

	rec := &recordingRunner{inner: runner.Exec{}, phase: "before"}
	tgt := target(ctx, t, e.cfg, testLogger(t))
	tgt.Runner = rec
	opts := restore.Options{ArchivePath: path, Target: tgt, StateDir: e.cfg.StateDir, FlushKV: true}
	var straggler *pgx.Conn
	apiActiveAtSync := false
	opts.Checkpoint = func(name string) error {
		switch name {
		case restore.StepSyncPasswords:
			apiActiveAtSync = e.unitActive(ctx, "flightctl-api.service")
		case "stop_units:recorded":
			rec.setPhase("down")
		case restore.StepStopUnits:
			c, err := pgx.Connect(ctx, e.pg.DSN("flightctl", "flightctl_app", "apppass"))
			require.NoError(t, err)
			straggler = c
		case restore.StepStartUnits:
			rec.setPhase("after")
		}
		return nil
	}
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertRestored(ctx)
	require.True(t, apiActiveAtSync, "the passwords are set while the units still run")
	require.Equal(t, "set to db_password", res.PasswordSync["flightctl_app"])

	var down []string
	for _, c := range rec.in("down") {
		if strings.HasPrefix(c, "psql ") || strings.HasPrefix(c, "podman ") {
			down = append(down, c)
		}
	}
	require.Empty(t, down, "database commands started while the server was down")

	require.NotNil(t, straggler)
	defer straggler.Close(ctx)
	require.Error(t, straggler.Ping(ctx), "the session left on the live database was ended by the swap")
}

// The one-session swap decides from what exists, as the step-by-step swap did: it refuses
// when all three databases exist or the restored one is missing before the swap, changes
// nothing then, finishes a swap already done, and ends the sessions on both databases.
// adminPsql administers pg's databases through this machine's psql as the admin user,
// flightctl being the live one, after creating it.
func adminPsql(t *testing.T, pg *testbed.Postgres) *restore.PsqlDatabase {
	require.NoError(t, pg.CreateFlightctlDB(context.Background(), "flightctl", testbed.FlightctlPasswords{}))
	return psqlAs(t, pg, "admin", "adminpass")
}

// psqlAs administers pg's databases, flightctl being the live one, through this machine's
// psql as user.
func psqlAs(t *testing.T, pg *testbed.Postgres, user, password string) *restore.PsqlDatabase {
	return &restore.PsqlDatabase{DBName: "flightctl", Runner: runner.Exec{}, Logger: testLogger(t),
		Command: func(psqlArgs, env []string) runner.Cmd {
			args := append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", user, "-w"}, psqlArgs...)
			return runner.Cmd{Name: "psql", Args: args, Env: append(env, "PGPASSWORD="+password)}
		}}
}

func TestSwapDatabasesInOneSession(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql")
	pg := testbed.PostgresForTest(t)
	db := adminPsql(t, pg)
	var sw restore.DatabaseSwapper = db
	info, err := db.Info(ctx, "flightctl")
	require.NoError(t, err)
	req := restore.SwapRequest{Live: "flightctl", Temp: "flightctl_restore_x", Old: "flightctl_old_x", LiveExisted: true, Info: info}
	names := func() []string {
		c, err := pg.SuperuserConn(ctx, "postgres")
		require.NoError(t, err)
		defer c.Close(ctx)
		rows, err := c.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'flightctl%' ORDER BY 1`)
		require.NoError(t, err)
		n, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return n
	}

	_, err = sw.SwapDatabases(ctx, req, nil)
	require.ErrorContains(t, err, "the restored database flightctl_restore_x is missing and the swap has not happened")
	require.Equal(t, []string{"flightctl"}, names())

	require.NoError(t, db.Create(ctx, req.Temp, info))
	require.NoError(t, db.Create(ctx, req.Old, info))
	_, err = sw.SwapDatabases(ctx, req, nil)
	require.ErrorContains(t, err, "flightctl, flightctl_restore_x and flightctl_old_x all exist")
	require.Equal(t, []string{"flightctl", "flightctl_old_x", "flightctl_restore_x"}, names())
	require.NoError(t, db.Drop(ctx, req.Old))

	// Sessions on both databases, as a server that did not let go and a loader session.
	onLive, err := pgx.Connect(ctx, pg.DSN("flightctl", "flightctl_app", "apppass"))
	require.NoError(t, err)
	defer onLive.Close(ctx)
	onTemp, err := pg.SuperuserConn(ctx, req.Temp)
	require.NoError(t, err)
	defer onTemp.Close(ctx)
	// A session started ahead and closed unused runs nothing.
	sw.PrepareSwap(ctx).Close()
	require.Equal(t, []string{"flightctl", "flightctl_restore_x"}, names())
	prepared := sw.PrepareSwap(ctx)
	defer prepared.Close()
	out, err := sw.SwapDatabases(ctx, req, prepared)
	require.NoError(t, err)
	require.True(t, out.LiveRenamed && out.TempRenamed)
	require.Len(t, out.Sessions, 2, "%q", out.Sessions)
	require.Error(t, onLive.Ping(ctx))
	require.Error(t, onTemp.Ping(ctx))
	require.Equal(t, []string{"flightctl", "flightctl_old_x"}, names())

	swapped, err := db.Info(ctx, "flightctl")
	require.NoError(t, err)

	// Run again (a resume after the swap): nothing to rename, and the owner and grants,
	// already in place, are left exactly as they are (not even reordered).
	out, err = sw.SwapDatabases(ctx, req, nil)
	require.NoError(t, err)
	require.False(t, out.LiveRenamed || out.TempRenamed)
	after, err := db.Info(ctx, "flightctl")
	require.NoError(t, err)
	require.Equal(t, info.Owner, after.Owner)
	require.ElementsMatch(t, info.ACL, after.ACL)
	require.Equal(t, swapped.ACL, after.ACL)
}

// RecreateForLoad, the load step's drop and create in one psql, gives a temporary database left
// half-loaded by a dead run back empty, with the live one's owner, and creates one that
// is missing; a session still on the old one does not stop it.
func TestRecreateStartsTheTemporaryDatabaseAfresh(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql")
	pg := testbed.PostgresForTest(t)
	db := adminPsql(t, pg)
	info, err := db.Info(ctx, "flightctl")
	require.NoError(t, err)
	const temp = "flightctl_restore_y"
	tables := func() int {
		c, err := pg.SuperuserConn(ctx, temp)
		require.NoError(t, err)
		defer c.Close(ctx)
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace`).Scan(&n))
		return n
	}

	_, err = db.RecreateForLoad(ctx, temp, info, 1) // missing: created
	require.NoError(t, err)
	half, err := pg.SuperuserConn(ctx, temp)
	require.NoError(t, err)
	defer half.Close(ctx)
	_, err = half.Exec(ctx, `CREATE TABLE public.devices (name text); INSERT INTO public.devices VALUES ('x')`)
	require.NoError(t, err)
	require.Equal(t, 1, tables())

	_, err = db.RecreateForLoad(ctx, temp, info, 1) // half-loaded, a session still on it
	require.NoError(t, err)
	require.Zero(t, tables())
	got, err := db.Info(ctx, temp)
	require.NoError(t, err)
	require.Equal(t, info.Owner, got.Owner)
	require.Equal(t, info.Encoding, got.Encoding)
}
