package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
)

type opts struct {
	Path     string   `ansible:"path,required"`
	Output   string   `ansible:"output_dir" default:"."`
	Keep     bool     `ansible:"keep" default:"false"`
	Password string   `ansible:"db_password,secret" env:"DB_PASSWORD"`
	Units    []string `ansible:"units"`
}

var app = App[opts]{
	Module: ansiblemod.Module[opts]{Name: "demo_module", Run: func(ctx context.Context, env *ansiblemod.Env, o *opts) (*ansiblemod.Result, error) {
		env.Log.Info("progress line")
		return &ansiblemod.Result{Changed: !env.CheckMode, Msg: "done " + o.Path, Values: map[string]any{
			"output_dir": o.Output, "keep": o.Keep, "password_len": len(o.Password), "units": o.Units, "check": env.CheckMode,
		}}, nil
	}},
	Positional: []string{"path"},
	Personalities: []Personality{{
		Name: "demo-upstream", Use: "demo-upstream <path>", VersionLine: "Demo Version: %s", Args: cobra.ExactArgs(1),
		Flags: func(fs *pflag.FlagSet) func([]string) (map[string]any, error) {
			out := fs.String("output", "", "")
			keep := fs.Bool("keep-old-db", false, "")
			return func(args []string) (map[string]any, error) {
				m := map[string]any{"path": args[0], "keep": *keep}
				if *out != "" {
					m["output_dir"] = *out
				}
				return m, nil
			}
		},
	}},
}

func execute(t *testing.T, argv0 string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Execute(app, argv0, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestArgsFileMeansModuleMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(path, []byte(`{"path": "p", "_ansible_check_mode": true}`), 0o600))
	code, stdout, _ := execute(t, "/tmp/AnsiballZ_demo_module", path)
	require.Equal(t, 0, code)
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &out))
	require.Equal(t, false, out["changed"])
	require.Equal(t, true, out["check"])
}

func TestCLIFlagsAndPositional(t *testing.T) {
	code, stdout, stderr := execute(t, "demo_module", "archive.tar.gz", "--output-dir", "/o", "--keep", "--units", "a,b", "--json")
	require.Equal(t, 0, code, stderr)
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &out))
	require.Equal(t, "/o", out["output_dir"])
	require.Equal(t, true, out["keep"])
	require.Equal(t, []any{"a", "b"}, out["units"])
	require.Contains(t, stderr, "progress line", "progress goes to stderr by default")
}

func TestCLIHumanOutputAndCheck(t *testing.T) {
	code, stdout, _ := execute(t, "demo_module", "a", "--check")
	require.Equal(t, 0, code)
	require.Contains(t, stdout, "done a\n")
	require.Contains(t, stdout, "check: true")
	require.Contains(t, stdout, "changed: false")
}

func TestCLISecretFromEnvOrFileNeverAFlag(t *testing.T) {
	t.Setenv("DB_PASSWORD", "pw-from-env")
	_, stdout, _ := execute(t, "demo_module", "a", "--json")
	require.Contains(t, stdout, `"password_len":11`)
	require.NotContains(t, stdout, "pw-from-env")

	file := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(file, []byte("from-file\n"), 0o600))
	_, stdout, _ = execute(t, "demo_module", "a", "--db-password-file", file, "--json")
	require.Contains(t, stdout, `"password_len":9`)

	code, _, stderr := execute(t, "demo_module", "a", "--db-password", "x")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "unknown flag: --db-password")
}

func TestCLIMissingRequired(t *testing.T) {
	code, _, stderr := execute(t, "demo_module")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "Error: missing required arguments: path")
}

func TestPersonalityByInvokedName(t *testing.T) {
	code, stdout, stderr := execute(t, "/usr/bin/demo-upstream", "x.tar.gz", "--keep-old-db", "--output", "/out", "--json")
	require.Equal(t, 0, code, stderr)
	var out map[string]any
	require.NoError(t, json.Unmarshal([]byte(stdout), &out))
	require.Equal(t, true, out["keep"])
	require.Equal(t, "/out", out["output_dir"])

	code, _, stderr = execute(t, "demo-upstream")
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "accepts 1 arg(s), received 0")

	_, stdout, _ = execute(t, "demo-upstream", "version")
	require.Equal(t, "Demo Version: v1.4.0 (flightctl.dr 0.1.0 (build 0.0.0-dev))\n", stdout, "the server release first, ours beside it")
}
