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
//     unique indexes they reference. Within each of these three kinds the entry that reads
//     the most table data starts first (the COPY bytes of its table: longest first, so
//     that the sessions end together), among those whose table no running entry holds in
//     a conflicting mode: index builds of one table share it, a constraint or trigger
//     holds it alone, so that no session waits in the server for another's lock while
//     other work is ready; two foreign keys that touch the same table never run at the
//     same time, so that their locks cannot deadlock;
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
	"sort"
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
	// AfterDataTables, when set, are the tables AfterData writes, as the dump names them
	// ("public.devices"). AfterData then runs beside the post-data work instead of before
	// it: an index, constraint, trigger or foreign key of one of these tables waits for it
	// to return, the rest (the largest tables' index builds) goes on meanwhile. AfterData
	// must then use a session of its own; the load returns once it has.
	AfterDataTables []string
	// Phase, when set, is called each time the load moves on to another kind of work,
	// once everything of the kind before has finished: "serial", "data", "after data",
	// "index" (indexes and constraints), "trigger", "foreign key".
	Phase  func(phase string)
	Logger *slog.Logger
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
	// pooled: an index, constraint, trigger or foreign key, which the post-data
	// scheduler hands out (runPool) with the tables it locks: tables ("*": unknown,
	// conflicts with all), in share mode when shared (CREATE INDEX), else exclusive; cost
	// is the bytes of table data it reads, the longest first.
	pooled bool
	// free is a COPY piece's buffer, handed back to the loader once written.
	free   []byte
	tables []string
	shared bool
	cost   int64
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
	// pool is the post-data work of the current kind, run at the next barrier; idle
	// holds one token per session not running pooled work.
	pool       []*task
	idle       chan struct{}
	tableBytes map[string]int64
	// bufs are COPY piece buffers written out and free for the next pieces: filling a
	// buffer whose pages are already in costs a copy, a new one also the kernel's zeroing.
	bufs chan []byte

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
	// besideDone is closed when an AfterData run beside the post-data work has returned.
	besideDone chan struct{}
	besideTime time.Duration
	stats      Stats
	t0         time.Time
	tData      time.Time
	tPost      time.Time
}

type copyState struct {
	table    string
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
		idle: make(chan struct{}, opts.Connections), tableBytes: map[string]int64{},
		bufs: make(chan []byte, 2*opts.Connections+2), t0: time.Now()}
	l.stats.Sessions = opts.Connections
	for i := 0; i < opts.Connections; i++ {
		s, err := l.startSession(i)
		if err != nil {
			l.fail(err)
			break
		}
		l.sessions = append(l.sessions, s)
		l.idle <- struct{}{}
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
	if l.besideDone != nil {
		// A failure of the load has cancelled the hook's context.
		<-l.besideDone
		l.stats.AfterData = l.besideTime
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
		l.copy = &copyState{table: it.Copy.Table, header: clone(it.Raw), parallel: typ == "TABLE DATA"}
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
	t.pooled = true
	switch cls {
	case classFK:
		t.tables = fkTables(t.parts[0])
	case classIndex:
		t.tables, t.shared = indexTables(t.parts[0])
	case classTrigger:
		t.tables = triggerTables(t.parts[0])
	}
	if t.tables[0] != "*" {
		t.cost = l.tableBytes[t.tables[0]]
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
	l.tableBytes[c.table] += int64(len(it.Raw))
	if c.buf == nil {
		c.buf = l.newBuf(len(it.Raw))
	}
	c.buf = append(c.buf, it.Raw...)
	for len(c.buf) >= l.opts.Chunk {
		// Cut after the first whole row that reaches the piece's size.
		j := bytes.IndexByte(c.buf[l.opts.Chunk-1:], '\n')
		if j < 0 {
			return nil
		}
		cut := l.opts.Chunk + j
		// The rest goes into another buffer, taken before this one is handed on.
		next := append(l.newBuf(len(c.buf)-cut), c.buf[cut:]...)
		c.buf = c.buf[:cut]
		if err := l.emitCopy(); err != nil {
			return err
		}
		c.buf = next
	}
	return nil
}

var copyEnd = []byte("\\.\n")

// newBuf is an empty buffer for a COPY piece, one written out before if there is one.
func (l *loader) newBuf(extra int) []byte {
	select {
	case b := <-l.bufs:
		return b[:0]
	default:
		return make([]byte, 0, l.opts.Chunk+max(extra, 512<<10))
	}
}

func (l *loader) emitCopy() error {
	c := l.copy
	t := &task{data: true, parts: [][]byte{c.header, c.buf, copyEnd}, free: c.buf}
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
	l.phase("after data")
	if l.opts.AfterData != nil && len(l.opts.AfterDataTables) > 0 {
		l.startBeside(now)
		l.tPost = now
		return nil
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

// startBeside runs AfterData beside the post-data work, holding AfterDataTables
// exclusively until it returns, so that no post-data work of those tables starts
// before (none has started yet: the data barrier has just passed).
func (l *loader) startBeside(start time.Time) {
	tables := l.opts.AfterDataTables
	l.locks.hold(tables)
	l.besideDone = make(chan struct{})
	go func() {
		defer close(l.besideDone)
		err := l.opts.AfterData(l.ctx)
		l.besideTime = time.Since(start)
		l.locks.unlock(tables, false)
		if err != nil {
			l.fail(err)
		}
	}()
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
		l.phase(cls.String())
	}
	t.settings = l.settings
	if t.pooled {
		l.pool = append(l.pool, t)
		return nil
	}
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

func (l *loader) phase(name string) {
	if l.opts.Phase != nil {
		l.opts.Phase(name)
	}
}

// runPool hands out the post-data work gathered in the pool, one piece to each session
// that is free: the one that reads the most table data first, of those whose tables no
// running piece holds in a conflicting mode (the server would make it wait for that
// lock, with the session idle, while another piece could run), so that the long index
// builds of a large table start first and the sessions end together.
func (l *loader) runPool() error {
	pool := longestFirst(l.pool)
	l.pool = nil
	for len(pool) > 0 {
		select {
		case <-l.idle:
		case <-l.ctx.Done():
			return l.firstErr()
		}
		for {
			i, wake := l.locks.pick(pool)
			if i >= 0 {
				t := pool[i]
				pool = append(pool[:i], pool[i+1:]...)
				select {
				case l.shared <- t:
				case <-l.ctx.Done():
					return l.firstErr()
				}
				break
			}
			select {
			case <-wake:
			case <-l.ctx.Done():
				return l.firstErr()
			}
		}
	}
	return nil
}

// longestFirst orders pool by cost, the highest first, in dump order among equals (so
// that a table's constraints, which pg_dump writes before its indexes, come first).
func longestFirst(pool []*task) []*task {
	sort.SliceStable(pool, func(i, j int) bool { return pool[i].cost > pool[j].cost })
	return pool
}

// barrier returns when every session has run all the work handed to it so far.
func (l *loader) barrier() error {
	if len(l.pool) > 0 {
		if err := l.runPool(); err != nil {
			return err
		}
	}
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
	var err error
	for _, p := range t.parts {
		if err = s.write(p); err != nil {
			break
		}
	}
	if t.free != nil && err == nil {
		select {
		case l.bufs <- t.free:
		default:
		}
	}
	if t.pooled {
		if err == nil {
			// The tables stay locked until the server has finished with them.
			err = s.sync(l.ctx)
		}
		l.locks.unlock(t.tables, t.shared)
		l.idle <- struct{}{}
	}
	return err
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
	table, refTable = strings.ToLower(table), strings.ToLower(refTable)
	if refTable == table {
		return []string{table}
	}
	return []string{table, refTable}
}

// indexTables is the table a CREATE INDEX (share mode: other indexes of the table can
// be built at the same time) or an ALTER TABLE ... ADD CONSTRAINT (exclusive) locks;
// "*" (exclusive) when it cannot be read.
func indexTables(raw []byte) ([]string, bool) {
	n := pgdump.Normalize(raw)
	if rest, ok := strings.CutPrefix(n, "CREATE "); ok {
		rest = strings.TrimPrefix(rest, "UNIQUE ")
		if rest, ok = strings.CutPrefix(rest, "INDEX "); ok {
			if _, on, ok := strings.Cut(rest, " ON "); ok {
				on = strings.TrimPrefix(on, "ONLY ")
				table, _, _ := strings.Cut(on, " ")
				if table != "" && !strings.ContainsAny(table, `"(`) {
					return []string{strings.ToLower(table)}, true
				}
			}
		}
		return []string{"*"}, false
	}
	if rest, ok := strings.CutPrefix(n, "ALTER TABLE "); ok {
		rest = strings.TrimPrefix(rest, "ONLY ")
		table, _, _ := strings.Cut(rest, " ")
		if table != "" && !strings.ContainsAny(table, `"`) {
			return []string{strings.ToLower(table)}, false
		}
	}
	return []string{"*"}, false
}

// triggerTables is the table a CREATE TRIGGER locks (in a mode that conflicts with
// itself); "*" when it cannot be read.
func triggerTables(raw []byte) []string {
	n := pgdump.Normalize(raw)
	if rest, ok := strings.CutPrefix(n, "CREATE "); ok {
		rest = strings.TrimPrefix(rest, "CONSTRAINT ")
		if rest, ok = strings.CutPrefix(rest, "TRIGGER "); ok {
			if _, on, ok := strings.Cut(rest, " ON "); ok {
				table, _, _ := strings.Cut(on, " ")
				if table != "" && !strings.ContainsAny(table, `"(`) {
					return []string{strings.ToLower(table)}
				}
			}
		}
	}
	return []string{"*"}
}

// tableLocks keeps apart the pieces of post-data work that would wait for each other's
// locks in the server (two foreign keys on a common table could even deadlock): a table
// is held by any number of pieces in share mode or by one exclusively; "*" holds all.
type tableLocks struct {
	mu   sync.Mutex
	held map[string]int // > 0: holders in share mode; -1: exclusive
	all  bool
	wake chan struct{}
}

func newTableLocks() *tableLocks {
	return &tableLocks{held: map[string]int{}, wake: make(chan struct{})}
}

func (tl *tableLocks) free(tables []string, shared bool) bool {
	if tl.all {
		return false
	}
	for _, t := range tables {
		switch {
		case t == "*":
			if len(tl.held) > 0 {
				return false
			}
		case shared:
			if tl.held[t] < 0 {
				return false
			}
		default:
			if tl.held[t] != 0 {
				return false
			}
		}
	}
	return true
}

func (tl *tableLocks) take(tables []string, shared bool) {
	for _, t := range tables {
		switch {
		case t == "*":
			tl.all = true
		case shared:
			tl.held[t]++
		default:
			tl.held[t] = -1
		}
	}
}

// hold takes tables exclusively for work outside the pool (unlock gives them back).
func (tl *tableLocks) hold(tables []string) {
	tl.mu.Lock()
	tl.take(tables, false)
	tl.mu.Unlock()
}

// pick takes the locks of the first task in pool whose tables are free and returns its
// index; -1 and a channel closed at the next unlock when none is.
func (tl *tableLocks) pick(pool []*task) (int, <-chan struct{}) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for i, t := range pool {
		if tl.free(t.tables, t.shared) {
			tl.take(t.tables, t.shared)
			return i, nil
		}
	}
	return -1, tl.wake
}

func (tl *tableLocks) unlock(tables []string, shared bool) {
	tl.mu.Lock()
	for _, t := range tables {
		switch {
		case t == "*":
			tl.all = false
		case shared && tl.held[t] > 1:
			tl.held[t]--
		default:
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
	runner.SetPipeSize(pw, min(l.opts.Chunk+(64<<10), 1<<20))
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
