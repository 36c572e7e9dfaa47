package pgdump

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"sync/atomic"
)

// FilterOptions configure a Filter.
type FilterOptions struct {
	// ForceRestrict puts psql into restricted mode before the first byte even when the
	// dump has no \restrict line of its own (only for psql 15.14 and later). Without it,
	// restricted mode is forced when the dump has a \restrict line, which only those
	// psql releases can load anyway.
	ForceRestrict bool
	// OnRefusal is called once, with the refusal, as soon as the dump is refused (a
	// loader cancels psql there).
	OnRefusal func(error)
}

// Filter reads a dump through Reader and Checker and hands on only what passed, as
// psql input: the dump's own \restrict and \unrestrict lines are replaced by one
// \restrict line with a key of its own, before the first byte, so that psql refuses
// every meta-command even if something got past the checker. Everything else is the
// dump's bytes unchanged. At the end of the input Read returns io.EOF only when the dump
// is complete (pg_dump's completion line seen); a refusal is returned as the *Refusal.
type Filter struct {
	src     *Checked
	opts    FilterOptions
	out     []byte
	buf     []byte
	held    []byte // the dump's opening comments, until it is known whether it restricts
	started bool
	key     string
	err     error
	done    bool
	// Restricted says psql was put into restricted mode.
	Restricted bool
}

// NewFilter filters the dump read from r.
func NewFilter(r io.Reader, opts FilterOptions) *Filter {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return &Filter{src: NewChecked(r), opts: opts, key: hex.EncodeToString(b)}
}

// Err is the refusal or read error that ended the filter, if any.
func (f *Filter) Err() error { return f.err }

// Complete says the whole dump passed, completion line included.
func (f *Filter) Complete() bool { return f.done && f.err == nil }

// Rows returns the COPY rows per table ("public.devices") and the tables in order.
func (f *Filter) Rows() (map[string]int64, []string) { return f.src.Rows() }

// Statements is the number of statements accepted.
func (f *Filter) Statements() int { return f.src.Statements() }

func (f *Filter) fail(err error) error {
	if f.err == nil {
		f.err = err
		if f.opts.OnRefusal != nil {
			f.opts.OnRefusal(err)
		}
	}
	return f.err
}

func (f *Filter) start(restrict bool) {
	if restrict {
		f.out = append(f.out, "\\restrict "+f.key+"\n"...)
		f.Restricted = true
	}
	f.out = append(f.out, f.held...)
	f.held = nil
	f.started = true
}

func (f *Filter) Read(p []byte) (int, error) {
	for len(f.out) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		if f.done {
			return 0, io.EOF
		}
		it, err := f.src.Next()
		if errors.Is(err, io.EOF) {
			if !f.started {
				f.start(f.opts.ForceRestrict)
			}
			f.done = true
			continue
		}
		if err != nil {
			return 0, f.fail(err)
		}
		switch {
		case !f.started && it.Kind == Gap:
			f.held = append(f.held, it.Raw...)
			continue
		case !f.started:
			f.start(f.opts.ForceRestrict || it.Kind == Meta)
		}
		if it.Kind == Meta {
			continue // \restrict and \unrestrict of the dump: replaced by ours
		}
		f.out = append(f.out, it.Raw...)
		if cap(f.out) > cap(f.buf) {
			f.buf = f.out[:0]
		}
	}
	n := copy(p, f.out)
	f.out = f.out[n:]
	if len(f.out) == 0 {
		f.out = f.buf[:0]
	}
	return n, nil
}

// Stats is what Watch saw of a dump.
type Stats struct {
	// Rows per table ("public.devices"), counted from the COPY blocks.
	Rows map[string]int64
	// Complete says the dump passed the checker and ended with pg_dump's completion line.
	Complete bool
	// Err is the refusal a restore would meet, if any.
	Err error
}

// Watcher is an io.Writer that checks and counts a dump written through it (a backup
// tees pg_dump's output into it). Writes never fail and never block for long: a refused
// dump is only drained.
type Watcher struct {
	pw      *io.PipeWriter
	done    chan *Stats
	refused atomic.Pointer[error]
}

// Refused is the refusal, as soon as the checker made it (nil until then).
func (w *Watcher) Refused() error {
	if p := w.refused.Load(); p != nil {
		return *p
	}
	return nil
}

// Watch starts a Watcher.
func Watch() *Watcher {
	pr, pw := io.Pipe()
	w := &Watcher{pw: pw, done: make(chan *Stats, 1)}
	go func() {
		f := NewFilter(pr, FilterOptions{OnRefusal: func(err error) { w.refused.Store(&err) }})
		_, err := io.Copy(io.Discard, f)
		_, _ = io.Copy(io.Discard, pr)
		rows, _ := f.Rows()
		w.done <- &Stats{Rows: rows, Complete: err == nil && f.Complete(), Err: err}
	}()
	return w
}

func (w *Watcher) Write(p []byte) (int, error) {
	_, _ = w.pw.Write(p)
	return len(p), nil
}

// Close ends the input and returns what was seen.
func (w *Watcher) Close() *Stats {
	_ = w.pw.Close()
	return <-w.done
}
