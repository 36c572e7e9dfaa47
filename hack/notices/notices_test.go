package main

import (
	"debug/buildinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The notices list every module linked into a module binary (as the binary's own build
// information records it), each followed by a licence text.
func TestNoticesListEveryLinkedModule(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	t.Chdir(root)
	text, err := Generate([]string{"./modules/..."})
	require.NoError(t, err)
	require.Contains(t, text, "Go (runtime and standard library)")

	// Every module binary, built in one go build.
	binDir := t.TempDir()
	build := exec.Command("go", "build", "-o", binDir+"/", "./modules/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	bins, err := os.ReadDir(binDir)
	require.NoError(t, err)
	require.NotEmpty(t, bins)
	checked := 0
	for _, b := range bins {
		info, err := buildinfo.ReadFile(filepath.Join(binDir, b.Name()))
		require.NoError(t, err)
		for _, dep := range info.Deps {
			path, version := dep.Path, dep.Version
			if dep.Replace != nil {
				version = dep.Replace.Version
			}
			require.Contains(t, text, "\n  "+path+" "+version+"\n", "module %s linked into %s is not listed", path, b.Name())
			require.Regexp(t, "(?m)^"+regexpQuote(path+" "+version)+": ", text, "no licence text for %s", path)
			checked++
		}
	}
	require.Greater(t, checked, 10)
}

func regexpQuote(s string) string {
	r := strings.NewReplacer(".", `\.`, "+", `\+`, "(", `\(`, ")", `\)`, "/", "/")
	return r.Replace(s)
}

func TestLicenseFileNames(t *testing.T) {
	for _, n := range []string{"LICENSE", "LICENSE.txt", "License.md", "COPYING", "NOTICE", "PATENTS", "LICENSE-MIT", "LICENCE"} {
		require.True(t, isLicenseFile(n), n)
	}
	for _, n := range []string{"README.md", "licenses.go", "go.mod"} {
		require.False(t, isLicenseFile(n), n)
	}
}
