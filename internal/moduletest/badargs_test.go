package moduletest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/moduletest"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

// modules are every module of the collection (modules/<name>), so that a new one is
// checked too.
var modules = func() []string {
	_, file, _, _ := runtime.Caller(0)
	entries, err := os.ReadDir(filepath.Join(filepath.Dir(file), "..", "..", "modules"))
	if err != nil {
		panic(err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}()

// badCase is one file of testdata/badargs: NAME.args is the arguments file, byte for byte
// (with @TMP@ standing for an empty directory of the test's and @BIG@ for 10 MiB of "x"),
// NAME.want names the modules it is for ("*": all) and a regular expression the result's
// msg must match.
type badCase struct {
	name    string
	args    []byte
	modules []string
	msg     *regexp.Regexp
}

func loadBadCases(t *testing.T) []badCase {
	t.Helper()
	wants, err := filepath.Glob("testdata/badargs/*.want")
	require.NoError(t, err)
	require.NotEmpty(t, wants)
	var cases []badCase
	for _, w := range wants {
		name := strings.TrimSuffix(filepath.Base(w), ".want")
		spec, err := os.ReadFile(w)
		require.NoError(t, err)
		args, err := os.ReadFile(strings.TrimSuffix(w, ".want") + ".args")
		require.NoError(t, err, "%s has no .args file", name)
		c := badCase{name: name, args: args}
		for _, line := range strings.Split(strings.TrimSpace(string(spec)), "\n") {
			k, v, ok := strings.Cut(line, ": ")
			require.True(t, ok, "%s: bad line %q", w, line)
			switch k {
			case "modules":
				if v == "*" {
					c.modules = modules
				} else {
					c.modules = strings.Split(v, ",")
				}
			case "msg":
				c.msg = regexp.MustCompile(v)
			default:
				t.Fatalf("%s: unknown key %q", w, k)
			}
		}
		require.NotNil(t, c.msg, "%s: no msg", w)
		require.NotEmpty(t, c.modules, "%s: no modules", w)
		cases = append(cases, c)
	}
	return cases
}

// The corpus covers every class of bad input: a file that is no JSON object, the
// _ansible_* switches, unknown options, types, empty and blank items, unit names, paths,
// ranges, NUL and line breaks, sizes.
func TestBadArgsCorpusCoversEveryClass(t *testing.T) {
	cases := loadBadCases(t)
	require.GreaterOrEqual(t, len(cases), 100)
	perModule := map[string]int{}
	for _, c := range cases {
		for _, m := range c.modules {
			perModule[m]++
		}
	}
	for _, m := range []string{"flightctl_backup", "flightctl_restore", "flightctl_devprep", "flightctl_archive_verify"} {
		require.Contains(t, modules, m)
		require.GreaterOrEqual(t, perModule[m], 30, "module %s has too few bad-argument cases", m)
	}
}

// Every bad arguments file, run through every module binary as Ansible runs it
// (<tmp>/AnsiballZ_<module> <tmp>/args), gives exactly one JSON object with failed: true and
// the message the case expects; nothing is created, and no result repeats a huge value.
func TestBadArgsCorpusEveryModule(t *testing.T) {
	cases := loadBadCases(t)
	bins := map[string]string{}
	for _, m := range modules {
		bins[m] = moduletest.Build(t, "flightctl.dr/modules/"+m)
	}
	for _, c := range cases {
		for _, m := range c.modules {
			t.Run(m+"/"+c.name, func(t *testing.T) {
				tmp := t.TempDir()
				r := moduletest.RunFile(t, bins[m], expand(c.args, tmp))
				checkFailure(t, c, r, tmp)
			})
		}
	}
}

// The collection ships the modules as one binary that picks the module from
// _ansible_module_name: the same corpus through it, with the name added to every file that
// is a JSON object (as the action plugin does).
func TestBadArgsCorpusMulticall(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is needed to generate the multicall program")
	}
	bin := buildMulticall(t)
	for _, c := range loadBadCases(t) {
		for _, m := range c.modules {
			t.Run(m+"/"+c.name, func(t *testing.T) {
				tmp := t.TempDir()
				args := expand(c.args, tmp)
				var obj map[string]any
				if json.Unmarshal(args, &obj) == nil && obj != nil {
					obj["_ansible_module_name"] = "flightctl.dr." + m
					args, _ = json.Marshal(obj)
				}
				checkFailure(t, c, moduletest.RunFile(t, bin, args), tmp)
			})
		}
	}
}

func checkFailure(t *testing.T, c badCase, r moduletest.Result, tmp string) {
	t.Helper()
	require.Equal(t, true, r.Out["failed"], "failed: true expected: %s", bounded(r.Stdout))
	msg, _ := r.Out["msg"].(string)
	require.Regexp(t, c.msg, msg)
	require.NotEqual(t, 0, r.Code)
	require.Less(t, len(r.Stdout), 64<<10, "a result repeats a huge value: %d bytes", len(r.Stdout))
	require.NotContains(t, r.Stdout, "s3cret-pw", "a secret is echoed")
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Empty(t, entries, "a failed argument check created files")
}

var big = strings.Repeat("x", 10<<20)

func expand(args []byte, tmp string) []byte {
	args = bytes.ReplaceAll(args, []byte("@TMP@"), []byte(tmp))
	return bytes.ReplaceAll(args, []byte("@BIG@"), []byte(big))
}

func bounded(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}

// buildMulticall generates the collection's multicall program with scripts/multicall.sh
// into a private directory of the source tree and builds it.
func buildMulticall(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	rel := fmt.Sprintf("build/_multicall_test_%d", os.Getpid())
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join(root, rel)) })
	mods := append([]string(nil), modules...)
	sort.Strings(mods)
	gen := exec.Command("bash", append([]string{"scripts/multicall.sh", rel}, mods...)...)
	gen.Dir = root
	out, err := gen.CombinedOutput()
	require.NoError(t, err, "multicall.sh: %s", out)
	dir := t.TempDir()
	bin := filepath.Join(dir, "flightctl_dr_linux_"+runtime.GOARCH)
	build := exec.Command("go", "build", "-o", bin, "./"+rel+"/cmd")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err = build.CombinedOutput()
	require.NoError(t, err, "go build multicall: %s", out)
	require.NoError(t, os.Symlink(filepath.Base(bin), filepath.Join(dir, "AnsiballZ_"+filepath.Base(bin))))
	return bin
}
