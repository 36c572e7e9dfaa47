package archive

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/flate"

	"flightctl.dr/internal/encrypt"
)

var errUnnamedUnsupported = errors.New("unnamed temporary files (O_TMPFILE) are not supported here")

// forceNamedTemp makes tests take the path used where O_TMPFILE is missing.
var forceNamedTemp = false

// WriterOptions configure NewWriter.
type WriterOptions struct {
	// Dir is the destination directory; the archive and its .sha256 are
	// written there and nowhere else.
	Dir string
	// Now gives the archive's time (default time.Now).
	Now func() time.Time
	// CompressionLevel is a gzip level 1..9, or 0 for DefaultCompressionLevel: with
	// CompressionFixed every block's level, with CompressionAdaptive the level of the
	// blocks compressed while the compressors keep up with the input.
	CompressionLevel int
	// Compression is CompressionAdaptive or CompressionFixed; "" is DefaultCompression.
	Compression string
	// Concurrency is the number of compressing goroutines (default GOMAXPROCS).
	Concurrency int
	// Logger receives debug logs (nil: none).
	Logger *slog.Logger
	// Encryption, when not empty, encrypts the archive with age as it is written (tar,
	// gzip, age, file): flightctl-backup-<time>.tar.gz.age, with the .sha256 of the
	// encrypted file beside it. No plaintext byte reaches the disk.
	Encryption *encrypt.Recipients

	blockSize int // tests use small blocks
	// beforeCompress, when set (tests), runs in a compressing goroutine before each block.
	beforeCompress func(level int)
}

// Validate checks the options.
func (o *WriterOptions) Validate() error {
	if o.Dir == "" {
		return errors.New("archive writer: the destination directory is empty: set the backup output directory")
	}
	st, err := os.Stat(o.Dir)
	if err != nil {
		return fmt.Errorf("archive writer: destination directory: %w (create it or choose another output directory)", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("archive writer: destination %q is not a directory", o.Dir)
	}
	if o.CompressionLevel < 0 || o.CompressionLevel > 9 {
		return fmt.Errorf("archive writer: compression level %d is out of range: use 1 (fastest) to 9 (smallest), or 0 for the default", o.CompressionLevel)
	}
	switch o.Compression {
	case "", CompressionAdaptive, CompressionFixed:
	default:
		return fmt.Errorf("archive writer: compression %q is not valid: use %s or %s", o.Compression, CompressionAdaptive, CompressionFixed)
	}
	if o.Concurrency < 0 {
		return fmt.Errorf("archive writer: concurrency %d is negative", o.Concurrency)
	}
	return nil
}

// Compression modes (WriterOptions.Compression).
const (
	// CompressionAdaptive compresses at the configured level while the compressors keep
	// up with the input, and the next blocks faster (level 1, then Huffman-only coding)
	// while they fall behind, so that the source of a stream (pg_dump) sets a backup's
	// pace rather than its compression. The archive is the same kind of gzip stream.
	CompressionAdaptive = "adaptive"
	// CompressionFixed compresses every block at the configured level.
	CompressionFixed = "fixed"
)

// DefaultCompression is the compression mode used when none is given.
const DefaultCompression = CompressionFixed

// DefaultCompressionLevel is the gzip level used when none is given. With the
// deflate of github.com/klauspost/compress, level 2 nearly keeps up with
// pg_dump on a 2-CPU host, and on dumps its archive is within a few per cent
// of the sizes of levels 3 to 9 (bench/RESULTS.md, "Backup").
const DefaultCompressionLevel = 2

type writerState int

const (
	stateOpen writerState = iota
	stateCommitted
	stateAborted
)

// patchedMember records a header member rewritten in place after its stream
// ended, and the archive hash state just before it.
type patchedMember struct {
	offset   int64
	snapshot []byte
}

// Writer streams entries into a new archive in the destination directory.
// Nothing is visible under an archive name until Commit; if the process dies
// before, nothing is left on disk (Linux, O_TMPFILE). A Writer is not safe for
// concurrent use, except that Abort may be called at any time.
type Writer struct {
	ctx  context.Context
	opts WriterOptions
	log  *slog.Logger
	stop func() bool

	mu       sync.Mutex
	state    writerState
	failed   error
	f        *os.File
	tempName string // only when O_TMPFILE is unsupported
	mw       *memberWriter
	enc      *encrypt.Writer   // nil: a plain archive
	types    map[string]string // entry path -> TypeFile/TypeDir
	parents  map[string]bool   // every ancestor of an entry
	manifest []ManifestEntry
	patches  []patchedMember
	rehash   time.Duration // time spent re-reading after header rewrites (benchmarks)
}

// NewWriter opens a new, unnamed archive in opts.Dir. Call Commit to name it,
// or Abort (safe to defer) to drop it. Cancelling ctx aborts the writer.
func NewWriter(ctx context.Context, opts WriterOptions) (*Writer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = runtime.GOMAXPROCS(0)
	}
	level := opts.CompressionLevel
	if level == 0 {
		level = DefaultCompressionLevel
	}
	if opts.blockSize == 0 {
		opts.blockSize = defaultBlockSize
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("archive writer: %w", err)
	}

	w := &Writer{ctx: ctx, opts: opts, log: log, types: map[string]string{}, parents: map[string]bool{}}
	f, err := openUnnamed(opts.Dir, 0o600)
	if forceNamedTemp && err == nil {
		f.Close()
		err = errUnnamedUnsupported
	}
	if errors.Is(err, errUnnamedUnsupported) {
		// Fallback: a hidden name that Abort removes; only a SIGKILL can leave it.
		w.tempName = filepath.Join(opts.Dir, "."+randomName("flightctl-backup-", ".partial"))
		log.Debug("O_TMPFILE unsupported, using a hidden temporary file", "path", w.tempName)
		f, err = os.OpenFile(w.tempName, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("archive writer: create the archive in %s: %w", opts.Dir, err)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		if w.tempName != "" {
			os.Remove(w.tempName)
		}
		return nil, fmt.Errorf("archive writer: %w", err)
	}
	w.f = f
	// Plain archives are sent to disk as they are written (writeback), so that the sync
	// at Commit has little left to wait for.
	var out io.Writer = &writeback{f: f}
	if !opts.Encryption.Empty() {
		enc, err := encrypt.NewWriter(f, opts.Encryption)
		if err != nil {
			f.Close()
			if w.tempName != "" {
				os.Remove(w.tempName)
			}
			return nil, fmt.Errorf("archive writer: %w", err)
		}
		w.enc, out = enc, enc
	}
	mode := opts.Compression
	if mode == "" {
		mode = DefaultCompression
	}
	w.mw = newMemberWriter(out, compressionLadder(level, mode == CompressionAdaptive), opts.Concurrency, opts.blockSize)
	w.mw.beforeCompress = opts.beforeCompress
	w.mw.log = log
	if w.enc != nil {
		w.mw.hold, w.mw.hash = w.enc.Hold, nil
	}
	w.mw.start()
	w.stop = context.AfterFunc(ctx, func() { _ = w.Abort() })
	return w, nil
}

func randomName(prefix, suffix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:]) + suffix
}

// begin takes the lock for one operation; on success the caller must call
// w.mu.Unlock, on error the lock is released.
func (w *Writer) begin() error {
	w.mu.Lock()
	if err := w.usable(); err != nil {
		w.mu.Unlock()
		return err
	}
	return nil
}

func (w *Writer) usable() error {
	switch {
	case w.state == stateCommitted:
		return errors.New("archive writer: already committed")
	case w.state == stateAborted && w.ctx.Err() != nil:
		return fmt.Errorf("archive writer aborted: %w", w.ctx.Err())
	case w.state == stateAborted:
		return errors.New("archive writer: aborted")
	case w.failed != nil:
		return fmt.Errorf("archive writer: an earlier entry failed, abort this archive: %w", w.failed)
	}
	if err := w.ctx.Err(); err != nil {
		w.abortLocked()
		return fmt.Errorf("archive writer aborted: %w", err)
	}
	return nil
}

// fail makes err sticky: the tar stream may be inconsistent after it.
func (w *Writer) fail(err error) error {
	w.failed = err
	return err
}

func (w *Writer) checkNew(name, typ string) error {
	if err := validateWriterName(name); err != nil {
		return fmt.Errorf("archive writer: %w", err)
	}
	if name == MetadataName {
		return fmt.Errorf("archive writer: %q is reserved for the archive's metadata", name)
	}
	if prev, ok := w.types[name]; ok {
		return fmt.Errorf("archive writer: entry %q is already in the archive (as a %s)", name, prev)
	}
	if typ == TypeFile && w.parents[name] {
		return fmt.Errorf("archive writer: entry %q is already used as a directory", name)
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if w.types[dir] == TypeFile {
			return fmt.Errorf("archive writer: entry %q is inside %q, which is a file", name, dir)
		}
	}
	return nil
}

func (w *Writer) record(e ManifestEntry) {
	w.types[e.Path] = e.Type
	for dir := path.Dir(e.Path); dir != "."; dir = path.Dir(dir) {
		w.parents[dir] = true
	}
	w.manifest = append(w.manifest, e)
}

func (w *Writer) mtime(t time.Time) time.Time {
	if t.IsZero() {
		t = w.opts.Now()
	}
	return t
}

func modeString(mode fs.FileMode) string { return fmt.Sprintf("%04o", mode.Perm()) }

// AddDir adds a directory entry.
func (w *Writer) AddDir(name string, mode fs.FileMode, mtime time.Time) error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.mu.Unlock()
	return w.addDirLocked(name, mode, mtime)
}

func (w *Writer) addDirLocked(name string, mode fs.FileMode, mtime time.Time) error {
	if err := w.checkNew(name, TypeDir); err != nil {
		return err
	}
	hdr, err := tarHeader(name, '5', mode, w.mtime(mtime), 0, false)
	if err != nil {
		return fmt.Errorf("archive writer: %w", err)
	}
	if _, err := w.mw.Write(hdr); err != nil {
		return w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	w.record(ManifestEntry{Path: name, Type: TypeDir, Mode: modeString(mode)})
	return nil
}

// AddFile adds a regular file of known size, read from r.
func (w *Writer) AddFile(name string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error {
	if err := w.begin(); err != nil {
		return err
	}
	defer w.mu.Unlock()
	return w.addFileLocked(name, mode, mtime, size, r)
}

func (w *Writer) addFileLocked(name string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error {
	if size < 0 {
		return fmt.Errorf("archive writer: entry %q: negative size %d", name, size)
	}
	if err := w.checkNew(name, TypeFile); err != nil {
		return err
	}
	hdr, err := tarHeader(name, '0', mode, w.mtime(mtime), size, false)
	if err != nil {
		return fmt.Errorf("archive writer: %w", err)
	}
	if _, err := w.mw.Write(hdr); err != nil {
		return w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	h := sha256.New()
	n, err := w.mw.readFrom(ctxReader{w.ctx, r}, size, h)
	if err != nil {
		return w.fail(fmt.Errorf("archive writer: add %q: read the source: %w", name, err))
	}
	if n != size {
		return w.fail(fmt.Errorf("archive writer: add %q: the source ended after %d of %d bytes (did the file change during the backup? run the backup again)", name, n, size))
	}
	if _, err := w.mw.Write(padding(size)); err != nil {
		return w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	w.record(ManifestEntry{Path: name, Type: TypeFile, Size: size, Mode: modeString(mode), SHA256: hex.EncodeToString(h.Sum(nil))})
	return nil
}

// StreamDigester is a stream that computes the sha256 of the bytes it yields itself (to
// check them against what their source says it sent): AddStream records that digest in the
// manifest, asked for once Read has returned io.EOF, instead of hashing the bytes again.
type StreamDigester interface {
	io.Reader
	// StreamSHA256 is the sha256 of every byte Read returned, valid after io.EOF.
	StreamSHA256() []byte
}

// TappedStream is a stream for AddStream whose bytes also go, in order, to Tap (a dump
// check beside the archive): Tap gets them in whole compression blocks, as the entry's
// sha256 does, rather than as each Read of the stream returns them (an io.TeeReader on a
// pipe hands its writer every small piece the pipe gave).
type TappedStream struct {
	io.Reader
	Tap io.Writer
}

// Read reads the stream and writes what it read to Tap, as an io.TeeReader does: what a
// sink other than the archive writer sees (AddStream takes the two apart).
func (t TappedStream) Read(p []byte) (int, error) {
	n, err := t.Reader.Read(p)
	if n > 0 {
		if _, werr := t.Tap.Write(p[:n]); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// AddStream adds a regular file of unknown size (a pg_dump's stdout), read
// from r until EOF, and returns its size. Its tar header is written as a
// fixed-length stored gzip member and rewritten in place with the real size
// when the stream ends, so the data are never staged.
func (w *Writer) AddStream(name string, mode fs.FileMode, mtime time.Time, r io.Reader) (int64, error) {
	if err := w.begin(); err != nil {
		return 0, err
	}
	defer w.mu.Unlock()
	if err := w.checkNew(name, TypeFile); err != nil {
		return 0, err
	}
	mtime = w.mtime(mtime)
	placeholder, err := tarHeader(name, '0', mode, mtime, 0, true)
	if err != nil {
		return 0, fmt.Errorf("archive writer: %w", err)
	}
	hdrMember, err := w.mw.writeStored(placeholder)
	if err != nil {
		return 0, w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	h := sha256.New()
	var extra io.Writer
	if t, ok := r.(TappedStream); ok {
		r, extra = t.Reader, t.Tap
	}
	digester, prehashed := r.(StreamDigester)
	var tap io.Writer = h
	switch {
	case prehashed && extra != nil:
		tap = extra
	case prehashed:
		tap = io.Discard
	case extra != nil:
		tap = io.MultiWriter(h, extra)
	}
	size, err := w.mw.readFrom(ctxReader{w.ctx, r}, -1, tap)
	if err != nil {
		return size, w.fail(fmt.Errorf("archive writer: add %q: read the stream after %d bytes: %w", name, size, err))
	}
	sum := h.Sum(nil)
	if prehashed {
		if sum = digester.StreamSHA256(); len(sum) != sha256.Size {
			return size, w.fail(fmt.Errorf("archive writer: add %q: the stream gave no sha256 of its %d bytes", name, size))
		}
	}
	if _, err := w.mw.Write(padding(size)); err != nil {
		return size, w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	// Wait until the header member is on disk, then rewrite it with the size.
	if err := w.mw.sync(); err != nil {
		return size, w.fail(fmt.Errorf("archive writer: add %q: %w", name, err))
	}
	final, err := tarHeader(name, '0', mode, mtime, size, true)
	if err != nil {
		return size, w.fail(fmt.Errorf("archive writer: %w", err))
	}
	if w.enc != nil {
		// Still unencrypted in memory: patched there, then encrypted once.
		if err := w.enc.Patch(hdrMember.offset, storedMember(final)); err != nil {
			return size, w.fail(fmt.Errorf("archive writer: add %q: write its header: %w", name, err))
		}
	} else {
		if _, err := w.f.WriteAt(storedMember(final), hdrMember.offset); err != nil {
			return size, w.fail(fmt.Errorf("archive writer: add %q: write its header: %w", name, err))
		}
		w.patches = append(w.patches, patchedMember{offset: hdrMember.offset, snapshot: hdrMember.snapshot})
	}
	w.record(ManifestEntry{Path: name, Type: TypeFile, Size: size, Mode: modeString(mode), SHA256: hex.EncodeToString(sum)})
	w.log.Debug("archive stream added", "entry", name, "bytes", size)
	return size, nil
}

// AddTree adds srcDir recursively under prefix (prefix itself becomes a
// directory entry unless it is "" or already added), in lexical order,
// keeping permission bits and mtimes. Symlinks, devices, sockets and FIFOs are
// refused with an error naming the path. It returns the number of files.
func (w *Writer) AddTree(prefix, srcDir string) (int, error) {
	if err := w.begin(); err != nil {
		return 0, err
	}
	defer w.mu.Unlock()
	st, err := os.Lstat(srcDir)
	if err != nil {
		return 0, fmt.Errorf("archive writer: add tree %s: %w", srcDir, err)
	}
	if !st.IsDir() {
		return 0, fmt.Errorf("archive writer: add tree %s: not a directory (%s)", srcDir, describeMode(st.Mode()))
	}
	files := 0
	err = filepath.WalkDir(srcDir, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return walkErr
		}
		if err := w.ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(srcDir, p)
		if err != nil {
			return err
		}
		name := path.Join(prefix, filepath.ToSlash(rel))
		if name == "." || name == "" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			if rel == "." && w.types[name] == TypeDir {
				return nil
			}
			return w.addDirLocked(name, info.Mode(), info.ModTime())
		case info.Mode().IsRegular():
			if err := w.addTreeFile(name, p); err != nil {
				return err
			}
			files++
			return nil
		default:
			return fmt.Errorf("%s is a %s: only regular files and directories can be backed up; replace it with a regular file or remove it", p, describeMode(info.Mode()))
		}
	})
	if err != nil {
		return files, fmt.Errorf("archive writer: add tree %s: %w", srcDir, err)
	}
	return files, nil
}

func (w *Writer) addTreeFile(name, p string) error {
	f, err := os.OpenFile(p, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is a %s: only regular files and directories can be backed up", p, describeMode(st.Mode()))
	}
	return w.addFileLocked(name, st.Mode(), st.ModTime(), st.Size(), f)
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeDevice != 0 && m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	}
	return "special file"
}

// Commit completes the archive: it fills meta's manifest and format version,
// writes metadata.json and the tar trailer, syncs, names the archive
// (flightctl-backup-<time>.tar.gz, the next second's name if that one exists)
// and writes its .sha256.
func (w *Writer) Commit(meta Metadata) (*Result, error) {
	if err := w.begin(); err != nil {
		return nil, err
	}
	defer w.mu.Unlock()
	res, err := w.commitLocked(meta)
	if err != nil {
		w.abortLocked()
		return nil, err
	}
	return res, nil
}

func (w *Writer) commitLocked(meta Metadata) (*Result, error) {
	now := w.opts.Now()
	if meta.Timestamp.IsZero() {
		meta.Timestamp = now
	}
	meta.Timestamp = meta.Timestamp.UTC()
	meta.FormatVersion = FormatVersion
	if w.enc != nil {
		meta.ArchiveEncryption = &ArchiveEncryption{Format: "age", Recipients: append([]string(nil), w.opts.Encryption.Public...)}
	}
	meta.Manifest = append([]ManifestEntry(nil), w.manifest...)
	if meta.Manifest == nil {
		meta.Manifest = []ManifestEntry{}
	}
	doc, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("archive writer: encode metadata: %w", err)
	}
	hdr, err := tarHeader(MetadataName, '0', 0o600, now, int64(len(doc)), false)
	if err != nil {
		return nil, fmt.Errorf("archive writer: %w", err)
	}
	for _, b := range [][]byte{hdr, doc, padding(int64(len(doc))), make([]byte, 2*blockLen)} {
		if _, err := w.mw.Write(b); err != nil {
			return nil, fmt.Errorf("archive writer: write metadata: %w", err)
		}
	}
	if err := w.mw.Close(false); err != nil {
		return nil, fmt.Errorf("archive writer: write the archive: %w", err)
	}
	size := w.mw.Written()
	if w.enc != nil {
		if err := w.enc.Close(); err != nil {
			return nil, fmt.Errorf("archive writer: write the archive: %w", err)
		}
		size = w.enc.Size()
	}
	// The archive goes to disk while its end is hashed again (finalHash re-reads it from
	// the page cache): the two overlap instead of adding up at the end of a backup.
	var syncTime time.Duration
	synced := make(chan error, 1)
	go func() {
		start := time.Now()
		err := w.f.Sync()
		syncTime = time.Since(start)
		synced <- err
	}()
	start := time.Now()
	sum, err := w.finalHash(size)
	w.rehash = time.Since(start)
	syncErr := <-synced
	if err != nil {
		return nil, fmt.Errorf("archive writer: checksum the archive: %w", err)
	}
	if syncErr != nil {
		return nil, fmt.Errorf("archive writer: sync the archive: %w", syncErr)
	}
	// The checksum file takes its space before the archive is named: a disk that fills
	// up here fails the backup with nothing named.
	pending, err := prepareChecksumFile(w.opts.Dir, w.archiveName(meta.Timestamp), sum)
	if err != nil {
		return nil, fmt.Errorf("archive writer: write the checksum file: %w", err)
	}
	defer pending.discard()
	name, err := w.link(meta.Timestamp)
	if err != nil {
		return nil, err
	}
	finalPath := filepath.Join(w.opts.Dir, name)
	sumPath, err := pending.commit(name)
	if err != nil {
		// Never leave an archive without its checksum: take the name back.
		_ = os.Remove(finalPath)
		_ = syncDir(w.opts.Dir)
		return nil, fmt.Errorf("archive writer: name the checksum file of %s: %w", finalPath, err)
	}
	w.f.Close()
	w.f = nil
	w.state = stateCommitted
	w.stop()
	w.log.Debug("archive committed", "path", finalPath, "bytes", size, "sha256", sum, "entries", len(meta.Manifest), "compression", w.compressionSummary(), "rehash", w.rehash, "sync", syncTime)
	return &Result{Path: finalPath, ChecksumPath: sumPath, SHA256: sum, Size: size, Metadata: meta}, nil
}

// CompressionLevels returns how many tar bytes were compressed at each gzip level
// (HuffmanOnlyLevel for Huffman-only coding). Valid after Commit.
func (w *Writer) CompressionLevels() map[int]int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.mw.levelIn)
}

// HuffmanOnlyLevel is the level CompressionLevels reports for Huffman-only coding.
const HuffmanOnlyLevel = flate.HuffmanOnly

// compressionSummary says what share of the tar went through each level ("2:81% 1:19%").
func (w *Writer) compressionSummary() string {
	var total int64
	levels := make([]int, 0, len(w.mw.levelIn))
	for l, n := range w.mw.levelIn {
		total += n
		levels = append(levels, l)
	}
	slices.Sort(levels)
	slices.Reverse(levels)
	var b strings.Builder
	for _, l := range levels {
		name := strconv.Itoa(l)
		if l == flate.HuffmanOnly {
			name = "huffman-only"
		}
		fmt.Fprintf(&b, "%s:%.0f%% ", name, 100*float64(w.mw.levelIn[l])/float64(max(total, 1)))
	}
	return strings.TrimSpace(b.String())
}

// finalHash returns the archive's sha256. Without rewritten headers it is the
// hash computed while writing; otherwise the file is re-read from the first
// rewritten member on, starting from the hash state saved there.
func (w *Writer) finalHash(size int64) (string, error) {
	if w.enc != nil {
		sum, err := w.enc.Sum()
		return hex.EncodeToString(sum), err
	}
	if len(w.patches) == 0 {
		return hex.EncodeToString(w.mw.hash.Sum(nil)), nil
	}
	first := w.patches[0]
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(first.snapshot); err != nil {
		return "", err
	}
	if _, err := io.Copy(h, io.NewSectionReader(w.f, first.offset, size-first.offset)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// archiveName is the archive's name for time t: ArchiveName, or EncryptedArchiveName.
func (w *Writer) archiveName(t time.Time) string {
	if w.enc != nil {
		return EncryptedArchiveName(t)
	}
	return ArchiveName(t)
}

// link names the archive, never replacing an existing file: when the name for
// t's second is taken, the next second's name is tried.
func (w *Writer) link(t time.Time) (string, error) {
	for i := range 3600 {
		name := w.archiveName(t.Add(time.Duration(i) * time.Second))
		var err error
		if w.tempName != "" {
			err = os.Link(w.tempName, filepath.Join(w.opts.Dir, name))
		} else {
			err = linkUnnamed(w.f, w.opts.Dir, name)
		}
		if err == nil {
			if w.tempName != "" {
				if err := os.Remove(w.tempName); err != nil {
					return "", fmt.Errorf("archive writer: remove the temporary name %s: %w", w.tempName, err)
				}
				w.tempName = ""
			}
			return name, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("archive writer: name the archive %s: %w", name, err)
		}
	}
	return "", fmt.Errorf("archive writer: every archive name for the hour after %s is taken in %s: clean up old archives", w.archiveName(t), w.opts.Dir)
}

// Abort drops the archive: nothing it wrote stays on disk. It is idempotent
// and does nothing after a successful Commit.
func (w *Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.abortLocked()
}

func (w *Writer) abortLocked() error {
	if w.state != stateOpen {
		return nil
	}
	w.state = stateAborted
	if w.stop != nil {
		w.stop()
	}
	_ = w.mw.Close(true)
	var errs []error
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			errs = append(errs, err)
		}
		w.f = nil
	}
	if w.tempName != "" {
		if err := os.Remove(w.tempName); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		w.tempName = ""
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("archive writer: abort: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops a copy when the context is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
