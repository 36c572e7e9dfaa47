package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"

	"flightctl.dr/internal/encrypt"
)

// ErrNoQuickMetadata says ReadMetadata cannot find metadata.json without
// inflating the whole archive (upstream's single-member archives, or a layout
// this package did not write): read it with Verify instead.
var ErrNoQuickMetadata = errors.New("metadata.json cannot be read without inflating the whole archive")

// quickTailStart is the first amount of tar bytes ReadMetadata inflates from
// the end; it grows fourfold until metadata.json is found.
const quickTailStart = 256 << 10

type memberSpan struct {
	off, len int64 // in the file
	uoff     int64 // offset of its tar bytes in the tar stream
	usize    int64
}

// ReadMetadata reads metadata.json of an archive written by this package
// without inflating all of it: it hops over the gzip members by the length
// each one carries, then inflates only the last ones. It checks nothing else
// (neither the checksum nor the rest of the structure): a caller must still
// verify the archive before relying on anything but the metadata. It returns
// ErrNoQuickMetadata when the archive is not laid out that way.
func ReadMetadata(ctx context.Context, path string) (*Metadata, error) {
	return ReadMetadataWith(ctx, path, nil)
}

// ReadMetadataWith is ReadMetadata that also reads an encrypted archive with ids: only
// the age file's last chunks are decrypted (and its final chunk authenticated), as only
// the last gzip members are inflated.
func ReadMetadataWith(ctx context.Context, path string, ids *encrypt.Identities) (*Metadata, error) {
	f, size, err := openArchive(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var src io.ReaderAt = f
	enc, err := encrypt.IsEncrypted(f)
	if err != nil {
		return nil, fmt.Errorf("read archive %q: %w", path, err)
	}
	if enc {
		if src, size, err = encrypt.DecryptReaderAt(f, size, ids); err != nil {
			return nil, encryptionError(err)
		}
	}
	members, err := memberSpans(ctx, src, path, size)
	if err != nil {
		return nil, err
	}
	total := members[len(members)-1].uoff + members[len(members)-1].usize
	for want := int64(quickTailStart); ; want *= 4 {
		first := len(members) - 1
		for first > 0 && total-members[first].uoff < want {
			first--
		}
		tail, err := inflateMembers(src, members[first:])
		if _, ok := encrypt.AsError(err); ok {
			return nil, encryptionError(err)
		}
		if err != nil {
			return nil, &IntegrityError{Kind: KindCompression, Detail: fmt.Sprintf("the end of the archive is damaged (%v): the archive is corrupt, do not restore from it", err), Err: err}
		}
		if md, ok, err := findMetadata(tail, members[first].uoff); ok || err != nil {
			return md, err
		}
		if first == 0 || want > maxMetadataSize {
			return nil, ErrNoQuickMetadata
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// memberSpans lists the gzip members of one of our archives by their headers
// and trailers alone.
func memberSpans(ctx context.Context, f io.ReaderAt, name string, size int64) ([]memberSpan, error) {
	var spans []memberSpan
	var head [memberHeaderLen]byte
	var isize [4]byte
	var pos, uoff int64
	for pos < size {
		if len(spans)%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		if err := readFullAt(f, head[:], pos); err != nil {
			if errors.Is(err, io.EOF) && len(spans) > 0 {
				return nil, &IntegrityError{Kind: KindStructure, Detail: "the archive ends inside a gzip member header: it is truncated, do not restore from it"}
			}
			if errors.Is(err, io.EOF) {
				return nil, ErrNoQuickMetadata
			}
			return nil, fmt.Errorf("read archive %q: %w", name, classifyReaderAtError(err))
		}
		n, ok := parseMemberHeader(head[:])
		if !ok {
			return nil, ErrNoQuickMetadata
		}
		if pos+int64(n) > size {
			return nil, &IntegrityError{Kind: KindStructure, Detail: "the archive ends inside a gzip member: it is truncated, do not restore from it"}
		}
		if err := readFullAt(f, isize[:], pos+int64(n)-4); err != nil {
			return nil, fmt.Errorf("read archive %q: %w", name, classifyReaderAtError(err))
		}
		us := int64(binary.LittleEndian.Uint32(isize[:]))
		spans = append(spans, memberSpan{off: pos, len: int64(n), uoff: uoff, usize: us})
		pos += int64(n)
		uoff += us
	}
	if len(spans) == 0 {
		return nil, ErrNoQuickMetadata
	}
	return spans, nil
}

// readFullAt fills b from off; reaching the end exactly is no error (a ReaderAt may say
// io.EOF with a full read there, as the decrypting one does).
func readFullAt(f io.ReaderAt, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// inflateMembers inflates consecutive members, checking each one's CRC and
// length.
func inflateMembers(f io.ReaderAt, spans []memberSpan) ([]byte, error) {
	last := spans[len(spans)-1]
	sr := io.NewSectionReader(f, spans[0].off, last.off+last.len-spans[0].off)
	zr, err := gzip.NewReader(sr)
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	want := last.uoff + last.usize - spans[0].uoff
	var buf bytes.Buffer
	buf.Grow(int(want))
	if _, err := io.Copy(&buf, io.LimitReader(zr, want+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) != want {
		return nil, fmt.Errorf("the members hold %d bytes, their trailers say %d", buf.Len(), want)
	}
	return buf.Bytes(), nil
}

// findMetadata looks for the metadata.json header at the 512-aligned offsets
// of tail (whose first byte is at uoff in the tar stream), from the end, and
// accepts it only when the end-of-archive marker follows its content.
func findMetadata(tail []byte, uoff int64) (*Metadata, bool, error) {
	start := (blockLen - uoff%blockLen) % blockLen
	for p := start + int64(len(tail)-int(start))/blockLen*blockLen; p >= start; p -= blockLen {
		if p+blockLen > int64(len(tail)) || !bytes.HasPrefix(tail[p:], []byte(MetadataName+"\x00")) {
			continue
		}
		tr := tar.NewReader(bytes.NewReader(tail[p:]))
		hdr, err := tr.Next()
		if err != nil || strings.TrimPrefix(hdr.Name, "./") != MetadataName || hdr.Typeflag != tar.TypeReg || hdr.Size > maxMetadataSize {
			continue
		}
		raw, err := io.ReadAll(tr)
		if err != nil || int64(len(raw)) != hdr.Size {
			continue
		}
		if _, err := tr.Next(); err != io.EOF {
			continue
		}
		var md Metadata
		if err := json.Unmarshal(raw, &md); err != nil {
			return nil, false, &IntegrityError{Kind: KindMetadata, Entry: MetadataName, Detail: fmt.Sprintf("metadata.json is not valid JSON (%v): do not restore from this archive", err)}
		}
		return &md, true, nil
	}
	return nil, false, nil
}

// ChecksumOK hashes the archive and compares the digest with its checksum
// file (opts.ChecksumFile, default <path>.sha256, which must exist). It
// returns the digest and size; the errors are Verify's.
func ChecksumOK(ctx context.Context, path string, opts VerifyOptions) (sum string, size int64, err error) {
	opts = opts.withDefaults(path)
	opts.RequireChecksum = true
	f, want, err := openWithChecksum(path, opts)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	size, err = copyCtx(ctx, h, f, make([]byte, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("read archive %q: %w", path, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != want {
		return "", 0, fmt.Errorf("archive integrity check failed: %w", checksumMismatch(path, want, got, nil))
	}
	return got, size, nil
}

// WalkFunc receives every entry while VerifyWalk checks it: r holds a regular
// file's content (empty for a directory) and is valid only until fn returns.
type WalkFunc func(hdr *tar.Header, name string, r io.Reader) error

// VerifyWalk is Verify that also hands every entry to fn as it streams past,
// so a caller can use the content in the same pass that checks it. Whatever fn
// did must be undone by the caller when VerifyWalk fails: the archive is only
// known good once it returns nil. An error from fn is returned as it is.
func VerifyWalk(ctx context.Context, path string, opts VerifyOptions, fn WalkFunc) (*Report, error) {
	opts = opts.withDefaults(path)
	f, want, err := openWithChecksum(path, opts)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sink := &walkSink{fn: fn, aborting: make(chan struct{})}
	s := newScanner(opts.Limits, sink)
	if err := s.expectEarly(ctx, path, opts); err != nil {
		return nil, err
	}
	s.checkDump = opts.CheckDump
	s.decryption = opts.Decryption
	rep, err := runScan(ctx, f, path, want, s)
	sink.abort(err)
	if sink.fnErr != nil {
		return nil, sink.fnErr
	}
	if err != nil {
		return nil, err
	}
	rep.ChecksumFile = opts.ChecksumFile
	if err := s.checkMetadata(rep, opts); err != nil {
		return nil, fmt.Errorf("archive integrity check failed: %w", err)
	}
	return rep, nil
}

// walkSink runs fn on its own goroutine, fed through a pipe, so the scanner
// keeps hashing and checking what fn reads.
type walkSink struct {
	fn    WalkFunc
	fnErr error
	pw    *io.PipeWriter
	done  chan error
	// aborting is closed when abort starts; only walkFnFailedHook reads it.
	aborting chan struct{}

	mu         sync.Mutex
	aborted    bool
	firstFnErr error
}

// walkFnFailedHook, set only by tests, runs on fn's goroutine after fn failed
// and closed its end of the pipe, before the failure is reported.
var walkFnFailedHook func(aborting <-chan struct{})

func (w *walkSink) dir(name string, hdr *tar.Header) error {
	if err := w.fn(hdr, name, bytes.NewReader(nil)); err != nil {
		w.fnErr = err
		return err
	}
	return nil
}

func (w *walkSink) file(name string, hdr *tar.Header) (io.Writer, func() error, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := w.fn(hdr, name, pr)
		if err != nil {
			// Recorded before the pipe closes: the scan's write then fails
			// and abort may run before done is sent.
			w.fnFailed(err)
		}
		if err == nil {
			// Whatever fn left unread still has to pass the checks.
			_, err = io.Copy(io.Discard, pr)
		}
		if err != nil {
			pr.CloseWithError(err)
		} else {
			pr.Close()
		}
		if err != nil && walkFnFailedHook != nil {
			walkFnFailedHook(w.aborting)
		}
		done <- err
	}()
	w.pw, w.done = pw, done
	finish := func() error {
		pw.Close()
		err := <-done
		w.pw, w.done = nil, nil
		if err != nil {
			w.fnErr = err
		}
		return err
	}
	return pw, finish, nil
}

// fnFailed records fn's own error, unless the scan already broke the stream
// under fn (then fn's failure follows from the scan's).
func (w *walkSink) fnFailed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.aborted && w.firstFnErr == nil {
		w.firstFnErr = err
	}
}

// abort ends an entry left half-read by a failed scan. fn's error counts
// only when fn failed first; fn failing because the stream broke under it is
// the scan's error.
func (w *walkSink) abort(scanErr error) {
	if w.pw == nil {
		return
	}
	close(w.aborting)
	w.mu.Lock()
	w.aborted = true
	fnErr := w.firstFnErr
	w.mu.Unlock()
	if fnErr == nil {
		if scanErr == nil {
			scanErr = errors.New("archive read stopped")
		}
		w.pw.CloseWithError(scanErr)
	}
	<-w.done
	if fnErr != nil && w.fnErr == nil {
		w.fnErr = fnErr
	}
	w.pw, w.done = nil, nil
}
