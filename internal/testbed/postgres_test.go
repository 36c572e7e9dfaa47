package testbed

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPostgresFlightctlDB(t *testing.T) {
	pg := PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", FlightctlPasswords{App: "app-secret"}))

	conn, err := pgx.Connect(ctx, pg.DSN("flightctl", "flightctl_app", "app-secret"))
	require.NoError(t, err, "the app user connects over TCP with its password")
	defer conn.Close(ctx)

	var tables int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`).Scan(&tables))
	assert.Equal(t, 26, tables)

	var name, ext string
	require.NoError(t, conn.QueryRow(ctx, `SELECT display_name, external_id FROM organizations WHERE id = $1`, DefaultOrgID).Scan(&name, &ext))
	assert.Equal(t, "Default", name)
	assert.Equal(t, "default", ext)

	var owner string
	require.NoError(t, conn.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'flightctl'`).Scan(&owner))
	assert.Equal(t, "admin", owner)
	var appConnect, migratorCreate bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT has_database_privilege('flightctl_app', 'flightctl', 'CONNECT'), has_database_privilege('flightctl_migrator', 'flightctl', 'CREATE')`).Scan(&appConnect, &migratorCreate))
	assert.True(t, appConnect)
	assert.True(t, migratorCreate)

	// The app user can write devices (grants came with the schema); the trigger adds the timestamp row.
	_, err = conn.Exec(ctx, `INSERT INTO devices (org_id, name) VALUES ($1, 'd1')`, DefaultOrgID)
	require.NoError(t, err)
	var ts int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM device_timestamps WHERE name = 'd1'`).Scan(&ts))
	assert.Equal(t, 1, ts)

	_, err = pgx.Connect(ctx, pg.DSN("flightctl", "flightctl_app", "wrong"))
	require.Error(t, err, "a wrong password must be refused over TCP")
	assert.Contains(t, err.Error(), "password authentication failed")
}

func TestPostgresTwoClustersSideBySide(t *testing.T) {
	a := PostgresForTest(t)
	b := PostgresForTest(t)
	assert.NotEqual(t, a.Port, b.Port)
	assert.NotEqual(t, a.SocketDir, b.SocketDir)
}

func TestStripRestrict(t *testing.T) {
	in := "SET x = 1;\n\\restrict abc\nCREATE TABLE t ();\n\\unrestrict abc\n"
	assert.Equal(t, "SET x = 1;\nCREATE TABLE t ();\n", string(stripRestrict([]byte(in))))
}

func TestWaitBackendsWaitsForTheSessionsNotKept(t *testing.T) {
	pg := PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kept, err := pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	defer kept.Close(ctx)
	keep := Backends(pg.PostmasterPID())
	require.Contains(t, keep, int(kept.PgConn().PID()), "a client session is a backend")

	extra, err := pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	pid := int(extra.PgConn().PID())
	require.Contains(t, Backends(pg.PostmasterPID()), pid)
	assert.False(t, WaitBackends(pg.PostmasterPID(), keep, 50*time.Millisecond), "a session still open is waited for")

	require.NoError(t, extra.Close(ctx))
	require.True(t, WaitBackends(pg.PostmasterPID(), keep, time.Minute))
	assert.NotContains(t, Backends(pg.PostmasterPID()), pid, "the closed session's backend is reaped")
	assert.Contains(t, Backends(pg.PostmasterPID()), int(kept.PgConn().PID()), "the kept session is left alone")
}
