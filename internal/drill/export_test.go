package drill

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CheckPKIDir runs the PKI check on a directory laid out as pki/ of a Podman archive.
func CheckPKIDir(t testing.TB, dir string, now time.Time) *PKIReport {
	t.Helper()
	p := newPKIFiles()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		p.add("pki/"+filepath.ToSlash(rel), b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return checkPKI(p, now, 30, "")
}
