package archive

import (
	"archive/tar"
	"bytes"
)

// readHeaderOnly parses one tar header block with archive/tar.
func readHeaderOnly(block []byte) (*tar.Header, error) {
	return tar.NewReader(bytes.NewReader(block)).Next()
}
