// Package moduletest runs a module's real binary the way Ansible does: an arguments file
// in, exactly one JSON object expected on stdout. Every module's tests use it.
package moduletest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
)

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// Main runs a module package's tests and removes the binaries Build made. Use it as
// func TestMain(m *testing.M) { moduletest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	buildMu.Lock()
	for _, bin := range built {
		_ = os.RemoveAll(filepath.Dir(bin))
	}
	buildMu.Unlock()
	os.Exit(code)
}

// Build compiles the module package (an import path such as
// "flightctl.dr/modules/flightctl_archive_verify") once per test process and returns the
// binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	dir, err := os.MkdirTemp("", "flightctl-dr-module-")
	require.NoError(t, err)
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build %s: %s", pkg, out)
	// Ansible runs its copy of the binary as <tmp>/AnsiballZ_<module>: Run does the same.
	require.NoError(t, os.Symlink(filepath.Base(bin), ansiballz(bin)))
	built[pkg] = bin
	return bin
}

// ansiballz is the name Ansible gives its copy of the module binary bin.
func ansiballz(bin string) string {
	return filepath.Join(filepath.Dir(bin), "AnsiballZ_"+filepath.Base(bin))
}

// Result is one run of a module binary.
type Result struct {
	Out    map[string]any
	Stdout string
	Stderr string
	Code   int
}

// Run writes args to a file and runs bin on it as Ansible does, with extra environment
// variables env, and checks that stdout is exactly one JSON object.
func Run(t testing.TB, bin string, args map[string]any, env ...string) Result {
	t.Helper()
	b, err := json.Marshal(args)
	require.NoError(t, err)
	return RunFile(t, bin, b, env...)
}

// RunFile is Run with the arguments file's exact bytes, which need not be JSON: it checks
// how a module answers a file Ansible could not have written.
func RunFile(t testing.TB, bin string, content []byte, env ...string) Result {
	t.Helper()
	path := filepath.Join(t.TempDir(), "args")
	require.NoError(t, os.WriteFile(path, content, 0o600))
	if _, err := os.Lstat(ansiballz(bin)); err == nil {
		bin = ansiballz(bin)
	}
	cmd := exec.Command(bin, path)
	cmd.Env = append(os.Environ(), env...)
	return RunCommand(t, cmd)
}

// RunCommand runs cmd, a module binary given its arguments file (perhaps behind a wrapper
// such as unshare), and checks that stdout is exactly one JSON object.
func RunCommand(t testing.TB, cmd *exec.Cmd) Result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(stdout.Bytes()))
	require.NoError(t, dec.Decode(&out), "stdout must be one JSON object, got %q (stderr %q)", stdout.String(), stderr.String())
	require.False(t, dec.More(), "stdout must hold exactly one JSON object: %q", stdout.String())
	return Result{Out: out, Stdout: stdout.String(), Stderr: stderr.String(), Code: code}
}

// CheckSidecar fails t unless the sidecar documentation of module matches the options
// struct opts points to.
func CheckSidecar(t testing.TB, module string, opts any) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	path := filepath.Join(root, "collection", "plugins", "modules", module+".yml")
	problems, err := ansiblemod.CheckSidecar(path, module, opts)
	require.NoError(t, err)
	require.Empty(t, problems, "sidecar %s is out of step with the module's options", path)
}
