// Package scripts holds the tests of the project's shell scripts.
package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
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

// runEstatesSh sources a copy of tests/integration/estates.sh in a checkout at root, with
// the sandbox command replaced by a fake one (there is no sandbox to start here: what is
// checked is the prefix the script asks for), and returns the prefixes it asked for.
func runEstatesSh(t *testing.T, root string) []string {
	t.Helper()
	for src, dst := range map[string]string{
		"../tests/integration/estates.sh": "tests/integration/estates.sh",
		"checkout-tag.sh":                 "scripts/checkout-tag.sh",
	} {
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(filepath.Join(root, filepath.Dir(dst)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, dst), b, 0o644))
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "tests/integration/fleet"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "tests/integration/fleet/inventory.py"), nil, 0o644))
	calls := filepath.Join(root, "sandbox.calls")
	require.NoError(t, os.RemoveAll(calls))
	fakeSandbox := filepath.Join(root, "fake-sandbox")
	require.NoError(t, os.WriteFile(fakeSandbox, []byte("#!/bin/sh\necho \"$@\" >> \""+calls+"\"\n"), 0o755))
	cmd := exec.Command("bash", "-c", `set -e; suite=pair estates="site-a:pairx-:3 site-b:pairy-:2"; . tests/integration/estates.sh`)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PAIR_SANDBOX="+fakeSandbox, "PAIR_WORK="+filepath.Join(root, "work"))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	b, err := os.ReadFile(calls)
	require.NoError(t, err)
	var prefixes []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		for i := range f[:len(f)-1] {
			if f[i] == "--prefix" {
				prefixes = append(prefixes, f[i+1])
			}
		}
	}
	return prefixes
}

// The integration suites named their sandboxes' containers with fixed prefixes (itest-,
// fleeta-, …) in podman's machine-wide storage, so a second test run on the machine at
// the same time failed with "a container itest-flightctl-db already exists".
func TestIntegrationSandboxesAreNamedAfterTheCheckout(t *testing.T) {
	base := t.TempDir()
	a := runEstatesSh(t, filepath.Join(base, "a", "main"))
	b := runEstatesSh(t, filepath.Join(base, "b", "main"))
	again := runEstatesSh(t, filepath.Join(base, "a", "main"))
	require.Len(t, a, 2)
	require.Len(t, b, 2)
	for i, want := range []string{"pairx-", "pairy-"} {
		assert.True(t, strings.HasPrefix(a[i], want) && len(a[i]) > len(want), a[i])
		assert.NotEqual(t, a[i], b[i], "two checkouts give their sandboxes the same names")
	}
	assert.Equal(t, a, again, "a re-run in the same checkout must find what an earlier run left")

	// The other suites take the same tag.
	for _, f := range []string{"../tests/integration/run.sh", "molecule.sh"} {
		s, err := os.ReadFile(f)
		require.NoError(t, err)
		assert.Contains(t, string(s), `scripts/checkout-tag.sh"`, f)
	}
	run, err := os.ReadFile("../tests/integration/run.sh")
	require.NoError(t, err)
	assert.Contains(t, string(run), `--prefix "itest-$checkout_tag-"`)
	vars, err := os.ReadFile("../molecule/podman_host/vars/main.yml")
	require.NoError(t, err)
	assert.Contains(t, string(vars), "FLIGHTCTL_DR_CHECKOUT_TAG")
}
