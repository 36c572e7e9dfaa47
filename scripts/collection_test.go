package scripts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

// checkoutCopy puts the checkout's files (tracked and new, as the next commit would hold
// them) into a fresh git repository and returns its path.
func checkoutCopy(t *testing.T) string {
	t.Helper()
	testbed.Need(t, "git")
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	ls := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	ls.Dir = root
	out, err := ls.Output()
	require.NoError(t, err)
	repo := filepath.Join(t.TempDir(), "repo")
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, f)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the working tree, or a link
		}
		b, err := os.ReadFile(src)
		require.NoError(t, err)
		dst := filepath.Join(repo, f)
		require.NoError(t, os.MkdirAll(filepath.Dir(dst), 0o755))
		require.NoError(t, os.WriteFile(dst, b, fi.Mode().Perm()))
	}
	for _, args := range [][]string{{"init", "-q"}, {"add", "-A"}, {"-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "copy"}} {
		c := exec.Command("git", args...)
		c.Dir = repo
		b, err := c.CombinedOutput()
		require.NoError(t, err, string(b))
	}
	return repo
}

// `ansible-galaxy collection install git+<repo>` said "installed successfully" and installed
// Go sources and no module: the collection is built by `make collection` (it compiles the
// modules), so an install from the repository must fail, and say so, installing nothing.
func TestGalaxyInstallFromGitFailsLoudly(t *testing.T) {
	testbed.Need(t, "ansible-galaxy")
	repo := checkoutCopy(t)
	into := filepath.Join(t.TempDir(), "collections")
	for _, src := range []string{"git+file://" + repo, "git+file://" + repo + "#/collection/"} {
		cmd := exec.Command("ansible-galaxy", "collection", "install", "-p", into, src)
		cmd.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "HOME="+t.TempDir())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		require.Error(t, err, "ansible-galaxy collection install %s succeeded:\n%s", src, out.String())
		require.Contains(t, out.String(), "ERROR!", src)
		require.NotContains(t, out.String(), "was installed successfully", src)
		if !strings.Contains(src, "#") {
			require.Contains(t, out.String(), "run make collection", "the refusal of %s does not say what to do", src)
		}
		_, statErr := os.Stat(filepath.Join(into, "ansible_collections", "flightctl", "dr"))
		require.True(t, os.IsNotExist(statErr), "%s installed something", src)
	}
}

// runSanity runs ansible-sanity.sh on dir with ansible-test replaced by a script that prints
// the ignore file it was given and exits 0 (ansible-test itself needs a built collection).
func runSanity(t *testing.T, dir string) (string, int) {
	t.Helper()
	return runSanityScript(t, "ansible-sanity.sh", dir)
}

func runSanityScript(t *testing.T, script, dir string) (string, int) {
	t.Helper()
	bin := t.TempDir()
	fake := "#!/bin/sh\necho \"fake ansible-test $*\"\ncat tests/sanity/ignore-2.14.txt 2>/dev/null | sed 's/^/ignore: /'\nexit 0\n"
	require.NoError(t, os.WriteFile(filepath.Join(bin, "ansible-test"), []byte(fake), 0o755))
	cmd := exec.Command("bash", script, dir)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return string(out), code
}

// fakeCheckout is a checkout holding ansible-sanity.sh and the given tests/sanity/ignore-2.14.txt.
func fakeCheckout(t *testing.T, ignores string) string {
	t.Helper()
	repo := t.TempDir()
	script, err := os.ReadFile("ansible-sanity.sh")
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(repo, "scripts"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "scripts", "ansible-sanity.sh"), script, 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(repo, "tests", "sanity"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(repo, "tests", "sanity", "ignore-2.14.txt"), []byte(ignores), 0o644))
	return filepath.Join(repo, "scripts", "ansible-sanity.sh")
}

// ansible-sanity.sh exited 1 without a word when the collection had no tests/sanity: it
// says which ignore file it uses and runs the tests.
func TestAnsibleSanityWithoutTestsSanity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ansible_collections", "flightctl", "dr")
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "plugins", "modules"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plugins", "modules", "flightctl_backup.py"), []byte("x"), 0o644))
	script := fakeCheckout(t, "plugins/modules/flightctl_backup.py shebang\nplugins/modules/flightctl_restore.py shebang\n")
	out, code := runSanityScript(t, script, dir)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "ships no tests/sanity", out)
	require.Contains(t, out, "fake ansible-test sanity", out)
	// Only the lines for files the collection has are kept.
	require.Contains(t, out, "ignore: plugins/modules/flightctl_backup.py shebang", out)
	require.NotContains(t, out, "flightctl_restore.py", out)
}

// The shipped ignore file held `validate-modules!skip` for the multicall binaries, which Red
// Hat's certification does not accept (ansible-lint's sanity rule): an ignore off the
// allow-list fails the run, naming the line, before ansible-test runs.
func TestAnsibleSanityRefusesIgnoresOffTheAllowList(t *testing.T) {
	for name, tc := range map[string]struct{ ignores, want string }{
		"not allowed": {
			"plugins/modules/flightctl_backup.py shebang\nplugins/modules/flightctl_dr_linux_amd64 validate-modules!skip\n",
			"ignore-2.14.txt:2: validate-modules!skip is not on the certification allow-list",
		},
		"not allowed, a code": {
			"plugins/action/flightctl_backup.py pylint:unused-import\n",
			"ignore-2.14.txt:1: pylint:unused-import is not on the certification allow-list",
		},
		"no test": {"plugins/modules/flightctl_backup.py\n", "ignore-2.14.txt:1: 'plugins/modules/flightctl_backup.py' is not one path and one test"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ansible_collections", "flightctl", "dr")
			require.NoError(t, os.MkdirAll(filepath.Join(dir, "tests", "sanity"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "tests", "sanity", "ignore-2.14.txt"), []byte(tc.ignores), 0o644))
			out, code := runSanity(t, dir)
			require.NotEqual(t, 0, code, out)
			require.Contains(t, out, tc.want, out)
			require.NotContains(t, out, "fake ansible-test", out)
			require.NotContains(t, out, ":1: shebang", out)
		})
	}
}

// Every ignore the collection ships (the checkout's tests/sanity, and the built collection's
// when there is one) is on the certification allow-list.
func TestShippedSanityIgnoresAreAllowListed(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "tests", "sanity", "ignore-*.txt"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "the checkout has no tests/sanity/ignore-*.txt")
	sources := map[string][]string{"checkout": files}
	if built, _ := filepath.Glob(filepath.Join("..", "build", "ansible_collections", "flightctl", "dr", "tests", "sanity", "ignore-*.txt")); len(built) > 0 {
		sources["built collection"] = built
	}
	for name, files := range sources {
		dir := filepath.Join(t.TempDir(), "ansible_collections", "flightctl", "dr")
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "tests", "sanity"), 0o755))
		for _, f := range files {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(dir, "tests", "sanity", filepath.Base(f)), b, 0o644))
		}
		out, code := runSanity(t, dir)
		require.Equal(t, 0, code, "%s: %s", name, out)
		require.NotContains(t, out, "allow-list", "%s: %s", name, out)
		require.Contains(t, out, "fake ansible-test sanity", "%s: %s", name, out)
	}
}

// A collection directory that does not exist is an error that names it.
func TestAnsibleSanityWithoutCollection(t *testing.T) {
	out, code := runSanity(t, filepath.Join(t.TempDir(), "missing"))
	require.NotEqual(t, 0, code, out)
	require.Contains(t, out, "missing", out)
	require.Contains(t, out, "make collection", out)
}
