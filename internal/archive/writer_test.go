package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var upstreamNameRE = regexp.MustCompile(`^flightctl-backup-\d{8}T\d{6}Z\.tar\.gz$`)

var fixedNow = time.Date(2026, 11, 21, 7, 4, 7, 123456789, time.UTC)

func newTestWriter(t *testing.T, dir string, blockSize int) *Writer {
	t.Helper()
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, Now: func() time.Time { return fixedNow }, Concurrency: 2, blockSize: blockSize})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Abort() })
	return w
}

// textish returns n bytes that compress like a SQL dump, roughly.
func textish(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"INSERT", "INTO", "devices", "VALUES", "(", ")", "'", "00000000-0000-0000-0000-000000000000", "\n", "COPY", "public.", "resource_version", "{\"metadata\":", "\t"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(4) == 0 {
			b.WriteString(hex.EncodeToString([]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())}))
		}
		b.WriteByte(' ')
	}
	return b.Bytes()[:n]
}

func TestWriterRoundTrip(t *testing.T) {
	for _, blockSize := range []int{4096, defaultBlockSize} {
		t.Run(map[int]string{4096: "small-blocks", defaultBlockSize: "default-blocks"}[blockSize], func(t *testing.T) {
			out := t.TempDir()
			src := t.TempDir()
			require.NoError(t, os.MkdirAll(filepath.Join(src, "client-signer"), 0o700))
			require.NoError(t, os.WriteFile(filepath.Join(src, "ca.crt"), []byte("cert"), 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(src, "client-signer", "ca.key"), []byte("secret key"), 0o600))
			require.NoError(t, os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\n"), 0o755))
			require.NoError(t, os.Chmod(filepath.Join(src, "run.sh"), 0o755|os.ModeSetuid))

			dump := textish(1, 300_000)
			w := newTestWriter(t, out, blockSize)
			require.NoError(t, w.AddDir("db", 0o755, time.Time{}))
			n, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(dump))
			require.NoError(t, err)
			assert.Equal(t, int64(len(dump)), n)
			files, err := w.AddTree("pki", src)
			require.NoError(t, err)
			assert.Equal(t, 3, files)
			require.NoError(t, w.AddDir("config", 0o700, time.Time{}))
			conf := []byte("db:\n  name: flightctl\n")
			require.NoError(t, w.AddFile("config/service-config.yaml", 0o600, time.Time{}, int64(len(conf)), bytes.NewReader(conf)))
			res, err := w.Commit(Metadata{Version: "v1.4.0", DeploymentType: DeploymentPodman, DatabaseIncluded: true, Producer: "flightctl.dr test"})
			require.NoError(t, err)

			// Name, modes, checksum file.
			assert.Equal(t, filepath.Join(out, "flightctl-backup-20261121T070407Z.tar.gz"), res.Path)
			assert.Regexp(t, upstreamNameRE, filepath.Base(res.Path))
			assert.Equal(t, []string{filepath.Base(res.Path), filepath.Base(res.Path) + ".sha256"}, names(listTree(t, out)))
			tree := listTree(t, out)
			assert.Equal(t, os.FileMode(0o600), tree[filepath.Base(res.Path)].Perm())
			assert.Equal(t, os.FileMode(0o644), tree[filepath.Base(res.Path)+".sha256"].Perm())
			data, err := os.ReadFile(res.Path)
			require.NoError(t, err)
			sum := sha256.Sum256(data)
			assert.Equal(t, hex.EncodeToString(sum[:]), res.SHA256)
			assert.Equal(t, int64(len(data)), res.Size)
			sumFile, err := os.ReadFile(res.ChecksumPath)
			require.NoError(t, err)
			assert.Equal(t, res.SHA256+"  "+filepath.Base(res.Path)+"\n", string(sumFile))
			assert.Contains(t, runTool(t, out, "sha256sum", "-c", filepath.Base(res.ChecksumPath)), ": OK")
			runTool(t, out, "gzip", "-t", res.Path)
			listing := runTool(t, out, "tar", "tzf", res.Path)
			assert.Contains(t, listing, "db/dump.sql\n")
			assert.Contains(t, listing, "metadata.json\n")

			// Upstream's reader: plain archive/tar + gzip, metadata.json with the 4 keys.
			plain := readPlain(t, res.Path)
			assert.Equal(t, dump, plain["db/dump.sql"])
			assert.Equal(t, "secret key", string(plain["pki/client-signer/ca.key"]))
			var four map[string]any
			require.NoError(t, json.Unmarshal(plain["metadata.json"], &four))
			assert.Equal(t, "v1.4.0", four["version"])
			assert.Equal(t, "podman", four["deploymentType"])
			assert.Equal(t, true, four["databaseIncluded"])
			ts, err := time.Parse(time.RFC3339Nano, four["timestamp"].(string))
			require.NoError(t, err)
			assert.True(t, ts.Equal(fixedNow))
			assert.False(t, strings.HasSuffix(string(plain["metadata.json"]), "\n"))

			// Verify.
			rep, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true, ExpectedVersion: "v1.4.0", ExpectedDeploymentType: "podman"})
			require.NoError(t, err)
			assert.True(t, rep.ChecksumVerified)
			assert.True(t, rep.HasManifest)
			assert.Equal(t, res.SHA256, rep.SHA256)
			assert.Equal(t, Components{Database: true, PKI: true, Config: true}, rep.Components)
			assert.Equal(t, FormatVersion, rep.Metadata.FormatVersion)
			assert.Len(t, rep.Metadata.Manifest, 9)
			byPath := map[string]Entry{}
			for _, e := range rep.Entries {
				byPath[e.Path] = e
			}
			dumpSum := sha256.Sum256(dump)
			assert.Equal(t, Entry{Path: "db/dump.sql", Type: TypeFile, Size: int64(len(dump)), Mode: "0600", SHA256: hex.EncodeToString(dumpSum[:])}, byPath["db/dump.sql"])
			assert.Equal(t, "0755", byPath["pki/run.sh"].Mode, "setuid dropped, permissions kept")
			assert.Equal(t, "0700", byPath["pki/client-signer"].Mode)

			// Extract.
			dest := filepath.Join(t.TempDir(), "restore")
			_, err = Extract(context.Background(), res.Path, dest, VerifyOptions{RequireChecksum: true})
			require.NoError(t, err)
			got := listTree(t, dest)
			assert.Equal(t, []string{"config", "config/service-config.yaml", "db", "db/dump.sql", "metadata.json", "pki", "pki/ca.crt", "pki/client-signer", "pki/client-signer/ca.key", "pki/run.sh"}, names(got))
			assert.Equal(t, os.FileMode(0o700)|os.ModeDir, got["db"])
			assert.Equal(t, os.FileMode(0o644), got["pki/ca.crt"])
			assert.Equal(t, os.FileMode(0o755), got["pki/run.sh"])
			restored, err := os.ReadFile(filepath.Join(dest, "db", "dump.sql"))
			require.NoError(t, err)
			assert.Equal(t, dump, restored)
		})
	}
}

func TestWriterEmptyStreamAndNoEntries(t *testing.T) {
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	n, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, strings.NewReader(""))
	require.NoError(t, err)
	assert.Zero(t, n)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentKubernetes, DatabaseIncluded: true})
	require.NoError(t, err)
	rep, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	assert.Equal(t, Components{Database: true}, rep.Components)
	runTool(t, out, "gzip", "-t", res.Path)
}

func TestWriterRefusesBadNames(t *testing.T) {
	w := newTestWriter(t, t.TempDir(), 0)
	for _, name := range []string{"", "/etc/passwd", "../x", "a/../b", "./a", "a/", "a//b", "metadata.json"} {
		assert.Error(t, w.AddFile(name, 0o600, time.Time{}, 1, strings.NewReader("x")), name)
	}
	require.NoError(t, w.AddFile("pki/a", 0o600, time.Time{}, 1, strings.NewReader("x")))
	assert.ErrorContains(t, w.AddFile("pki/a", 0o600, time.Time{}, 1, strings.NewReader("x")), "already in the archive")
	assert.ErrorContains(t, w.AddFile("pki/a/b", 0o600, time.Time{}, 1, strings.NewReader("x")), "which is a file")
	assert.ErrorContains(t, w.AddFile("pki", 0o600, time.Time{}, 1, strings.NewReader("x")), "used as a directory")
	// Names were checked before anything was written: the archive is still good.
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	require.NoError(t, err)
	_, err = Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
}

func TestWriterShortSourceFails(t *testing.T) {
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	err := w.AddFile("pki/a", 0o600, time.Time{}, 10, strings.NewReader("short"))
	require.ErrorContains(t, err, "ended after 5 of 10 bytes")
	_, err = w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	require.Error(t, err)
	assert.Empty(t, listTree(t, out))
}

func TestAddTreeRefusesSpecialFiles(t *testing.T) {
	for name, mk := range map[string]func(p string) error{
		"symlink": func(p string) error { return os.Symlink("/etc/passwd", p) },
		"fifo":    func(p string) error { return syscall.Mkfifo(p, 0o600) },
	} {
		t.Run(name, func(t *testing.T) {
			src := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o600))
			bad := filepath.Join(src, "b-"+name)
			require.NoError(t, mk(bad))
			out := t.TempDir()
			w := newTestWriter(t, out, 0)
			_, err := w.AddTree("pki", src)
			require.Error(t, err)
			assert.Contains(t, err.Error(), bad)
			require.NoError(t, w.Abort())
			assert.Empty(t, listTree(t, out))
		})
	}
}

func TestTwoWritersSameSecondBothSurvive(t *testing.T) {
	out := t.TempDir()
	var paths []string
	ws := []*Writer{newTestWriter(t, out, 0), newTestWriter(t, out, 0)}
	for i, w := range ws {
		body := []byte(strings.Repeat("x", i+1))
		require.NoError(t, w.AddFile("pki/a", 0o600, time.Time{}, int64(len(body)), bytes.NewReader(body)))
	}
	for _, w := range ws {
		res, err := w.Commit(Metadata{Timestamp: fixedNow, Version: "v1", DeploymentType: DeploymentPodman})
		require.NoError(t, err)
		paths = append(paths, res.Path)
	}
	assert.Equal(t, "flightctl-backup-20261121T070407Z.tar.gz", filepath.Base(paths[0]))
	assert.Equal(t, "flightctl-backup-20261121T070408Z.tar.gz", filepath.Base(paths[1]))
	for i, p := range paths {
		rep, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: true})
		require.NoError(t, err)
		assert.Equal(t, Entry{Path: "pki/a", Type: TypeFile, Size: int64(i + 1), Mode: "0600", SHA256: rep.Entries[0].SHA256}, rep.Entries[0])
		assert.Regexp(t, upstreamNameRE, filepath.Base(p))
	}
	assert.Len(t, listTree(t, out), 4)
	assert.Contains(t, runTool(t, out, "sha256sum", "-c", filepath.Base(paths[1])+".sha256"), "OK")
}

func TestAbortLeavesNothing(t *testing.T) {
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(textish(2, 3<<20)))
	require.NoError(t, err)
	require.NoError(t, w.Abort())
	require.NoError(t, w.Abort(), "idempotent")
	assert.Empty(t, listTree(t, out))
	_, err = w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	assert.ErrorContains(t, err, "aborted")

	// Abort after Commit does nothing.
	w = newTestWriter(t, out, 0)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	require.NoError(t, err)
	require.NoError(t, w.Abort())
	assert.FileExists(t, res.Path)
	assert.FileExists(t, res.ChecksumPath)
}

// blockingReader yields data, then blocks until its context is done.
type blockingReader struct {
	ctx  context.Context
	data *bytes.Reader
	sent chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.data.Len() > 0 {
		return b.data.Read(p)
	}
	if b.sent != nil {
		close(b.sent)
		b.sent = nil
	}
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

func TestCancelledContextLeavesNothing(t *testing.T) {
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := NewWriter(ctx, WriterOptions{Dir: out})
	require.NoError(t, err)
	sent := make(chan struct{})
	src := &blockingReader{ctx: ctx, data: bytes.NewReader(textish(3, 2<<20)), sent: sent}
	errc := make(chan error, 1)
	go func() {
		_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
		errc <- err
	}()
	<-sent
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	_, err = w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	require.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, listTree(t, out))

	// Cancelled while idle: the writer aborts by itself.
	ctx2, cancel2 := context.WithCancel(context.Background())
	w2, err := NewWriter(ctx2, WriterOptions{Dir: out})
	require.NoError(t, err)
	require.NoError(t, w2.AddFile("a", 0o600, time.Time{}, 1, strings.NewReader("x")))
	cancel2()
	require.Eventually(t, func() bool { return w2.AddDir("b", 0o700, time.Time{}) != nil }, 10*time.Second, time.Millisecond)
	assert.Empty(t, listTree(t, out))
}

func TestAddStreamLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 50 MiB")
	}
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	const size = 50 << 20
	stream := io.LimitReader(&repeatReader{data: textish(4, 1<<20)}, size)
	h := sha256.New()
	n, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, io.TeeReader(stream, h))
	require.NoError(t, err)
	require.Equal(t, int64(size), n)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)

	runTool(t, out, "gzip", "-t", res.Path)
	listing := runTool(t, out, "tar", "tvzf", res.Path)
	assert.Regexp(t, `52428800 .* db/dump.sql`, listing)
	assert.Contains(t, runTool(t, out, "sha256sum", "-c", filepath.Base(res.ChecksumPath)), "OK")
	rep, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	assert.Equal(t, hex.EncodeToString(h.Sum(nil)), rep.Entries[0].SHA256)
	// Go's plain reader (upstream's restore) reads the stream back.
	plain := readPlain(t, res.Path)
	got := sha256.Sum256(plain["db/dump.sql"])
	assert.Equal(t, hex.EncodeToString(h.Sum(nil)), hex.EncodeToString(got[:]))
}

type repeatReader struct {
	data []byte
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}

func TestHeaderSizeBase256(t *testing.T) {
	const size = 9 << 30 // past USTAR's 8 GiB
	hdr, err := tarHeader("db/dump.sql", '0', 0o600, fixedNow, size, true)
	require.NoError(t, err)
	require.Len(t, hdr, blockLen)
	assert.Equal(t, byte(0x80), hdr[124])
	got, err := readHeaderOnly(hdr)
	require.NoError(t, err)
	assert.Equal(t, int64(size), got.Size)
	assert.Equal(t, "db/dump.sql", got.Name)

	small, err := tarHeader("db/dump.sql", '0', 0o600, fixedNow, 12345, true)
	require.NoError(t, err)
	got, err = readHeaderOnly(small)
	require.NoError(t, err)
	assert.Equal(t, int64(12345), got.Size)
}

func TestStoredMemberLength(t *testing.T) {
	a := storedMember(make([]byte, blockLen))
	b := storedMember(bytes.Repeat([]byte{0xff}, blockLen))
	assert.Len(t, a, storedMemberLen)
	assert.Len(t, b, storedMemberLen)
}

// Where O_TMPFILE is missing the archive is written under a hidden name,
// which Commit turns into the final name and Abort removes.
func TestNamedTempFallback(t *testing.T) {
	forceNamedTemp = true
	t.Cleanup(func() { forceNamedTemp = false })
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	require.NoError(t, w.AddFile("pki/a", 0o600, time.Time{}, 1, strings.NewReader("x")))
	tree := names(listTree(t, out))
	require.Len(t, tree, 1)
	assert.Regexp(t, `^\.flightctl-backup-[0-9a-f]{16}\.partial$`, tree[0])
	assert.Equal(t, os.FileMode(0o600), listTree(t, out)[tree[0]].Perm())
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman})
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Base(res.Path), filepath.Base(res.ChecksumPath)}, names(listTree(t, out)))
	_, err = Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)

	out2 := t.TempDir()
	w = newTestWriter(t, out2, 0)
	require.NoError(t, w.AddFile("pki/a", 0o600, time.Time{}, 1, strings.NewReader("x")))
	require.NoError(t, w.Abort())
	assert.Empty(t, listTree(t, out2))
}
