package podman_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
)

// "podman exec in flightctl-db: podman exec -i flightctl-db sh …: exit status 2: …": the
// runner's error names the command already, so podman.Exec must not name it again. The
// fake runner (named as such) answers as runner.Exec does for a command that failed.
func TestExecErrorNamesTheCommandOnce(t *testing.T) {
	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		if strings.Contains(strings.Join(c.Args, " "), "missing") {
			return "", &runner.ExitError{Cmd: c.Brief(), ExitCode: 125, Stderr: `Error: no container with name or ID "missing" found: no such container`}
		}
		return "", &runner.ExitError{Cmd: c.Brief(), ExitCode: 2, Stderr: `psql: error: FATAL:  password authentication failed for user "flightctl_app"`}
	}}
	c := &podman.Client{Runner: fake}
	err := c.Exec(context.Background(), podman.ExecOptions{Container: "flightctl-db", Command: []string{"sh", "-c", "IFS= read -r PGPASSWORD; export PGPASSWORD; exec psql -h 127.0.0.1 -U flightctl_app -d flightctl -c 'select 1'"}, Stdin: strings.NewReader("pw\n")})
	require.Error(t, err)
	msg := err.Error()
	require.Equal(t, 1, strings.Count(msg, "podman exec"), msg)
	require.Equal(t, 1, strings.Count(msg, "flightctl-db"), msg)
	require.Contains(t, msg, "password authentication failed", msg)
	require.NotContains(t, msg, "pw", "no secret in the message")

	err = c.Exec(context.Background(), podman.ExecOptions{Container: "missing", Command: []string{"true"}})
	require.ErrorIs(t, err, podman.ErrNotFound)
	msg = err.Error()
	require.Equal(t, 1, strings.Count(msg, "podman exec"), msg)
	require.Contains(t, msg, "is its unit running?", msg)
}
