package ansiblemod

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

type waitOptions struct {
	Name string `ansible:"name"`
}

// waitModule says it is ready on stderr, then waits for its context to end, as a restore
// waits for a step: a signal must cancel it and still give one JSON object.
var waitModule = Module[waitOptions]{
	Name: "wait_module",
	Run: func(ctx context.Context, env *Env, o *waitOptions) (*Result, error) {
		fmt.Fprintln(os.Stderr, "ready")
		<-ctx.Done()
		return nil, fmt.Errorf("stopped cleanly after the signal: %w", ctx.Err())
	},
}

// A dropped SSH session sends SIGHUP: the module must clean up as for SIGTERM (its
// context is cancelled), not die with the default action.
func TestModuleSIGHUPCancelsLikeSIGTERM(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "args")
			require.NoError(t, os.WriteFile(path, []byte(`{"name": "x"}`), 0o600))
			cmd := exec.Command(os.Args[0], path)
			cmd.Env = append(os.Environ(), "ANSIBLEMOD_TEST_AS_WAIT_MODULE=1")
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			stderr, err := cmd.StderrPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			sc := bufio.NewScanner(stderr)
			for sc.Scan() && sc.Text() != "ready" {
			}
			require.NoError(t, cmd.Process.Signal(sig))
			go func() { _, _ = bufio.NewReader(stderr).WriteTo(new(bytes.Buffer)) }()
			err = cmd.Wait()
			var exitErr *exec.ExitError
			require.ErrorAs(t, err, &exitErr)
			require.True(t, exitErr.Exited(), "killed by %v instead of exiting: %v", sig, err)
			var out map[string]any
			require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), "stdout: %q", stdout.String())
			require.Equal(t, true, out["failed"])
			require.Contains(t, out["msg"], "stopped cleanly after the signal: context canceled")
		})
	}
}

// _ansible_check_mode "maybe" used to be read as false: a real run.
func TestParseArgsRefusesNonBooleanModeSwitches(t *testing.T) {
	for _, k := range []string{"_ansible_check_mode", "_ansible_diff", "_ansible_no_log"} {
		_, _, err := ParseArgs([]byte(`{"` + k + `": "maybe"}`))
		require.Error(t, err, k)
		require.True(t, IsParamError(err))
		require.Contains(t, err.Error(), k+`: "maybe" is not a valid boolean`)
	}
	_, env, err := ParseArgs([]byte(`{"_ansible_check_mode": "yes", "_ansible_diff": 0, "_ansible_no_log": null}`))
	require.NoError(t, err)
	require.True(t, env.CheckMode)
	require.False(t, env.Diff)
}

func TestParseArgsSaysWhatTheFileHolds(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "is empty",
		"   ":                       "only white space",
		"\xef\xbb\xbf{}":            "byte order mark",
		"[1]":                       "holds a list",
		"7":                         "holds a number",
		`"x"`:                       "holds a string",
		"null":                      "holds null",
		"hello":                     `text that is not JSON (it starts with "hello")`,
		`{"ANSIBLE_MODULE_ARGS":1}`: "ANSIBLE_MODULE_ARGS is a number",
	} {
		_, _, err := ParseArgs([]byte(in))
		require.Error(t, err, "%q", in)
		require.Contains(t, err.Error(), want, "%q", in)
	}
	own, env, err := ParseArgs([]byte(strings.Repeat(" ", 100000) + `{"ANSIBLE_MODULE_ARGS": {"name": "n"}, "_ansible_check_mode": true}`))
	require.NoError(t, err)
	require.Contains(t, own, "name")
	require.True(t, env.CheckMode)
}

type edgeOptions struct {
	Dir      string   `ansible:"dir,abspath"`
	Port     int      `ansible:"port" default:"5432" min:"1" max:"65535"`
	DB       int      `ansible:"db" default:"0" min:"0" max:"15"`
	Units    []string `ansible:"units" items:"unit"`
	Names    []string `ansible:"names"`
	Label    string   `ansible:"label"`
	Password string   `ansible:"password,secret"`
}

func decodeEdge(t *testing.T, js string) error {
	t.Helper()
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(js), &raw))
	return Decode(raw, &edgeOptions{})
}

func TestDecodeValidatesValues(t *testing.T) {
	for js, want := range map[string]string{
		`{"dir": "relative/dir"}`:            `dir must be an absolute path, got "relative/dir"`,
		`{"port": 0}`:                        "port 0 is out of range: use 1 to 65535",
		`{"port": 65536}`:                    "port 65536 is out of range: use 1 to 65535",
		`{"db": 65536}`:                      "db 65536 is out of range: use 0 to 15",
		`{"units": [1, 2]}`:                  "item 1 is a number: every item must be a string",
		`{"units": [""]}`:                    "units: item 1 is empty",
		`{"units": ["../../etc/x.service"]}`: "is a path, not a unit name",
		`{"units": ["api"]}`:                 "write it with its type, such as api.service",
		`{"names": ["a", ""]}`:               "names: item 2 is empty",
		`{"label": "a\u0000b"}`:              "label contains a NUL byte at byte 1",
		`{"label": "a\nb"}`:                  "label contains a newline",
		`{"password": "pw\n"}`:               "password contains a newline",
	} {
		err := decodeEdge(t, js)
		require.Error(t, err, js)
		require.True(t, IsParamError(err), js)
		require.Contains(t, err.Error(), want, js)
	}
	require.NoError(t, decodeEdge(t, `{"dir": "/abs", "port": 1, "db": 15, "units": ["flightctl-api.service", "a@b.service"], "dir": ""}`))
	// A secret's value is never quoted, whatever is wrong with it.
	err := decodeEdge(t, `{"password": "hunter2\n"}`)
	require.NotContains(t, err.Error(), "hunter2")
}

// A huge value is refused without being repeated, and a result never echoes one in full.
func TestHugeValuesAreBoundedInEverythingEchoed(t *testing.T) {
	huge := strings.Repeat("x", 10<<20)
	err := decodeEdge(t, `{"label": "`+huge+`"}`)
	require.Error(t, err)
	require.Less(t, len(err.Error()), 200)
	b, _ := json.Marshal(map[string]any{"mode": huge})
	var raw map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(b, &raw))
	err = Decode(raw, &testOptions{Name: "n"})
	require.Error(t, err)
	require.Less(t, len(err.Error()), 1000, "choices error quotes the value bounded")

	o := &edgeOptions{Label: strings.Repeat("y", 3000), Names: []string{strings.Repeat("z", 3000)}}
	v := Values(o)
	require.Less(t, len(v["label"].(string)), MaxEcho+40)
	require.Contains(t, v["label"], "(3000 bytes in all)")
	require.Less(t, len(v["names"].([]string)[0]), MaxEcho+40)
}

// The masker hid a short secret inside unrelated words ("type" became "t********pe"):
// values are masked where they stand, not as substrings of other words.
func TestMaskerMasksValuesNotSubstrings(t *testing.T) {
	m := &Masker{}
	m.Add("yp")
	require.Equal(t, "deployment type podman", m.Mask("deployment type podman"))
	require.Equal(t, "password ******** rejected", m.Mask("password yp rejected"))
	require.Equal(t, "user:********@host", m.Mask("user:yp@host"))
	require.Equal(t, "'********'", m.Mask("'yp'"))
	require.Equal(t, "********", m.Mask("yp"))

	// Secrets with punctuation at the edge: the edge itself bounds them.
	m.Add("!x")
	require.Equal(t, "a********", m.Mask("a!x"))

	// Long secrets are masked wherever they appear.
	m.Add("correct-horse-battery")
	require.Equal(t, "x********y", m.Mask("xcorrect-horse-batteryy"))
}
