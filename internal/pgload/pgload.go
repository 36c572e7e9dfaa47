// Package pgload loads a pg_dump plain-SQL dump into a database over several psql
// sessions at once, with the result `psql -v ON_ERROR_STOP=1 -f` gives.
//
// It reads the dump as internal/pgdump's checked item stream (pgdump.Checked: the same
// reader and allow-list checker psql's own input goes through), so that nothing reaches a
// session that the checker did not accept, and splits it by pg_dump's entry headers:
//
//   - everything before the table data (schemas, extensions, types, functions, tables,
//     sequences, owners, comments) runs on one session, in dump order;
//   - TABLE DATA entries (COPY ... FROM stdin blocks) and SEQUENCE SET entries run on every
//     session at once; a COPY block is cut into pieces of whole rows, each its own COPY of
//     the same table, so that one large table loads on every session too;
//   - INDEX and CONSTRAINT entries (with the comments on them) are built in parallel once
//     all the data is in, then TRIGGER entries, then FK CONSTRAINT entries, which need the
//     unique indexes they reference; two foreign keys that touch the same table never run
//     at the same time, so that their locks cannot deadlock;
//   - anything else (ACLs, event triggers, entries it does not recognise) runs on one
//     session in dump order, after everything before it has finished and before anything
//     after it starts: an unexpected dump loads slower, never differently.
//
// pg_dump's SET statements and its search_path are session state: every session applies
// those that come before a piece of work in the dump before it runs that piece. The
// dump's \restrict and \unrestrict lines are not passed on; with Restrict every session is
// put into psql's restricted mode with a key of its own before its first byte, so that it
// refuses any meta-command. Bulk-load settings (synchronous_commit off, a larger
// maintenance_work_mem) are given to the loader's own sessions only, in PGOPTIONS.
//
// The first error stops the load: a failing session ends the others (their psql is
// cancelled) and Load returns the error. Dropping the half-loaded database is the
// caller's job. Sessions are psql processes built by the caller's Command function, so
// that they reach the database the way its other psql commands do (locally against a host
// and port, or inside the database container through podman exec).
package pgload

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/runner"
)

// MaxConnections bounds the number of sessions.
const MaxConnections = 64

// DefaultMaintenanceWorkMem is the maintenance_work_mem of each loader session.
const DefaultMaintenanceWorkMem = "256MB"

// DefaultChunk is the size of the pieces a COPY block is cut into.
const DefaultChunk = 1 << 20

// Options configure a load.
type Options struct {
	// Database is the database to load into.
	Database string
	// Connections is the number of psql sessions (1 runs everything on one session).
	Connections int
	// Command builds a psql command from psql's own arguments and extra environment
	// (NAME=VALUE): it adds the program, the connection options and the password.
	Command func(psqlArgs, env []string) runner.Cmd
	Runner  runner.Runner
	// Restrict puts every session into psql's restricted mode before its first byte
	// (psql 13.22, 14.19, 15.14, 16.10, 17.6 and later).
	Restrict bool
	// MaintenanceWorkMem is each session's maintenance_work_mem (default
	// DefaultMaintenanceWorkMem; "-" keeps the server's).
	MaintenanceWorkMem string
	// Chunk is the size of the pieces of a COPY block (default DefaultChunk).
	Chunk int
	// AfterData runs once, when all table data and sequence values are in and before the
	// first index, constraint or trigger is made (at the end of a dump that has none),
	// with no session busy.
	AfterData func(ctx context.Context) error
	Logger    *slog.Logger
}

// Stats says how a load went.
type Stats struct {
	Sessions int
	// Serial counts the pieces of work run on one session in dump order; Data the
	// COPY pieces and sequence values run in parallel; Post the indexes, constraints,
	// triggers and foreign keys run in parallel.
	Serial, Data, Post int
	// DataPerSession counts the data pieces each session ran.
	DataPerSession []int
	// Barriers counts the waits for every session to finish its work.
	Barriers int
	// PreData, DataPhase and PostData are the times of the three parts (what ran before
	// the first table data, up to AfterData, and the rest), AfterData the hook's.
	PreData, DataPhase, AfterData, PostData time.Duration
}

type class int

const (
	classNone class = iota
	classSerial
	classData
	classIndex
	classTrigger
	classFK
)

func (c class) String() string {
	return [...]string{"none", "serial", "data", "index", "trigger", "foreign key"}[c]
}

type taskKind int

const (
	taskSQL taskKind = iota
	taskBarrier
)

type task struct {
	kind  taskKind
	data  bool
	parts [][]byte
	// settings are the session settings that precede the task in the dump.
	settings [][]byte
	// tables are the tables a foreign key locks ("*": unknown, conflicts with all);
	// nil: no lock is taken by the loader.
	tables []string
	// barrier
	wg      *sync.WaitGroup
	release chan struct{}
	errs    []error
	idx     int
}

type loader struct {
	opts     Options
	ctx      context.Context
	cancel   context.CancelFunc
	key      string
	sessions []*session
	shared   chan *task
	stop     chan struct{}
	workers  sync.WaitGroup
	locks    *tableLocks

	errOnce sync.Once
	err     error

	mode     class
	settings [][]byte
	pend     *task
	pendCls  class
	pendHdr  *pgdump.Header
	attach   *pgdump.Header // a COMMENT entry attached to pend
	copy     *copyState
	dataSeen bool
	hookDone bool
	stats    Stats
	t0       time.Time
	tData    time.Time
	tPost    time.Time
}

type copyState struct {
	header   []byte
	buf      []byte
	parallel bool
	emitted  int
}

// Load runs the dump src yields into opts.Database. It returns at the first error: a
// refusal of the dump (a *pgdump.Refusal), a read error, or a failing session.
func Load(ctx context.Context, src *pgdump.Checked, opts Options) (Stats, error) {
	if opts.Connections < 1 {
		opts.Connections = 1
	}
	if opts.Connections > MaxConnections {
		opts.Connections = MaxConnections
	}
	if opts.Chunk <= 0 {
		opts.Chunk = DefaultChunk
	}
	if opts.MaintenanceWorkMem == "" {
		opts.MaintenanceWorkMem = DefaultMaintenanceWorkMem
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := &loader{opts: opts, ctx: lctx, cancel: cancel, key: hex.EncodeToString(b),
		shared: make(chan *task, opts.Connections), stop: make(chan struct{}), locks: newTableLocks(),
		t0: time.Now()}
	l.stats.Sessions = opts.Connections
	for i := 0; i < opts.Connections; i++ {
		s, err := l.startSession(i)
		if err != nil {
			l.fail(err)
			break
		}
		l.sessions = append(l.sessions, s)
		l.workers.Add(1)
		go l.work(s)
	}
	if l.firstErr() == nil {
		l.read(src)
	}
	if l.firstErr() == nil {
		err := l.flushPend()
		if err == nil && !l.hookDone {
			err = l.afterData()
		}
		if err == nil {
			err = l.barrier()
		}
		if err != nil {
			l.fail(err)
		}
	}
	close(l.stop)
	l.workers.Wait()
	for _, s := range l.sessions {
		s.closeInput()
	}
	for _, s := range l.sessions {
		<-s.exit
		l.stats.DataPerSession = append(l.stats.DataPerSession, s.data)
	}
	if !l.tPost.IsZero() {
		l.stats.PostData = time.Since(l.tPost)
	}
	if err := l.firstErr(); err != nil {
		return l.stats, err
	}
	if !src.Complete() {
		return l.stats, errors.New("the dump ended before pg_dump's completion line")
	}
	return l.stats, nil
}

func (l *loader) fail(err error) {
	l.errOnce.Do(func() {
		l.err = err
		l.cancel()
	})
}

func (l *loader) firstErr() error {
	select {
	case <-l.ctx.Done():
	default:
		return nil
	}
	l.errOnce.Do(func() { l.err = l.ctx.Err() })
	return l.err
}

// read hands every checked item to the right session.
func (l *loader) read(src *pgdump.Checked) {
	for {
		if l.firstErr() != nil {
			return
		}
		it, err := src.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			l.fail(err)
			return
		}
		switch it.Kind {
		case pgdump.Statement:
			err = l.statement(it)
		case pgdump.CopyData:
			err = l.copyData(it)
		case pgdump.CopyEnd:
			err = l.copyEnd(it)
		}
		// Gaps (comments, blank lines) mean nothing to the server; the dump's \restrict
		// and \unrestrict are replaced by each session's own.
		if err != nil {
			l.fail(err)
			return
		}
	}
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// postDataTypes are the entry types of pg_dump's post-data section: the first one ends
// the data phase.
var postDataTypes = map[string]bool{
	"INDEX": true, "CONSTRAINT": true, "FK CONSTRAINT": true, "TRIGGER": true, "RULE": true,
	"POLICY": true, "INDEX ATTACH": true, "STATISTICS": true, "EVENT TRIGGER": true,
	"MATERIALIZED VIEW DATA": true, "ROW SECURITY": true,
}

func entryType(h *pgdump.Header) string {
	if h == nil {
		return ""
	}
	return h.Type
}

func (l *loader) statement(it *pgdump.Item) error {
	e := it.Entry
	if isSetting(it.Raw) {
		// Session state: every session applies it before the work that follows it.
		l.settings = append(l.settings, clone(it.Raw))
		return nil
	}
	if l.pend != nil && (e == l.pendHdr || (e != nil && e == l.attach)) {
		l.pend.parts = append(l.pend.parts, clone(it.Raw))
		return nil
	}
	if l.pend != nil && e != nil && e.Type == "COMMENT" && commentOn(e, l.pendHdr) {
		l.attach = e
		l.pend.parts = append(l.pend.parts, clone(it.Raw))
		return nil
	}
	if err := l.flushPend(); err != nil {
		return err
	}
	typ := entryType(e)
	if !l.hookDone && l.dataSeen && postDataTypes[typ] {
		if err := l.afterData(); err != nil {
			return err
		}
	}
	switch {
	case it.Copy != nil:
		l.copy = &copyState{header: clone(it.Raw), parallel: typ == "TABLE DATA"}
		if l.copy.parallel {
			l.markData()
			return nil
		}
		return l.dispatch(&task{parts: [][]byte{l.copy.header}}, classSerial)
	case typ == "SEQUENCE SET":
		l.markData()
		l.stats.Data++
		return l.dispatch(&task{data: true, parts: [][]byte{clone(it.Raw)}}, classData)
	case typ == "INDEX" || typ == "CONSTRAINT":
		l.pend, l.pendCls, l.pendHdr = &task{parts: [][]byte{clone(it.Raw)}}, classIndex, e
	case typ == "TRIGGER":
		l.pend, l.pendCls, l.pendHdr = &task{parts: [][]byte{clone(it.Raw)}}, classTrigger, e
	case typ == "FK CONSTRAINT":
		l.pend, l.pendCls, l.pendHdr = &task{parts: [][]byte{clone(it.Raw)}}, classFK, e
	default:
		l.stats.Serial++
		return l.dispatch(&task{parts: [][]byte{clone(it.Raw)}}, classSerial)
	}
	return nil
}

func (l *loader) markData() {
	if !l.dataSeen {
		l.dataSeen = true
		l.tData = time.Now()
		l.stats.PreData = l.tData.Sub(l.t0)
	}
}

// commentOn says whether COMMENT entry c is on the object of entry h ("INDEX name",
// "CONSTRAINT name ON table", "TRIGGER name ON table").
func commentOn(c, h *pgdump.Header) bool {
	if h == nil {
		return false
	}
	kind := h.Type
	if kind == "FK CONSTRAINT" {
		kind = "CONSTRAINT"
	}
	return strings.HasPrefix(c.Name, kind+" ")
}

// flushPend dispatches the entry being gathered.
func (l *loader) flushPend() error {
	if l.pend == nil {
		return nil
	}
	t, cls := l.pend, l.pendCls
	l.pend, l.pendHdr, l.attach = nil, nil, nil
	if cls == classFK {
		t.tables = fkTables(t.parts[0])
	}
	l.stats.Post++
	return l.dispatch(t, cls)
}

func (l *loader) copyData(it *pgdump.Item) error {
	c := l.copy
	if c == nil {
		return errors.New("COPY data outside a COPY block")
	}
	if !c.parallel {
		return l.dispatch(&task{parts: [][]byte{clone(it.Raw)}}, classSerial)
	}
	if c.buf == nil {
		c.buf = make([]byte, 0, l.opts.Chunk+len(it.Raw))
	}
	c.buf = append(c.buf, it.Raw...)
	for len(c.buf) >= l.opts.Chunk {
		// Cut after the first whole row that reaches the piece's size.
		j := bytes.IndexByte(c.buf[l.opts.Chunk-1:], '\n')
		if j < 0 {
			return nil
		}
		cut := l.opts.Chunk + j
		rest := c.buf[cut:]
		c.buf = c.buf[:cut:cut]
		if err := l.emitCopy(); err != nil {
			return err
		}
		c.buf = append(make([]byte, 0, l.opts.Chunk+len(rest)), rest...)
	}
	return nil
}

var copyEnd = []byte("\\.\n")

func (l *loader) emitCopy() error {
	c := l.copy
	t := &task{data: true, parts: [][]byte{c.header, c.buf, copyEnd}}
	c.buf = nil
	c.emitted++
	l.stats.Data++
	return l.dispatch(t, classData)
}

func (l *loader) copyEnd(it *pgdump.Item) error {
	c := l.copy
	l.copy = nil
	if c == nil {
		return errors.New("end of COPY data outside a COPY block")
	}
	if !c.parallel {
		return l.dispatch(&task{parts: [][]byte{clone(it.Raw)}}, classSerial)
	}
	if len(c.buf) > 0 || c.emitted == 0 {
		l.copy = c
		err := l.emitCopy()
		l.copy = nil
		return err
	}
	return nil
}

// afterData waits for the data to be in and runs the AfterData hook.
func (l *loader) afterData() error {
	l.hookDone = true
	if err := l.barrier(); err != nil {
		return err
	}
	now := time.Now()
	if l.dataSeen {
		l.stats.DataPhase = now.Sub(l.tData)
	} else {
		l.stats.PreData = now.Sub(l.t0)
	}
	if l.opts.AfterData != nil {
		if err := l.opts.AfterData(l.ctx); err != nil {
			return err
		}
	}
	l.tPost = time.Now()
	l.stats.AfterData = l.tPost.Sub(now)
	return nil
}

// dispatch hands t to a session: serial work to the first session, after everything
// before it; parallel work to whichever session is free, after everything of another
// kind before it.
func (l *loader) dispatch(t *task, cls class) error {
	if cls != l.mode {
		if l.mode != classNone {
			if err := l.barrier(); err != nil {
				return err
			}
		}
		l.mode = cls
	}
	t.settings = l.settings
	ch := l.shared
	if cls == classSerial {
		ch = l.sessions[0].own
	}
	select {
	case ch <- t:
		return nil
	case <-l.ctx.Done():
		return l.firstErr()
	}
}

// barrier returns when every session has run all the work handed to it so far.
func (l *loader) barrier() error {
	l.stats.Barriers++
	n := len(l.sessions)
	var wg sync.WaitGroup
	wg.Add(n)
	release := make(chan struct{})
	bt := &task{kind: taskBarrier, wg: &wg, release: release}
	for i := 0; i < n; i++ {
		select {
		case l.shared <- bt:
		case <-l.ctx.Done():
			close(release)
			return l.firstErr()
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-l.ctx.Done():
	}
	close(release)
	return l.firstErr()
}

// work runs the tasks of one session.
func (l *loader) work(s *session) {
	defer l.workers.Done()
	for {
		var t *task
		select {
		case t = <-s.own:
		case t = <-l.shared:
		case <-l.stop:
			return
		case <-l.ctx.Done():
			return
		}
		if t.kind == taskBarrier {
			err := s.sync(l.ctx)
			if err != nil {
				l.fail(err)
			}
			t.wg.Done()
			select {
			case <-t.release:
			case <-l.ctx.Done():
				return
			}
			continue
		}
		if err := l.run(s, t); err != nil {
			l.fail(err)
			return
		}
	}
}

func (l *loader) run(s *session, t *task) error {
	for s.applied < len(t.settings) {
		if err := s.write(t.settings[s.applied]); err != nil {
			return err
		}
		s.applied++
	}
	if t.data {
		s.data++
	}
	if t.tables != nil {
		if err := l.locks.lock(l.ctx, t.tables); err != nil {
			return l.firstErr()
		}
		defer l.locks.unlock(t.tables)
	}
	for _, p := range t.parts {
		if err := s.write(p); err != nil {
			return err
		}
	}
	if t.tables != nil {
		// The tables stay locked until the server has finished with them.
		return s.sync(l.ctx)
	}
	return nil
}

// isSetting says whether a statement sets session state: pg_dump's SET statements and
// its set_config of search_path.
func isSetting(raw []byte) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	if len(t) < 4 {
		return false
	}
	if bytes.EqualFold(t[:3], []byte("SET")) && (t[3] == ' ' || t[3] == '\t' || t[3] == '\n' || t[3] == '\r') {
		return true
	}
	if len(t) > 64 {
		return false
	}
	return strings.HasPrefix(pgdump.Normalize(t), "SELECT PG_CATALOG.SET_CONFIG(")
}

// fkTables are the tables an ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY ...
// REFERENCES ... statement locks; "*" when they cannot be read.
func fkTables(raw []byte) []string {
	n := pgdump.Normalize(raw)
	rest, ok := strings.CutPrefix(n, "ALTER TABLE ")
	if !ok {
		return []string{"*"}
	}
	rest = strings.TrimPrefix(rest, "ONLY ")
	rest = strings.TrimPrefix(rest, "IF EXISTS ")
	rest = strings.TrimPrefix(rest, "ONLY ")
	table, _, _ := strings.Cut(rest, " ")
	_, ref, ok := strings.Cut(rest, " REFERENCES ")
	if !ok || table == "" || strings.ContainsAny(table, `"`) {
		return []string{"*"}
	}
	refTable := ref
	if i := strings.IndexAny(ref, " ("); i >= 0 {
		refTable = ref[:i]
	}
	if refTable == "" || strings.ContainsAny(refTable, `"`) {
		return []string{"*"}
	}
	if refTable == table {
		return []string{table}
	}
	return []string{table, refTable}
}

// tableLocks lets no two foreign keys on a common table run at once.
type tableLocks struct {
	mu   sync.Mutex
	held map[string]bool
	all  bool
	wake chan struct{}
}

func newTableLocks() *tableLocks {
	return &tableLocks{held: map[string]bool{}, wake: make(chan struct{})}
}

func (tl *tableLocks) free(tables []string) bool {
	if tl.all {
		return false
	}
	for _, t := range tables {
		if t == "*" {
			if len(tl.held) > 0 {
				return false
			}
			continue
		}
		if tl.held[t] {
			return false
		}
	}
	return true
}

func (tl *tableLocks) lock(ctx context.Context, tables []string) error {
	for {
		tl.mu.Lock()
		if tl.free(tables) {
			for _, t := range tables {
				if t == "*" {
					tl.all = true
				} else {
					tl.held[t] = true
				}
			}
			tl.mu.Unlock()
			return nil
		}
		wake := tl.wake
		tl.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (tl *tableLocks) unlock(tables []string) {
	tl.mu.Lock()
	for _, t := range tables {
		if t == "*" {
			tl.all = false
		} else {
			delete(tl.held, t)
		}
	}
	close(tl.wake)
	tl.wake = make(chan struct{})
	tl.mu.Unlock()
}

// session is one psql process fed on a pipe.
type session struct {
	id      int
	l       *loader
	in      *os.File // our end of psql's stdin
	readEnd *os.File
	own     chan *task
	tokens  chan string
	exit    chan struct{}
	err     error
	applied int
	seq     int
	data    int
	closed  sync.Once
}

func (l *loader) startSession(id int) (*session, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start psql session %d: %w", id+1, err)
	}
	s := &session{id: id, l: l, in: pw, readEnd: pr, own: make(chan *task), tokens: make(chan string, 4), exit: make(chan struct{})}
	pgopts := "-c client_min_messages=warning -c synchronous_commit=off"
	if m := l.opts.MaintenanceWorkMem; m != "-" {
		pgopts += " -c maintenance_work_mem=" + m
	}
	c := l.opts.Command([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", l.opts.Database, "-f", "-"},
		[]string{"PGOPTIONS=" + pgopts})
	c.Stdin = pr
	c.Stdout = &tokenWriter{s: s}
	go func() {
		err := l.opts.Runner.Run(l.ctx, c)
		if err != nil {
			s.err = fmt.Errorf("psql session %d of %d: %w", id+1, l.opts.Connections, err)
			if l.ctx.Err() == nil {
				l.fail(s.err)
			}
		}
		_ = pr.Close()
		close(s.exit)
	}()
	if l.opts.Restrict {
		if err := s.write([]byte("\\restrict " + l.key + "\n")); err != nil {
			return s, err
		}
	}
	return s, nil
}

func (s *session) write(p []byte) error {
	if _, err := s.in.Write(p); err != nil {
		select {
		case <-s.exit:
			if s.err != nil {
				return s.err
			}
		default:
		}
		return fmt.Errorf("psql session %d: %w", s.id+1, err)
	}
	return nil
}

func (s *session) closeInput() {
	s.closed.Do(func() { _ = s.in.Close() })
}

// sync returns when the session's psql has run everything written to it.
func (s *session) sync(ctx context.Context) error {
	s.seq++
	tok := fmt.Sprintf("pgload %s %d %d", s.l.key, s.id, s.seq)
	if err := s.write([]byte("SELECT '" + tok + "';\n")); err != nil {
		return err
	}
	for {
		select {
		case got := <-s.tokens:
			if got == tok {
				return nil
			}
		case <-s.exit:
			if s.err != nil {
				return s.err
			}
			return fmt.Errorf("psql session %d ended early", s.id+1)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// tokenWriter reads a session's output: the loader's sync lines, and what else psql
// prints (sequence values), which goes to the debug log.
type tokenWriter struct {
	s   *session
	buf []byte
}

func (w *tokenWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		if strings.HasPrefix(line, "pgload "+w.s.l.key+" ") {
			w.s.tokens <- line
			continue
		}
		w.s.l.opts.Logger.Debug("psql", "session", w.s.id+1, "out", line)
	}
	if len(w.buf) > 4096 {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}
