package archive

import (
	"compress/gzip"
	"io"
)

// newDecompressor returns a reader of the tar stream inside the gzip stream.
func newDecompressor(r io.Reader) (io.ReadCloser, error) {
	return gzip.NewReader(r)
}
