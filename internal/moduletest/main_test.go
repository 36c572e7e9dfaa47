package moduletest_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Build leaves its binaries in a temporary directory that only Main removes: a test
// package that builds modules without Main as its TestMain leaves a directory in /tmp on
// every run. Every such package in the tree has it.
func TestEveryBuilderRemovesItsBinaries(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	builds, mains := map[string]bool{}, map[string]bool{}
	require.NoError(t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		if strings.Contains(string(b), "moduletest.Build(") {
			builds[dir] = true
		}
		if strings.Contains(string(b), "moduletest.Main(m)") {
			mains[dir] = true
		}
		return nil
	}))
	require.NotEmpty(t, builds)
	for dir := range builds {
		require.True(t, mains[dir], "%s builds module binaries but has no func TestMain(m *testing.M) { moduletest.Main(m) }: each run leaves them in the temporary directory", dir)
	}
}
