package restore_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

func pgSetting(t *testing.T, pg *testbed.Postgres, name string) string {
	t.Helper()
	ctx := context.Background()
	c, err := pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	defer c.Close(ctx)
	var v string
	require.NoError(t, c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v))
	return v
}

// The plan's survey of the live database gives what Ping, Exists, Info and Counts give one
// by one, with their errors, in one psql: with container access each psql is a podman or
// kubectl exec, so the survey is one exec where the four were two rounds of two.
func TestSurveyAnswersAsTheFourCallsInOnePsql(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql")
	pg := testbed.PostgresForTest(t)
	db := adminPsql(t, pg)
	c, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	_, err = c.Exec(ctx, `INSERT INTO devices (org_id, name, generation, resource_version, created_at, updated_at, spec, status)
		SELECT '`+testbed.DefaultOrgID+`', 'dev-' || i, 1, 1, now(), now(), '{}', '{}' FROM generate_series(1, 3) i`)
	require.NoError(t, err)
	c.Close(ctx)
	tables := append(append([]string{}, restore.CountedTables...), "no_such_table")

	rec := &recordingRunner{inner: runner.Exec{}}
	db.Runner = rec
	sv, err := db.Survey(ctx, "flightctl", tables)
	require.NoError(t, err)
	assert.Len(t, rec.in(""), 1, "one psql for the whole survey")
	db.Runner = runner.Exec{}
	require.NoError(t, db.Ping(ctx))
	exists, err := db.Exists(ctx, "flightctl")
	require.NoError(t, err)
	info, err := db.Info(ctx, "flightctl")
	require.NoError(t, err)
	counts, err := db.Counts(ctx, "flightctl", tables)
	require.NoError(t, err)
	assert.True(t, exists)
	dir := pgSetting(t, pg, "data_directory")
	assert.Equal(t, restore.DatabaseSurvey{Exists: exists, Info: info, Counts: counts, DataDirectory: dir}, sv)
	free, known, err := db.FreeSpace(ctx)
	require.NoError(t, err)
	freeAt, knownAt, err := db.FreeSpaceAt(ctx, sv.DataDirectory)
	require.NoError(t, err)
	assert.Equal(t, known, knownAt)
	assert.InDelta(t, free, freeAt, 64<<20, "the same file system, read twice")
	assert.EqualValues(t, 3, sv.Counts["devices"])
	assert.EqualValues(t, -1, sv.Counts["no_such_table"])

	// A database that does not exist: no info, no counts, no error.
	rec = &recordingRunner{inner: runner.Exec{}}
	db.Runner = rec
	sv, err = db.Survey(ctx, "flightctl_not_there", tables)
	require.NoError(t, err)
	assert.Equal(t, restore.DatabaseSurvey{DataDirectory: dir}, sv)
	assert.Len(t, rec.in(""), 1)

	// A user that is not a superuser gets Ping's error, and wrong credentials its prefix.
	app := psqlAs(t, pg, "flightctl_app", "apppass")
	pingErr := app.Ping(ctx)
	require.Error(t, pingErr)
	_, err = app.Survey(ctx, "flightctl", tables)
	require.EqualError(t, err, pingErr.Error())

	wrong := psqlAs(t, pg, "admin", "not-the-password")
	pingErr = wrong.Ping(ctx)
	require.Error(t, pingErr)
	_, err = wrong.Survey(ctx, "flightctl", tables)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connect to the database server as the admin user: ")
}

// The load step's drop and creation of the temporary database also answers what the load
// asks first, the number of sessions and whether psql has a restricted mode, in the same
// psql: with container access one exec where there were three at once. What it does to
// the database: TestRecreateStartsTheTemporaryDatabaseAfresh.
func TestRecreateForLoadAnswersAsTheThreeCallsInOnePsql(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql")
	pg := testbed.PostgresForTest(t)
	like, err := adminPsql(t, pg).Info(ctx, "flightctl")
	require.NoError(t, err)
	for _, requested := range []int{0, 3} {
		db := psqlAs(t, pg, "admin", "adminpass")
		rec := &recordingRunner{inner: runner.Exec{}}
		db.Runner = rec
		sessions, err := db.RecreateForLoad(ctx, "flightctl_load_test", like, requested)
		require.NoError(t, err)
		restricts := db.RestrictsMetaCommands(ctx)
		assert.Len(t, rec.in(""), 1, "one psql for the drop, the creation, the sessions and the version")

		alone := psqlAs(t, pg, "admin", "adminpass")
		want, err := alone.LoadConnections(ctx, requested)
		require.NoError(t, err)
		assert.Equal(t, want, sessions)
		assert.Equal(t, alone.RestrictsMetaCommands(ctx), restricts)
	}

	like.Owner = "no_such_role"
	_, err = psqlAs(t, pg, "admin", "adminpass").RecreateForLoad(ctx, "flightctl_load_test", like, 0)
	require.ErrorContains(t, err, "drop and create database flightctl_load_test: ")
}
