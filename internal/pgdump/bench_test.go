package pgdump_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"flightctl.dr/internal/pgdump"
)

// benchDump is a dump shaped like a Flight Control one: preamble, DDL, then COPY blocks
// of rows carrying JSON of about 1 KiB, about size bytes in all.
func benchDump(size int) []byte {
	var b bytes.Buffer
	b.WriteString("--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\nSET statement_timeout = 0;\nSET standard_conforming_strings = on;\nSELECT pg_catalog.set_config('search_path', '', false);\n\n")
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&b, "--\n-- Name: t%d; Type: TABLE; Schema: public; Owner: flightctl_migrator\n--\n\nCREATE TABLE public.t%d (\n    org_id uuid NOT NULL,\n    name text NOT NULL,\n    spec jsonb,\n    CONSTRAINT c%d CHECK ((name <> ''::text))\n);\n\n\nALTER TABLE public.t%d OWNER TO flightctl_migrator;\n\n", i, i, i, i)
	}
	b.WriteString("--\n-- Data for Name: events; Type: TABLE DATA; Schema: public; Owner: flightctl_migrator\n--\n\nCOPY public.events (org_id, name, spec) FROM stdin;\n")
	row := "00000000-0000-0000-0000-000000000000\tdevice-%08d\t{\"status\": {\"summary\": {\"status\": \"Online\"}, \"conditions\": [" + strings.Repeat(`{"type": "Updating", "status": "False"}, `, 22) + "{}]}}\n"
	for n := 0; b.Len() < size; n++ {
		fmt.Fprintf(&b, row, n)
	}
	b.WriteString("\\.\n\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc\n\n")
	return b.Bytes()
}

func BenchmarkFilter(b *testing.B) {
	dump := benchDump(128 << 20)
	b.SetBytes(int64(len(dump)))
	b.ResetTimer()
	for range b.N {
		f := pgdump.NewFilter(bytes.NewReader(dump), pgdump.FilterOptions{})
		if _, err := io.Copy(io.Discard, f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCopyOnly is the floor: the same bytes copied through a pipe-sized buffer.
func BenchmarkCopyOnly(b *testing.B) {
	dump := benchDump(128 << 20)
	b.SetBytes(int64(len(dump)))
	b.ResetTimer()
	for range b.N {
		if _, err := io.Copy(io.Discard, struct{ io.Reader }{bytes.NewReader(dump)}); err != nil {
			b.Fatal(err)
		}
	}
}
