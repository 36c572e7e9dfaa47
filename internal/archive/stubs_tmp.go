package archive

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"time"
)

var errTODO = errors.New("archive: not implemented yet")

type WriterOptions struct {
	Dir              string
	Now              func() time.Time
	CompressionLevel int
	Concurrency      int
	Logger           *slog.Logger
}

type Writer struct{}

func NewWriter(ctx context.Context, opts WriterOptions) (*Writer, error) { return nil, errTODO }
func (w *Writer) AddDir(name string, mode fs.FileMode, mtime time.Time) error { return errTODO }
func (w *Writer) AddFile(name string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error {
	return errTODO
}
func (w *Writer) AddStream(name string, mode fs.FileMode, mtime time.Time, r io.Reader) (int64, error) {
	return 0, errTODO
}
func (w *Writer) AddTree(prefix, srcDir string) (int, error) { return 0, errTODO }
func (w *Writer) Commit(meta Metadata) (*Result, error)    { return nil, errTODO }
func (w *Writer) Abort() error                              { return nil }

func Verify(ctx context.Context, path string, opts VerifyOptions) (*Report, error) {
	return nil, errTODO
}
func Extract(ctx context.Context, path, destRoot string, opts VerifyOptions) (*Report, error) {
	return nil, errTODO
}
