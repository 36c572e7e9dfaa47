package estate_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The engines speak of the estates through their own interfaces (restore.Target, backup's
// source.Source, drill.EstateTarget); only the composition knows the estates
// (estate.OpenRestoreTarget, estate.OpenBackupSource, the modules). Nor do the engines
// import the Ansible or command-line layers.
var (
	engines = []string{
		"flightctl.dr/internal/archive",
		"flightctl.dr/internal/backup",
		"flightctl.dr/internal/backup/source",
		"flightctl.dr/internal/devprep",
		"flightctl.dr/internal/drill",
		"flightctl.dr/internal/restore",
	}
	notForEngines = []string{
		"flightctl.dr/internal/estate",
		"flightctl.dr/internal/ansiblemod",
		"flightctl.dr/internal/cli",
	}
)

// goDeps returns each package's imports, direct and indirect, as go list gives them
// (tests' imports are not among them).
func goDeps(t *testing.T, pkgs ...string) map[string][]string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := append([]string{"list", "-f", `{{.ImportPath}} {{join .Deps " "}}`}, pkgs...)
	cmd := exec.Command(gobin, args...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		t.Fatalf("go list: %v: %s", err, ee.Stderr)
	}
	require.NoError(t, err, "go list")
	deps := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		require.NotEmpty(t, f)
		deps[f[0]] = f[1:]
	}
	return deps
}

// forbiddenImports lists the packages of notForEngines that pkg's deps hold.
func forbiddenImports(deps []string) []string {
	var found []string
	for _, d := range deps {
		for _, f := range notForEngines {
			if d == f {
				found = append(found, d)
			}
		}
	}
	return found
}

func TestEnginesImportNoEstate(t *testing.T) {
	deps := goDeps(t, append(append([]string{}, engines...), "flightctl.dr/modules/flightctl_backup", "flightctl.dr/modules/flightctl_drill")...)
	for _, e := range engines {
		d, ok := deps[e]
		require.True(t, ok, "go list gave nothing for %s", e)
		assert.Empty(t, forbiddenImports(d), "%s must take what it needs through its own interfaces, composed by internal/estate or a module", e)
	}
	// The check sees such an import where there is one: the modules compose the estates.
	for _, m := range []string{"flightctl.dr/modules/flightctl_backup", "flightctl.dr/modules/flightctl_drill"} {
		assert.Contains(t, forbiddenImports(deps[m]), "flightctl.dr/internal/estate", m)
	}
}
