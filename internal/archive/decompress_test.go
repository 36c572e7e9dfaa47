package archive

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// NewGzipReader gives the same bytes as the standard library's gzip reader,
// for our parallel members and for upstream's single member, and refuses a
// corrupted member with an error of the standard library's kinds.
func TestNewGzipReader(t *testing.T) {
	dump := textish(7, 3<<20+12345)
	w := newTestWriter(t, t.TempDir(), 64<<10)
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(dump))
	require.NoError(t, err)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	ours, err := os.ReadFile(res.Path)
	require.NoError(t, err)

	for name, data := range map[string][]byte{"ours": ours, "upstream": gzipTar(t, upstreamEntries(t))} {
		t.Run(name, func(t *testing.T) {
			std, err := gzip.NewReader(bytes.NewReader(data))
			require.NoError(t, err)
			want, err := io.ReadAll(std)
			require.NoError(t, err)

			r, err := NewGzipReader(bytes.NewReader(data))
			require.NoError(t, err)
			got, err := io.ReadAll(r)
			require.NoError(t, err)
			require.NoError(t, r.Close())
			assert.True(t, bytes.Equal(want, got), "inflated %d bytes, want %d", len(got), len(want))
		})
	}

	// A flipped byte inside a compressed member of ours: a CRC, length or
	// deflate error, never silently different bytes.
	bad := bytes.Clone(ours)
	bad[len(bad)/2] ^= 0x10
	r, err := NewGzipReader(bytes.NewReader(bad))
	require.NoError(t, err)
	_, err = io.ReadAll(r)
	require.NoError(t, r.Close())
	require.Error(t, err)
	var corrupt flate.CorruptInputError
	isKnown := errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.As(err, &corrupt)
	assert.True(t, isKnown, "unexpected error kind: %v", err)

	// Closing before the end stops the goroutines without reading the rest.
	r, err = NewGzipReader(bytes.NewReader(ours))
	require.NoError(t, err)
	_, err = io.ReadFull(r, make([]byte, 1000))
	require.NoError(t, err)
	require.NoError(t, r.Close())

	// Verify still accepts the archive read through a context.
	_, err = Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
}

// Every compression level gives an archive that gzip(1), tar(1), the standard
// library and Verify read back to the same bytes, and a higher level is never
// much larger than a lower one on SQL-like text.
func TestEveryCompressionLevel(t *testing.T) {
	requireTool(t, "gzip")
	requireTool(t, "tar")
	dump := textish(11, 2<<20+777)
	sizes := map[int]int64{}
	for level := 0; level <= 9; level++ {
		out := t.TempDir()
		w, err := NewWriter(context.Background(), WriterOptions{Dir: out, Now: func() time.Time { return fixedNow }, CompressionLevel: level, Compression: CompressionFixed, blockSize: 256 << 10})
		require.NoError(t, err)
		_, err = w.AddStream(DatabaseDump, 0o600, time.Time{}, bytes.NewReader(dump))
		require.NoError(t, err)
		res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
		require.NoError(t, err, "level %d", level)
		sizes[level] = res.Size

		runTool(t, out, "gzip", "-t", res.Path)
		assert.Equal(t, string(dump), runTool(t, out, "tar", "-xzOf", res.Path, DatabaseDump), "level %d", level)
		data, err := os.ReadFile(res.Path)
		require.NoError(t, err)
		std, err := gzip.NewReader(bytes.NewReader(data))
		require.NoError(t, err)
		_, err = io.Copy(io.Discard, std)
		require.NoError(t, err, "level %d: the standard library refuses the archive", level)
		rep, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
		require.NoError(t, err, "level %d", level)
		assert.Equal(t, int64(len(dump)), rep.Entries[0].Size)
	}
	assert.Equal(t, sizes[DefaultCompressionLevel], sizes[0], "level 0 means the default level")
	assert.Less(t, sizes[1], int64(len(dump)/2), "level 1 still compresses")
	assert.LessOrEqual(t, sizes[9], sizes[1]*105/100, "level 9 is not much larger than level 1")
}
