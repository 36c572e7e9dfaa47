package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/version"
)

// `flightctl-restore --version` was an unknown flag: under the upstream names --version
// prints what `version` prints (the server release first, then flightctl.dr's own), also
// where the command wants an argument.
func TestUpstreamVersionFlag(t *testing.T) {
	strict := restoreApp
	strict.Personalities = []Personality{restoreApp.Personalities[0]}
	strict.Personalities[0].Args = cobra.ExactArgs(1)
	want := "Demo Restore Version: " + version.Upstream() + "\n"
	for _, app := range []App[restoreLike]{restoreApp, strict} {
		for _, args := range [][]string{{"--version"}, {"version"}} {
			var stdout, stderr bytes.Buffer
			code := Execute(app, "/usr/bin/demo-restore", args, &stdout, &stderr)
			require.Equal(t, 0, code, "%v: %s", args, stderr.String())
			require.Equal(t, want, stdout.String(), args)
		}
	}
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, Execute(strict, "demo-restore", nil, &stdout, &stderr), "without --version the argument is still required")
}

// --json under an upstream name printed the module's messages with module option names
// ("set allow_version_mismatch"), which that command line does not have.
func TestUpstreamJSONUsesTheCommandLinesWords(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := Execute(restoreApp, "demo-restore", []string{"a.tar.gz", "--refuse", "version", "--json"}, &stdout, &stderr)
	require.Equal(t, 1, code)
	var out map[string]any
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), stdout.String())
	msg, _ := out["msg"].(string)
	require.Contains(t, msg, "--allow-version-mismatch", msg)
	require.NotContains(t, msg, "allow_version_mismatch", msg)
	// The module's own name for people who run it as itself is kept.
	stdout.Reset()
	code = Execute(restoreApp, "demo_restore", []string{"a.tar.gz", "--refuse", "version", "--json"}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.Contains(t, stdout.String(), "allow_version_mismatch")
}

type stateDirOpts struct {
	Path     string `ansible:"path"`
	StateDir string `ansible:"state_dir,abspath" default:"/var/lib/flightctl-dr-test-none"`
}

// The unfinished-restore warning looked only in the default state directory: a module with a
// state_dir option looks where that option points.
func TestUnfinishedRestoreWarningUsesTheConfiguredStateDir(t *testing.T) {
	defer func(d string) { journalDir = d }(journalDir)
	journalDir = t.TempDir() // the default: no journal there
	configured := t.TempDir()
	j := restore.Journal{FormatVersion: 1, ID: "r-9", ArchivePath: "/b/a.tar.gz", State: restore.StateRunning,
		Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), ActiveUnits: []string{"flightctl-api.service"}, UnitsRecorded: true}
	b, err := json.Marshal(j)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(configured, restore.JournalFile), b, 0o600))

	app := App[stateDirOpts]{Module: ansiblemod.Module[stateDirOpts]{Name: "state_module", Run: func(ctx context.Context, env *ansiblemod.Env, o *stateDirOpts) (*ansiblemod.Result, error) {
		return &ansiblemod.Result{}, nil
	}}}
	args := filepath.Join(t.TempDir(), "args")
	warnings := func(opts string) []any {
		require.NoError(t, os.WriteFile(args, []byte(opts), 0o600))
		var stdout, stderr bytes.Buffer
		Execute(app, "/tmp/AnsiballZ_state_module", []string{args}, &stdout, &stderr)
		ws, _ := oneJSON(t, stdout.String())["warnings"].([]any)
		return ws
	}
	ws := warnings(`{"state_dir": "` + configured + `"}`)
	require.Len(t, ws, 1)
	require.Contains(t, ws[0], "r-9")
	require.Contains(t, ws[0], configured)
	require.Empty(t, warnings(`{}`), "the option's default directory holds no journal")
	// The default state directory is still looked at.
	require.NoError(t, os.WriteFile(filepath.Join(journalDir, restore.JournalFile), b, 0o600))
	require.Len(t, warnings(`{}`), 1)
}
