package encrypt

import (
	"bytes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// The age payload (age-encryption.org/v1, "payload"): a 16-byte nonce, then the plaintext
// in chunks of ChunkSize, each sealed with ChaCha20-Poly1305 under a key derived from the
// file key and the nonce; a chunk's nonce is its index (88 bits, big-endian) and a last-chunk
// flag. Every chunk but the last is full, so chunk i always starts at the same offset.
const (
	ChunkSize    = 64 << 10
	tagSize      = chacha20poly1305.Overhead
	encChunkSize = ChunkSize + tagSize
	fileKeySize  = 16
	nonceSize    = 16
)

// File is what Writer writes to and reads back from (to hash what it wrote).
type File interface {
	io.WriterAt
	io.ReaderAt
}

type span struct{ off, end int64 }

// Writer writes an age file from offset 0 of a File. Plaintext is written in order; a
// range announced with Hold is kept in memory (with the chunks it touches) until Patch
// gives its final bytes, while later chunks are encrypted and written at their places, so
// no plaintext reaches the file and no chunk is ever encrypted twice.
type Writer struct {
	mu      sync.Mutex
	f       File
	aead    cipher.AEAD
	payload int64            // offset of the first chunk
	buf     []byte           // plaintext of chunk index, not yet sealed
	index   int64            // chunk in buf
	held    map[int64][]byte // full chunks waiting for a Patch
	holds   []span           // plaintext ranges waiting for a Patch
	nonce   [chacha20poly1305.NonceSize]byte
	sealed  []byte

	// The file's sha256: chunks are hashed as they are written in order; after a chunk
	// is held, the hash state at its offset is kept and the rest is hashed from the file
	// at the end.
	hash     hash.Hash
	snapshot []byte
	snapOff  int64
	size     int64
	plain    int64
	closed   bool
	err      error
}

// NewWriter writes the age header for r (and the payload nonce) at the start of f.
func NewWriter(f File, r *Recipients) (*Writer, error) {
	if r.Empty() {
		return nil, errors.New("encrypt: no recipients")
	}
	fileKey := make([]byte, fileKeySize)
	if _, err := rand.Read(fileKey); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	hdr, err := header(fileKey, r.list)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	aead, err := chacha20poly1305.New(derive(fileKey, nonce, "payload"))
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	head := append(hdr, nonce...)
	if _, err := f.WriteAt(head, 0); err != nil {
		return nil, fmt.Errorf("encrypt: write the age header: %w", err)
	}
	w := &Writer{f: f, aead: aead, payload: int64(len(head)), buf: make([]byte, 0, ChunkSize),
		held: map[int64][]byte{}, hash: sha256.New(), size: int64(len(head)), sealed: make([]byte, 0, encChunkSize)}
	w.hash.Write(head)
	return w, nil
}

// header is the age header (intro, one stanza per recipient key wrap, MAC) for fileKey.
func header(fileKey []byte, recipients []age.Recipient) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(Magic)
	for i, r := range recipients {
		var stanzas []*age.Stanza
		var err error
		if l, ok := r.(age.RecipientWithLabels); ok {
			stanzas, _, err = l.WrapWithLabels(fileKey)
		} else {
			stanzas, err = r.Wrap(fileKey)
		}
		if err != nil {
			return nil, fmt.Errorf("wrap the file key for recipient %d: %w", i+1, err)
		}
		for _, s := range stanzas {
			b.WriteString("-> " + s.Type)
			for _, a := range s.Args {
				b.WriteString(" " + a)
			}
			b.WriteString("\n")
			body := base64.RawStdEncoding.EncodeToString(s.Body)
			for len(body) >= 64 {
				b.WriteString(body[:64] + "\n")
				body = body[64:]
			}
			b.WriteString(body + "\n")
		}
	}
	b.WriteString("---")
	mac := hmac.New(sha256.New, derive(fileKey, nil, "header"))
	mac.Write(b.Bytes())
	b.WriteString(" " + base64.RawStdEncoding.EncodeToString(mac.Sum(nil)) + "\n")
	// The library parses the header and checks its MAC as any age reader will.
	if _, err := age.DecryptHeader(b.Bytes(), age.NewInjectedFileKeyIdentity(fileKey)); err != nil {
		return nil, fmt.Errorf("the age header written does not parse back (%v): this is a bug", err)
	}
	return b.Bytes(), nil
}

func derive(secret, salt []byte, info string) []byte {
	k := make([]byte, chacha20poly1305.KeySize)
	if _, err := io.ReadFull(hkdf.New(sha256.New, secret, salt, []byte(info)), k); err != nil {
		panic("encrypt: HKDF: " + err.Error())
	}
	return k
}

func (w *Writer) chunkOffset(i int64) int64 { return w.payload + i*encChunkSize }

// Write encrypts p after what was written before.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("encrypt: write after close")
	}
	total := len(p)
	for len(p) > 0 {
		if len(w.buf) == ChunkSize {
			// Full, and more follows: not the last chunk.
			if err := w.flush(false); err != nil {
				w.err = err
				return 0, err
			}
		}
		n := copy(w.buf[len(w.buf):ChunkSize], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
		w.plain += int64(n)
	}
	return total, nil
}

func (w *Writer) isHeld(i int64) bool {
	lo, hi := i*ChunkSize, (i+1)*ChunkSize
	for _, s := range w.holds {
		if s.off < hi && s.end > lo {
			return true
		}
	}
	return false
}

// flush seals the chunk in buf (or keeps it, when a hold touches it).
func (w *Writer) flush(last bool) error {
	i := w.index
	if !last && w.isHeld(i) {
		if w.snapshot == nil {
			state, err := w.hash.(encoding.BinaryMarshaler).MarshalBinary()
			if err != nil {
				return err
			}
			w.snapshot, w.snapOff = state, w.chunkOffset(i)
		}
		w.held[i] = w.buf
		w.buf = make([]byte, 0, ChunkSize)
		w.index++
		return nil
	}
	if err := w.seal(i, w.buf, last); err != nil {
		return err
	}
	w.buf = w.buf[:0]
	w.index++
	return nil
}

func (w *Writer) seal(i int64, plain []byte, last bool) error {
	binary.BigEndian.PutUint64(w.nonce[3:11], uint64(i))
	w.nonce[11] = 0
	if last {
		w.nonce[11] = 1
	}
	ct := w.aead.Seal(w.sealed[:0], w.nonce[:], plain, nil)
	off := w.chunkOffset(i)
	if _, err := w.f.WriteAt(ct, off); err != nil {
		return fmt.Errorf("encrypt: write: %w", err)
	}
	if w.snapshot == nil {
		w.hash.Write(ct)
	}
	w.size = max(w.size, off+int64(len(ct)))
	return nil
}

// Written is the plaintext written so far.
func (w *Writer) Written() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.plain
}

// Hold announces that the plaintext range [off, off+n) will be rewritten with Patch: the
// chunks it touches stay unencrypted in memory until then. The range must not be sealed
// yet (it starts in the chunk being filled, or later).
func (w *Writer) Hold(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if off < w.index*ChunkSize || n <= 0 {
		return fmt.Errorf("encrypt: hold [%d,%d): already encrypted", off, off+n)
	}
	w.holds = append(w.holds, span{off, off + n})
	return nil
}

// Patch gives the final bytes of a held range (the same offset and length as its Hold),
// and writes the chunks no other hold keeps.
func (w *Writer) Patch(off int64, b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	end := off + int64(len(b))
	k := -1
	for i, s := range w.holds {
		if s.off == off && s.end == end {
			k = i
			break
		}
	}
	if k < 0 {
		return fmt.Errorf("encrypt: patch [%d,%d) was not held", off, end)
	}
	if end > w.plain {
		return fmt.Errorf("encrypt: patch [%d,%d) is past the %d bytes written", off, end, w.plain)
	}
	w.holds = append(w.holds[:k], w.holds[k+1:]...)
	for pos := off; pos < end; {
		i := pos / ChunkSize
		in := pos - i*ChunkSize
		var dst []byte
		switch {
		case i == w.index:
			dst = w.buf
		case w.held[i] != nil:
			dst = w.held[i]
		default:
			return fmt.Errorf("encrypt: patch at %d: chunk %d is already encrypted", pos, i)
		}
		n := copy(dst[in:], b[pos-off:])
		pos += int64(n)
	}
	for i, plain := range w.held {
		if w.isHeld(i) {
			continue
		}
		if err := w.seal(i, plain, false); err != nil {
			w.err = err
			return err
		}
		delete(w.held, i)
	}
	return nil
}

// Close seals the last chunk. Every hold must have been patched.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	if len(w.holds) > 0 || len(w.held) > 0 {
		w.err = errors.New("encrypt: closed with held plaintext not patched")
		return w.err
	}
	if err := w.flush(true); err != nil {
		w.err = err
	}
	return w.err
}

// Size is the length of the age file; final after Close.
func (w *Writer) Size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.size
}

// Sum is the sha256 of the whole age file, after Close: when a chunk was held, the file
// is read back from that chunk on (the hash state before it was kept).
func (w *Writer) Sum() ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed || w.err != nil {
		return nil, errors.New("encrypt: checksum of an unfinished file")
	}
	if w.snapshot == nil {
		return w.hash.Sum(nil), nil
	}
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(w.snapshot); err != nil {
		return nil, err
	}
	if _, err := io.Copy(h, io.NewSectionReader(w.f, w.snapOff, w.size-w.snapOff)); err != nil {
		return nil, fmt.Errorf("encrypt: read back: %w", err)
	}
	return h.Sum(nil), nil
}
