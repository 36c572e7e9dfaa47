package archive

import (
	"context"
	"crypto/sha256"
	"hash"
	"io"
)

const readChunk = 1 << 20

// hashingReader reads a file on its own goroutine, hashing every byte, and
// hands the chunks to the consumer, so hashing the compressed archive runs
// beside decompression instead of before it.
type hashingReader struct {
	chunks chan []byte
	free   chan []byte
	stop   chan struct{}
	done   chan struct{}

	cur    []byte
	curBuf []byte

	// Set by the producer before it closes chunks.
	err  error
	hash hash.Hash
	size int64
}

func newHashingReader(ctx context.Context, r io.Reader) *hashingReader {
	const depth = 4
	h := &hashingReader{
		chunks: make(chan []byte, depth),
		free:   make(chan []byte, depth+1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		hash:   sha256.New(),
	}
	for range depth + 1 {
		h.free <- make([]byte, readChunk)
	}
	go h.produce(ctx, r)
	return h
}

func (h *hashingReader) produce(ctx context.Context, r io.Reader) {
	defer close(h.done)
	defer close(h.chunks)
	for {
		var buf []byte
		select {
		case buf = <-h.free:
		case <-h.stop:
			return
		}
		if err := ctx.Err(); err != nil {
			h.err = err
			return
		}
		n, err := io.ReadFull(r, buf[:cap(buf)])
		if n > 0 {
			h.hash.Write(buf[:n])
			h.size += int64(n)
			select {
			case h.chunks <- buf[:n]:
			case <-h.stop:
				return
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return
		}
		if err != nil {
			h.err = err
			return
		}
	}
}

func (h *hashingReader) Read(p []byte) (int, error) {
	for len(h.cur) == 0 {
		if h.curBuf != nil {
			h.free <- h.curBuf
			h.curBuf = nil
		}
		chunk, ok := <-h.chunks
		if !ok {
			if h.err != nil {
				return 0, h.err
			}
			return 0, io.EOF
		}
		h.cur, h.curBuf = chunk, chunk
	}
	n := copy(p, h.cur)
	h.cur = h.cur[n:]
	return n, nil
}

// finish reads whatever the consumer left, so the hash covers the whole
// file, and returns the hash and size.
func (h *hashingReader) finish() ([]byte, int64, error) {
	for {
		if h.curBuf != nil {
			h.free <- h.curBuf
			h.curBuf = nil
		}
		chunk, ok := <-h.chunks
		if !ok {
			break
		}
		h.cur, h.curBuf = nil, chunk
	}
	<-h.done
	if h.err != nil {
		return nil, h.size, h.err
	}
	return h.hash.Sum(nil), h.size, nil
}

// close stops the producer without reading the rest.
func (h *hashingReader) close() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	for range h.chunks {
	}
	<-h.done
}
