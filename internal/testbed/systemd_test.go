package testbed

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/procstat"
)

func TestSystemdStartsConfinedAndStopsClean(t *testing.T) {
	Need(t, SystemdBinary, "unshare", "systemctl")
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
	pid1Before := readFile(t, "/proc/1/cgroup")
	selfBefore := readFile(t, "/proc/self/cgroup")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	s, err := StartSystemd(ctx, SystemdOptions{Dir: dir})
	require.NoError(t, err)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = s.Stop()
		}
	})

	// The machine's processes stay where they were; systemd is in its own cgroups.
	assert.Equal(t, pid1Before, readFile(t, "/proc/1/cgroup"), "PID 1 must keep its cgroups")
	assert.Equal(t, selfBefore, readFile(t, "/proc/self/cgroup"), "the test process must keep its cgroups")
	sdCgroups := readFile(t, "/proc/"+strconv.Itoa(s.PID)+"/cgroup")
	for _, line := range strings.Split(strings.TrimSpace(sdCgroups), "\n") {
		assert.Contains(t, line, "/"+s.CgroupName, "systemd must be confined in every hierarchy")
	}
	assert.NotEmpty(t, s.CgroupDirs)
	fi, err := os.Stat(s.RuntimeDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	assert.FileExists(t, filepath.Join(s.RuntimeDir, "bus"))

	// A unit named as flightctl's runs under it and logs to a file.
	logFile := filepath.Join(dir, "api.log")
	require.NoError(t, s.WriteUnit("flightctl-api.service", "[Service]\nExecStart=/bin/sh -c 'echo started; exec sleep infinity'\nStandardOutput=append:"+logFile+"\n"))
	require.NoError(t, s.DaemonReload(ctx))
	_, err = s.Systemctl(ctx, "start", "flightctl-api.service")
	require.NoError(t, err)
	out, err := s.Systemctl(ctx, "show", "-p", "MainPID", "--value", "flightctl-api.service")
	require.NoError(t, err)
	unitPID, err := strconv.Atoi(strings.TrimSpace(out))
	require.NoError(t, err)
	require.Greater(t, unitPID, 0)
	assert.Contains(t, readFile(t, "/proc/"+strconv.Itoa(unitPID)+"/cgroup"), "/"+s.CgroupName+"/")

	// A unit can run a command in the caller's mount namespace.
	nsFile := filepath.Join(dir, "ns.out")
	require.NoError(t, s.WriteUnit("host-ns.service", "[Service]\nType=oneshot\nExecStart="+s.HostCommand("/usr/bin/readlink", "/proc/self/ns/mnt")+"\nStandardOutput=append:"+nsFile+"\n"))
	require.NoError(t, s.DaemonReload(ctx))
	_, err = s.Systemctl(ctx, "start", "host-ns.service")
	require.NoError(t, err)
	ownNS, err := os.Readlink("/proc/self/ns/mnt")
	require.NoError(t, err)
	assert.Equal(t, ownNS, strings.TrimSpace(readFile(t, nsFile)))
	sdNS, err := os.Readlink("/proc/" + strconv.Itoa(s.PID) + "/ns/mnt")
	require.NoError(t, err)
	assert.NotEqual(t, ownNS, sdNS, "the manager has its own mount namespace")

	// Another process attaches through the state file.
	attached, err := AttachSystemd(dir, nil)
	require.NoError(t, err)
	assert.Equal(t, s.PID, attached.PID)
	assert.True(t, attached.Running())

	require.NoError(t, s.Stop())
	stopped = true
	assert.False(t, procstat.Alive(s.PID), "systemd must be gone")
	assert.False(t, procstat.Alive(unitPID), "the unit's process must be gone")
	assert.False(t, procstat.Alive(s.HostNamespacePID), "the keeper must be gone")
	for _, d := range s.CgroupDirs {
		assert.NoDirExists(t, d)
	}
	assert.Contains(t, readFile(t, logFile), "started")
}

func TestSystemdTwoManagersCoexist(t *testing.T) {
	a := SystemdForTest(t)
	b := SystemdForTest(t)
	assert.NotEqual(t, a.RuntimeDir, b.RuntimeDir)
	ctx := context.Background()
	require.NoError(t, a.WriteUnit("only-a.service", "[Service]\nExecStart=/bin/sleep infinity\n"))
	require.NoError(t, a.DaemonReload(ctx))
	_, err := a.Systemctl(ctx, "start", "only-a.service")
	require.NoError(t, err)
	out, _ := b.Systemctl(ctx, "show", "-p", "LoadState", "--value", "only-a.service")
	assert.Equal(t, "not-found", strings.TrimSpace(out), "units of one manager are invisible to the other")
}

func TestSystemdLongDirGetsShortRuntimeDir(t *testing.T) {
	Need(t, SystemdBinary, "unshare", "systemctl")
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 90))
	require.NoError(t, os.MkdirAll(dir, 0o755))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := StartSystemd(ctx, SystemdOptions{Dir: dir})
	require.NoError(t, err)
	assert.True(t, s.OwnRuntimeDir)
	require.NoError(t, s.Stop())
	assert.NoDirExists(t, s.RuntimeDir)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return string(b)
}

// BenchmarkSystemdStartStop measures a whole manager life: safe launch until running,
// then exit and cgroup removal.
func BenchmarkSystemdStartStop(b *testing.B) {
	Need(b, SystemdBinary, "unshare", "systemctl")
	for i := 0; i < b.N; i++ {
		s, err := StartSystemd(context.Background(), SystemdOptions{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}
