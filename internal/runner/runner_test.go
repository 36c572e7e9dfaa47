package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestExecPassesStdinAndEnv(t *testing.T) {
	out, err := Output(context.Background(), Exec{}, Cmd{
		Name:  "sh",
		Args:  []string{"-c", `printf '%s|%s' "$(cat -)" "$SECRET_FROM_ENV"`},
		Env:   []string{"SECRET_FROM_ENV=e"},
		Stdin: strings.NewReader("s"),
	})
	require.NoError(t, err)
	require.Equal(t, "s|e", string(out))
}

func TestExecErrorCarriesStderrTail(t *testing.T) {
	err := Exec{}.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", "echo boom >&2; exit 3"}})
	var exitErr *ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, 3, exitErr.ExitCode)
	require.Equal(t, "boom", exitErr.Stderr)
	require.Contains(t, err.Error(), "sh -c 'echo boom >&2; exit 3'")
}

func TestExecMissingProgram(t *testing.T) {
	err := Exec{}.Run(context.Background(), Cmd{Name: "no-such-program-flightctl-dr"})
	var nf *NotFoundError
	require.ErrorAs(t, err, &nf)
}

func TestExecCancelStopsProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := Exec{}.Run(ctx, Cmd{Name: "sleep", Args: []string{"30"}})
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
}

func TestFakeRecordsStdin(t *testing.T) {
	f := &Fake{Handle: func(c Cmd, stdin []byte) (string, error) { return "out:" + string(stdin), nil }}
	out, err := Output(context.Background(), f, Cmd{Name: "x", Stdin: strings.NewReader("pw")})
	require.NoError(t, err)
	require.Equal(t, "out:pw", string(out))
	require.Len(t, f.Calls, 1)
	require.Equal(t, []byte("pw"), f.Calls[0].Stdin)
}
