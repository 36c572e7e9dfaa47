package drill_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/drill"
	"flightctl.dr/internal/procstat"
)

// childEnv carries a drill's configuration to the child process.
const childEnv = "FLIGHTCTL_DR_DRILL_CHILD"

// TestHelperDrillProcess is not a test: the kill tests run it in a child process, which
// SIGKILLs itself once the dump is in the scratch database.
func TestHelperDrillProcess(t *testing.T) {
	raw := os.Getenv(childEnv)
	if raw == "" {
		t.Skip("helper process for the kill tests")
	}
	var c childConfig
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var server drill.Server = estateServer(t, c)
	if c.Throwaway != "" {
		server = &drill.Throwaway{Parent: c.Throwaway}
	}
	_, err := drill.Run(context.Background(), drill.Options{ArchivePath: c.Archive, Server: server, StateDir: c.State,
		Checkpoint: func(name string) error {
			if name == "loaded" {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // SIGKILL cannot be caught: the process ends here
			}
			return nil
		}})
	fmt.Fprintln(os.Stderr, "the drill ended without being killed:", err)
	os.Exit(1)
}

// runKilledChild runs a drill in a child process that is SIGKILLed after loading.
func runKilledChild(t *testing.T, c childConfig) {
	t.Helper()
	raw, err := json.Marshal(c)
	require.NoError(t, err)
	child := exec.Command(os.Args[0], "-test.run=^TestHelperDrillProcess$", "-test.count=1")
	child.Env = append(os.Environ(), childEnv+"="+string(raw))
	var stderr strings.Builder
	child.Stderr = &stderr
	err = child.Run()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, stderr.String())
	ws, ok := ee.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child killed by SIGKILL: %v %s", err, stderr.String())
}

// A drill SIGKILLed with its scratch database loaded leaves it behind, recorded in the
// state file; the next drill drops it first, says so, and passes.
func TestKilledDrillIsCleanedUpByTheNext(t *testing.T) {
	f := newFixture(t)
	path := f.backup()
	before := f.fingerprint()
	c := f.child()
	c.Archive = path
	runKilledChild(t, c)

	left := f.drillDatabases()
	require.Len(t, left, 1, "the killed drill left its scratch database")
	_, err := os.Stat(filepath.Join(f.state, drill.StateFile))
	require.NoError(t, err, "and recorded it")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(t, c), StateDir: f.state, Logger: testLogger(t)})
	require.NoError(t, err)
	assert.True(t, rep.Passed)
	assert.Equal(t, []string{"scratch database " + left[0]}, rep.CleanedUp)
	assert.True(t, check(t, rep, drill.CheckCleanup).Passed)
	assert.Empty(t, f.drillDatabases())
	assert.Equal(t, before, f.fingerprint(), "the live server is untouched")
}

// A scratch database found by its name (the state file lost) is dropped too; the live
// database and a database that only looks alike are not.
func TestLeftoverFoundByName(t *testing.T) {
	f := newFixture(t)
	path := f.backup()
	ctx := context.Background()
	conn, err := f.pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	for _, n := range []string{"flightctl_drill_0123abcd", "flightctl_drill_keep"} {
		_, err = conn.Exec(ctx, `CREATE DATABASE "`+n+`"`)
		require.NoError(t, err)
	}
	conn.Close(ctx)
	before := f.fingerprint()
	rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(t, f.child()), StateDir: f.state, Logger: testLogger(t)})
	require.NoError(t, err)
	assert.Equal(t, []string{"scratch database flightctl_drill_0123abcd"}, rep.CleanedUp)
	assert.Equal(t, []string{"flightctl_drill_keep"}, f.drillDatabases())
	delete(before, "databases")
	after := f.fingerprint()
	delete(after, "databases")
	assert.Equal(t, before, after)
}

// A throwaway PostgreSQL left running by a killed drill is stopped and removed by the
// next drill.
func TestKilledThrowawayDrillIsCleanedUp(t *testing.T) {
	f := newFixture(t)
	path := f.backup()
	parent := t.TempDir()
	c := f.child()
	c.Archive, c.Throwaway = path, parent
	runKilledChild(t, c)

	entries, err := os.ReadDir(parent)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the killed drill left its cluster")
	dir := filepath.Join(parent, entries[0].Name())
	pid := postmasterPID(t, dir)
	require.NoError(t, syscall.Kill(pid, 0), "its postmaster still runs")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: &drill.Throwaway{Parent: parent}, StateDir: f.state, Logger: testLogger(t)})
	require.NoError(t, err)
	assert.Equal(t, []string{"throwaway PostgreSQL " + dir}, rep.CleanedUp)
	// pg_ctl stop returns once the postmaster has removed its pid file, a moment before it
	// exits: wait for that state (a zombie has exited), bounded so that a postmaster left
	// running fails the test.
	deadline := time.Now().Add(time.Minute)
	for procstat.Alive(pid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	assert.False(t, procstat.Alive(pid), "the old postmaster is gone")
	entries, err = os.ReadDir(parent)
	require.NoError(t, err)
	assert.Empty(t, entries)
}

func postmasterPID(t *testing.T, dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	require.NoError(t, err)
	var pid int
	_, err = fmt.Sscan(strings.SplitN(string(b), "\n", 2)[0], &pid)
	require.NoError(t, err)
	return pid
}
