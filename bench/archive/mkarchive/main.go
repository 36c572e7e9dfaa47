// Command mkarchive writes a benchmark archive of about -size bytes with the
// archive writer: a streamed db/dump.sql (half SQL-like text, half random
// bytes, so it compresses about as much as a real dump with bytea/JSON
// payloads) plus a few PKI files. It prints the archive path.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"strconv"
	"time"

	"flightctl.dr/internal/archive"
)

func main() {
	dir := flag.String("dir", ".", "output directory")
	size := flag.Int64("size", 1<<30, "approximate compressed size in bytes")
	level := flag.Int("level", 0, "gzip level (0: default)")
	profile := flag.String("profile", "mixed", "mixed: half SQL text, half random bytes; text: SQL text only")
	flag.Parse()
	if *profile != "mixed" && *profile != "text" {
		fmt.Fprintln(os.Stderr, "mkarchive: -profile must be mixed or text")
		os.Exit(2)
	}
	if err := run(*dir, *size, *level, *profile == "text"); err != nil {
		fmt.Fprintln(os.Stderr, "mkarchive:", err)
		os.Exit(1)
	}
}

// dumpSource yields blocks of 512 KiB of text then 512 KiB of random bytes
// (or text only).
type dumpSource struct {
	block    []byte
	off      int
	rng      *mrand.Rand
	textOnly bool
}

func newDumpSource(textOnly bool) *dumpSource {
	s := &dumpSource{block: make([]byte, 1<<20), rng: mrand.New(mrand.NewPCG(1, 2)), textOnly: textOnly}
	s.refill()
	return s
}

func (s *dumpSource) refill() {
	textLen := 512 << 10
	if s.textOnly {
		textLen = len(s.block)
	}
	text := s.block[:0]
	for len(text) < textLen {
		id := s.rng.Uint64()
		text = append(text, "INSERT INTO public.devices (id, name, resource_version, status) VALUES ('"...)
		text = strconv.AppendUint(text, id, 16)
		text = append(text, "', 'device-"...)
		text = strconv.AppendUint(text, id%100000, 10)
		text = append(text, "', "...)
		text = strconv.AppendUint(text, s.rng.Uint64()%1000, 10)
		text = append(text, ", '{\"conditions\":[{\"type\":\"Updating\",\"status\":\"False\"}]}');\n"...)
	}
	_, _ = rand.Read(s.block[textLen:])
	s.off = 0
}

func (s *dumpSource) Read(p []byte) (int, error) {
	if s.off == len(s.block) {
		s.refill()
	}
	n := copy(p, s.block[s.off:])
	s.off += n
	return n, nil
}

func run(dir string, size int64, level int, textOnly bool) error {
	w, err := archive.NewWriter(context.Background(), archive.WriterOptions{Dir: dir, CompressionLevel: level})
	if err != nil {
		return err
	}
	defer w.Abort()
	if err := w.AddDir("db", 0o755, time.Time{}); err != nil {
		return err
	}
	// Compressed bytes per input byte at the default level (2), measured.
	input := size * 100 / 55
	if textOnly {
		input = size * 100 / 11
	}
	if _, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, io.LimitReader(newDumpSource(textOnly), input)); err != nil {
		return err
	}
	for _, name := range []string{"pki/ca.crt", "pki/ca.key", "pki/client-signer/ca.crt"} {
		body := make([]byte, 4096)
		_, _ = rand.Read(body)
		if err := w.AddFile(name, 0o600, time.Time{}, int64(len(body)), bytesReader(body)); err != nil {
			return err
		}
	}
	res, err := w.Commit(archive.Metadata{Version: "v1.4.0-bench", DeploymentType: archive.DeploymentPodman, DatabaseIncluded: true, Producer: "mkarchive"})
	if err != nil {
		return err
	}
	fmt.Println(res.Path)
	return nil
}

type bytesReaderT struct {
	b []byte
}

func bytesReader(b []byte) io.Reader { return &bytesReaderT{b} }

func (r *bytesReaderT) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
