package archive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"time"
)

const (
	blockLen = 512
	// maxOctalSize is the largest size USTAR's 11 octal digits hold (8 GiB - 1).
	maxOctalSize = 1<<33 - 1
)

var (
	processUID = os.Getuid()
	processGID = os.Getgid()
)

// tarHeader encodes the header block(s) of one entry the way upstream's
// writer does: USTAR, numeric ids, directories without trailing slash. A name
// too long for USTAR gets a PAX record (more blocks) unless singleBlock.
func tarHeader(name string, typ byte, mode fs.FileMode, mtime time.Time, size int64, singleBlock bool) ([]byte, error) {
	hdr := &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     int64(mode.Perm()),
		ModTime:  mtime.Truncate(time.Second),
		Uid:      processUID,
		Gid:      processGID,
		Format:   tar.FormatUSTAR,
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := tw.WriteHeader(hdr)
	if err != nil && !singleBlock {
		// Not representable in USTAR (a long name): let archive/tar add PAX records.
		buf.Reset()
		hdr.Format = tar.FormatUnknown
		tw = tar.NewWriter(&buf)
		err = tw.WriteHeader(hdr)
	}
	if err != nil {
		return nil, fmt.Errorf("encode tar header for %q: %w", name, err)
	}
	b := buf.Bytes()
	if len(b) < blockLen || len(b)%blockLen != 0 {
		return nil, fmt.Errorf("encode tar header for %q: unexpected length %d", name, len(b))
	}
	if singleBlock && len(b) != blockLen {
		return nil, fmt.Errorf("entry name %q is too long for a streamed entry (USTAR allows 100 characters, or 255 split at a slash)", name)
	}
	setHeaderSize(b[len(b)-blockLen:], size)
	return b, nil
}

// setHeaderSize writes size into a USTAR header block and recomputes its
// checksum. Sizes past 8 GiB use GNU base-256 encoding, still one block, which
// Go's archive/tar and GNU tar both read.
func setHeaderSize(block []byte, size int64) {
	field := block[124:136]
	if size <= maxOctalSize {
		copy(field, fmt.Sprintf("%011o\x00", size))
	} else {
		for i := len(field) - 1; i > 0; i-- {
			field[i] = byte(size)
			size >>= 8
		}
		field[0] = 0x80
	}
	sum := block[148:156]
	for i := range sum {
		sum[i] = ' '
	}
	var total int64
	for _, c := range block[:blockLen] {
		total += int64(c)
	}
	// Same layout as archive/tar: six octal digits, NUL, space.
	copy(sum, fmt.Sprintf("%06o\x00 ", total))
}

// padding returns the zero bytes that complete a tar entry of size bytes.
func padding(size int64) []byte {
	n := (blockLen - size%blockLen) % blockLen
	return make([]byte, n)
}
