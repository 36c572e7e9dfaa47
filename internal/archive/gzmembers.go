package archive

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"errors"
	"hash"
	"hash/crc32"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/flate"
)

// The archive's gzip stream is a sequence of independent gzip members (RFC
// 1952 §2.2 allows it and every gzip reader, Go's included, concatenates
// them). Each member holds one block of about blockSize tar bytes, so blocks
// compress on several goroutines while the output stays in order. Every member
// we write carries an FEXTRA subfield "FD" holding the member's total length,
// which lets a reader find member boundaries without inflating.
const (
	defaultBlockSize = 1 << 20

	extraID1        = 'F'
	extraID2        = 'D'
	memberHeaderLen = 10 + 2 + 4 + 8 // fixed header, XLEN, subfield header, uint64 length
	memberTrailer   = 8              // CRC32, ISIZE
	// storedMemberLen is the length of a member holding one 512-byte tar
	// header as a single stored deflate block: it does not depend on the bytes.
	storedMemberLen = memberHeaderLen + 5 + blockLen + memberTrailer
)

// appendMemberHeader appends a gzip member header like Go's gzip.Writer writes
// (no name, mtime 0, OS unknown) plus the FD subfield.
func appendMemberHeader(dst []byte, xfl byte, memberLen uint64) []byte {
	dst = append(dst, 0x1f, 0x8b, 8, 0x04 /* FEXTRA */, 0, 0, 0, 0, xfl, 0xff)
	dst = append(dst, 12, 0) // XLEN
	dst = append(dst, extraID1, extraID2, 8, 0)
	return binary.LittleEndian.AppendUint64(dst, memberLen)
}

// storedMember returns the gzip member holding block uncompressed.
func storedMember(block []byte) []byte {
	out := make([]byte, 0, memberHeaderLen+5+len(block)+memberTrailer)
	out = appendMemberHeader(out, 0, uint64(memberHeaderLen+5+len(block)+memberTrailer))
	n := uint16(len(block))
	out = append(out, 0x01) // BFINAL=1, BTYPE=00 (stored)
	out = binary.LittleEndian.AppendUint16(out, n)
	out = binary.LittleEndian.AppendUint16(out, ^n)
	out = append(out, block...)
	out = binary.LittleEndian.AppendUint32(out, crc32.ChecksumIEEE(block))
	return binary.LittleEndian.AppendUint32(out, uint32(len(block)))
}

type member struct {
	in     []byte // tar bytes (compressed by a worker), nil for a stored member
	level  int    // the gzip level a worker compresses it at
	out    []byte // the complete gzip member
	done   chan struct{}
	err    error
	reuse  bool // in and out came from the pools
	notify chan struct{}

	// Filled by the output goroutine.
	snapshot     []byte // hash state before this member, when wantSnapshot
	wantSnapshot bool
	offset       int64
}

// memberWriter compresses a byte stream into gzip members on several
// goroutines and writes them in order to out, hashing what it writes.
type memberWriter struct {
	out       io.Writer
	blockSize int
	workers   int

	// ladder lists the levels a block may be compressed at, the configured one first and
	// the fastest last; one level: a fixed level. rung is the ladder's index of the last
	// block sent (producer-owned).
	ladder []int
	rung   int
	// levelIn counts the tar bytes sent at each level (producer-owned).
	levelIn map[int]int64
	// blocks counts the blocks sent (producer-owned); log receives a debug record at
	// every change of level.
	blocks int64
	log    *slog.Logger
	// pending counts the blocks sent for compression and not compressed yet.
	pending atomic.Int64
	// beforeCompress, when set (tests), runs in a compressing goroutine before each block.
	beforeCompress func(level int)

	cur   []byte // block being filled
	order chan *member
	work  chan *member
	wg    sync.WaitGroup
	done  chan struct{} // output goroutine finished

	inPool  sync.Pool
	outPool sync.Pool

	mu     sync.Mutex
	err    error // first error, sticky
	closed bool

	// hold, when set, is told of a stored member about to be written (at that offset of
	// the output) that will be rewritten in place: the encrypting output keeps it.
	hold func(off, n int64) error

	// Owned by the output goroutine until done is closed; hash is nil when the output
	// hashes what is stored itself (encrypted archives).
	hash    hash.Hash
	written int64
	discard bool
	// rehashed: a header member that will be rewritten has been written; the archive is
	// hashed again from it once it is (Writer.finalHash), so hashing the rest is waste.
	rehashed bool
}

// compressionLadder is the levels an adaptive writer configured at level steps down
// through when its compressors fall behind the input: level 2 for levels 4 to 9, then
// level 1, then Huffman-only coding (no match search: on dumps about 40 % less CPU than
// levels 1-2 for archives about 1.7 times as large). Never stored.
func compressionLadder(level int, adaptive bool) []int {
	if !adaptive {
		return []int{level}
	}
	ladder := []int{level}
	if level > 3 {
		ladder = append(ladder, 2)
	}
	if level > 1 {
		ladder = append(ladder, 1)
	}
	return append(ladder, flate.HuffmanOnly)
}

func newMemberWriter(out io.Writer, ladder []int, concurrency, blockSize int) *memberWriter {
	if concurrency < 1 {
		concurrency = 1
	}
	if blockSize <= 0 {
		blockSize = defaultBlockSize
	}
	m := &memberWriter{
		out:       out,
		ladder:    ladder,
		levelIn:   map[int]int64{},
		workers:   concurrency,
		blockSize: blockSize,
		order:     make(chan *member, 2*concurrency+1),
		work:      make(chan *member, 2*concurrency+1),
		done:      make(chan struct{}),
		hash:      sha256.New(),
	}
	m.inPool.New = func() any { return make([]byte, 0, blockSize) }
	m.outPool.New = func() any { return make([]byte, 0, blockSize/2) }
	m.cur = m.inPool.Get().([]byte)[:0]
	return m
}

// start starts the compressing and writing goroutines.
func (m *memberWriter) start() {
	for range m.workers {
		m.wg.Add(1)
		go m.compressLoop()
	}
	go m.outputLoop()
}

func (m *memberWriter) setErr(err error) {
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.mu.Unlock()
}

func (m *memberWriter) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// memberXFL is the gzip header's XFL byte for a level (RFC 1952: 2 for the slowest
// algorithm, 4 for the fastest).
func memberXFL(level int) byte {
	switch level {
	case flate.BestCompression:
		return 2
	case flate.BestSpeed, flate.HuffmanOnly:
		return 4
	}
	return 0
}

func (m *memberWriter) compressLoop() {
	defer m.wg.Done()
	// One deflate state per level this goroutine has been given, made when first needed.
	writers := map[int]*flate.Writer{}
	var zero [memberHeaderLen]byte
	for job := range m.work {
		if m.beforeCompress != nil {
			m.beforeCompress(job.level)
		}
		fw := writers[job.level]
		if fw == nil {
			var err error
			if fw, err = flate.NewWriter(io.Discard, job.level); err != nil {
				// The levels were validated.
				m.pending.Add(-1)
				job.err = err
				close(job.done)
				continue
			}
			writers[job.level] = fw
		}
		out := bytes.NewBuffer(m.outPool.Get().([]byte)[:0])
		out.Write(zero[:])
		fw.Reset(out)
		_, werr := fw.Write(job.in)
		if cerr := fw.Close(); werr == nil {
			werr = cerr
		}
		m.pending.Add(-1)
		if werr != nil {
			job.err = werr
			close(job.done)
			continue
		}
		var trailer [memberTrailer]byte
		binary.LittleEndian.PutUint32(trailer[0:], crc32.ChecksumIEEE(job.in))
		binary.LittleEndian.PutUint32(trailer[4:], uint32(len(job.in)))
		out.Write(trailer[:])
		b := out.Bytes()
		appendMemberHeader(b[:0], memberXFL(job.level), uint64(len(b)))
		job.out = b
		close(job.done)
	}
}

func (m *memberWriter) outputLoop() {
	defer close(m.done)
	for job := range m.order {
		<-job.done
		if job.err != nil {
			m.setErr(job.err)
			m.discard = true
		}
		if job.out != nil && !m.discard {
			if job.wantSnapshot && m.hold != nil {
				// An encrypting output keeps this member unencrypted until it is patched.
				if err := m.hold(m.written, int64(len(job.out))); err != nil {
					m.setErr(err)
					m.discard = true
				}
			} else if job.wantSnapshot {
				state, err := m.hash.(encoding.BinaryMarshaler).MarshalBinary()
				if err != nil {
					m.setErr(err)
					m.discard = true
				}
				job.snapshot = state
				m.rehashed = true
			}
			job.offset = m.written
			if _, err := m.out.Write(job.out); err != nil {
				m.setErr(err)
				m.discard = true
			} else {
				if m.hash != nil && !m.rehashed {
					m.hash.Write(job.out)
				}
				m.written += int64(len(job.out))
			}
		}
		if job.reuse {
			m.inPool.Put(job.in[:0])
			m.outPool.Put(job.out[:0])
			job.in, job.out = nil, nil
		}
		if job.notify != nil {
			close(job.notify)
		}
	}
}

func (m *memberWriter) enqueue(job *member, compress bool) error {
	if m.closed {
		return errors.New("archive writer is closed")
	}
	if err := m.Err(); err != nil {
		return err
	}
	m.order <- job
	if compress {
		m.work <- job
	}
	return nil
}

// endBlock sends the block being filled, if any, to be compressed.
func (m *memberWriter) endBlock() error {
	if len(m.cur) == 0 {
		return nil
	}
	job := &member{in: m.cur, level: m.nextLevel(), done: make(chan struct{}), reuse: true}
	m.blocks++
	m.levelIn[job.level] += int64(len(job.in))
	m.cur = m.inPool.Get().([]byte)[:0]
	m.pending.Add(1)
	return m.enqueue(job, true)
}

// nextLevel chooses the level of the block about to be sent. With one level on the
// ladder it is that level. Otherwise it follows the blocks waiting for a compressor
// beyond the ones being compressed, at this moment: none, the configured level; then one
// step down the ladder (faster) for every stepBlocks more that wait (stepBlocks is one
// round of compressing goroutines spread over the ladder's steps, at least one block), down
// to the fastest. So the compressors step down as soon as blocks start to wait, before the
// queue is full and the source has to wait for them, and each block is compressed at the
// best level the CPU left to compression allows: as the queue grows the blocks get faster
// to compress and it drains, and as it drains they get better again; the source sets the
// pace. (Stepping down only once a whole round waited, and back up only after many blocks
// found a compressor idle, kept level 2 on half the blocks of a 702 MB dump on 2 CPUs, each
// step down coming after the source had already waited: bench/RESULTS.md, "Where a direct
// backup's CPU goes".)
func (m *memberWriter) nextLevel() int {
	if len(m.ladder) == 1 {
		return m.ladder[0]
	}
	waiting := int(m.pending.Load()) - m.workers
	rung := 0
	if waiting > 0 {
		rung = min(len(m.ladder)-1, waiting/max(1, m.workers/(len(m.ladder)-1)))
	}
	if rung != m.rung && m.log != nil {
		m.log.Debug("archive compression level changed", "block", m.blocks, "from", m.ladder[m.rung], "to", m.ladder[rung], "waiting", max(waiting, 0))
	}
	m.rung = rung
	return m.ladder[rung]
}

func (m *memberWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := copy(m.cur[len(m.cur):m.blockSize], p)
		m.cur = m.cur[:len(m.cur)+n]
		p = p[n:]
		written += n
		if len(m.cur) == m.blockSize {
			if err := m.endBlock(); err != nil {
				return written, err
			}
		}
	}
	return written, m.Err()
}

// readFrom reads from r straight into the block buffers until EOF or until
// limit bytes (limit < 0: no limit), feeding every byte to tap. tap gets the bytes a block
// at a time (when it is full, and at the end), not as each Read returns them: a pipe that
// its writer fills in small pieces is read in as many small pieces, and a hash or a dump
// check handed each one costs a call, or a goroutine switch, per piece.
func (m *memberWriter) readFrom(r io.Reader, limit int64, tap io.Writer) (int64, error) {
	var total int64
	tapped := len(m.cur) // bytes of the current block that are not this stream's, or tapped
	for limit < 0 || total < limit {
		space := m.cur[len(m.cur):m.blockSize]
		if limit >= 0 && int64(len(space)) > limit-total {
			space = space[:limit-total]
		}
		n, err := r.Read(space)
		if n > 0 {
			m.cur = m.cur[:len(m.cur)+n]
			total += int64(n)
			if len(m.cur) == m.blockSize {
				tap.Write(m.cur[tapped:])
				tapped = 0
				if err := m.endBlock(); err != nil {
					return total, err
				}
			}
		}
		if err != nil {
			tap.Write(m.cur[tapped:])
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
	tap.Write(m.cur[tapped:])
	return total, nil
}

// writeStored ends the current block and writes block as a stored member of
// fixed length. The returned member's offset and snapshot are valid after sync.
func (m *memberWriter) writeStored(block []byte) (*member, error) {
	if err := m.endBlock(); err != nil {
		return nil, err
	}
	job := &member{out: storedMember(block), done: make(chan struct{}), wantSnapshot: true}
	close(job.done)
	return job, m.enqueue(job, false)
}

// sync ends the current block and waits until everything sent so far is
// written.
func (m *memberWriter) sync() error {
	if err := m.endBlock(); err != nil {
		return err
	}
	barrier := &member{done: make(chan struct{}), notify: make(chan struct{})}
	close(barrier.done)
	if err := m.enqueue(barrier, false); err != nil {
		return err
	}
	<-barrier.notify
	return m.Err()
}

// Close writes what is left and stops the goroutines. With discard, nothing
// more is written. It returns the first error.
func (m *memberWriter) Close(discard bool) error {
	if m.closed {
		return m.Err()
	}
	if !discard {
		if err := m.endBlock(); err != nil {
			discard = true
		}
	}
	if discard {
		m.setErr(errors.New("archive writer aborted"))
	}
	m.closed = true
	close(m.work)
	close(m.order)
	m.wg.Wait()
	<-m.done
	if discard {
		return nil
	}
	return m.Err()
}

// Written is the number of compressed bytes written; valid after sync or Close.
func (m *memberWriter) Written() int64 { return m.written }
