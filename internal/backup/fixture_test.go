package backup

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// appPassword is the flightctl_app password of the test databases.
const appPassword = "app-S3cret-pw"

// fixture is a Flight Control-shaped host in a temporary root: a real PostgreSQL with the
// flightctl schema and seeded rows, a generated PKI tree, encryption keys and a service
// config.
type fixture struct {
	pg     *testbed.Postgres
	root   string
	pki    string
	enc    string
	config string
	out    string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	seedRows(t, pg, "flightctl", 25, 4, 6)

	root := t.TempDir()
	f := &fixture{
		pg:     pg,
		root:   root,
		pki:    filepath.Join(root, "etc/flightctl/pki"),
		enc:    filepath.Join(root, "etc/flightctl/encryption"),
		config: filepath.Join(root, "etc/flightctl/service-config.yaml"),
		out:    filepath.Join(root, "backups"),
	}
	writePKI(t, f.pki)
	require.NoError(t, os.MkdirAll(f.enc, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(f.enc, "key"), randomBytes(t, 32), 0o600))
	require.NoError(t, os.WriteFile(f.config, []byte("global:\n  baseDomain: fc.example.com\ndb:\n  type: builtin\n  name: flightctl\n"), 0o640))
	return f
}

// writePKI lays out a PKI tree as a quadlet install has it, with varied modes.
func writePKI(t *testing.T, dir string) {
	t.Helper()
	files := map[string]os.FileMode{
		"ca.crt":                         0o644,
		"ca.key":                         0o600,
		"client-signer.crt":              0o644,
		"client-signer.key":              0o600,
		"flightctl-api/server.crt":       0o644,
		"flightctl-api/server.key":       0o600,
		"flightctl-alertmanager/ca.crt":  0o640,
		"flightctl-telemetry/server.crt": 0o644,
	}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		content := fmt.Sprintf("-----BEGIN TEST %s-----\n%x\n-----END-----\n", strings.ToUpper(filepath.Base(name)), randomBytes(t, 64))
		require.NoError(t, os.WriteFile(p, []byte(content), mode))
		require.NoError(t, os.Chmod(p, mode))
	}
	require.NoError(t, os.Chmod(dir, 0o750))
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// seedRows inserts fleets, devices and enrollment requests in the default organization.
func seedRows(t testing.TB, pg *testbed.Postgres, db string, devices, fleets, ers int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer conn.Close(ctx)
	stmts := []string{
		fmt.Sprintf(`INSERT INTO fleets (org_id, name, labels, generation, resource_version, created_at, spec, status)
			SELECT '%s', 'fleet-' || i, jsonb_build_object('site', 'site-' || i), 1, i, now(),
				jsonb_build_object('selector', jsonb_build_object('matchLabels', jsonb_build_object('fleet', 'fleet-' || i))),
				'{"conditions": []}'::jsonb
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, fleets),
		fmt.Sprintf(`INSERT INTO devices (org_id, name, owner, labels, annotations, generation, resource_version, created_at, status)
			SELECT '%s', 'device-' || lpad(i::text, 5, '0'), 'Fleet/fleet-' || (1 + i %% %d),
				jsonb_build_object('fleet', 'fleet-' || (1 + i %% %d), 'n', i::text), '{}'::jsonb, 1, 10 + i, now(),
				jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'), 'note', repeat('x', 200) || ' it''s "quoted" \ and ünïcode')
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, fleets, fleets, devices),
		fmt.Sprintf(`INSERT INTO enrollment_requests (org_id, name, generation, resource_version, created_at, spec, status)
			SELECT '%s', 'er-' || i, 1, i, now(), jsonb_build_object('csr', repeat('A', 100)),
				CASE WHEN i %% 2 = 0 THEN '{"approval": {"approved": true}}'::jsonb ELSE '{}'::jsonb END
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, ers),
	}
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		require.NoError(t, err)
	}
}

// podmanConfig points the estate at the fixture, with direct database access.
func (f *fixture) podmanConfig() estate.PodmanConfig {
	c := estate.DefaultPodmanConfig()
	c.PKIDir = f.pki
	c.EncryptionDir = f.enc
	c.ConfigFile = f.config
	c.PAMVolume = ""
	c.DBAccess = estate.DBAccessDirect
	c.DBHost = f.pg.Host
	c.DBPort = f.pg.Port
	c.DBPassword = appPassword
	return c
}

func (f *fixture) options() testOptions {
	return testOptions{
		DeploymentType: "podman",
		Podman:         f.podmanConfig(),
		ServerVersion:  "v1.4.0-test",
		OutputDir:      f.out,
	}
}

// dirEntries lists every name in dir, hidden ones included ("" when dir is missing).
func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// tableCounts returns row counts of the tables restore and device preparation care about.
func tableCounts(t testing.TB, pg *testbed.Postgres, db string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer conn.Close(ctx)
	out := map[string]int64{}
	for _, table := range []string{"organizations", "devices", "fleets", "enrollment_requests", "device_timestamps", "device_labels"} {
		var n int64
		require.NoError(t, conn.QueryRow(ctx, "select count(*) from "+table).Scan(&n))
		out[table] = n
	}
	return out
}

// sampleRows returns a few rows of devices, fleets and enrollment requests as text.
func sampleRows(t testing.TB, pg *testbed.Postgres, db string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var rows []string
	for _, q := range []string{
		"select row_to_json(d)::text from devices d order by name limit 3",
		"select row_to_json(d)::text from devices d order by name desc limit 2",
		"select row_to_json(f)::text from fleets f order by name limit 2",
		"select row_to_json(e)::text from enrollment_requests e order by name limit 3",
	} {
		rs, err := conn.Query(ctx, q)
		require.NoError(t, err)
		for rs.Next() {
			var s string
			require.NoError(t, rs.Scan(&s))
			rows = append(rows, s)
		}
		require.NoError(t, rs.Err())
	}
	return rows
}

// mountTmpfs mounts a small tmpfs at a new directory and unmounts it at cleanup.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testbed.Unavailable(t, "mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		testbed.Unavailable(t, fmt.Sprintf("cannot mount a tmpfs here: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// readOnlyDir bind-mounts a fresh directory read-only (root ignores modes, not mounts).
func readOnlyDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testbed.Unavailable(t, "a read-only bind mount needs root")
	}
	src, dir := t.TempDir(), t.TempDir()
	if out, err := exec.Command("mount", "--bind", src, dir).CombinedOutput(); err != nil {
		testbed.Unavailable(t, fmt.Sprintf("cannot bind-mount here: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	if out, err := exec.Command("mount", "-o", "remount,ro,bind", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	return dir
}

// failingDumpRunner runs every command for real, but makes a real pg_dump exit 3 after it
// has written its whole dump, to show the exit status is checked after the stream.
type failingDumpRunner struct{}

func (failingDumpRunner) Run(ctx context.Context, c runner.Cmd) error {
	if filepath.Base(c.Name) == "pg_dump" && len(c.Args) > 0 && c.Args[0] != "--version" {
		c.Args = append([]string{"-c", `pg_dump "$@"; echo "pg_dump: error: simulated failure at the end" >&2; exit 3`, "sh"}, c.Args...)
		c.Name = "sh"
	}
	return runner.Exec{}.Run(ctx, c)
}
