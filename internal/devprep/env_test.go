package devprep

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

// One PostgreSQL cluster serves the whole package; each test gets its own database in it
// and its own Redis (FLUSHALL is server-wide).
var (
	clusterOnce sync.Once
	cluster     *testbed.Postgres
	clusterErr  error
	dbCounter   atomic.Int64
)

const (
	appPassword      = "app-pw-for-tests"
	migratorPassword = "migrator-pw-for-tests"
)

var (
	laterMu sync.Mutex
	later   []func()
)

// atExit runs f when the test binary ends (for what outlives one benchmark).
func atExit(f func()) {
	laterMu.Lock()
	defer laterMu.Unlock()
	later = append(later, f)
}

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(later) - 1; i >= 0; i-- {
		later[i]()
	}
	if cluster != nil {
		_ = cluster.Stop()
	}
	os.Exit(code)
}

// env is one test's flightctl database and KV store.
type env struct {
	pg      *testbed.Postgres
	dbName  string
	kv      *testbed.Redis
	admin   *pgx.Conn // superuser, for fixtures and inspection
	redis   *redis.Client
	cleanup func(func())
}

// newEnv gives t its own database and Redis, removed when t ends.
func newEnv(t testing.TB) *env { return newEnvWith(t, t.Cleanup) }

func newEnvWith(t testing.TB, cleanup func(func())) *env {
	t.Helper()
	testbed.Need(t, testbed.PostgresBinDir+"/initdb", "redis-server")
	clusterOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cluster, clusterErr = testbed.StartPostgres(ctx, testbed.PostgresOptions{})
	})
	require.NoError(t, clusterErr)
	return newEnvOn(t, cluster, cleanup)
}

// newEnvOn is newEnvWith on the cluster pg.
func newEnvOn(t testing.TB, pg *testbed.Postgres, cleanup func(func())) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{pg: pg, dbName: fmt.Sprintf("flightctl_t%d", dbCounter.Add(1)), cleanup: cleanup}
	require.NoError(t, pg.CreateFlightctlDB(ctx, e.dbName, testbed.FlightctlPasswords{App: appPassword, Migrator: migratorPassword}))
	admin, err := pg.SuperuserConn(ctx, e.dbName)
	require.NoError(t, err)
	e.admin = admin
	cleanup(func() {
		admin.Close(context.Background())
		if c, err := pg.SuperuserConn(context.Background(), "postgres"); err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{e.dbName}.Sanitize()+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	e.kv, err = testbed.StartRedis(ctx, testbed.RedisOptions{Password: testbed.RandomPassword()})
	require.NoError(t, err)
	cleanup(func() { _ = e.kv.Stop() })
	e.redis = e.kv.Client()
	cleanup(func() { _ = e.redis.Close() })
	return e
}

// conn is how the module connects: flightctl_app over TCP with its password.
func (e *env) connOptions() ConnOptions {
	return ConnOptions{
		DBHost: e.pg.Host, DBPort: e.pg.Port, DBName: e.dbName, DBUser: "flightctl_app", DBPassword: appPassword, DBSSLMode: "disable",
		KVHost: e.kv.Host, KVPort: e.kv.Port, KVPassword: e.kv.Password,
	}
}

// ownerConnOptions connect as flightctl_migrator, the owner of the tables.
func (e *env) ownerConnOptions() ConnOptions {
	co := e.connOptions()
	co.DBUser, co.DBPassword = "flightctl_migrator", migratorPassword
	return co
}

func (e *env) connect(t testing.TB) (*pgx.Conn, *redis.Client) {
	t.Helper()
	return e.connectWith(t, e.connOptions())
}

func (e *env) connectWith(t testing.TB, co ConnOptions) (*pgx.Conn, *redis.Client) {
	t.Helper()
	db, kv, err := co.Connect(context.Background())
	require.NoError(t, err)
	e.cleanup(func() {
		db.Close(context.Background())
		_ = kv.Close()
	})
	return db, kv
}

func (e *env) options(t testing.TB) Options {
	db, kv := e.connect(t)
	return Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true}
}

// Rows as the server's gorm store writes them (UPSTREAM §5).
const typicalStatus = `{"os":{"image":"","imageDigest":""},"config":{"renderedVersion":""},"summary":{"status":"Unknown"},"updated":{"status":"Unknown"},"integrity":{"status":"Unknown"},"lifecycle":{"status":"Unknown"},"resources":{"cpu":"Unknown","disk":"Unknown","memory":"Unknown"},"conditions":[{"type":"Updating","reason":"","status":"Unknown","message":"","lastTransitionTime":"0001-01-01T00:00:00Z"}],"systemInfo":{"bootID":"","agentVersion":"","architecture":"","operatingSystem":""},"applications":[],"applicationsSummary":{"status":"Unknown"}}`

// statusWith returns the typical status with some top-level keys replaced.
func statusWith(t testing.TB, changes map[string]any) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(typicalStatus), &m))
	for k, v := range changes {
		m[k] = v
	}
	b, err := json.Marshal(m)
	require.NoError(t, err)
	return string(b)
}

func (e *env) addOrg(t testing.TB, id, external string) {
	t.Helper()
	_, err := e.admin.Exec(context.Background(), `INSERT INTO organizations (id, display_name, external_id, created_at, updated_at) VALUES ($1, $2, $2, now(), now())`, id, external)
	require.NoError(t, err)
}

// row is a device or enrollment request; nil JSON fields are SQL NULL.
type row struct {
	org, name   string
	annotations *string
	status      *string
	rv          *int64
	deleted     bool
	lastSeen    bool
}

func js(s string) *string { return &s }
func i64(i int64) *int64  { return &i }

func (e *env) addDevice(t testing.TB, r row) {
	t.Helper()
	ctx := context.Background()
	var deleted any
	if r.deleted {
		deleted = time.Now()
	}
	_, err := e.admin.Exec(ctx, `INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, updated_at, deleted_at,
		spec, status, service_conditions, render_timestamp)
		VALUES ($1, $2, '{}', $3::jsonb, 1, $4, now(), now(), $5, '{}', $6::jsonb, '{"conditions": []}', '0001-01-01 00:00:00+00')`,
		r.org, r.name, r.annotations, r.rv, deleted, r.status)
	require.NoError(t, err)
	if r.lastSeen {
		_, err = e.admin.Exec(ctx, `UPDATE device_timestamps SET last_seen = now() WHERE org_id = $1 AND name = $2`, r.org, r.name)
		require.NoError(t, err)
	}
}

func (e *env) addER(t testing.TB, r row) {
	t.Helper()
	var deleted any
	if r.deleted {
		deleted = time.Now()
	}
	_, err := e.admin.Exec(context.Background(), `INSERT INTO enrollment_requests (org_id, name, labels, annotations, generation, resource_version, created_at, updated_at, deleted_at, spec, status)
		VALUES ($1, $2, '{}', $3::jsonb, 1, $4, now(), now(), $5, '{"csr": "-----BEGIN CERTIFICATE REQUEST-----"}', $6::jsonb)`,
		r.org, r.name, r.annotations, r.rv, deleted, r.status)
	require.NoError(t, err)
}

// stored is a row as it is in the database after the run.
type stored struct {
	annotations, status json.RawMessage // nil for SQL NULL
	rv                  *int64
	lastSeenNull        bool
}

func (e *env) device(t testing.TB, org, name string) stored {
	t.Helper()
	var s stored
	var ann, st []byte
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT d.annotations::text, d.status::text, d.resource_version, t.last_seen IS NULL
		FROM devices d LEFT JOIN device_timestamps t USING (org_id, name) WHERE d.org_id = $1 AND d.name = $2`, org, name).Scan(&ann, &st, &s.rv, &s.lastSeenNull))
	s.annotations, s.status = ann, st
	return s
}

func (e *env) er(t testing.TB, org, name string) stored {
	t.Helper()
	var s stored
	var ann, st []byte
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT annotations::text, status::text, resource_version FROM enrollment_requests WHERE org_id = $1 AND name = $2`, org, name).Scan(&ann, &st, &s.rv))
	s.annotations, s.status = ann, st
	return s
}

// fingerprint digests every row the preparation may touch, to prove that nothing changed.
func (e *env) fingerprint(t testing.TB) string {
	t.Helper()
	var fp string
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT md5(
		coalesce((SELECT string_agg(d::text, '|' ORDER BY org_id, name) FROM devices d), '') ||
		coalesce((SELECT string_agg(t::text, '|' ORDER BY org_id, name) FROM device_timestamps t), '') ||
		coalesce((SELECT string_agg(r::text, '|' ORDER BY org_id, name) FROM enrollment_requests r), '') ||
		coalesce((SELECT string_agg(v::text, '|' ORDER BY org_id, name) FROM events v), ''))`).Scan(&fp))
	return fp
}

func (e *env) eventCount(t testing.TB) int {
	t.Helper()
	var n int
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE reason = 'SystemRestored'`).Scan(&n))
	return n
}

// kvKeys returns every key in the KV store with its value.
func (e *env) kvKeys(t testing.TB) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := e.redis.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		v, err := e.redis.Get(ctx, iter.Val()).Result()
		require.NoError(t, err)
		out[iter.Val()] = v
	}
	require.NoError(t, iter.Err())
	return out
}

// kvDatabases is the number of keys in each database of the KV store that holds any.
func (e *env) kvDatabases(t testing.TB) map[int]int {
	t.Helper()
	info, err := e.redis.Info(context.Background(), "keyspace").Result()
	require.NoError(t, err)
	out := map[int]int{}
	for _, line := range strings.Split(info, "\n") {
		var db, keys int
		if n, _ := fmt.Sscanf(strings.TrimSpace(line), "db%d:keys=%d", &db, &keys); n == 2 {
			out[db] = keys
		}
	}
	return out
}

func decode(t testing.TB, raw json.RawMessage) any {
	t.Helper()
	if raw == nil {
		return nil
	}
	var v any
	require.NoError(t, json.Unmarshal(raw, &v))
	return v
}

// closedPort is a loopback port nothing listens on.
func closedPort(t testing.TB) int {
	t.Helper()
	p, err := testbed.FreePort()
	require.NoError(t, err)
	return p
}
