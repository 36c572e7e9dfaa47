package restore

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
)

// "read the stream after 2097152 bytes: write …/(unnamed): no space left on device" gave no
// advice. The error of a restore that filled a file system says where room is needed and
// which option moves what can move; /dev/full gives a real ENOSPC.
func TestDiskFullAdvice(t *testing.T) {
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("/dev/full: %v", err)
	}
	defer f.Close()
	_, werr := f.Write([]byte("x"))
	require.ErrorIs(t, werr, syscall.ENOSPC)
	err = DiskFullAdvice(fmt.Errorf("read the stream after 2097152 bytes: %w", werr), "/var/lib/flightctl-dr", "/etc/flightctl/pki", "/etc/flightctl")
	require.ErrorIs(t, err, syscall.ENOSPC, "the cause is kept")
	msg := err.Error()
	require.Contains(t, msg, "no space left on device")
	require.Contains(t, msg, "state_dir", msg)
	require.Contains(t, msg, "/var/lib/flightctl-dr", msg)
	require.Contains(t, msg, "/etc/flightctl", msg)
	require.Contains(t, msg, "run the restore again", msg)
	require.Equal(t, 1, strings.Count(msg, "/etc/flightctl/pki"), "each directory once: %s", msg)

	// psql says it in its own words, through the runner.
	psql := &runner.ExitError{Cmd: "podman exec -i flightctl-db psql …", ExitCode: 3,
		Stderr: `ERROR:  could not extend file "base/16384/16402": No space left on device`}
	msg = DiskFullAdvice(fmt.Errorf("load the dump into flightctl_restore_1: %w", psql), "/s").Error()
	require.Contains(t, msg, "data directory", msg)
	require.Equal(t, msg, DiskFullAdvice(DiskFullAdvice(fmt.Errorf("load the dump into flightctl_restore_1: %w", psql), "/s"), "/s").Error(), "advice once")

	other := errors.New("boom")
	require.Equal(t, other, DiskFullAdvice(other, "/s"))
	require.NoError(t, DiskFullAdvice(nil, "/s"))
}
