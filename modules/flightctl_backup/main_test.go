package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_backup"

const dbPassword = "m0dule-Secret-pw"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_backup", &Options{})
}

// host is a Flight Control-shaped host in a temporary root with a real PostgreSQL.
type host struct {
	pg                 *testbed.Postgres
	pki, config, out   string
	encryption, before string
}

func newHost(t *testing.T) *host {
	t.Helper()
	testbed.Need(t, "pg_dump", "psql")
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: dbPassword}))
	root := t.TempDir()
	h := &host{pg: pg, pki: filepath.Join(root, "pki"), config: filepath.Join(root, "service-config.yaml"), out: filepath.Join(root, "out"), encryption: filepath.Join(root, "encryption")}
	require.NoError(t, os.MkdirAll(h.pki, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(h.pki, "ca.crt"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(h.pki, "ca.key"), []byte("-----BEGIN PRIVATE KEY-----\n"), 0o600))
	require.NoError(t, os.WriteFile(h.config, []byte("db:\n  name: flightctl\n"), 0o600))
	return h
}

func (h *host) args(extra map[string]any) map[string]any {
	a := map[string]any{
		"output_dir":      h.out,
		"deployment_type": "podman",
		"server_version":  "v1.4.0-test",
		"db_access":       "direct",
		"db_host":         h.pg.Host,
		"db_port":         h.pg.Port,
		"db_password":     dbPassword,
		"pki_dir":         h.pki,
		"encryption_dir":  h.encryption,
		"config_file":     h.config,
		"pam_volume":      "",
	}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

func TestModuleBackup(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	h := newHost(t)

	// Check mode: a plan, nothing written.
	r := moduletest.Run(t, bin, h.args(map[string]any{"_ansible_check_mode": true, "db_port": strconv.Itoa(h.pg.Port)}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	assert.NoDirExists(t, h.out, "check mode writes nothing")
	assert.Equal(t, map[string]any{"db": true, "pki": true, "encryption": false, "config": true, "volumes": false}, r.Out["components"])
	assert.Positive(t, r.Out["estimated_size"])
	assert.NotContains(t, r.Stdout+r.Stderr, dbPassword)

	// A real run.
	r = moduletest.Run(t, bin, h.args(map[string]any{"_ansible_verbosity": 3}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	path := r.Out["archive"].(string)
	assert.FileExists(t, path)
	assert.Equal(t, path+".sha256", r.Out["checksum_file"])
	assert.Len(t, r.Out["sha256"], 64)
	assert.Equal(t, "v1.4.0-test", r.Out["metadata"].(map[string]any)["version"])
	assert.Positive(t, r.Out["duration"])
	assert.Contains(t, strings.Join(toStrings(r.Out["warnings"]), "\n"), "Encryption key directory not found")
	assert.Contains(t, r.Stderr, "Backup completed successfully", "upstream's log line, which its e2e tests grep for")
	// The password is in no output, and masked in the invocation.
	assert.NotContains(t, r.Stdout+r.Stderr, dbPassword)
	inv := r.Out["invocation"].(map[string]any)["module_args"].(map[string]any)
	assert.Equal(t, ansiblemod.NoLogValue, inv["db_password"])

	rep, err := archive.Verify(context.Background(), path, archive.VerifyOptions{RequireChecksum: true, ExpectedDeploymentType: "podman"})
	require.NoError(t, err)
	assert.True(t, rep.Components.Database)

	// Bad input fails clearly and leaves nothing more behind.
	before, _ := os.ReadDir(h.out)
	r = moduletest.Run(t, bin, h.args(map[string]any{"db_password": "wrong"}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "password authentication failed")
	after, _ := os.ReadDir(h.out)
	assert.Equal(t, len(before), len(after))

	r = moduletest.Run(t, bin, map[string]any{"deployment_type": "podman"})
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "output_dir")

	r = moduletest.Run(t, bin, h.args(map[string]any{"db_acess": "direct"}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "db_acess")
}

// TestUpstreamPersonality runs the binary as flightctl-backup with upstream's flags.
func TestUpstreamPersonality(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	link := filepath.Join(t.TempDir(), "flightctl-backup")
	require.NoError(t, os.Symlink(bin, link))

	out, err := exec.Command(link, "version").Output()
	require.NoError(t, err)
	// The server release this build is for first (the runbooks compare it with the
	// server's), ours beside it.
	assert.Regexp(t, `^Flight Control Backup Version: v\d+\.\d+\.\d+\S* \(flightctl\.dr .+\)\n$`, string(out))

	cmd := exec.Command(link, "--deployment-type", "docker", "--output", t.TempDir())
	stderr, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Equal(t, 1, cmd.ProcessState.ExitCode())
	assert.Contains(t, string(stderr), `invalid --deployment-type "docker": must be "kubernetes" or "podman"`)

	cmd = exec.Command(link, "-o", t.TempDir())
	_, err = cmd.CombinedOutput()
	require.Error(t, err, "upstream has no short flags")

	// Every upstream flag is accepted; with nothing installed here the backup fails
	// clearly and writes nothing.
	outDir := t.TempDir()
	cmd = exec.Command(link, "--output", outDir, "--deployment-type", "podman", "--namespace", "x", "--internal-namespace", "y",
		"--helm-release-name", "z", "--db-container-name", "flightctl-db", "--db-name", "flightctl", "--kv-container-name", "flightctl-kv",
		"--config", "/etc/flightctl/service-config.yaml")
	msg, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(msg), "Error: ")
	assert.NotContains(t, string(msg), "unknown flag")
	entries, _ := os.ReadDir(outDir)
	assert.Empty(t, entries)
}

func toStrings(v any) []string {
	var out []string
	if l, ok := v.([]any); ok {
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// TestModuleSIGTERMLeavesNothing: Ansible (or an operator) interrupting the module while
// pg_dump streams: one JSON object saying so, pg_dump stopped, nothing in output_dir.
func TestModuleSIGTERMLeavesNothing(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	h := newHost(t)
	ctx := context.Background()
	conn, err := h.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO events (org_id, name, reason, type, message, details, created_at)
		SELECT '`+testbed.DefaultOrgID+`', 'event-' || i, 'Test', 'Normal', md5(i::text),
			jsonb_build_object('blob', (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j)), now()
		FROM generate_series(1, 60000) i`)
	require.NoError(t, err)
	conn.Close(ctx)
	require.NoError(t, os.MkdirAll(h.out, 0o755))

	args := h.args(map[string]any{"compression_level": 9})
	b, err := json.Marshal(args)
	require.NoError(t, err)
	argsFile := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(argsFile, b, 0o600))
	cmd := exec.Command(bin, argsFile)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()

	var children []int
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if size, ok := unnamedFileSize(cmd.Process.Pid, h.out); ok && size >= 256<<10 {
			children = childPIDs(cmd.Process.Pid)
			break
		}
		select {
		case <-done:
			t.Fatalf("the module ended before it could be interrupted: %s %s", stdout.String(), stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			// stderr is read only once the module has ended and its output is copied.
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("no archive data appeared: %s", stderr.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	<-done

	var out map[string]any
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), "one JSON object even when interrupted: %q", stdout.String())
	assert.Equal(t, true, out["failed"])
	assert.Contains(t, out["msg"], "interrupted")
	for _, pid := range children {
		assert.NoError(t, waitGone(pid), "pg_dump (pid %d) must be stopped by the module", pid)
	}
	entries, err := os.ReadDir(h.out)
	require.NoError(t, err)
	assert.Empty(t, entries, "an interrupted backup leaves nothing")
}

// unnamedFileSize finds an open file of pid under dir (the unnamed archive) and its size.
func unnamedFileSize(pid int, dir string) (int64, bool) {
	fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return 0, false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if st, err := os.Stat(filepath.Join(fdDir, fd.Name())); err == nil {
			return st.Size(), true
		}
	}
	return 0, false
}

func childPIDs(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// waitGone waits for a process to end (a zombie counts as ended).
func waitGone(pid int) error {
	for i := 0; i < 1500; i++ {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return fmt.Errorf("process %d still runs after 15 s", pid)
}

func TestKubernetesDirectAccessTakesTheDefaultDBHostAsTheService(t *testing.T) {
	o := Options{DBAccess: "direct", DBHost: "127.0.0.1", DBPort: 5432, DBName: "flightctl"}
	assert.Empty(t, o.kubernetesConfig().DBHost, "db_host's default 127.0.0.1 means the Service flightctl-db.<internal_namespace>.svc with direct access")

	o.DBHost = "db.example.test"
	assert.Equal(t, "db.example.test", o.kubernetesConfig().DBHost)

	o.DBAccess, o.DBHost = "container", "127.0.0.1"
	assert.Equal(t, "127.0.0.1", o.kubernetesConfig().DBHost, "inside the database pod 127.0.0.1 is the database")
}
