// Package pgdump is the one reader of pg_dump's plain-SQL output in this project. It
// splits the stream, as psql would, into items: the comments and blank lines between
// statements (where pg_dump writes its "-- Name: ...; Type: ...; Schema: ...; Owner: ..."
// entry headers and its completion line), the psql meta-commands pg_dump writes
// (\restrict, \unrestrict), SQL statements (with string literals, quoted identifiers,
// dollar quoting, nested comments and parentheses taken into account) and the data of
// COPY ... FROM stdin blocks up to their "\." line, with the rows counted per table.
//
// It streams: Next returns one item at a time, never holding more than one statement
// (bounded by MaxStatement) or one chunk of COPY data in memory, so a dump of any size
// goes through it. Every byte of the input belongs to exactly one item's Raw, in order,
// so writing the Raw of every item reproduces the input byte for byte.
//
// Checker (check.go) is the allow-list a restore runs on the stream as it is loaded:
// what a single-database `pg_dump --clean --if-exists` of a Flight Control server
// writes, and nothing else. Filter (filter.go) combines both into an io.Reader that hands
// psql only what passed the checker, in psql's restricted mode.
//
// The reader is also meant for a parallel loader: the entry header of every item says
// which object it belongs to (TABLE DATA entries carry the table), COPY data arrives in
// chunks of whole rows that can be spread over several connections, and the INDEX,
// CONSTRAINT and FK CONSTRAINT entries of the post-data section can be run in parallel
// once the data is in.
package pgdump

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ItemKind says what an Item holds.
type ItemKind int

const (
	// Gap is comment lines and blank lines between statements.
	Gap ItemKind = iota
	// Statement is one SQL statement, up to and including its semicolon.
	Statement
	// Meta is a line holding a psql meta-command at the start of a statement.
	Meta
	// CopyData is whole rows (or, for very long rows, part of one) of a COPY block.
	CopyData
	// CopyEnd is the "\." line that ends a COPY block.
	CopyEnd
)

func (k ItemKind) String() string {
	return [...]string{"gap", "statement", "meta-command", "COPY data", "end of COPY data"}[k]
}

// Header is pg_dump's entry header: "-- Name: devices; Type: TABLE; Schema: public;
// Owner: flightctl_migrator" (or "-- Data for Name: ..." before a table's data).
type Header struct {
	Name, Type, Schema, Owner string
	Data                      bool
	Line                      int
}

// Copy is one COPY ... FROM stdin block.
type Copy struct {
	// Table is the table as the COPY statement names it ("public.devices").
	Table string
	// Rows counts the data rows read so far.
	Rows int64
}

// Item is one piece of the dump. Raw is valid until the next call of Next.
type Item struct {
	Kind ItemKind
	// Line is the 1-based line where the item starts.
	Line int
	Raw  []byte
	// Entry is the entry header the item follows; nil before the first one.
	Entry *Header
	// Copy is the COPY block a COPY statement starts, or CopyData/CopyEnd belong to.
	Copy *Copy
	// Rows is the number of rows CopyData ends.
	Rows int64
}

// Refusal says why a dump is not accepted: where, what was found, and why.
type Refusal struct {
	Line   int
	Found  string
	Reason string
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("the database dump is refused at line %d: %s (%s)", r.Line, r.Found, r.Reason)
}

// CompletionLine is the comment pg_dump writes when the dump is complete.
const CompletionLine = "-- PostgreSQL database dump complete"

// MaxStatement bounds one statement (function bodies included).
const MaxStatement = 64 << 20

const copyChunk = 256 << 10

// Reader splits a dump into items.
type Reader struct {
	br       *bufio.Reader
	line     int // lines fully read
	pending  []byte
	pendFull bool

	stmt      []byte
	stmtLine  int
	lex       lexer
	entry     *Header
	copy      *Copy
	copyStart bool // at the start of a COPY data line
	complete  bool
	eof       bool
	err       error
	tables    map[string]int64
	order     []string
	item      Item
}

// NewReader reads a dump from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 1<<20), tables: map[string]int64{}}
}

// Complete reports whether pg_dump's completion line was read.
func (r *Reader) Complete() bool { return r.complete }

// Rows returns the COPY rows read per table ("public.devices"), and the tables in
// the order their COPY blocks appeared.
func (r *Reader) Rows() (map[string]int64, []string) { return r.tables, r.order }

// Line is the number of lines read so far.
func (r *Reader) Line() int { return r.line }

// readLine returns the next line including its newline (the last one may lack it). A
// line longer than the buffer comes back in pieces; full is false for all but the last.
func (r *Reader) readLine() (b []byte, full bool, err error) {
	if r.pending != nil {
		b := r.pending
		r.pending = nil
		return b, r.pendFull, nil
	}
	b, err = r.br.ReadSlice('\n')
	switch {
	case err == nil:
		return b, true, nil
	case errors.Is(err, bufio.ErrBufferFull):
		return b, false, nil
	case errors.Is(err, io.EOF):
		if len(b) == 0 {
			return nil, true, io.EOF
		}
		return b, true, nil
	}
	return nil, true, err
}

func (r *Reader) refuse(line int, found, reason string) error {
	r.err = &Refusal{Line: line, Found: found, Reason: reason}
	return r.err
}

// Next returns the next item, io.EOF at the end of a dump that ends between
// statements, or a *Refusal when the dump cannot be read as pg_dump writes it.
func (r *Reader) Next() (*Item, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.copy != nil {
		return r.nextCopy()
	}
	r.stmt = r.stmt[:0]
	r.lex = lexer{}
	r.stmtLine = 0
	for {
		b, full, err := r.readLine()
		if err == io.EOF {
			if len(bytes.TrimSpace(r.stmt)) > 0 {
				return nil, r.refuse(r.stmtLine, "a statement without its end: "+excerpt(r.stmt), "the dump ends inside a statement: it is truncated")
			}
			if len(r.stmt) > 0 {
				return r.emit(Gap, r.stmtLine, r.stmt)
			}
			r.eof = true
			return nil, io.EOF
		}
		if err != nil {
			r.err = err
			return nil, err
		}
		start := r.line + 1
		if full {
			r.line++
		}
		if r.stmtLine == 0 {
			r.stmtLine = start
		}
		atStart := len(bytes.TrimSpace(r.stmt)) == 0 && r.lex.idle()
		if atStart && full {
			t := bytes.TrimRight(b, "\r\n")
			trimmed := bytes.TrimLeft(t, " \t")
			switch {
			case len(trimmed) == 0 || bytes.HasPrefix(trimmed, []byte("--")):
				// A whole comment or blank line: a gap, where headers live.
				if bytes.HasPrefix(trimmed, []byte("--")) {
					r.comment(string(trimmed), start)
				}
				if len(r.stmt) > 0 {
					// Whitespace before it belongs to the same gap.
					r.stmt = append(r.stmt, b...)
					return r.emit(Gap, r.stmtLine, r.stmt)
				}
				return r.emit(Gap, start, b)
			case trimmed[0] == '\\':
				if len(r.stmt) > 0 {
					r.pending, r.pendFull = b, true
					r.line--
					return r.emit(Gap, r.stmtLine, r.stmt)
				}
				return r.emit(Meta, start, b)
			}
		}
		if len(r.stmt)+len(b) > MaxStatement {
			return nil, r.refuse(r.stmtLine, "a statement of more than 64 MiB", "pg_dump writes no such statement for a Flight Control database")
		}
		// Scan the line; a statement may end before the line does.
		off := len(r.stmt)
		r.stmt = append(r.stmt, b...)
		end, lerr := r.lex.scan(r.stmt, off)
		if lerr != nil {
			return nil, r.refuse(start, lerr.found, lerr.reason)
		}
		if end < 0 {
			continue
		}
		rest := r.stmt[end:]
		stmt := r.stmt[:end]
		if len(rest) > 0 {
			// The rest of the line is read again as the start of the next item.
			r.pending, r.pendFull = append([]byte(nil), rest...), full
			if full {
				r.line--
			}
		}
		if isCopyFromStdin(stmt) {
			if len(bytes.TrimSpace(rest)) > 0 || !full {
				return nil, r.refuse(start, "text after a COPY ... FROM stdin statement on its line", "pg_dump starts COPY data on the next line")
			}
			// The line's end belongs to the statement: data starts on the next line.
			stmt = r.stmt[:end+len(rest)]
			r.pending = nil
			r.line = start
		}
		it, _ := r.emit(Statement, r.stmtLine, stmt)
		if isCopyFromStdin(stmt) {
			c := &Copy{Table: copyTable(stmt)}
			if _, ok := r.tables[c.Table]; !ok {
				r.order = append(r.order, c.Table)
			}
			r.tables[c.Table] += 0
			r.copy = c
			r.copyStart = true
			it.Copy = c
		}
		return it, nil
	}
}

func (r *Reader) emit(kind ItemKind, line int, raw []byte) (*Item, error) {
	r.item = Item{Kind: kind, Line: line, Raw: raw, Entry: r.entry}
	return &r.item, nil
}

// comment notes entry headers and the completion line.
func (r *Reader) comment(c string, line int) {
	if c == CompletionLine {
		r.complete = true
		return
	}
	rest, data := strings.CutPrefix(c, "-- Data for Name: ")
	if !data {
		var ok bool
		if rest, ok = strings.CutPrefix(c, "-- Name: "); !ok {
			return
		}
	}
	h := &Header{Data: data, Line: line}
	var ok bool
	if rest, h.Owner, ok = cutLast(rest, "; Owner: "); !ok {
		return
	}
	if rest, h.Schema, ok = cutLast(rest, "; Schema: "); !ok {
		return
	}
	if h.Name, h.Type, ok = cutLast(rest, "; Type: "); !ok {
		return
	}
	r.entry = h
}

func cutLast(s, sep string) (string, string, bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// nextCopy returns COPY data up to a chunk's worth of whole rows, or the "\." line.
func (r *Reader) nextCopy() (*Item, error) {
	c := r.copy
	buf := r.stmt[:0]
	var rows int64
	first := r.line + 1
	for len(buf) < copyChunk {
		if r.copyStart && len(buf) > 0 {
			// Look at the next line's start before taking it: "\." ends the block.
			peek, _ := r.br.Peek(2)
			if bytes.HasPrefix(peek, []byte(`\.`)) {
				break
			}
		}
		b, full, err := r.readLine()
		if err == io.EOF {
			return nil, r.refuse(r.line, fmt.Sprintf("the end of the dump inside the data of %s", c.Table), "the dump is truncated: pg_dump ends every COPY block with a \\. line")
		}
		if err != nil {
			r.err = err
			return nil, err
		}
		if full {
			r.line++
		}
		if bytes.IndexByte(b, '\r') >= 0 {
			return nil, r.refuse(r.line, "a carriage return in the data of "+c.Table, "pg_dump writes it as \\r in COPY data; a raw one could end the data early for psql")
		}
		if r.copyStart && bytes.HasPrefix(b, []byte(`\.`)) {
			if string(b) != "\\.\n" {
				return nil, r.refuse(r.line, fmt.Sprintf("%q in the data of %s", excerpt(b), c.Table), "pg_dump ends COPY data with a line holding only \\.")
			}
			if len(buf) > 0 {
				// Not reached: the peek above stops before it.
				r.pending, r.pendFull = b, true
				r.line--
				break
			}
			r.copy = nil
			r.item = Item{Kind: CopyEnd, Line: r.line, Raw: b, Entry: r.entry, Copy: c}
			return &r.item, nil
		}
		buf = append(buf, b...)
		if full && len(b) > 0 && b[len(b)-1] == '\n' {
			rows++
			r.copyStart = true
		} else if !full {
			r.copyStart = false
		} else {
			// The last line of the input without a newline.
			r.copyStart = false
		}
	}
	r.stmt = buf
	c.Rows += rows
	r.tables[c.Table] += rows
	r.item = Item{Kind: CopyData, Line: first, Raw: buf, Entry: r.entry, Copy: c, Rows: rows}
	return &r.item, nil
}

func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// isCopyFromStdin says whether psql would switch to sending COPY data after stmt:
// a COPY statement naming STDIN outside quotes.
func isCopyFromStdin(stmt []byte) bool {
	n := Normalize(stmt)
	if !strings.HasPrefix(n, "COPY ") {
		return false
	}
	for _, w := range words(n) {
		if w == "STDIN" || w == "STDIN;" {
			return true
		}
	}
	return false
}

// copyTable returns the table a COPY statement names.
func copyTable(stmt []byte) string {
	n := Normalize(stmt)
	rest := strings.TrimPrefix(n, "COPY ")
	name, _, _ := strings.Cut(rest, " ")
	return strings.ToLower(name)
}

// words splits a normalized statement at spaces outside quotes.
func words(n string) []string {
	var out []string
	var cur strings.Builder
	q := byte(0)
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			}
			cur.WriteByte(c)
		case c == '\'' || c == '"':
			q = c
			cur.WriteByte(c)
		case c == ' ':
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
