package podman_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/testbed"
)

// TestContainerPIDOnRealPodman: the PID is the container's main process on this host
// (its /proc entry runs the container's command); a missing container is ErrNotFound.
func TestContainerPIDOnRealPodman(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	name := testbed.PodmanName("fdr-pid")
	require.NoError(t, tb.RunContainer(ctx, testbed.PodmanContainerOptions{Name: name, Command: []string{"sleep", "3600"}}))
	c := tb.Client()

	pid, err := c.ContainerPID(ctx, name)
	require.NoError(t, err)
	require.Greater(t, pid, 0)
	// With --init the main process is the init, whose child sleeps; either way the
	// process tree under pid runs the container's command.
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	require.NoError(t, err)
	children, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
	found := strings.Contains(string(cmdline), "sleep")
	for _, child := range strings.Fields(string(children)) {
		b, _ := os.ReadFile("/proc/" + child + "/cmdline")
		found = found || strings.Contains(string(b), "sleep")
	}
	assert.True(t, found, "pid %d is the container's process (cmdline %q)", pid, cmdline)

	_, err = c.ContainerPID(ctx, name+"-missing")
	assert.ErrorIs(t, err, podman.ErrNotFound)
}
