package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/version"
)

type edgeOpts struct {
	Path string `ansible:"path,abspath"`
	Port int    `ansible:"db_port" default:"5432" min:"1" max:"65535" help:"database port"`
}

var edgeRuns int

var edgeApp = App[edgeOpts]{
	Module: ansiblemod.Module[edgeOpts]{Name: "edge_module", Run: func(ctx context.Context, env *ansiblemod.Env, o *edgeOpts) (*ansiblemod.Result, error) {
		edgeRuns++
		return &ansiblemod.Result{Values: map[string]any{"path": o.Path, "port": o.Port}}, nil
	}},
	Positional: []string{"path"},
}

func runEdge(t *testing.T, argv0 string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Execute(edgeApp, argv0, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func oneJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	var out map[string]any
	require.NoError(t, dec.Decode(&out), "stdout must be one JSON object: %q", s)
	require.False(t, dec.More(), "stdout must hold exactly one JSON object: %q", s)
	return out
}

// Run as Ansible runs it (AnsiballZ_<name> <tmp>/args), the binary is a module whatever
// the file holds: a file that is no JSON object used to fall back to the command line, and
// verify and restore took it for the archive.
func TestAnsiballZNameIsAlwaysModuleMode(t *testing.T) {
	dir := t.TempDir()
	for _, content := range []string{"", "not json", "[1]", "42", "\xef\xbb\xbf{}", `"x"`} {
		path := filepath.Join(dir, "args")
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		before := edgeRuns
		code, stdout, _ := runEdge(t, filepath.Join(dir, "AnsiballZ_edge_module"), path)
		out := oneJSON(t, stdout)
		require.Equal(t, true, out["failed"], "%q: %s", content, stdout)
		require.Equal(t, 1, code)
		require.Equal(t, before, edgeRuns, "the module must not run on %q", content)
	}
	_, stdout, _ := runEdge(t, filepath.Join(dir, "AnsiballZ_edge_module"))
	require.Contains(t, oneJSON(t, stdout)["msg"], "without an arguments file")
	_, stdout, _ = runEdge(t, filepath.Join(dir, "AnsiballZ_edge_module"), "a", "b")
	require.Contains(t, oneJSON(t, stdout)["msg"], "with 2 arguments")
}

// Under another name, a file named as Ansible names it, or holding a JSON object after
// white space or a byte order mark, is still an arguments file; an archive is not.
func TestArgsFileDetectionWithoutAnsiballZName(t *testing.T) {
	dir := t.TempDir()
	spaced := filepath.Join(dir, "spaced.json")
	require.NoError(t, os.WriteFile(spaced, []byte(strings.Repeat(" ", 100000)+`{"path": "/a"}`), 0o600))
	_, stdout, _ := runEdge(t, "edge_module", spaced)
	require.Equal(t, "/a", oneJSON(t, stdout)["path"])

	bom := filepath.Join(dir, "bom.json")
	require.NoError(t, os.WriteFile(bom, []byte("\xef\xbb\xbf{}"), 0o600))
	_, stdout, _ = runEdge(t, "edge_module", bom)
	require.Contains(t, oneJSON(t, stdout)["msg"], "byte order mark")

	args := filepath.Join(dir, "args")
	require.NoError(t, os.WriteFile(args, []byte("garbage"), 0o600))
	_, stdout, _ = runEdge(t, "edge_module", args)
	require.Contains(t, oneJSON(t, stdout)["msg"], "not JSON")

	archive := filepath.Join(dir, "flightctl-backup-20260101T000000Z.tar.gz")
	require.NoError(t, os.WriteFile(archive, []byte("\x1f\x8b\x08\x00"), 0o600))
	code, stdout, stderr := runEdge(t, "edge_module", archive)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stdout, "path: "+archive, "an archive is the positional path in CLI mode")
}

// A relative path on a command line means the working directory; in a module it is refused.
func TestCLIRelativePathIsMadeAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	require.NoError(t, err)
	_, stdout, stderr := runEdge(t, "edge_module", "backup.tar.gz", "--json")
	require.Equal(t, filepath.Join(wd, "backup.tar.gz"), oneJSON(t, stdout)["path"], stderr)

	args := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(args, []byte(`{"path": "backup.tar.gz"}`), 0o600))
	_, stdout, _ = runEdge(t, "/tmp/AnsiballZ_edge_module", args)
	require.Contains(t, oneJSON(t, stdout)["msg"], "path must be an absolute path")
}

func TestVersionFlagAndCommand(t *testing.T) {
	want := "edge_module version " + version.String() + "\n"
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, stdout, stderr := runEdge(t, "edge_module", args...)
		require.Equal(t, 0, code, stderr)
		require.Equal(t, want, stdout)
	}
	require.Contains(t, want, version.Collection, "the collection release is shown")
}

// Integer options were shown (and parsed) as strings in --help.
func TestHelpShowsIntegerFlagsAsInt(t *testing.T) {
	_, stdout, _ := runEdge(t, "edge_module", "--help")
	require.Regexp(t, `--db-port int\s+database port \(default 5432\)`, stdout)
	code, _, stderr := runEdge(t, "edge_module", "--db-port", "abc")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, `invalid argument "abc" for "--db-port"`)
	_, stdout, _ = runEdge(t, "edge_module", "/a", "--db-port", "6000", "--json")
	require.Equal(t, 6000.0, oneJSON(t, stdout)["port"])
}

// An unfinished restore (SIGKILL after the units were stopped) is reported by any later
// run of any module on the host, not only by the next restore.
func TestUnfinishedRestoreReportedByOtherModules(t *testing.T) {
	dir := t.TempDir()
	defer func(d string) { journalDir = d }(journalDir)
	journalDir = dir

	_, stdout, _ := runEdge(t, "edge_module", "/a", "--json")
	require.Empty(t, oneJSON(t, stdout)["warnings"], "no journal, no warning")

	j := restore.Journal{FormatVersion: 1, ID: "r-1", ArchivePath: "/b/a.tar.gz", State: restore.StateRunning,
		Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ActiveUnits: []string{"flightctl-api.service", "flightctl-worker.service"}, UnitsRecorded: true}
	b, err := json.Marshal(j)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, restore.JournalFile), b, 0o600))

	args := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(args, []byte(`{"path": "/a"}`), 0o600))
	_, stdout, _ = runEdge(t, "/tmp/AnsiballZ_edge_module", args)
	ws := oneJSON(t, stdout)["warnings"].([]any)
	require.Len(t, ws, 1)
	require.Contains(t, ws[0], "an unfinished restore left units stopped; run the restore again or roll it back")
	require.Contains(t, ws[0], "flightctl-api.service, flightctl-worker.service")
	require.Contains(t, ws[0], "r-1")

	j.State = restore.StateDone
	b, _ = json.Marshal(j)
	require.NoError(t, os.WriteFile(filepath.Join(dir, restore.JournalFile), b, 0o600))
	_, stdout, _ = runEdge(t, "/tmp/AnsiballZ_edge_module", args)
	require.Empty(t, oneJSON(t, stdout)["warnings"], "a finished restore is not reported")
}
