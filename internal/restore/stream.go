package restore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
)

// errArchiveChanged says the archive on disk is no longer the one that was verified.
var errArchiveChanged = errors.New("the archive changed on disk after it was verified: make sure nothing writes to it and run the restore again")

// entryFunc handles one archive entry; r reads a regular file's content.
type entryFunc func(hdr *tar.Header, name string, r io.Reader) error

// streamArchive reads the archive once, calling fn for every entry, and checks at the end
// that the bytes read hash to wantSHA256 (the digest verification accepted), so that what
// is loaded is exactly what was verified. The archive has been verified before: entries
// are still refused here if they are not plain relative directories or files.
func streamArchive(ctx context.Context, archivePath, wantSHA256 string, fn entryFunc) error {
	f, err := os.Open(archivePath)
	if err != nil {
		return fmt.Errorf("open archive: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	src := &ctxReader{ctx: ctx, r: io.TeeReader(f, h)}
	gz, err := gzip.NewReader(src)
	if err != nil {
		return fmt.Errorf("read archive %s: %w", archivePath, err)
	}
	tr := tar.NewReader(gz)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive %s: %w", archivePath, err)
		}
		name, err := cleanEntryName(hdr.Name)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir, tar.TypeReg:
		default:
			return fmt.Errorf("archive entry %q is not a directory or regular file: %w", hdr.Name, errArchiveChanged)
		}
		if err := fn(hdr, name, tr); err != nil {
			return err
		}
	}
	// Read the rest (gzip trailer, padding) so the digest covers the whole file.
	if _, err := io.Copy(io.Discard, gz); err != nil {
		return fmt.Errorf("read archive %s: %w", archivePath, err)
	}
	if _, err := io.Copy(io.Discard, src); err != nil {
		return fmt.Errorf("read archive %s: %w", archivePath, err)
	}
	if wantSHA256 != "" && !strings.EqualFold(hex.EncodeToString(h.Sum(nil)), wantSHA256) {
		return errArchiveChanged
	}
	return nil
}

// cleanEntryName returns the entry name without a trailing slash, refusing anything that
// is not a clean relative path.
func cleanEntryName(name string) (string, error) {
	n := strings.TrimSuffix(name, "/")
	if n == "" || strings.HasPrefix(n, "/") || path.Clean(n) != n || n == ".." || strings.HasPrefix(n, "../") {
		return "", fmt.Errorf("archive entry %q is not a clean relative path: %w", name, errArchiveChanged)
	}
	return n, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashingReader hashes what passes through it.
func hashingReader(r io.Reader) (io.Reader, hash.Hash) {
	h := sha256.New()
	return io.TeeReader(r, h), h
}

// copyCounter counts the data rows of chosen tables in a plain-SQL dump as it streams
// through Write: the lines between "COPY <schema>.<table> (...) FROM stdin;" and "\.".
// COPY text format escapes newlines inside values, so one line is one row.
type copyCounter struct {
	tables  map[string]bool
	Counts  map[string]int64
	current string // table of the COPY block being read, "" outside one
	inCopy  bool
	line    []byte // start of the current line (bounded), enough to recognise headers
	lineLen int
}

const maxHeaderPrefix = 512

func newCopyCounter(tables []string) *copyCounter {
	c := &copyCounter{tables: map[string]bool{}, Counts: map[string]int64{}}
	for _, t := range tables {
		c.tables[t] = true
		c.Counts[t] = 0
	}
	return c
}

func (c *copyCounter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.appendPrefix(p)
			break
		}
		c.appendPrefix(p[:i])
		c.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (c *copyCounter) appendPrefix(b []byte) {
	c.lineLen += len(b)
	if room := maxHeaderPrefix - len(c.line); room > 0 {
		if len(b) > room {
			b = b[:room]
		}
		c.line = append(c.line, b...)
	}
}

func (c *copyCounter) endLine() {
	line := c.line
	if c.inCopy {
		if c.lineLen == 2 && string(line) == `\.` {
			c.inCopy, c.current = false, ""
		} else if c.current != "" {
			c.Counts[c.current]++
		}
	} else if bytes.HasPrefix(line, []byte("COPY ")) && bytes.Contains(line, []byte(" FROM stdin;")) {
		c.inCopy = true
		c.current = ""
		if t := copyTable(line); c.tables[t] {
			c.current = t
		}
	}
	c.line = c.line[:0]
	c.lineLen = 0
}

// copyTable extracts the bare table name from a COPY header: COPY public.devices (...).
func copyTable(line []byte) string {
	rest := strings.TrimPrefix(string(line), "COPY ")
	name, _, _ := strings.Cut(rest, " ")
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		name = name[i+1:]
	}
	return strings.Trim(name, `"`)
}
