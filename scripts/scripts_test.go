// Package scripts holds the tests of the project's shell scripts.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// runTestSh runs a copy of test.sh in a scratch tree, with go and make replaced by
// scripts that print goOut and exit goCode / makeCode, and returns its output and exit code.
func runTestSh(t *testing.T, goOut string, goCode, makeCode int, env ...string) (string, int) {
	t.Helper()
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "scripts"), 0o755))
	src, err := os.ReadFile("test.sh")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "scripts", "test.sh"), src, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "go.out"), []byte(goOut), 0o644))
	fakeGo := filepath.Join(root, "fake-go")
	require.NoError(t, os.WriteFile(fakeGo, []byte("#!/bin/sh\ncat \""+root+"/go.out\"\nexit "+strconv.Itoa(goCode)+"\n"), 0o755))
	fakeMake := filepath.Join(root, "fake-make")
	require.NoError(t, os.WriteFile(fakeMake, []byte("#!/bin/sh\necho make \"$@\" >> \""+root+"/make.calls\"\nexit "+strconv.Itoa(makeCode)+"\n"), 0o755))
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "test.sh"))
	cmd.Env = append(os.Environ(), append([]string{"GO=" + fakeGo, "MAKE=" + fakeMake, "FLIGHTCTL_DR_TEST_CONTINUE="}, env...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return string(out), code
}

const goFailed = "ok  \tflightctl.dr/internal/a\t0.1s\n" +
	"--- FAIL: TestX (0.00s)\nFAIL\nFAIL\tflightctl.dr/internal/b\t0.2s\n" +
	"?   \tflightctl.dr/internal/c\t[no test files]\n" +
	"    --- SKIP: TestY (0.00s)\nok  \tflightctl.dr/internal/d\t0.1s\nFAIL\n"

// test.sh printed "ansible suites ok" when the Go tests had failed and the Ansible suites
// had not run at all.
func TestTestShSaysTheAnsibleSuitesDidNotRun(t *testing.T) {
	out, code := runTestSh(t, goFailed, 1, 0)
	require.Equal(t, 1, code)
	require.Contains(t, out, "go: 3 packages ran: 2 passed, 1 failed (flightctl.dr/internal/b); 1 without tests; 1 tests skipped")
	require.Contains(t, out, "ansible suites (make test-ansible): skipped: the Go tests failed")
	require.NotContains(t, out, "ansible suites ok")
	require.NotContains(t, out, ": ran, passed")
	require.True(t, strings.HasSuffix(out, "result: FAILED\n"), out)
}

func TestTestShEverythingPassed(t *testing.T) {
	out, code := runTestSh(t, "ok  \tflightctl.dr/internal/a\t0.1s\n", 0, 0)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "go: 1 packages ran: 1 passed, 0 failed")
	require.Contains(t, out, "ansible suites (make test-ansible): ran, passed")
	require.True(t, strings.HasSuffix(out, "result: passed\n"), out)
}

func TestTestShAnsibleFailed(t *testing.T) {
	out, code := runTestSh(t, "ok  \tflightctl.dr/internal/a\t0.1s\n", 0, 2)
	require.Equal(t, 1, code)
	require.Contains(t, out, "ansible suites (make test-ansible): ran, failed (exit 2)")
	require.True(t, strings.HasSuffix(out, "result: FAILED\n"), out)
}

// go test can fail before it reports any package (a broken go.mod): still a failure.
func TestTestShGoFailedBeforeAnyPackage(t *testing.T) {
	out, code := runTestSh(t, "go: updates to go.mod needed\n", 1, 0)
	require.Equal(t, 1, code)
	require.Contains(t, out, "go: 0 packages ran: 0 passed, 0 failed")
	require.Contains(t, out, "go test itself failed (exit 1) before reporting a package")
	require.Contains(t, out, "skipped: the Go tests failed")
}

func TestTestShContinueRunsAnsibleAfterGoFailed(t *testing.T) {
	out, code := runTestSh(t, goFailed, 1, 0, "FLIGHTCTL_DR_TEST_CONTINUE=1")
	require.Equal(t, 1, code)
	require.Contains(t, out, "ansible suites (make test-ansible): ran, passed")
	require.True(t, strings.HasSuffix(out, "result: FAILED\n"), out)
}
