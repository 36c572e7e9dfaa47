package archive

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
)

const (
	// maxMemberLen and maxMemberOutput bound one member of ours in memory;
	// the writer makes members of about 1 MiB.
	maxMemberLen    = 16 << 20
	maxMemberOutput = 16 << 20
)

// NewGzipReader returns a reader of the tar stream inside a gzip-compressed
// archive read from r, for callers that walk an archive themselves (restore's
// load pass). Archives from this package's writer are inflated on every CPU;
// any other gzip stream, upstream's single member included, sequentially. Every
// member's CRC and length are checked; errors wrap gzip.ErrChecksum,
// gzip.ErrHeader or flate.CorruptInputError of the standard library. Close
// stops the goroutines; it does not close r.
func NewGzipReader(r io.Reader) (io.ReadCloser, error) {
	return newDecompressor(r)
}

// newDecompressor returns a reader of the tar stream inside the gzip stream.
// Archives from our writer (gzip members carrying their length in an "FD"
// subfield) are inflated on several goroutines; anything else, upstream's
// single-member archives included, by a sequential gzip reader. Both check every
// member's CRC and length.
func newDecompressor(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	head, err := br.Peek(memberHeaderLen)
	if _, ok := parseMemberHeader(head); err == nil && ok {
		return newParallelInflater(br), nil
	}
	return gzip.NewReader(br)
}

// parseMemberHeader returns the member length from one of our headers.
func parseMemberHeader(h []byte) (int, bool) {
	if len(h) < memberHeaderLen || h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 || h[3] != 0x04 ||
		h[10] != 12 || h[11] != 0 || h[12] != extraID1 || h[13] != extraID2 || h[14] != 8 || h[15] != 0 {
		return 0, false
	}
	n := binary.LittleEndian.Uint64(h[16:24])
	if n < memberHeaderLen+memberTrailer || n > maxMemberLen {
		return 0, false
	}
	return int(n), true
}

type inflateJob struct {
	in   []byte
	out  []byte
	err  error
	done chan struct{}
}

// Buffers are reused: members are about 1 MiB in and out.
var memberBufs = sync.Pool{New: func() any { return new([]byte) }}

func getBuf(n int) []byte {
	b := *memberBufs.Get().(*[]byte)
	if cap(b) < n {
		return make([]byte, n, max(n, 1<<20+4096))
	}
	return b[:n]
}

func putBuf(b []byte) {
	if b != nil {
		memberBufs.Put(&b)
	}
}

// parallelInflater splits the stream at member boundaries and inflates the
// members on several goroutines, returning their output in order. When it
// meets a member without the length field it hands the rest of the stream to
// a sequential gzip reader.
type parallelInflater struct {
	br    *bufio.Reader
	order chan *inflateJob
	work  chan *inflateJob
	stop  chan struct{}
	wg    sync.WaitGroup

	cur      *inflateJob
	pos      int
	tail     io.Reader // sequential gzip reader for the rest, once the members end
	finished bool
	err      error
}

func newParallelInflater(br *bufio.Reader) *parallelInflater {
	n := runtime.GOMAXPROCS(0)
	p := &parallelInflater{
		br:    br,
		order: make(chan *inflateJob, 2*n+2),
		work:  make(chan *inflateJob, 2*n+2),
		stop:  make(chan struct{}),
	}
	for range n {
		p.wg.Add(1)
		go p.inflateLoop()
	}
	go p.split()
	return p
}

// split reads whole members and queues them; it stops at EOF, at a member
// that is not ours, or on stop.
func (p *parallelInflater) split() {
	defer close(p.work)
	defer close(p.order)
	for {
		head, err := p.br.Peek(memberHeaderLen)
		if len(head) == 0 && err == io.EOF {
			return
		}
		n, ok := parseMemberHeader(head)
		if !ok {
			return // the consumer continues with a sequential gzip reader from here
		}
		job := &inflateJob{in: getBuf(n), done: make(chan struct{})}
		if _, err := io.ReadFull(p.br, job.in); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			job.err = err
			close(job.done)
			select {
			case p.order <- job:
			case <-p.stop:
			}
			return
		}
		select {
		case p.order <- job:
		case <-p.stop:
			return
		}
		select {
		case p.work <- job:
		case <-p.stop:
			return
		}
	}
}

func (p *parallelInflater) inflateLoop() {
	defer p.wg.Done()
	var fr io.ReadCloser
	var src bytes.Reader
	for job := range p.work {
		body := job.in[memberHeaderLen : len(job.in)-memberTrailer]
		src.Reset(body)
		if fr == nil {
			fr = flate.NewReader(&src)
		} else {
			fr.(flate.Resetter).Reset(&src, nil)
		}
		trailer := job.in[len(job.in)-memberTrailer:]
		size := int(binary.LittleEndian.Uint32(trailer[4:]))
		if size > maxMemberOutput {
			job.err = fmt.Errorf("a gzip member claims %d bytes, more than %d: %w", size, maxMemberOutput, gzip.ErrHeader)
		} else {
			// Inflate into exactly ISIZE bytes, then make sure nothing is left.
			out := getBuf(size)
			n, err := io.ReadFull(fr, out)
			var extra [1]byte
			m, eofErr := fr.Read(extra[:])
			switch {
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				job.err = fmt.Errorf("a gzip member is shorter than its trailer says (%d of %d bytes): %w", n, size, gzip.ErrChecksum)
			case err != nil:
				job.err = err
			case m > 0:
				job.err = fmt.Errorf("a gzip member is longer than its trailer says: %w", gzip.ErrChecksum)
			case eofErr != io.EOF:
				job.err = eofErr
			case src.Len() != 0:
				job.err = fmt.Errorf("%d stray bytes after a deflate stream: %w", src.Len(), gzip.ErrHeader)
			case binary.LittleEndian.Uint32(trailer) != crc32.ChecksumIEEE(out):
				job.err = gzip.ErrChecksum
			}
			job.out = out
		}
		putBuf(job.in)
		job.in = nil
		close(job.done)
	}
}

func (p *parallelInflater) Read(b []byte) (int, error) {
	for {
		if p.err != nil {
			return 0, p.err
		}
		if p.tail != nil {
			return p.tail.Read(b)
		}
		if p.cur != nil && p.pos < len(p.cur.out) {
			n := copy(b, p.cur.out[p.pos:])
			p.pos += n
			return n, nil
		}
		job, ok := <-p.order
		if !ok {
			// The members ended: either the stream did, or what follows is
			// not ours and a sequential gzip reader reads it (and refuses garbage).
			p.finished = true
			if _, err := p.br.Peek(1); err == io.EOF {
				p.err = io.EOF
				continue
			}
			gz, err := gzip.NewReader(p.br)
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				p.err = err
				continue
			}
			p.tail = gz
			continue
		}
		<-job.done
		if job.err != nil {
			p.err = job.err
			continue
		}
		if p.cur != nil {
			putBuf(p.cur.out)
		}
		p.cur, p.pos = job, 0
	}
}

func (p *parallelInflater) Close() error {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	for range p.order {
	}
	p.wg.Wait()
	return nil
}
