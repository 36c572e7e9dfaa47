package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/testbed"
)

var archiveNameRE = regexp.MustCompile(`^flightctl-backup-\d{8}T\d{6}Z\.tar\.gz$`)

// tarEntry is one line of GNU tar's verbose listing.
type tarEntry struct {
	name string
	mode string // e.g. "-rw-------" or "drwx------"
	size int64
}

// listArchive lists the archive with GNU tar, an independent reader.
func listArchive(t *testing.T, path string) map[string]tarEntry {
	t.Helper()
	testbed.Need(t, "tar")
	out, err := exec.Command("tar", "--numeric-owner", "-tvzf", path).Output()
	require.NoError(t, err, "GNU tar must read the archive")
	entries := map[string]tarEntry{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		require.GreaterOrEqual(t, len(f), 6, "tar line %q", line)
		var size int64
		fmt.Sscan(f[2], &size)
		name := f[len(f)-1]
		_, dup := entries[name]
		require.False(t, dup, "duplicate entry %s", name)
		entries[name] = tarEntry{name: name, mode: f[0], size: size}
	}
	return entries
}

func extractEntry(t *testing.T, path, entry string) []byte {
	t.Helper()
	out, err := exec.Command("tar", "-xzOf", path, entry).Output()
	require.NoError(t, err, "extract %s", entry)
	return out
}

func keys(m map[string]tarEntry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestBackupRoundTripRealComponents backs up a real PostgreSQL with the flightctl schema, a
// PKI tree, encryption keys and a service config, with the deployment type detected from
// a real systemd manager running flightctl-api.service, then checks the archive with
// sha256sum, GNU tar, archive.Verify, and restores its dump with psql.
func TestBackupRoundTripRealComponents(t *testing.T) {
	testbed.Need(t, "pg_dump", "psql", "sha256sum")
	f := newFixture(t)
	sd := testbed.SystemdForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, sd.WriteUnit("flightctl-api.service", "[Service]\nExecStart=/bin/sleep infinity\n"))
	require.NoError(t, sd.DaemonReload(ctx))
	_, err := sd.Systemctl(ctx, "start", "flightctl-api.service")
	require.NoError(t, err)

	opts := f.options()
	opts.DeploymentType = "auto"
	opts.Podman.SystemdScope = "user"
	opts.Podman.SystemdBusAddress = sd.BusAddress
	opts.Getenv = func(string) string { return "" }
	emptyHome := t.TempDir()
	opts.HomeDir = func() (string, error) { return emptyHome, nil }

	res, err := runBackup(ctx, opts)
	require.NoError(t, err)

	// Exactly the archive and its checksum, named as upstream names them.
	names := dirEntries(t, f.out)
	require.Len(t, names, 2, "output dir: %v", names)
	base := filepath.Base(res.Archive)
	assert.Regexp(t, archiveNameRE, base)
	assert.ElementsMatch(t, []string{base, base + ".sha256"}, names)
	st, err := os.Stat(res.Archive)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.Equal(t, st.Size(), res.Size)
	assert.Equal(t, res.Archive+".sha256", res.ChecksumFile)

	// sha256sum -c says OK.
	cmd := exec.Command("sha256sum", "-c", filepath.Base(res.ChecksumFile))
	cmd.Dir = f.out
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, base+": OK\n", string(out))
	sum, err := os.ReadFile(res.ChecksumFile)
	require.NoError(t, err)
	assert.Equal(t, res.SHA256+"  "+base+"\n", string(sum))

	// The archive engine's verifier accepts it with the expected version and type.
	rep, err := archive.Verify(ctx, res.Archive, archive.VerifyOptions{RequireChecksum: true, ExpectedVersion: "v1.4.0-test", ExpectedDeploymentType: "podman"})
	require.NoError(t, err)
	assert.True(t, rep.ChecksumVerified)
	assert.True(t, rep.HasManifest)
	assert.Equal(t, archive.Components{Database: true, PKI: true, Encryption: true, Config: true, Volumes: false}, rep.Components)
	assert.Equal(t, rep.Components, res.Components)

	// Layout of SPEC §2, entry by entry, as GNU tar sees it.
	entries := listArchive(t, res.Archive)
	want := []string{
		"config", "config/service-config.yaml",
		"db", "db/dump.sql",
		"encryption", "encryption/key",
		"metadata.json",
		"pki", "pki/ca.crt", "pki/ca.key", "pki/client-signer.crt", "pki/client-signer.key",
		"pki/flightctl-alertmanager", "pki/flightctl-alertmanager/ca.crt",
		"pki/flightctl-api", "pki/flightctl-api/server.crt", "pki/flightctl-api/server.key",
		"pki/flightctl-telemetry", "pki/flightctl-telemetry/server.crt",
	}
	assert.Equal(t, want, keys(entries))
	for name, e := range entries {
		assert.False(t, strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") || strings.HasSuffix(name, "/"), "entry %q must be relative without a trailing slash", name)
		assert.Contains(t, "-d", e.mode[:1], "entry %s must be a file or directory", name)
	}
	modes := map[string]string{
		"db":                                "drwxr-xr-x",
		"db/dump.sql":                       "-rw-------",
		"metadata.json":                     "-rw-------",
		"config":                            "drwx------",
		"config/service-config.yaml":        "-rw-r-----",
		"pki":                               "drwxr-x---",
		"pki/ca.key":                        "-rw-------",
		"pki/ca.crt":                        "-rw-r--r--",
		"pki/flightctl-alertmanager/ca.crt": "-rw-r-----",
		"encryption":                        "drwx------",
		"encryption/key":                    "-rw-------",
	}
	for name, mode := range modes {
		assert.Equal(t, mode, entries[name].mode, "mode of %s", name)
	}

	// Files are byte for byte the sources.
	for _, name := range want {
		if !strings.HasPrefix(name, "pki/") || entries[name].mode[0] != '-' {
			continue
		}
		src, err := os.ReadFile(filepath.Join(f.pki, strings.TrimPrefix(name, "pki/")))
		require.NoError(t, err)
		assert.Equal(t, src, extractEntry(t, res.Archive, name), name)
	}
	cfg, _ := os.ReadFile(f.config)
	assert.Equal(t, cfg, extractEntry(t, res.Archive, "config/service-config.yaml"))

	// metadata.json: upstream's four keys with their meaning, plus ours.
	var meta map[string]any
	require.NoError(t, json.Unmarshal(extractEntry(t, res.Archive, "metadata.json"), &meta))
	ts, err := time.Parse(time.RFC3339Nano, meta["timestamp"].(string))
	require.NoError(t, err)
	assert.Equal(t, time.UTC, ts.Location())
	assert.Equal(t, "v1.4.0-test", meta["version"])
	assert.Equal(t, "podman", meta["deploymentType"])
	assert.Equal(t, true, meta["databaseIncluded"])
	extra := meta["extra"].(map[string]any)
	assert.Regexp(t, `^\d+\.\d+`, extra["pg_dump_version"])
	assert.Equal(t, "25", extra["count_devices"])
	assert.Equal(t, "4", extra["count_fleets"])
	assert.Equal(t, "6", extra["count_enrollment_requests"])

	// The dump is upstream's: plain SQL with --clean --if-exists; it restores with psql
	// into an empty database with the same rows.
	dump := extractEntry(t, res.Archive, "db/dump.sql")
	assert.Contains(t, string(dump), "DROP TABLE IF EXISTS public.devices;")
	assert.Equal(t, entries["db/dump.sql"].size, int64(len(dump)))
	assert.NotContains(t, string(dump), appPassword)

	conn, err := f.pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE DATABASE restored OWNER admin")
	require.NoError(t, err)
	conn.Close(ctx)
	require.NoError(t, f.pg.Psql(ctx, "restored", bytes.NewReader(dump)))
	assert.Equal(t, tableCounts(t, f.pg, "flightctl"), tableCounts(t, f.pg, "restored"))
	assert.Equal(t, sampleRows(t, f.pg, "flightctl"), sampleRows(t, f.pg, "restored"))
	assert.Equal(t, int64(25), tableCounts(t, f.pg, "restored")["devices"])

	// The result.
	assert.Empty(t, res.Warnings)
	assert.Equal(t, "podman", res.Metadata.DeploymentType)
	assert.Positive(t, res.Duration)
	var captured []string
	for _, c := range res.Captured {
		captured = append(captured, c.Component)
	}
	assert.Equal(t, []string{"db", "pki", "encryption", "config"}, captured)
}

func TestBackupExternalDatabase(t *testing.T) {
	f := newFixture(t)
	require.NoError(t, os.WriteFile(f.config, []byte("db:\n  type: External\n  external:\n    hostname: db.example.com\n"), 0o600))
	require.NoError(t, os.RemoveAll(f.enc))
	opts := f.options()
	// Any attempt to reach a database would fail: nothing listens there.
	port, err := testbed.FreePort()
	require.NoError(t, err)
	opts.Podman.DBPort = port
	opts.Podman.DBPassword = ""

	ctx := context.Background()
	res, err := runBackup(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.Metadata.DatabaseIncluded)
	assert.False(t, res.Components.Database)
	entries := listArchive(t, res.Archive)
	for name := range entries {
		assert.False(t, name == "db" || strings.HasPrefix(name, "db/"), "no db entry for an external database: %s", name)
		assert.False(t, strings.HasPrefix(name, "encryption"), "no encryption entry when the directory is absent: %s", name)
	}
	var meta map[string]any
	require.NoError(t, json.Unmarshal(extractEntry(t, res.Archive, "metadata.json"), &meta))
	assert.Equal(t, false, meta["databaseIncluded"])
	joined := strings.Join(res.Warnings, "\n")
	assert.Contains(t, joined, "external database")
	assert.Contains(t, joined, "Encryption key directory not found")
	_, err = archive.Verify(ctx, res.Archive, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
}

func TestPlanWritesNothing(t *testing.T) {
	f := newFixture(t)
	opts := f.options()
	before := snapshotTree(t, f.root)

	p, err := planBackup(context.Background(), opts)
	require.NoError(t, err)
	assert.Equal(t, before, snapshotTree(t, f.root), "check mode must not write anything")
	assert.NoDirExists(t, f.out)
	assert.True(t, p.OutputDirFresh)
	assert.Equal(t, estate.Podman, p.DeploymentType)
	assert.Equal(t, "v1.4.0-test", p.ServerVersion)
	require.NotNil(t, p.Estate.Database)
	db := p.Estate.Database
	assert.Equal(t, "flightctl", db.Name)
	assert.Equal(t, "option db_password", db.PasswordSource)
	assert.Positive(t, db.Size)
	assert.Equal(t, map[string]int64{"devices": 25, "fleets": 4, "enrollment_requests": 6}, db.Counts)
	assert.GreaterOrEqual(t, p.Estate.EstimatedSize, db.Size)
	assert.Positive(t, p.FreeSpace)
	assert.Equal(t, archive.Components{Database: true, PKI: true, Encryption: true, Config: true}, p.Components)
	for _, s := range p.Estate.Sources {
		if s.Component == estate.ComponentPKI {
			assert.Equal(t, 8, s.Files)
		}
	}
}

// snapshotTree records every path under root with its size and mode.
func snapshotTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%v %d", info.Mode(), info.Size())
		return nil
	}))
	return out
}

// TestBackupBadInput: every failure is clear and leaves the output directory empty.
func TestBackupBadInput(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	require.NoError(t, os.MkdirAll(f.out, 0o755))

	closedPort, err := testbed.FreePort()
	require.NoError(t, err)
	badYAML := filepath.Join(f.root, "bad.yaml")
	require.NoError(t, os.WriteFile(badYAML, []byte("db:\n  type: [builtin\n"), 0o600))
	linkedPKI := filepath.Join(f.root, "pki-with-link")
	writePKI(t, linkedPKI)
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(linkedPKI, "flightctl-api", "passwd")))
	aFile := filepath.Join(f.root, "not-a-dir")
	require.NoError(t, os.WriteFile(aFile, nil, 0o600))

	tests := []struct {
		name    string
		mutate  func(o *testOptions)
		wantErr []string
	}{
		{"missing PKI", func(o *testOptions) { o.Podman.PKIDir = filepath.Join(f.root, "nope") }, []string{"PKI directory not found", "pki_dir"}},
		{"symlink in PKI", func(o *testOptions) { o.Podman.PKIDir = linkedPKI }, []string{"symlinks not supported in backup directory: flightctl-api/passwd"}},
		{"missing config", func(o *testOptions) { o.Podman.ConfigFile = filepath.Join(f.root, "nope.yaml") }, []string{"required service configuration file does not exist", "config_file"}},
		{"invalid config", func(o *testOptions) { o.Podman.ConfigFile = badYAML }, []string{"invalid YAML", badYAML}},
		{"unreachable database", func(o *testOptions) { o.Podman.DBPort = closedPort }, []string{"cannot connect", fmt.Sprintf("127.0.0.1:%d", closedPort), "check that the database runs"}},
		{"wrong password", func(o *testOptions) { o.Podman.DBPassword = "wrong" }, []string{"password authentication failed", "db_password"}},
		{"unknown database", func(o *testOptions) { o.Podman.DBName = "nosuchdb" }, []string{"nosuchdb"}},
		{"output is a file", func(o *testOptions) { o.OutputDir = aFile }, []string{"is not a directory"}},
		{"kubernetes without a kubeconfig", func(o *testOptions) {
			o.DeploymentType = "kubernetes"
			o.Kubernetes.Connection.Kubeconfig = filepath.Join(f.root, "nope.kubeconfig")
		}, []string{"nope.kubeconfig", "check kubeconfig"}},
		{"no version", func(o *testOptions) { o.ServerVersion = "" }, []string{"server_version"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := f.options()
			tc.mutate(&opts)
			res, err := runBackup(ctx, opts)
			require.Error(t, err)
			assert.Nil(t, res)
			for _, w := range tc.wantErr {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), appPassword)
			assert.Empty(t, dirEntries(t, f.out), "nothing may be left in the output directory")
		})
	}

	t.Run("read-only output directory", func(t *testing.T) {
		opts := f.options()
		opts.OutputDir = readOnlyDir(t)
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not writable")
		assert.Empty(t, dirEntries(t, opts.OutputDir))
		_, err = planBackup(ctx, opts)
		require.Error(t, err, "check mode finds it too")
	})

	t.Run("full disk found before writing", func(t *testing.T) {
		opts := f.options()
		opts.OutputDir = mountTmpfs(t, "1m")
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not enough free space")
		assert.Empty(t, dirEntries(t, opts.OutputDir))
	})

	t.Run("disk fills while writing", func(t *testing.T) {
		opts := f.options()
		opts.OutputDir = mountTmpfs(t, "512k")
		opts.ignoreFreeSpace = true
		bigPKI := filepath.Join(t.TempDir(), "pki")
		writePKI(t, bigPKI)
		// Random bytes do not compress: the archive cannot fit in 512 KiB.
		require.NoError(t, os.WriteFile(filepath.Join(bigPKI, "bundle.bin"), randomBytes(t, 2<<20), 0o600))
		opts.Podman.PKIDir = bigPKI
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no space left on device", "%v", err)
		assert.Empty(t, dirEntries(t, opts.OutputDir), "error: %v", err)
	})

	t.Run("pg_dump fails after its output", func(t *testing.T) {
		opts := f.options()
		// The real pg_dump runs and streams its whole dump, then the wrapper makes it
		// exit 3: the archive must be dropped because the exit status is checked last.
		opts.Runner = failingDumpRunner{}
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "pg_dump failed")
		assert.Contains(t, err.Error(), "exit status 3")
		assert.Empty(t, dirEntries(t, f.out))
	})
}
