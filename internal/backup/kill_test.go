package backup

import (
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

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/testbed"
)

// childOptionsEnv carries the options of a backup run in a child process.
const childOptionsEnv = "FLIGHTCTL_DR_BACKUP_CHILD_OPTIONS"

type childOptions struct {
	Podman        estate.PodmanConfig
	ServerVersion string
	OutputDir     string
}

// TestHelperBackupProcess is not a test: the kill test runs it in a child process.
func TestHelperBackupProcess(t *testing.T) {
	raw := os.Getenv(childOptionsEnv)
	if raw == "" {
		t.Skip("helper process for TestKilledBackupLeavesNothing")
	}
	var co childOptions
	if err := json.Unmarshal([]byte(raw), &co); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	opts := testOptions{DeploymentType: "podman", Podman: co.Podman, ServerVersion: co.ServerVersion, OutputDir: co.OutputDir}
	// One compressor keeps the child slow enough to be caught mid-dump.
	opts.Concurrency = 1
	opts.CompressionLevel = 9
	if _, err := runBackup(context.Background(), opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestKilledBackupLeavesNothing SIGKILLs a process running a backup while pg_dump is
// streaming into the archive: nothing may be left in the output directory (the archive
// has no name until it is complete).
func TestKilledBackupLeavesNothing(t *testing.T) {
	testbed.Need(t, "pg_dump", "psql")
	f := newFixture(t)
	ctx := context.Background()
	conn, err := f.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	// About 60 MB of poorly compressible events make a dump that takes a while.
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO events (org_id, name, reason, type, message, details, created_at)
		SELECT '%s', 'event-' || i, 'Test', 'Normal', md5(i::text),
			jsonb_build_object('blob', (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j)), now()
		FROM generate_series(1, 60000) i`, testbed.DefaultOrgID))
	require.NoError(t, err)
	conn.Close(ctx)
	require.NoError(t, os.MkdirAll(f.out, 0o755))

	o := f.options()
	raw, err := json.Marshal(childOptions{Podman: o.Podman, ServerVersion: o.ServerVersion, OutputDir: o.OutputDir})
	require.NoError(t, err)
	child := exec.Command(os.Args[0], "-test.run=^TestHelperBackupProcess$")
	child.Env = append(os.Environ(), childOptionsEnv+"="+string(raw))
	var stderr strings.Builder
	child.Stderr = &stderr
	require.NoError(t, child.Start())
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()

	// Wait until the unnamed archive in the output directory holds part of the dump.
	deadline := time.Now().Add(2 * time.Minute)
	var grandchildren []int
	for {
		size, ok := unnamedArchiveSize(child.Process.Pid, f.out)
		if ok && size >= 256<<10 {
			grandchildren = childPIDs(child.Process.Pid)
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the backup ended before it could be killed mid-dump (%v): %s", err, stderr.String())
		default:
		}
		require.True(t, time.Now().Before(deadline), "no archive data appeared: %s", stderr.String())
		time.Sleep(2 * time.Millisecond)
	}
	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	<-exited

	// pg_dump, orphaned, dies on its broken pipe; make sure before looking.
	for _, pid := range grandchildren {
		waitExit(t, pid)
	}
	require.Empty(t, dirEntries(t, f.out), "a killed backup must leave nothing in the output directory")
}

// unnamedArchiveSize finds an open, unnamed (O_TMPFILE) file of pid in dir and its size.
func unnamedArchiveSize(pid int, dir string) (int64, bool) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return 0, false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		st, err := os.Stat(filepath.Join(fdDir, fd.Name()))
		if err == nil {
			return st.Size(), true
		}
	}
	return 0, false
}

// childPIDs lists the direct children of pid.
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
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

// waitExit waits for a process this test started (indirectly) to end, killing it by PID
// if it lingers.
func waitExit(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if !procstat.Alive(pid) {
			return // gone, or a zombie waiting for init: it holds no file
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
