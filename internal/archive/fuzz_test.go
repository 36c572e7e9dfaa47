package archive

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func FuzzExtract(f *testing.F) {
	f.Add(gzipTar(f, upstreamEntries(f)))
	for _, tc := range evilCases(f) {
		f.Add(gzipTar(f, tc.entries))
	}
	// One of ours, with small blocks so it has several members.
	dir := f.TempDir()
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, blockSize: 1024})
	if err != nil {
		f.Fatal(err)
	}
	_, _ = w.AddStream("db/dump.sql", 0o600, time.Time{}, strings.NewReader(strings.Repeat("COPY 1;\n", 500)))
	_ = w.AddFile("pki/ca.crt", 0o644, time.Time{}, 4, strings.NewReader("cert"))
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	if err != nil {
		f.Fatal(err)
	}
	ours, _ := os.ReadFile(res.Path)
	f.Add(ours)

	limits := Limits{MaxEntries: 200, MaxEntrySize: 8 << 20, MaxTotalSize: 16 << 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		work := t.TempDir()
		archivePath := filepath.Join(work, "a.tar.gz")
		if err := os.WriteFile(archivePath, data, 0o600); err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(work, "root")
		rep, xerr := Extract(context.Background(), archivePath, root, VerifyOptions{Limits: limits})
		_, verr := Verify(context.Background(), archivePath, VerifyOptions{Limits: limits})
		if (xerr == nil) != (verr == nil) {
			t.Fatalf("Extract and Verify disagree: extract %v, verify %v", xerr, verr)
		}
		// Nothing outside the root: the work dir holds the archive and, on
		// success only, the root.
		ents, err := os.ReadDir(work)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() == "a.tar.gz" || (xerr == nil && e.Name() == "root") {
				continue
			}
			t.Fatalf("unexpected %s in the work dir (extract error: %v)", e.Name(), xerr)
		}
		if xerr != nil {
			return
		}
		// Inside the root: only regular files and directories, as reported.
		seen := 0
		err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if p == root {
				return nil
			}
			if !d.IsDir() && !d.Type().IsRegular() {
				t.Fatalf("%s is neither a file nor a directory", p)
			}
			info, _ := d.Info()
			if info.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
				t.Fatalf("%s kept a special mode bit: %v", p, info.Mode())
			}
			if d.IsDir() && info.Mode().Perm() != 0o700 {
				t.Fatalf("directory %s is %v", p, info.Mode())
			}
			seen++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if seen < len(rep.Entries) {
			t.Fatalf("%d entries reported, %d on disk", len(rep.Entries), seen)
		}
		_ = bytes.MinRead
	})
}
