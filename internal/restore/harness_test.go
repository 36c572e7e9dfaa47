package restore_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

const (
	testVersion = "v1.4.0-test"
	orgB        = "aaaaaaaa-0000-0000-0000-00000000000b"
)

// appUnits are the units the tests' systemd manager runs: api and worker active,
// periodic installed but inactive, gateway missing; flightctl-db must never be stopped.
var appUnits = []string{"flightctl-api.service", "flightctl-worker.service", "flightctl-periodic.service", "flightctl-gateway.service"}

// envConfig is everything needed to build a target; a child process gets it as JSON.
type envConfig struct {
	PGPort      int    `json:"pg_port"`
	PGSocket    string `json:"pg_socket"`
	RedisHost   string `json:"redis_host"`
	RedisPort   int    `json:"redis_port"`
	RedisPass   string `json:"redis_pass"`
	BusAddress  string `json:"bus_address"`
	Root        string `json:"root"`
	StateDir    string `json:"state_dir"`
	Archive     string `json:"archive"`
	KillAt      string `json:"kill_at,omitempty"`
	ChildResult string `json:"child_result,omitempty"`
}

func (c envConfig) pki() string        { return filepath.Join(c.Root, "etc/flightctl/pki") }
func (c envConfig) encryption() string { return filepath.Join(c.Root, "etc/flightctl/encryption") }
func (c envConfig) configFile() string {
	return filepath.Join(c.Root, "etc/flightctl/service-config.yaml")
}

type env struct {
	t   testing.TB
	cfg envConfig
	pg  *testbed.Postgres
	kv  *redis.Client
	sd  *testbed.Systemd
	// before is the database, files and units as backed up.
	rowsBefore  map[string][]string
	filesBefore map[string]string
	privBefore  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testbed.Need(t, "psql", "/usr/lib/postgresql/15/bin/pg_dump")
	return newEnvOn(t, testbed.PostgresForTest(t))
}

// newEnvOn is newEnv on the cluster pg.
func newEnvOn(t *testing.T, pg *testbed.Postgres) *env {
	t.Helper()
	ctx := context.Background()
	rd := testbed.RedisForTest(t)
	sd := testbed.SystemdForTest(t)
	e := &env{t: t, pg: pg, kv: rd.Client(), sd: sd}
	t.Cleanup(func() { e.kv.Close() })
	e.cfg = envConfig{PGPort: pg.Port, PGSocket: pg.SocketDir, RedisHost: rd.Host, RedisPort: rd.Port, RedisPass: rd.Password,
		BusAddress: sd.BusAddress, Root: t.TempDir(), StateDir: filepath.Join(t.TempDir(), "state")}

	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	e.seed(ctx)

	unit := "[Unit]\nDescription=%s\n[Service]\nExecStart=/bin/sleep infinity\n"
	for _, u := range []string{"flightctl-api.service", "flightctl-worker.service", "flightctl-periodic.service", "flightctl-db.service"} {
		require.NoError(t, sd.WriteUnit(u, fmt.Sprintf(unit, u)))
	}
	require.NoError(t, sd.DaemonReload(ctx))
	_, err := sd.Systemctl(ctx, "start", "flightctl-api.service", "flightctl-worker.service", "flightctl-db.service")
	require.NoError(t, err)

	e.writeFiles()
	require.NoError(t, e.kv.Set(ctx, "v1/cache/before-backup", "x", 0).Err())
	e.rowsBefore = e.rows(ctx)
	e.filesBefore = e.files()
	e.privBefore = e.privileges(ctx, "flightctl")
	return e
}

// seed writes organizations, devices, fleets and enrollment requests as the server does.
func (e *env) seed(ctx context.Context) {
	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(e.t, err)
	defer conn.Close(ctx)
	status := `{"os":{"image":"","imageDigest":""},"config":{"renderedVersion":"3"},"summary":{"status":"Online"},"updated":{"status":"UpToDate"},"lifecycle":{"status":"%s"}}`
	stmts := []string{
		fmt.Sprintf(`INSERT INTO organizations (id, display_name, external_id, created_at, updated_at) VALUES ('%s', 'B', 'b', now(), now())`, orgB),
	}
	for i := 0; i < 20; i++ {
		org := testbed.DefaultOrgID
		if i >= 15 {
			org = orgB
		}
		life, deleted := "Enrolled", "NULL"
		if i == 3 {
			life = "Decommissioned"
		}
		if i == 4 {
			deleted = "now()"
		}
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, updated_at, deleted_at, spec, status)
			VALUES ('%s', 'dev-%02d', '{"site":"s%d"}', NULL, 1, 1, now(), now(), %s, '{}', '%s')`, org, i, i%3, deleted, fmt.Sprintf(status, life)))
	}
	for i := 0; i < 3; i++ {
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO fleets (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
			VALUES ('%s', 'fleet-%d', '{}', 1, 1, now(), now(), '{"selector":{}}', '{}')`, testbed.DefaultOrgID, i))
	}
	for i, approved := range []string{"", `,"approval":{"approved":true}`, `,"approval":{"approved":false}`} {
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO enrollment_requests (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
			VALUES ('%s', 'er-%d', '{}', 1, 1, now(), now(), '{"csr":"x"}', '{"conditions":[]%s}')`, testbed.DefaultOrgID, i, approved))
	}
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		require.NoError(e.t, err, s)
	}
}

func (e *env) writeFiles() {
	c := e.cfg
	must := func(err error) { require.NoError(e.t, err) }
	must(os.MkdirAll(filepath.Join(c.pki(), "client"), 0o750))
	must(os.Chmod(filepath.Join(c.pki(), "client"), 0o750))
	must(os.MkdirAll(c.encryption(), 0o700))
	write := func(p, content string, mode fs.FileMode) {
		must(os.WriteFile(p, []byte(content), mode))
		must(os.Chmod(p, mode))
	}
	write(filepath.Join(c.pki(), "ca.crt"), "-----CA CERT-----\n", 0o644)
	write(filepath.Join(c.pki(), "ca.key"), "-----CA KEY-----\n", 0o600)
	write(filepath.Join(c.pki(), "client", "enrollment.crt"), "client cert\n", 0o640)
	write(filepath.Join(c.encryption(), "key"), "0123456789abcdef\n", 0o400)
	write(c.configFile(), "db:\n  name: flightctl\n", 0o640)
}

// rows snapshots what a restore must bring back exactly (device columns that device
// preparation changes are left out; they are checked separately).
func (e *env) rows(ctx context.Context) map[string][]string {
	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(e.t, err)
	defer conn.Close(ctx)
	queries := map[string]string{
		"organizations":       `SELECT row_to_json(t)::text FROM organizations t ORDER BY id`,
		"devices":             `SELECT json_build_array(org_id, name, labels, spec, deleted_at IS NULL, status->'lifecycle')::text FROM devices ORDER BY org_id, name`,
		"fleets":              `SELECT row_to_json(t)::text FROM fleets t ORDER BY org_id, name`,
		"enrollment_requests": `SELECT json_build_array(org_id, name, spec, status)::text FROM enrollment_requests ORDER BY org_id, name`,
		"tables":              `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`,
	}
	out := map[string][]string{}
	for name, q := range queries {
		rows, err := conn.Query(ctx, q)
		require.NoError(e.t, err)
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(e.t, err)
		out[name] = vals
	}
	return out
}

// files snapshots the live trees: relative path → mode and content hash.
func (e *env) files() map[string]string {
	out := map[string]string{}
	for _, root := range []string{e.cfg.pki(), e.cfg.encryption(), e.cfg.configFile()} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				out[p] = "missing"
				return nil
			}
			info, _ := d.Info()
			v := fmt.Sprintf("%04o", info.Mode().Perm())
			if info.Mode().IsRegular() {
				b, _ := os.ReadFile(p)
				sum := sha256.Sum256(b)
				v += " " + hex.EncodeToString(sum[:8])
			} else if d.IsDir() {
				v += " dir"
			}
			out[strings.TrimPrefix(p, e.cfg.Root)] = v
			return nil
		})
	}
	// Leftovers beside the live paths would be a bug.
	for _, dir := range []string{filepath.Dir(e.cfg.pki())} {
		entries, _ := os.ReadDir(dir)
		for _, en := range entries {
			if strings.Contains(en.Name(), ".flightctl-dr-") {
				out["leftover "+en.Name()] = "present"
			}
		}
	}
	return out
}

func (e *env) privileges(ctx context.Context, db string) string {
	conn, err := e.pg.SuperuserConn(ctx, "postgres")
	require.NoError(e.t, err)
	defer conn.Close(ctx)
	var s string
	require.NoError(e.t, conn.QueryRow(ctx, `SELECT pg_get_userbyid(datdba) || ' ' || coalesce(datacl::text, 'default') FROM pg_database WHERE datname = $1`, db).Scan(&s))
	return s
}

func (e *env) databases(ctx context.Context) []string {
	conn, err := e.pg.SuperuserConn(ctx, "postgres")
	require.NoError(e.t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'flightctl%' ORDER BY 1`)
	require.NoError(e.t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(e.t, err)
	return names
}

func (e *env) unitActive(ctx context.Context, unit string) bool {
	out, _ := e.sd.Systemctl(ctx, "is-active", unit)
	return strings.TrimSpace(out) == "active"
}

// dump runs pg_dump --clean --if-exists of the live database, as the backup does.
func (e *env) dump(ctx context.Context) []byte {
	cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists",
		"-h", "127.0.0.1", "-p", fmt.Sprint(e.pg.Port), "-U", "admin", "-d", "flightctl")
	cmd.Env = append(os.Environ(), "PGPASSWORD=adminpass")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	require.NoError(e.t, cmd.Run(), stderr.String())
	return out.Bytes()
}

// writeArchive makes an archive with our writer, holding dump as db/dump.sql.
func (e *env) writeArchive(ctx context.Context, dir string, md archive.Metadata, dump []byte) string {
	cfg, err := os.ReadFile(e.cfg.configFile())
	require.NoError(e.t, err)
	return archivetest.Write(e.t, dir, archivetest.Content{
		Dump: dump, PKIDir: e.cfg.pki(), EncryptionDir: e.cfg.encryption(),
		Config: cfg, ConfigMode: 0o640, Metadata: md,
	}).Path
}

func metadata() archive.Metadata {
	return archive.Metadata{Timestamp: time.Now().UTC(), Version: testVersion, DeploymentType: "podman", DatabaseIncluded: true}
}

// writeUpstreamArchive lays an archive out exactly as upstream's backup does (UPSTREAM
// §2.5): Go archive/tar (USTAR) + compress/gzip, lexical order, no manifest, four-key
// metadata.json without a trailing newline, checksum file in sha256sum format.
func (e *env) writeUpstreamArchive(dir string, dump []byte) string {
	require.NoError(e.t, os.MkdirAll(dir, 0o700))
	name := archive.ArchiveName(time.Now())
	p := filepath.Join(dir, name)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(e.t, err)
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	type ent struct {
		name string
		mode int64
		data []byte
		dir  bool
	}
	var ents []ent
	add := func(name string, mode int64, data []byte, dir bool) { ents = append(ents, ent{name, mode, data, dir}) }
	add("config", 0o700, nil, true)
	cfg, _ := os.ReadFile(e.cfg.configFile())
	add("config/service-config.yaml", 0o640, cfg, false)
	add("db", 0o755, nil, true)
	add("db/dump.sql", 0o600, dump, false)
	for prefix, root := range map[string]string{"pki": e.cfg.pki(), "encryption": e.cfg.encryption()} {
		require.NoError(e.t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			require.NoError(e.t, err)
			rel, _ := filepath.Rel(root, path)
			n := prefix
			if rel != "." {
				n = prefix + "/" + filepath.ToSlash(rel)
			}
			info, _ := d.Info()
			if d.IsDir() {
				mode := int64(info.Mode().Perm())
				if rel == "." {
					mode = 0o700
				}
				add(n, mode, nil, true)
			} else {
				b, _ := os.ReadFile(path)
				add(n, int64(info.Mode().Perm()), b, false)
			}
			return nil
		}))
	}
	md, _ := json.MarshalIndent(map[string]any{"timestamp": time.Now().UTC().Format(time.RFC3339Nano), "version": testVersion,
		"deploymentType": "podman", "databaseIncluded": true}, "", "  ")
	add("metadata.json", 0o600, md, false)
	sort.Slice(ents, func(i, j int) bool { return ents[i].name < ents[j].name })
	for _, en := range ents {
		hdr := &tar.Header{Name: en.name, Mode: en.mode, ModTime: time.Now(), Format: tar.FormatUSTAR}
		if en.dir {
			hdr.Typeflag = tar.TypeDir
		} else {
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(en.data))
		}
		require.NoError(e.t, tw.WriteHeader(hdr))
		if !en.dir {
			_, err := tw.Write(en.data)
			require.NoError(e.t, err)
		}
	}
	require.NoError(e.t, tw.Close())
	require.NoError(e.t, gz.Close())
	require.NoError(e.t, f.Close())
	b, _ := os.ReadFile(p)
	sum := sha256.Sum256(b)
	require.NoError(e.t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+name+"\n"), 0o644))
	return p
}

// damage changes the database, files and KV store after the backup.
func (e *env) damage(ctx context.Context) {
	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(e.t, err)
	defer conn.Close(ctx)
	for _, s := range []string{
		`DELETE FROM devices WHERE name IN ('dev-01', 'dev-02', 'dev-16')`,
		`INSERT INTO fleets (org_id, name, created_at, updated_at, spec) VALUES ('00000000-0000-0000-0000-000000000000', 'fleet-after-backup', now(), now(), '{}')`,
		`UPDATE enrollment_requests SET status = '{"approval":{"approved":true}}'`,
		`DROP TABLE fleet_repos`,
	} {
		_, err := conn.Exec(ctx, s)
		require.NoError(e.t, err, s)
	}
	c := e.cfg
	require.NoError(e.t, os.WriteFile(filepath.Join(c.pki(), "ca.crt"), []byte("a different CA\n"), 0o644))
	require.NoError(e.t, os.Chmod(filepath.Join(c.pki(), "ca.key"), 0o644))
	require.NoError(e.t, os.WriteFile(filepath.Join(c.pki(), "stray.pem"), []byte("stray\n"), 0o600))
	require.NoError(e.t, os.Remove(filepath.Join(c.encryption(), "key")))
	require.NoError(e.t, os.WriteFile(c.configFile(), []byte("db:\n  name: flightctl\n# edited\n"), 0o600))
	require.NoError(e.t, e.kv.Set(ctx, "v1/cache/after-backup", "y", 0).Err())
}

// target builds the Podman restore target for cfg (direct database access, user systemd).
func target(ctx context.Context, t testing.TB, cfg envConfig, logger *slog.Logger) *estate.PodmanRestore {
	pc := estate.DefaultPodmanConfig()
	pc.PKIDir, pc.EncryptionDir, pc.ConfigFile, pc.PAMVolume = cfg.pki(), cfg.encryption(), cfg.configFile(), ""
	pc.DBAccess, pc.DBHost, pc.DBPort = estate.DBAccessDirect, "127.0.0.1", cfg.PGPort
	pc.DBAdminUser, pc.DBAdminPassword = "admin", "adminpass"
	pc.DBUser, pc.DBPassword = "flightctl_app", "apppass"
	pc.KVHost, pc.KVPort, pc.KVPassword = cfg.RedisHost, cfg.RedisPort, cfg.RedisPass
	pc.SystemdScope, pc.SystemdBusAddress = string(units.ScopeUser), cfg.BusAddress
	pc.Units = appUnits
	p := &estate.PodmanRestore{Config: pc, RunningVersion: testVersion, Logger: logger}
	require.NoError(t, p.Open(ctx))
	t.Cleanup(p.Close)
	return p
}

func (e *env) options(ctx context.Context, archivePath string) restore.Options {
	return restore.Options{ArchivePath: archivePath, Target: target(ctx, e.t, e.cfg, testLogger(e.t)), StateDir: e.cfg.StateDir, FlushKV: true}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// assertRestored checks the end state of a successful restore: rows, files with modes,
// owner and grants, units, KV keys derived from the prepared devices, no leftovers.
func (e *env) assertRestored(ctx context.Context) {
	t := e.t
	require.Equal(t, e.rowsBefore, e.rows(ctx), "rows after restore")
	require.Equal(t, e.filesBefore, e.files(), "files after restore")
	require.Equal(t, e.privBefore, e.privileges(ctx, "flightctl"), "owner and grants")
	require.Equal(t, []string{"flightctl"}, e.databases(ctx), "no temporary or old database left")
	require.True(t, e.unitActive(ctx, "flightctl-api.service"))
	require.True(t, e.unitActive(ctx, "flightctl-worker.service"))
	require.False(t, e.unitActive(ctx, "flightctl-periodic.service"), "a unit that was not running stays stopped")
	require.True(t, e.unitActive(ctx, "flightctl-db.service"))

	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT 'v1/' || org_id::text || '/device/' || name || '/awaiting-reconnect' FROM devices
		WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true' ORDER BY 1`)
	require.NoError(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	// 20 devices seeded: one soft-deleted, one decommissioned.
	require.Len(t, want, 18)
	keys, err := e.kv.Keys(ctx, "*").Result()
	require.NoError(t, err)
	sort.Strings(keys)
	require.Equal(t, want, keys, "KV holds exactly the keys of the prepared devices (flushed first)")
	var events int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM events WHERE reason = 'SystemRestored'`).Scan(&events))
	require.Equal(t, 1, events)
}

func bytesReader(s string) *bytes.Reader { return bytes.NewReader([]byte(s)) }
