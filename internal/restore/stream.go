package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"strings"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/pgdump"
)

// errArchiveChanged says the archive on disk is no longer the one that was verified.
var errArchiveChanged = errors.New("the archive changed on disk after it was verified: make sure nothing writes to it and run the restore again")

// entryFunc handles one archive entry; r reads a regular file's content.
type entryFunc func(hdr *tar.Header, name string, r io.Reader) error

// streamArchive reads the archive once through the archive package's verifying walk, so
// that every entry meets the rule verify applies (names, types, limits, expansion, the
// manifest), calling fn for every entry (the dump is checked by whoever reads it: load or
// plan), and checks that the bytes read hash to
// wantSHA256 (the digest verification accepted), so that what is loaded is exactly what
// was verified.
func streamArchive(ctx context.Context, archivePath, wantSHA256 string, limits archive.Limits, ids *encrypt.Identities, fn entryFunc) error {
	_, err := archive.VerifyWalk(ctx, archivePath, archive.VerifyOptions{ExpectedSHA256: wantSHA256, Limits: limits, Decryption: ids}, archive.WalkFunc(fn))
	if ie, ok := archive.IsIntegrityError(err); ok && ie.Kind == archive.KindChecksum {
		return errArchiveChanged
	}
	return err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// hashingReader hashes what passes through it.
func hashingReader(r io.Reader) (io.Reader, hash.Hash) {
	h := sha256.New()
	return io.TeeReader(r, h), h
}

// copyCounter counts the data rows of chosen tables in a plain-SQL dump as it streams
// through Write: the lines between "COPY <schema>.<table> (...) FROM stdin;" and "\.".
// COPY text format escapes newlines inside values, so one line is one row.
type copyCounter struct {
	tables  map[string]bool
	Counts  map[string]int64
	current string // table of the COPY block being read, "" outside one
	inCopy  bool
	line    []byte // start of the current line (bounded), enough to recognise headers
	lineLen int
}

const maxHeaderPrefix = 512

func newCopyCounter(tables []string) *copyCounter {
	c := &copyCounter{tables: map[string]bool{}, Counts: map[string]int64{}}
	for _, t := range tables {
		c.tables[t] = true
		c.Counts[t] = 0
	}
	return c
}

func (c *copyCounter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.appendPrefix(p)
			break
		}
		c.appendPrefix(p[:i])
		c.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (c *copyCounter) appendPrefix(b []byte) {
	c.lineLen += len(b)
	if room := maxHeaderPrefix - len(c.line); room > 0 {
		if len(b) > room {
			b = b[:room]
		}
		c.line = append(c.line, b...)
	}
}

func (c *copyCounter) endLine() {
	line := c.line
	if c.inCopy {
		if c.lineLen == 2 && string(line) == `\.` {
			c.inCopy, c.current = false, ""
		} else if c.current != "" {
			c.Counts[c.current]++
		}
	} else if bytes.HasPrefix(line, []byte("COPY ")) && bytes.Contains(line, []byte(" FROM stdin;")) {
		c.inCopy = true
		c.current = ""
		if t := copyTable(line); c.tables[t] {
			c.current = t
		}
	}
	c.line = c.line[:0]
	c.lineLen = 0
}

// copyTable extracts the bare table name from a COPY header: COPY public.devices (...).
func copyTable(line []byte) string {
	rest := strings.TrimPrefix(string(line), "COPY ")
	name, _, _ := strings.Cut(rest, " ")
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		name = name[i+1:]
	}
	return strings.Trim(name, `"`)
}

// loadDump loads the archive's dump into the temporary database through the dump
// checker: psql gets only what passed, in restricted mode, and the load is cancelled at
// the first refusal. It fills counts (CountedTables) and compares the rows loaded with
// those the metadata records.
func (r *run) loadDump(ctx context.Context, db Database, temp string, rd io.Reader, counts map[string]int64) error {
	// A fresh load: whatever an earlier load of the temporary database prepared is gone.
	r.journal.DevicesPrepared = nil
	if pl, ok := db.(ParallelLoader); ok {
		n, err := r.loadSessions(ctx, pl)
		if err != nil {
			return err
		}
		if n > 1 {
			return r.loadParallel(ctx, pl, n, temp, rd, counts)
		}
	}
	r.loadReport().Sessions = 1
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	force := false
	if rp, ok := db.(interface{ RestrictsMetaCommands(context.Context) bool }); ok {
		force = rp.RestrictsMetaCommands(ctx)
	}
	f := pgdump.NewFilter(rd, pgdump.FilterOptions{ForceRestrict: force, OnRefusal: func(error) { cancel() }})
	err := db.Load(lctx, temp, f)
	if ferr := f.Err(); ferr != nil {
		return dumpReadError(ferr)
	}
	if err != nil {
		return err
	}
	if !f.Complete() {
		return fmt.Errorf("load the dump into %s: psql stopped before the end of the dump: %w", temp, errArchiveChanged)
	}
	if !f.Restricted {
		r.logger.Info("this psql has no restricted mode (before 15.14): the dump was loaded with every statement checked, without it")
	}
	rows, _ := f.Rows()
	fillCounts(counts, rows)
	return compareRows(rows, r.report.Metadata, r.res, r.logger)
}

// loadRecreator is a Database whose drop and creation of the temporary database also
// answers what the load asks before it starts, the number of sessions and whether psql has
// a restricted mode (PsqlDatabase.RecreateForLoad): each psql is, with container access, a
// podman or kubectl exec that takes 0.1-0.3 s to start.
type loadRecreator interface {
	RecreateForLoad(ctx context.Context, name string, like DatabaseInfo, requested int) (sessions int, err error)
}

// recreateForLoad drops and creates the temporary database name like info, keeping in
// r.loadSessionsAsked the load's number of sessions when db answers it in the same call.
func (r *run) recreateForLoad(ctx context.Context, db Database, name string, like DatabaseInfo) error {
	if rl, ok := db.(loadRecreator); ok {
		n, err := rl.RecreateForLoad(ctx, name, like, r.opts.LoadConnections)
		r.loadSessionsAsked = n
		return err
	}
	if err := db.Drop(ctx, name); err != nil {
		return err
	}
	return db.Create(ctx, name, like)
}

// loadSessions is the number of sessions the load of pl uses: what the load step's
// recreateForLoad was told for the same database, else asked now.
func (r *run) loadSessions(ctx context.Context, pl ParallelLoader) (int, error) {
	if n := r.loadSessionsAsked; n > 0 {
		r.loadSessionsAsked = 0
		return n, nil
	}
	return pl.LoadConnections(ctx, r.opts.LoadConnections)
}

// loadParallel is loadDump over n sessions: the checked stream goes to the parallel
// loader, which stops at the first refusal or error (the caller's rollback drops the
// temporary database).
func (r *run) loadParallel(ctx context.Context, pl ParallelLoader, n int, temp string, rd io.Reader, counts map[string]int64) error {
	r.logger.Info("loading the dump over several database sessions", "sessions", n)
	src := pgdump.NewChecked(rd)
	popts := ParallelLoadOptions{Connections: n}
	var prep *preparedReads
	if f, ok := r.target.Devices().(PreparedDatabaseFinisher); ok && f.FinishesPreparedDatabase() {
		// The database part of device preparation, on the temporary database once its data
		// is in and before its indexes exist, while the server still runs on the live one.
		// Then what the KV part needs (the counts and the devices whose keys it writes) is
		// read, so that in the downtime device preparation reads no row.
		prep = newPreparedReads(ctx, pl, temp, r.journal.ID)
		defer prep.stop()
		popts.AfterData = func(ctx context.Context) error {
			r.logger.Info("preparing devices in the temporary database", "database", temp)
			return prep.update(ctx)
		}
		popts.AfterDataTables = devprep.PreparedTables
	}
	st, err := pl.LoadChecked(ctx, temp, src, popts)
	if ferr := src.Err(); ferr != nil {
		return dumpReadError(ferr)
	}
	if err != nil {
		return err
	}
	if prep != nil && prep.started {
		counts, err := prep.wait()
		if err != nil {
			return err
		}
		if err := prep.recordEvent(ctx, counts); err != nil {
			return err
		}
		r.journal.DevicesPrepared = counts
		r.logger.Info("database prepared in the temporary database", "devices_updated", counts.DevicesUpdated,
			"timestamps_cleared", counts.TimestampsCleared, "enrollment_requests_updated", counts.EnrollmentRequestsUpdated, "event_created", counts.EventCreated,
			"keys_to_write", counts.After.Keys())
	}
	if !src.Complete() {
		return fmt.Errorf("load the dump into %s: the load stopped before the end of the dump: %w", temp, errArchiveChanged)
	}
	r.loadReport().Sessions = st.Sessions
	r.logger.Info("dump loaded over several sessions", "sessions", st.Sessions, "serial", st.Serial, "data_pieces", st.Data,
		"post_data", st.Post, "pre_data_s", st.PreData.Seconds(), "data_s", st.DataPhase.Seconds(), "post_data_s", st.PostData.Seconds())
	rows, _ := src.Rows()
	fillCounts(counts, rows)
	return compareRows(rows, r.report.Metadata, r.res, r.logger)
}

// preparedReads runs device preparation's database part on the temporary database once
// its data is in: the update of devices, timestamps and enrollment requests in the
// loader's AfterData slot, beside the index builds of the other tables (those of its own
// tables wait for it), then the reads that follow it (the counts and the devices whose
// keys the KV part writes: sequential scans that change nothing) on a session of their
// own beside the rest of the index phase, and the SystemRestored event once the load is
// done, when the index of events makes its existence check a lookup instead of a scan of
// every event. They see what the update committed: the index phase changes no row.
type preparedReads struct {
	ctx            context.Context
	cancel         context.CancelFunc
	pl             ParallelLoader
	temp           string
	restoreID      string
	update1, reads string
	started        bool
	updateOut      string
	done           chan preparedOut
}

type preparedOut struct {
	out string
	err error
}

func newPreparedReads(ctx context.Context, pl ParallelLoader, temp, restoreID string) *preparedReads {
	p := &preparedReads{pl: pl, temp: temp, restoreID: restoreID, done: make(chan preparedOut, 1),
		update1: devprep.DatabaseUpdateScript(), reads: devprep.PreparedReadsScript()}
	p.ctx, p.cancel = context.WithCancel(ctx)
	return p
}

// recordEvent records the SystemRestored event with the count of devices updated.
func (p *preparedReads) recordEvent(ctx context.Context, counts *devprep.DatabaseCounts) error {
	out, err := p.pl.RunSQL(ctx, p.temp, devprep.EventScript(p.restoreID, counts.DevicesUpdated))
	if err != nil {
		return fmt.Errorf("device preparation in %s: record the event: %w", p.temp, err)
	}
	counts.EventCreated = strings.TrimSpace(out) == "1"
	return nil
}

// update runs the database part (AfterData), then starts the reads.
func (p *preparedReads) update(ctx context.Context) error {
	out, err := p.pl.RunSQL(ctx, p.temp, p.update1)
	if err != nil {
		return fmt.Errorf("device preparation in %s: %w", p.temp, err)
	}
	p.updateOut, p.started = out, true
	go func() {
		out, err := p.pl.RunSQL(p.ctx, p.temp, p.reads)
		p.done <- preparedOut{out: out, err: err}
	}()
	return nil
}

// wait returns the counts once the reads are done.
func (p *preparedReads) wait() (*devprep.DatabaseCounts, error) {
	res := <-p.done
	p.done = nil
	if res.err != nil {
		return nil, fmt.Errorf("device preparation in %s: read the prepared devices: %w", p.temp, res.err)
	}
	out := p.updateOut
	if res.out != "" {
		out += "\n" + res.out
	}
	return devprep.ParsePrepared(out)
}

// stop ends reads still running (a load that failed) and waits for them.
func (p *preparedReads) stop() {
	p.cancel()
	if p.started && p.done != nil {
		<-p.done
	}
}

// planDump runs the dump through the checker only (check mode): the plan then says
// whether a restore would refuse it.
func planDump(rd io.Reader, counts map[string]int64, md archive.Metadata, res *Result, logger *slog.Logger) error {
	f := pgdump.NewFilter(rd, pgdump.FilterOptions{})
	if _, err := io.Copy(io.Discard, f); err != nil {
		var ref *pgdump.Refusal
		if errors.As(err, &ref) {
			return archive.DumpRefused(err)
		}
		return err
	}
	rows, _ := f.Rows()
	fillCounts(counts, rows)
	return compareRows(rows, md, res, logger)
}

func fillCounts(counts map[string]int64, rows map[string]int64) {
	for t := range counts {
		counts[t] = rows["public."+t]
	}
}

// compareRows compares the rows the dump held with those the backup recorded
// (archive.CheckDumpRows, the rule verify applies).
func compareRows(rows map[string]int64, md archive.Metadata, res *Result, logger *slog.Logger) error {
	warnings, err := archive.CheckDumpRows(rows, md)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		res.warn(logger, "%s", w)
	}
	return nil
}

// recordedInfo is the database owner and grants the backup recorded, for a restore
// that has to create the database because this host lost it.
func recordedInfo(md archive.Metadata) DatabaseInfo {
	info := DatabaseInfo{Owner: md.Extra[archive.ExtraDBOwner]}
	if raw, ok := md.Extra[archive.ExtraDBACL]; ok && info.Owner != "" {
		var acl []string
		if json.Unmarshal([]byte(raw), &acl) == nil {
			info.ACL, info.ACLSet = acl, true
		}
	}
	return info
}

// checkSignature checks who wrote the archive, before anything else is read: with
// trusted keys configured an unsigned or wrongly signed archive is refused (an unsigned
// one is accepted with allow_unsigned, and the result says so).
func (r *run) checkSignature() (*archive.SignatureReport, error) {
	sig, warnings, err := archive.CheckSignature(r.opts.ArchivePath, r.opts.Signature)
	if err != nil {
		return nil, err
	}
	for _, w := range warnings {
		r.res.warn(r.logger, "%s", w)
	}
	if sig.Signed {
		r.logger.Info("archive signature verified", "key", sig.Signer.Fingerprint, "principal", sig.Signer.Principal)
	}
	return sig, nil
}

// dumpReadError is the error of a dump that could not be read to its end: the checker's
// refusal as the archive's, anything else as a read error.
func dumpReadError(err error) error {
	var ref *pgdump.Refusal
	if errors.As(err, &ref) {
		return archive.DumpRefused(err)
	}
	return fmt.Errorf("read the database dump: %w", err)
}
