package archive

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"flightctl.dr/internal/runner"
)

// benchData is SQL-like text, the shape of a pg_dump.
var benchData = textish(42, 64<<20)

// BenchmarkAddStream measures the writer on a 64 MiB stream (MB/s of input),
// and the cost of re-hashing after the size patch (rehash-ms).
func BenchmarkAddStream(b *testing.B) {
	dir := b.TempDir()
	b.SetBytes(int64(len(benchData)))
	var rehash time.Duration
	for b.Loop() {
		w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, Now: func() time.Time { return time.Unix(0, 0) }})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(benchData)); err != nil {
			b.Fatal(err)
		}
		res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
		if err != nil {
			b.Fatal(err)
		}
		rehash += w.rehash
		b.StopTimer()
		os.Remove(res.Path)
		os.Remove(res.ChecksumPath)
		b.StartTimer()
	}
	b.ReportMetric(float64(rehash.Milliseconds())/float64(b.N), "rehash-ms/op")
}

// BenchmarkGzipCLI is `gzip -c` (default level 6) on the same data, for
// comparison with BenchmarkAddStream.
func BenchmarkGzipCLI(b *testing.B) {
	requireTool(b, "gzip")
	src := filepath.Join(b.TempDir(), "data")
	if err := os.WriteFile(src, benchData, 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchData)))
	for b.Loop() {
		in, err := os.Open(src)
		if err != nil {
			b.Fatal(err)
		}
		err = runner.Exec{}.Run(context.Background(), runner.Cmd{Name: "gzip", Args: []string{"-c"}, Stdin: in, Stdout: io.Discard})
		in.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures Verify on an archive of the same data (MB/s of
// compressed archive).
func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(benchData)); err != nil {
		b.Fatal(err)
	}
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(res.Size)
	for b.Loop() {
		if _, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true}); err != nil {
			b.Fatal(err)
		}
	}
}
