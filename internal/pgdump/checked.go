package pgdump

import (
	"errors"
	"fmt"
	"io"
)

// Checked is the checked item stream of a dump: the Reader's items, each one passed by
// the Checker before it is handed on. Filter (psql's input) and the parallel loader
// (internal/pgload) both read a dump through it, so that what is loaded is exactly what
// was checked, whichever way it is loaded.
type Checked struct {
	rd  *Reader
	ck  *Checker
	err error
	eof bool
}

// NewChecked checks the dump read from r.
func NewChecked(r io.Reader) *Checked {
	return &Checked{rd: NewReader(r), ck: NewChecker()}
}

// Next returns the next item that passed the checker (its Raw is valid until the next
// call). At the end of the input it returns io.EOF only when the dump is complete
// (pg_dump's completion line seen); otherwise the *Refusal that says why it is not.
// After the first error every call returns it again.
func (c *Checked) Next() (*Item, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.eof {
		return nil, io.EOF
	}
	it, err := c.rd.Next()
	if errors.Is(err, io.EOF) {
		if !c.rd.Complete() {
			c.err = c.incomplete()
			return nil, c.err
		}
		c.eof = true
		return nil, io.EOF
	}
	if err != nil {
		c.err = err
		return nil, err
	}
	if err := c.ck.Check(it, c.rd.Complete()); err != nil {
		c.err = err
		return nil, err
	}
	return it, nil
}

// Err is the refusal or read error that ended the stream, if any.
func (c *Checked) Err() error { return c.err }

// Complete says the whole dump passed, completion line included.
func (c *Checked) Complete() bool { return c.eof && c.err == nil }

// Rows returns the COPY rows per table ("public.devices") and the tables in order.
func (c *Checked) Rows() (map[string]int64, []string) { return c.rd.Rows() }

// Statements is the number of statements accepted.
func (c *Checked) Statements() int { return c.ck.Statements() }

func (c *Checked) incomplete() error {
	line := max(c.rd.Line(), 1)
	switch {
	case c.ck.Statements() == 0 && c.ck.data == 0:
		return &Refusal{Line: line, Found: "no statement at all", Reason: "the dump is empty or holds only comments: pg_dump did not finish, do not restore from it"}
	default:
		return &Refusal{Line: line, Found: "the end of the dump without pg_dump's completion line", Reason: fmt.Sprintf("the dump is truncated after %d statements: pg_dump did not finish, do not restore from it", c.ck.Statements())}
	}
}
