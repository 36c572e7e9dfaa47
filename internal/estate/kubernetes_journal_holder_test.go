package estate

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A Lease holder of this host is judged by its process, not by the clock: alive while
// it runs, gone once it exited; a holder of another host or an unreadable identity is
// left to the renewal rule.
func TestLeaseHolderOnThisHost(t *testing.T) {
	local, alive := holderOnThisHost(holderIdentity())
	assert.True(t, local, "this process's own identity is of this host")
	assert.True(t, alive, "this process runs")

	cmd := exec.Command("true")
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	boot, start, ok := processStart(pid)
	require.NoError(t, cmd.Wait())
	host, _ := os.Hostname()
	if ok {
		dead := fmt.Sprintf("%s pid %d (00ff00ff) boot %s start %s", host, pid, boot, start)
		local, alive = holderOnThisHost(dead)
		assert.True(t, local)
		assert.False(t, alive, "a holder that exited is not alive")
	}
	self, _, _ := processStart(os.Getpid())
	_, myStart, _ := processStart(os.Getpid())
	reused := fmt.Sprintf("%s pid %d (00ff00ff) boot %s start %s", host, os.Getpid(), self, myStart+"0")
	local, alive = holderOnThisHost(reused)
	assert.True(t, local)
	assert.False(t, alive, "the same pid with another start time is another process")

	for _, other := range []string{
		fmt.Sprintf("elsewhere-%s pid %d (00ff00ff) boot %s start %s", host, os.Getpid(), self, myStart),
		fmt.Sprintf("%s pid %d (00ff00ff) boot another-boot start %s", host, os.Getpid(), myStart),
		"some-pod pid 1 (00ff00ff)",
		"",
	} {
		local, _ = holderOnThisHost(other)
		assert.False(t, local, "%q is not a holder of this host", other)
	}
}
