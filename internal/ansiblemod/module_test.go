package ansiblemod

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type testOptions struct {
	Name     string        `ansible:"name,required"`
	Count    int           `ansible:"count" default:"3"`
	Enabled  bool          `ansible:"enabled" default:"true"`
	Password string        `ansible:"password,secret" aliases:"pw"`
	Mode     string        `ansible:"mode" default:"fast" choices:"fast,safe"`
	Timeout  time.Duration `ansible:"timeout" default:"168h"`
	Units    []string      `ansible:"units"`
	Panic    bool          `ansible:"panic"`
}

var testModule = Module[testOptions]{
	Name: "test_module",
	Run: func(ctx context.Context, env *Env, o *testOptions) (*Result, error) {
		if o.Panic {
			panic("boom with " + o.Password)
		}
		env.Log.Info("working", "password", o.Password)
		if o.Name == "fail" {
			return nil, fmt.Errorf("could not connect with password %s", o.Password)
		}
		env.Warn("password was %s", o.Password)
		return &Result{
			Changed: !env.CheckMode,
			Msg:     "echo " + o.Password,
			Diff:    &Diff{Before: map[string]any{"n": 0}, After: map[string]any{"n": o.Count}},
			Values: map[string]any{
				"count": o.Count, "enabled": o.Enabled, "mode": o.Mode,
				"timeout": o.Timeout.String(), "units": o.Units, "check": env.CheckMode,
				"nested": map[string]any{"deep": []any{"x" + o.Password}},
			},
		}, nil
	},
}

// TestMain lets the test binary act as a real module binary when re-executed, so that the
// contract is checked end to end: args file in, one JSON object on stdout.
func TestMain(m *testing.M) {
	if os.Getenv("ANSIBLEMOD_TEST_AS_MODULE") == "1" {
		os.Exit(Main(testModule, os.Args[1], os.Stdout, os.Stderr))
	}
	if os.Getenv("ANSIBLEMOD_TEST_AS_WAIT_MODULE") == "1" {
		os.Exit(Main(waitModule, os.Args[1], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// runModule runs the test binary as a module on args and returns its parsed stdout,
// its raw stdout and stderr.
func runModule(t *testing.T, args map[string]any) (map[string]any, string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "args")
	b, err := json.Marshal(args)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o600))
	cmd := exec.Command(os.Args[0], path)
	cmd.Env = append(os.Environ(), "ANSIBLEMOD_TEST_AS_MODULE=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	_ = cmd.Run() // the exit code is not part of the contract; the JSON is
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(stdout.Bytes()))
	require.NoError(t, dec.Decode(&out), "stdout must be one JSON object: %q", stdout.String())
	require.False(t, dec.More(), "stdout must hold exactly one JSON object: %q", stdout.String())
	return out, stdout.String(), stderr.String()
}

const secret = "s3cr3t-Pa55"

func TestModuleSuccessCoercesLikeAnsible(t *testing.T) {
	out, _, _ := runModule(t, map[string]any{
		"name": "x", "count": "5", "enabled": "no", "timeout": "30m", "units": "a, b",
		"_ansible_check_mode": false, "_ansible_tmpdir": nil, "_ansible_new_key_from_future": 1,
	})
	require.Nil(t, out["failed"])
	require.Equal(t, true, out["changed"])
	require.Equal(t, float64(5), out["count"])
	require.Equal(t, false, out["enabled"])
	require.Equal(t, "fast", out["mode"])
	require.Equal(t, "30m0s", out["timeout"])
	require.Equal(t, []any{"a", "b"}, out["units"])
	require.Equal(t, []any{"password was "}, out["warnings"])
	args := out["invocation"].(map[string]any)["module_args"].(map[string]any)
	require.Equal(t, "x", args["name"])
	require.Nil(t, args["password"])
}

func TestModuleFlatAndWrappedArgs(t *testing.T) {
	out, _, _ := runModule(t, map[string]any{"ANSIBLE_MODULE_ARGS": map[string]any{"name": "wrapped"}})
	require.Nil(t, out["failed"])
	require.Equal(t, "wrapped", out["invocation"].(map[string]any)["module_args"].(map[string]any)["name"])
}

func TestModuleUnknownOptionNamesItAndListsAccepted(t *testing.T) {
	out, _, _ := runModule(t, map[string]any{"name": "x", "colour": "red"})
	require.Equal(t, true, out["failed"])
	msg := out["msg"].(string)
	require.Contains(t, msg, "colour")
	for _, accepted := range []string{"count", "enabled", "mode", "name", "password", "timeout", "units"} {
		require.Contains(t, msg, accepted)
	}
}

func TestModuleWrongTypes(t *testing.T) {
	cases := map[string]map[string]any{
		"count":   {"name": "x", "count": "five"},
		"enabled": {"name": "x", "enabled": "maybe"},
		"timeout": {"name": "x", "timeout": "soon"},
		"mode":    {"name": "x", "mode": "reckless"},
		"units":   {"name": "x", "units": map[string]any{"a": 1}},
	}
	for option, args := range cases {
		t.Run(option, func(t *testing.T) {
			out, _, _ := runModule(t, args)
			require.Equal(t, true, out["failed"])
			require.Contains(t, out["msg"], option)
		})
	}
}

func TestModuleMissingRequired(t *testing.T) {
	out, _, _ := runModule(t, map[string]any{"count": 1})
	require.Equal(t, true, out["failed"])
	require.Equal(t, "missing required arguments: name", out["msg"])
}

func TestModuleCheckModeAndDiff(t *testing.T) {
	out, _, _ := runModule(t, map[string]any{"name": "x", "_ansible_check_mode": true, "_ansible_diff": "yes"})
	require.Equal(t, false, out["changed"])
	require.Equal(t, true, out["check"])
	require.Equal(t, map[string]any{"before": map[string]any{"n": float64(0)}, "after": map[string]any{"n": float64(3)}}, out["diff"])

	out, _, _ = runModule(t, map[string]any{"name": "x"})
	require.Nil(t, out["diff"], "no diff unless asked")
}

func TestModuleSecretNeverEchoed(t *testing.T) {
	for name, args := range map[string]map[string]any{
		"success":    {"name": "x", "password": secret, "_ansible_verbosity": 3},
		"alias":      {"name": "x", "pw": secret},
		"run error":  {"name": "fail", "password": secret},
		"bad option": {"name": "x", "password": secret, "count": secret},
		"panic":      {"name": "x", "password": secret, "panic": true},
	} {
		t.Run(name, func(t *testing.T) {
			out, stdout, stderr := runModule(t, args)
			require.NotContains(t, stdout, secret)
			require.NotContains(t, stderr, secret)
			if name == "success" {
				margs := out["invocation"].(map[string]any)["module_args"].(map[string]any)
				require.Equal(t, NoLogValue, margs["password"])
				require.Contains(t, stderr, "working", "verbosity 3 logs at info and debug")
				require.Equal(t, "echo ********", out["msg"])
			}
		})
	}
}

func TestModulePanicStillOneJSONObject(t *testing.T) {
	out, _, stderr := runModule(t, map[string]any{"name": "x", "panic": true})
	require.Equal(t, true, out["failed"])
	require.Contains(t, out["msg"], "internal error in module test_module")
	require.Contains(t, stderr, "goroutine", "stack trace goes to stderr")
}

func TestModuleUnreadableArgsFile(t *testing.T) {
	var stdout bytes.Buffer
	code := Main(testModule, filepath.Join(t.TempDir(), "missing"), &stdout, &bytes.Buffer{})
	require.Equal(t, 1, code)
	var out map[string]any
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out))
	require.Equal(t, true, out["failed"])
}

func TestModuleNotJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(path, []byte("name=x"), 0o600))
	var stdout bytes.Buffer
	Main(testModule, path, &stdout, &bytes.Buffer{})
	require.True(t, strings.HasPrefix(stdout.String(), "{"))
	require.Contains(t, stdout.String(), "not a JSON object")
}

func TestDecodeBoolSpellings(t *testing.T) {
	for in, want := range map[any]bool{"yes": true, "on": true, "1": true, "True": true, true: true, float64(1): true,
		"no": false, "off": false, "0": false, "false": false, false: false, float64(0): false} {
		got, err := toBool(in)
		require.NoError(t, err, "%v", in)
		require.Equal(t, want, got, "%v", in)
	}
	_, err := toBool("perhaps")
	require.Error(t, err)
}

func TestDecodeDurations(t *testing.T) {
	for in, want := range map[any]time.Duration{"168h": 168 * time.Hour, "30": 30 * time.Second, float64(2): 2 * time.Second, "7d": 7 * 24 * time.Hour, "1m30s": 90 * time.Second} {
		got, err := toDuration(in)
		require.NoError(t, err, "%v", in)
		require.Equal(t, want, got, "%v", in)
	}
}

func TestMaskerLongestFirst(t *testing.T) {
	m := &Masker{}
	m.Add("abc", "abcdef")
	require.Equal(t, "x ******** y ********", m.Mask("x abcdef y abc"))
}
