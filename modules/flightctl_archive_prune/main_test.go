package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/moduletest"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_archive_prune"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_archive_prune", &Options{})
}

// archives writes real archives made at the given days of November 2026.
func archives(t *testing.T, dir string, days ...int) []string {
	var names []string
	for _, d := range days {
		r := archivetest.Write(t, dir, archivetest.Content{
			Dump:     []byte("SELECT 1;\n"),
			Metadata: archive.Metadata{Timestamp: time.Date(2026, 11, d, 2, 0, 0, 0, time.UTC), Version: "1.0.0", DeploymentType: "podman", DatabaseIncluded: true},
		})
		names = append(names, filepath.Base(r.Path))
	}
	return names
}

func listDir(t *testing.T, dir string) []string {
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestPruneDirectory(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	dir := t.TempDir()
	names := archives(t, dir, 1, 2, 3, 4, 5)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "operator-notes.txt"), []byte("mine"), 0o600))
	// The newest archive is damaged: its content no longer matches its checksum.
	f, err := os.OpenFile(filepath.Join(dir, names[4]), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("XXXX"), 100)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	// Check mode: the plan, nothing removed.
	before := listDir(t, dir)
	r := moduletest.Run(t, bin, map[string]any{"path": dir, "keep_last": "2", "_ansible_check_mode": true})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	assert.Equal(t, before, listDir(t, dir))
	assert.Equal(t, names[3], r.Out["newest_verified"])
	plan := r.Out["plan"].([]any)
	require.Len(t, plan, 6)
	assert.True(t, strings.HasPrefix(plan[0].(string), "remove "+names[4]+"  (checksum does not verify"), plan[0])
	assert.Equal(t, "keep   "+names[3]+"  (newest verified, keep_last)", plan[1])
	assert.Equal(t, "keep   "+names[2]+"  (keep_last)", plan[2])
	assert.Equal(t, "remove "+names[1]+"  (no rule keeps it)", plan[3])
	assert.Equal(t, "ignore operator-notes.txt  (not an archive name this tool writes)", plan[5])

	// This run's archive must be the newest that verifies.
	r = moduletest.Run(t, bin, map[string]any{"path": dir, "keep_last": 2, "require_archive": filepath.Join(dir, names[4])})
	require.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "nothing pruned")
	assert.Equal(t, before, listDir(t, dir))

	r = moduletest.Run(t, bin, map[string]any{"path": dir, "keep_last": 2, "require_archive": names[3]})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, []any{names[4] + ".sha256", names[4], names[1] + ".sha256", names[1], names[0] + ".sha256", names[0]}, r.Out["deleted"])
	assert.Equal(t, []string{names[2], names[2] + ".sha256", names[3], names[3] + ".sha256", "operator-notes.txt"}, listDir(t, dir))

	// Nothing left to remove.
	r = moduletest.Run(t, bin, map[string]any{"path": dir, "keep_last": 2})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, false, r.Out["changed"])
}

func TestPruneRefusesBadPolicies(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	dir := t.TempDir()
	archives(t, dir, 1)
	for args, want := range map[string]map[string]any{
		"the retention policy is empty":    {"path": dir},
		"keep_within: duration \"a week\"": {"path": dir, "keep_within": "a week"},
		"give exactly one of path":         {"keep_last": 1},
		"no estate given":                  {"bucket": "b", "keep_last": 1},
	} {
		r := moduletest.Run(t, bin, want)
		require.Equal(t, true, r.Out["failed"], args)
		assert.Contains(t, r.Out["msg"], strings.Split(args, " (")[0])
	}
	assert.Len(t, listDir(t, dir), 2)
}

// TestPruneRemovesSignatures: in a directory, a pruned archive's signature goes after
// the archive; an orphan signature is reported and removed, never counted.
func TestPruneRemovesSignatures(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	dir := t.TempDir()
	names := archives(t, dir, 1, 2, 3)
	for _, n := range names {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n+".sig"), []byte("-----BEGIN SSH SIGNATURE-----\n"), 0o644))
	}
	orphan := "flightctl-backup-20261001T020000Z.tar.gz.sig"
	require.NoError(t, os.WriteFile(filepath.Join(dir, orphan), []byte("x"), 0o644))

	r := moduletest.Run(t, bin, map[string]any{"path": dir, "keep_last": 1, "require_archive": names[2]})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, []any{orphan}, r.Out["orphan_signatures"])
	assert.Equal(t, []any{names[1], names[0]}, r.Out["removed"])
	assert.Equal(t, []any{names[1] + ".sha256", names[1], names[1] + ".sig", names[0] + ".sha256", names[0], names[0] + ".sig", orphan}, r.Out["deleted"])
	assert.Equal(t, []string{names[2], names[2] + ".sha256", names[2] + ".sig"}, listDir(t, dir))
}
