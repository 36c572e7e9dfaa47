package pgdump_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/pgdump"
)

// FuzzReader: whatever the input, the reader never panics, and the items it returns
// before it stops are the input's bytes, in order, with nothing added or lost.
func FuzzReader(f *testing.F) {
	f.Add([]byte(archivetest.Dump))
	f.Add([]byte("SELECT 1; \\! ls\n"))
	f.Add([]byte("COPY public.t (a) FROM stdin;\n1\n\\.\n"))
	f.Add([]byte("CREATE FUNCTION f() AS $x$ ; $x$;\n'unterminated"))
	f.Add([]byte("/* nested /* comment */ ; */ SELECT E'\\';';\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		rd := pgdump.NewReader(bytes.NewReader(in))
		var got bytes.Buffer
		for {
			it, err := rd.Next()
			if errors.Is(err, io.EOF) {
				if !bytes.Equal(got.Bytes(), in) {
					t.Fatalf("items do not add up to the input")
				}
				return
			}
			if err != nil {
				if !bytes.HasPrefix(in, got.Bytes()) {
					t.Fatalf("items before the refusal are not a prefix of the input")
				}
				return
			}
			got.Write(it.Raw)
		}
	})
}
