package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// eofReader reports when its reader has returned EOF.
type eofReader struct {
	r   io.Reader
	eof atomic.Bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof.Store(true)
	}
	return n, err
}

// gatedReader hands out its data one block at a time, each only once every block sent
// before has been compressed: a source slower than the compressor.
type gatedReader struct {
	data  []byte
	block int
	mw    func() *memberWriter
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if len(g.data) == 0 {
		return 0, io.EOF
	}
	for g.mw().pending.Load() > 0 {
		runtime.Gosched()
	}
	n := copy(p[:min(len(p), g.block)], g.data)
	g.data = g.data[n:]
	return n, nil
}

func adaptiveWriter(t *testing.T, dir string, mode string, hook func(level int)) *Writer {
	t.Helper()
	w, err := NewWriter(context.Background(), WriterOptions{
		Dir: dir, Now: func() time.Time { return fixedNow }, Concurrency: 1, blockSize: 4096,
		Compression: mode, beforeCompress: hook,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Abort() })
	return w
}

// commitAndRead commits w and returns the dump read back by Go's gzip and tar readers (as
// upstream's restore reads it), after Verify accepted the archive.
func commitAndRead(t *testing.T, w *Writer) []byte {
	t.Helper()
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	_, err = Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	return readPlain(t, res.Path)["db/dump.sql"]
}

// A compressor slower than its input (every block waits until the producer has queued two
// blocks beyond the round being compressed and one more) makes the adaptive writer step
// down to level 1 as soon as one block waits and to Huffman-only coding when two do; the
// archive still reads back to the input.
func TestAdaptiveCompressionStepsDownWhenBehind(t *testing.T) {
	data := textish(11, 2<<20)
	src := &eofReader{r: bytes.NewReader(data)}
	var w *Writer
	hook := func(int) {
		for w.mw.pending.Load() < int64(2*w.mw.workers+2) && !src.eof.Load() {
			runtime.Gosched()
		}
	}
	w = adaptiveWriter(t, t.TempDir(), CompressionAdaptive, hook)
	n, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	got := commitAndRead(t, w)
	assert.Equal(t, sha256.Sum256(data), sha256.Sum256(got))

	levels := w.CompressionLevels()
	assert.Positive(t, levels[DefaultCompressionLevel], "the first blocks use the configured level: %v", levels)
	assert.Positive(t, levels[1], "level 1 is the first step down: %v", levels)
	assert.Greater(t, levels[HuffmanOnlyLevel], int64(len(data)/2), "a compressor that stays behind ends at Huffman-only: %v", levels)
}

// The level of each block follows the blocks waiting beyond the round being compressed,
// at the moment it is sent: with two compressors, none waiting keeps level 2, one waiting
// steps down to level 1 at once, two or more to Huffman-only coding, and a queue that has
// drained is back at level 2 with the next block. (The writer used to step down only once a
// whole round waited, when the source was about to wait, and back up only after 16 blocks
// in a row found a compressor idle: on a 702 MB dump over 2 CPUs half the blocks stayed at
// levels 1-2 while the source waited at every step down.)
func TestAdaptiveLevelFollowsTheQueue(t *testing.T) {
	mw := newMemberWriter(io.Discard, compressionLadder(2, true), 2, 4096)
	for _, step := range []struct {
		pending int64
		level   int
	}{
		{0, 2}, {2, 2}, {3, 1}, {3, 1}, {4, HuffmanOnlyLevel}, {6, HuffmanOnlyLevel},
		{3, 1}, {1, 2}, {4, HuffmanOnlyLevel}, {0, 2},
	} {
		mw.pending.Store(step.pending)
		assert.Equal(t, step.level, mw.nextLevel(), "%d blocks sent and not compressed by 2 compressors", step.pending)
	}
	// With eight compressors, every step is four waiting blocks.
	mw = newMemberWriter(io.Discard, compressionLadder(2, true), 8, 4096)
	for pending, level := range map[int64]int{0: 2, 11: 2, 12: 1, 15: 1, 16: HuffmanOnlyLevel} {
		mw.pending.Store(pending)
		assert.Equal(t, level, mw.nextLevel(), "%d blocks sent and not compressed by 8 compressors", pending)
	}
}

// A source slower than the compressor keeps every block at the configured level.
func TestAdaptiveCompressionKeepsLevelWhenAhead(t *testing.T) {
	data := textish(12, 1<<20)
	var w *Writer
	w = adaptiveWriter(t, t.TempDir(), CompressionAdaptive, nil)
	src := &gatedReader{data: data, block: 4096, mw: func() *memberWriter { return w.mw }}
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
	require.NoError(t, err)
	got := commitAndRead(t, w)
	assert.Equal(t, sha256.Sum256(data), sha256.Sum256(got))
	levels := w.CompressionLevels()
	delete(levels, DefaultCompressionLevel)
	assert.Empty(t, levels, "only level %d is used", DefaultCompressionLevel)
}

// After falling behind, a compressor that keeps up again steps back up to the level.
func TestAdaptiveCompressionStepsBackUp(t *testing.T) {
	behind := textish(13, 256<<10)
	ahead := textish(14, 1<<20)
	var w *Writer
	var slow atomic.Bool
	slow.Store(true)
	hook := func(int) {
		for slow.Load() && w.mw.pending.Load() < int64(2*w.mw.workers+2) {
			runtime.Gosched()
		}
	}
	w = adaptiveWriter(t, t.TempDir(), CompressionAdaptive, hook)
	first := &eofReader{r: bytes.NewReader(behind)}
	second := &gatedReader{data: ahead, block: 4096, mw: func() *memberWriter { return w.mw }}
	src := io.MultiReader(first, readerFunc(func(p []byte) (int, error) {
		slow.Store(false)
		return second.Read(p)
	}))
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
	require.NoError(t, err)
	got := commitAndRead(t, w)
	assert.Equal(t, sha256.Sum256(append(append([]byte{}, behind...), ahead...)), sha256.Sum256(got))
	levels := w.CompressionLevels()
	assert.Positive(t, levels[HuffmanOnlyLevel], "%v", levels)
	// Most of the second part is back at the configured level.
	assert.Greater(t, levels[DefaultCompressionLevel], int64(len(ahead)/2), "%v", levels)
}

type readerFunc func(p []byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// A fixed level stays fixed however far behind the compressor is.
func TestFixedCompressionNeverChangesLevel(t *testing.T) {
	data := textish(15, 1<<20)
	src := &eofReader{r: bytes.NewReader(data)}
	var w *Writer
	hook := func(int) {
		for w.mw.pending.Load() < int64(2*w.mw.workers+1) && !src.eof.Load() {
			runtime.Gosched()
		}
	}
	w = adaptiveWriter(t, t.TempDir(), CompressionFixed, hook)
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
	require.NoError(t, err)
	got := commitAndRead(t, w)
	assert.Equal(t, sha256.Sum256(data), sha256.Sum256(got))
	levels := w.CompressionLevels()
	delete(levels, DefaultCompressionLevel)
	assert.Empty(t, levels)
}

func TestCompressionLadder(t *testing.T) {
	assert.Equal(t, []int{2, 1, HuffmanOnlyLevel}, compressionLadder(2, true))
	assert.Equal(t, []int{1, HuffmanOnlyLevel}, compressionLadder(1, true))
	assert.Equal(t, []int{3, 1, HuffmanOnlyLevel}, compressionLadder(3, true))
	assert.Equal(t, []int{9, 2, 1, HuffmanOnlyLevel}, compressionLadder(9, true))
	assert.Equal(t, []int{6}, compressionLadder(6, false))
}

func TestCompressionModeValidated(t *testing.T) {
	_, err := NewWriter(context.Background(), WriterOptions{Dir: t.TempDir(), Compression: "fast"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `compression "fast" is not valid: use adaptive or fixed`)
}

// BenchmarkCompressLevel measures one compressing goroutine at each level of the adaptive
// ladder on SQL-like text (MB/s of input; out-% is the compressed size).
func BenchmarkCompressLevel(b *testing.B) {
	for _, level := range []int{2, 1, HuffmanOnlyLevel} {
		b.Run(strconv.Itoa(level), func(b *testing.B) {
			b.SetBytes(int64(len(benchData)))
			var out int64
			cpu0 := cpuTime()
			for b.Loop() {
				var sink countWriter
				mw := newMemberWriter(&sink, []int{level}, 1, 0)
				mw.start()
				if _, err := mw.Write(benchData); err != nil {
					b.Fatal(err)
				}
				if err := mw.Close(false); err != nil {
					b.Fatal(err)
				}
				out = int64(sink)
			}
			b.ReportMetric(100*float64(out)/float64(len(benchData)), "out-%")
			// CPU seconds per GB of input: what it costs the host whatever else runs.
			b.ReportMetric((cpuTime()-cpu0).Seconds()/(float64(b.N)*float64(len(benchData))/1e9), "cpu-s/GB")
		})
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// digestingReader hashes what it yields, as a dump stream checked against its source does.
type digestingReader struct {
	r    io.Reader
	h    hash.Hash
	none bool // gives no digest
}

func (d *digestingReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	return n, err
}

func (d *digestingReader) StreamSHA256() []byte {
	if d.none {
		return nil
	}
	return d.h.Sum(nil)
}

// A stream that hashes itself is not hashed a second time: its digest is the manifest's.
func TestAddStreamTakesTheStreamsDigest(t *testing.T) {
	data := textish(16, 1<<20)
	w := newTestWriter(t, t.TempDir(), 0)
	src := &digestingReader{r: bytes.NewReader(data), h: sha256.New()}
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, src)
	require.NoError(t, err)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	assert.Equal(t, hex.EncodeToString(sum[:]), res.Metadata.Manifest[0].SHA256)
	_, err = Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)

	w = newTestWriter(t, t.TempDir(), 0)
	_, err = w.AddStream("db/dump.sql", 0o600, time.Time{}, &digestingReader{r: bytes.NewReader(data), h: sha256.New(), none: true})
	require.ErrorContains(t, err, "the stream gave no sha256")
}

// recordingTap keeps what it is written and counts the writes.
type recordingTap struct {
	bytes.Buffer
	writes int
}

func (r *recordingTap) Write(p []byte) (int, error) {
	r.writes++
	return r.Buffer.Write(p)
}

// A stream read in small pieces (a pipe that pg_dump fills 4 KiB at a time) reaches the tap
// beside the archive (the dump check) in whole blocks, in order, every byte once; the
// manifest's sha256 is the stream's.
func TestAddStreamTapsWholeBlocks(t *testing.T) {
	data := textish(18, 64<<10+123)
	w := newTestWriter(t, t.TempDir(), 4096)
	rest := data
	small := readerFunc(func(p []byte) (int, error) {
		if len(rest) == 0 {
			return 0, io.EOF
		}
		n := copy(p[:min(len(p), 100)], rest)
		rest = rest[n:]
		return n, nil
	})
	tap := &recordingTap{}
	n, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, TappedStream{Reader: small, Tap: tap})
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), n)
	assert.Equal(t, data, tap.Bytes())
	assert.LessOrEqual(t, tap.writes, len(data)/4096+2, "the tap is written a block at a time, not per read of 100 bytes")
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	sum := sha256.Sum256(data)
	assert.Equal(t, hex.EncodeToString(sum[:]), res.Metadata.Manifest[0].SHA256)
	assert.Equal(t, data, readPlain(t, res.Path)["db/dump.sql"])

	// A stream that hashes itself still feeds the tap.
	w = newTestWriter(t, t.TempDir(), 4096)
	tap = &recordingTap{}
	_, err = w.AddStream("db/dump.sql", 0o600, time.Time{}, TappedStream{Reader: &digestingReader{r: bytes.NewReader(data), h: sha256.New()}, Tap: tap})
	require.NoError(t, err)
	assert.Equal(t, data, tap.Bytes())
	res, err = w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	assert.Equal(t, hex.EncodeToString(sum[:]), res.Metadata.Manifest[0].SHA256)
}

// Read through any other reader, a TappedStream tees as io.TeeReader does.
func TestTappedStreamTeesWhenRead(t *testing.T) {
	data := textish(19, 10000)
	tap := &recordingTap{}
	got, err := io.ReadAll(TappedStream{Reader: bytes.NewReader(data), Tap: tap})
	require.NoError(t, err)
	assert.Equal(t, data, got)
	assert.Equal(t, data, tap.Bytes())
}
