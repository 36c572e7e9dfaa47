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

// A wrong password used to be reported with the whole escaped `podman exec ... sh -c '...'`
// line; the error names the program the script runs and keeps what it said.
func TestExecErrorShowsTheScriptsProgramNotTheScript(t *testing.T) {
	script := `PGPASSWORD=$(cat -) sh -c 'echo "psql: error: password authentication failed for user \"flightctl_app\"" >&2; exit 2' -h 127.0.0.1 -p 5432 -U 'flightctl_app' -d 'flightctl'`
	err := Exec{}.Run(context.Background(), Cmd{Name: "sh", Args: []string{"-c", script}, Stdin: strings.NewReader("wrong")})
	var exitErr *ExitError
	require.ErrorAs(t, err, &exitErr)
	require.Equal(t, `sh -c 'sh …': exit status 2: psql: error: password authentication failed for user "flightctl_app"`, err.Error())
	require.NotContains(t, err.Error(), "PGPASSWORD")
	require.NotContains(t, err.Error(), `'\''`)
}

func TestBriefAbbreviatesShellScriptsOnly(t *testing.T) {
	podman := Cmd{Name: "podman", Args: []string{"exec", "-i", "flightctl-db", "sh", "-c", "PGPASSWORD=$(cat -) pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U 'flightctl_app' -d 'flightctl'"}}
	require.Equal(t, "podman exec -i flightctl-db sh -c 'pg_dump …'", podman.Brief())
	require.Contains(t, podman.String(), "PGPASSWORD", "String stays complete, for logs")
	short := Cmd{Name: "sh", Args: []string{"-c", "echo boom >&2; exit 3"}}
	require.Equal(t, short.String(), short.Brief(), "a short script without assignments is shown as it is")
	psql := Cmd{Name: "psql", Args: []string{"-X", "-c", "SELECT 1"}}
	require.Equal(t, psql.String(), psql.Brief(), "-c of another program is not a script")
}
