// Package drill proves that an estate's backup restores, without touching the estate: it
// verifies the archive (signature, checksum, structure, manifest) with the rule verify and
// restore apply, loads its dump into a scratch database with the loader and dump checks a
// restore uses, compares every table's rows with what the backup recorded, plans device
// preparation on the scratch database, checks the archive's PKI with crypto/x509, and
// drops the scratch database. The scratch database sits on the estate's own PostgreSQL
// (named <db>_drill_<id>, after a free-space check) or on a throwaway PostgreSQL the drill
// starts on this machine. What a drill makes is recorded first in a state file, so that a
// drill killed even by SIGKILL is cleaned up by the next one.
package drill

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/runner"
)

// DefaultStateDir is where the drill keeps its state file and lock.
const DefaultStateDir = restore.DefaultStateDir

// Check names, in the order a drill runs them.
const (
	CheckCleanup     = "leftovers_removed"
	CheckArchive     = "archive_verified"
	CheckFreeSpace   = "free_space"
	CheckLoad        = "database_loaded"
	CheckRows        = "row_counts"
	CheckDevices     = "device_preparation_plan"
	CheckPKICAKey    = "pki_ca_key_matches"
	CheckPKIChain    = "pki_chain"
	CheckPKIExpiry   = "pki_expiry"
	CheckScratchGone = "scratch_database_dropped"
)

// checkOrder is the order of the checks in the report (the archive is verified while the
// dump loads, but reads first).
var checkOrder = map[string]int{CheckCleanup: 0, CheckArchive: 1, CheckFreeSpace: 2, CheckLoad: 3, CheckRows: 4, CheckDevices: 5,
	CheckPKICAKey: 6, CheckPKIChain: 7, CheckPKIExpiry: 8, CheckScratchGone: 9}

// Options configure one drill.
type Options struct {
	// ArchivePath is the archive to drill; empty: the newest archive in ArchiveDir.
	ArchivePath string
	ArchiveDir  string
	// ChecksumFile defaults to <archive>.sha256; it is required.
	ChecksumFile string
	Limits       archive.Limits
	Signature    archive.SignatureOptions
	// Decryption reads an encrypted (age) archive; without it an encrypted archive fails
	// the archive check (its contents cannot be drilled).
	Decryption *encrypt.Identities

	// Server holds the scratch database: an EstateServer, or a *Throwaway (started for
	// the dump's major version, removed afterwards).
	Server Server
	// StateDir keeps the state file and the lock (DefaultStateDir).
	StateDir string
	// CertWarnDays: a CA or server certificate expiring within this many days gets a
	// warning (default 30).
	CertWarnDays int
	// FreeSpaceFactor is how many times the larger of the dump and the live database the
	// estate's server must have free (default 1.2).
	FreeSpaceFactor float64

	Logger *slog.Logger
	Now    func() time.Time
	// Checkpoint, when set, is called at named points ("created", "loaded", "planned");
	// tests stop a drill there.
	Checkpoint func(name string) error
}

// Check is one pass/fail line of the report.
type Check struct {
	Name   string `json:"name"`
	Passed bool   `json:"passed"`
	Detail string `json:"detail"`
}

// ArchiveInfo describes the archive drilled.
type ArchiveInfo struct {
	Path           string                   `json:"path"`
	SHA256         string                   `json:"sha256,omitempty"`
	Size           int64                    `json:"size"`
	Timestamp      time.Time                `json:"timestamp,omitzero"`
	Version        string                   `json:"version,omitempty"`
	DeploymentType string                   `json:"deployment_type,omitempty"`
	Estate         *archive.Estate          `json:"estate,omitempty"`
	Signature      *archive.SignatureReport `json:"signature,omitempty"`
}

// DevicePlan is what device preparation would change after a restore of this archive.
type DevicePlan struct {
	DevicesToPrepare            int `json:"devices_to_prepare"`
	DevicesAlreadyAwaiting      int `json:"devices_already_awaiting"`
	DevicesSkipped              int `json:"devices_skipped_decommissioned"`
	EnrollmentRequestsToPrepare int `json:"enrollment_requests_to_prepare"`
	KVKeysToWrite               int `json:"kv_keys_to_write"`
	Organizations               int `json:"organizations"`
}

// Report is what a drill found: the module returns it as JSON.
type Report struct {
	DrillID string      `json:"drill_id"`
	Passed  bool        `json:"passed"`
	Archive ArchiveInfo `json:"archive"`
	// RecoveryPoint is when the archive was made; RecoveryPointAge its age in seconds.
	RecoveryPoint    time.Time `json:"recovery_point,omitzero"`
	RecoveryPointAge float64   `json:"recovery_point_age_seconds"`
	// LoadSeconds is how long the dump took to load: the recovery time to expect for the
	// database.
	LoadSeconds float64 `json:"load_seconds"`
	// Server is where the scratch database was: "estate" or "throwaway".
	Server          string `json:"server"`
	ScratchDatabase string `json:"scratch_database,omitempty"`
	PostgresMajor   int    `json:"postgres_major,omitempty"`
	// Rows are the rows of every table of the loaded database; RowsRecorded those the
	// backup recorded (dump_rows_* of metadata.json), when it did.
	Rows         map[string]int64 `json:"rows"`
	RowsRecorded map[string]int64 `json:"rows_recorded,omitempty"`
	Devices      *DevicePlan      `json:"devices,omitempty"`
	PKI          *PKIReport       `json:"pki,omitempty"`
	Checks       []Check          `json:"checks"`
	// CleanedUp lists what a previous, killed drill had left and this one removed.
	CleanedUp []string `json:"cleaned_up"`
	Warnings  []string `json:"warnings"`
	Duration  float64  `json:"duration_seconds"`
	Summary   string   `json:"summary"`
}

// FailedChecks names the checks that failed.
func (r *Report) FailedChecks() []Check {
	var out []Check
	for _, c := range r.Checks {
		if !c.Passed {
			out = append(out, c)
		}
	}
	return out
}

func (r *Report) check(name string, passed bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, Passed: passed, Detail: fmt.Sprintf(format, args...)})
}

type drill struct {
	opts   Options
	log    *slog.Logger
	now    time.Time
	rep    *Report
	store  *stateStore
	st     *state
	server Server
	md     *archive.Metadata // the quick read of metadata.json, when the archive allows one
	// verified is metadata.json as the verifying walk read it.
	verified archive.Metadata
	// scratchLeft: the scratch database could not be dropped; the state file stays.
	scratchLeft bool
	// sum is the archive's sha256 its checksum file vouches for.
	sum string
	// dumpRows are the rows the dump's COPY blocks held, for the tables the backup
	// recorded and restore.CountedTables, as the loader counted them.
	dumpRows map[string]int64
}

// Run drills one archive. The report is returned whenever the drill got far enough to
// make one; the error is non-nil when a check failed or the drill could not run.
func Run(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	if opts.Server == nil {
		return nil, errors.New("restore drill: no server for the scratch database")
	}
	if opts.ArchivePath == "" && opts.ArchiveDir == "" {
		return nil, errors.New("restore drill: give the archive (path) or the directory of an estate's archives (archive_dir)")
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if opts.CertWarnDays == 0 {
		opts.CertWarnDays = 30
	}
	if opts.FreeSpaceFactor == 0 {
		opts.FreeSpaceFactor = 1.2
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &drill{opts: opts, log: log, now: opts.Now(), server: opts.Server,
		rep: &Report{DrillID: newID(), Server: opts.Server.Kind(), Rows: map[string]int64{}, Checks: []Check{}, CleanedUp: []string{}, Warnings: []string{}}}
	err := d.run(ctx)
	d.rep.Duration = time.Since(start).Seconds()
	sort.SliceStable(d.rep.Checks, func(i, j int) bool { return checkOrder[d.rep.Checks[i].Name] < checkOrder[d.rep.Checks[j].Name] })
	failed := d.rep.FailedChecks()
	d.rep.Passed = err == nil && len(failed) == 0
	d.rep.Summary = Summary(d.rep)
	if err == nil && len(failed) > 0 {
		names := make([]string, len(failed))
		for i, c := range failed {
			names[i] = c.Name + ": " + c.Detail
		}
		err = fmt.Errorf("restore drill failed: %s", strings.Join(names, "; "))
	}
	return d.rep, err
}

func (d *drill) warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	d.log.Warn(msg)
	d.rep.Warnings = append(d.rep.Warnings, msg)
}

func (d *drill) checkpoint(name string) error {
	if d.opts.Checkpoint != nil {
		return d.opts.Checkpoint(name)
	}
	return nil
}

func newID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *drill) run(ctx context.Context) (err error) {
	store, err := lockState(d.opts.StateDir)
	if err != nil {
		return fmt.Errorf("restore drill: %w", err)
	}
	d.store = store
	defer store.unlock()
	defer func() {
		cerr := d.server.Close(context.WithoutCancel(ctx))
		if cerr != nil {
			d.warn("release the drill's PostgreSQL server: %v (the next drill removes it)", cerr)
		}
		if d.st != nil && cerr == nil && !d.scratchLeft {
			if err := d.store.clear(); err != nil {
				d.warn("%v", err)
			}
		}
	}()

	if err := d.cleanLeftovers(ctx); err != nil {
		d.rep.check(CheckCleanup, false, "%v", err)
		return nil
	}
	path, err := d.selectArchive()
	if err != nil {
		d.rep.check(CheckArchive, false, "%v", err)
		return nil
	}
	d.rep.Archive.Path = path
	d.log.Info("restore drill", "drill_id", d.rep.DrillID, "archive", path, "server", d.server.Kind())

	sig, warnings, err := archive.CheckSignature(path, d.opts.Signature)
	if err != nil {
		d.rep.check(CheckArchive, false, "%v", err)
		return nil
	}
	for _, w := range warnings {
		d.warn("%s", w)
	}
	if sig.Checked {
		d.rep.Archive.Signature = sig
	}
	// The checksum first, as a restore checks it: nothing else is read from a file that is
	// not the one the backup wrote.
	sum, _, err := archive.ChecksumOK(ctx, path, archive.VerifyOptions{ChecksumFile: d.opts.ChecksumFile, RequireChecksum: true, Limits: d.opts.Limits})
	if err != nil {
		d.rep.check(CheckArchive, false, "%v", err)
		return nil
	}
	d.sum = sum
	if md, err := archive.ReadMetadataWith(ctx, path, d.opts.Decryption); err == nil {
		d.md = md
		d.noteMetadata(*md)
	} else if !errors.Is(err, archive.ErrNoQuickMetadata) {
		d.rep.check(CheckArchive, false, "%v", err)
		return nil
	}
	if d.md != nil && !d.md.DatabaseIncluded {
		d.warn("the archive holds no database dump (external database): the drill checks the archive and its PKI only; drill the external database's own backups with its tools")
	}

	// The scratch database is dropped whatever happens next, also when ctx is cancelled.
	defer func() {
		if d.st == nil || d.rep.ScratchDatabase == "" {
			return
		}
		if derr := d.dropScratch(context.WithoutCancel(ctx)); derr != nil {
			d.scratchLeft = true
			d.rep.check(CheckScratchGone, false, "%v; drop database %s by hand (the next drill also tries)", derr, d.rep.ScratchDatabase)
			return
		}
		if d.server.Kind() == ServerThrowaway {
			d.rep.check(CheckScratchGone, true, "%s dropped with the throwaway PostgreSQL, whose directory is removed", d.rep.ScratchDatabase)
			return
		}
		d.rep.check(CheckScratchGone, true, "%s dropped", d.rep.ScratchDatabase)
	}()

	loaded, err := d.walk(ctx, path)
	if err != nil {
		return err
	}
	if !loaded {
		return nil
	}
	if err := d.checkpoint("loaded"); err != nil {
		return err
	}
	d.countRows(ctx)
	d.planDevices(ctx)
	return d.checkpoint("planned")
}

// cleanLeftovers removes what a killed drill left: the state file's scratch database and
// throwaway cluster, and on the estate's server any database named <db>_drill_<id> (the
// lock says no other drill of this host runs).
func (d *drill) cleanLeftovers(ctx context.Context) error {
	old, err := d.store.read()
	if err != nil {
		return err
	}
	if old != nil {
		d.log.Warn("a previous drill did not finish: removing what it made", "drill_id", old.DrillID, "pid", old.PID, "started", old.Started)
		// Only directories a drill makes are removed, whatever the state file says.
		if old.ThrowawayDir != "" && !strings.HasPrefix(filepath.Base(old.ThrowawayDir), throwawayPrefix) {
			return fmt.Errorf("%s names %s as a throwaway PostgreSQL, which no drill makes: remove %s after checking it", d.store.path(), old.ThrowawayDir, d.store.path())
		}
		if old.ThrowawaySocketDir != "" && !strings.HasPrefix(old.ThrowawaySocketDir, "/tmp/"+socketPrefix) {
			return fmt.Errorf("%s names %s as a socket directory, which no drill makes: remove %s after checking it", d.store.path(), old.ThrowawaySocketDir, d.store.path())
		}
		if old.ThrowawayDir != "" {
			if err := stopCluster(ctx, runner.Exec{}, old.ThrowawayBin, old.ThrowawayDir, ""); err != nil {
				return fmt.Errorf("stop the throwaway PostgreSQL a killed drill left in %s: %w", old.ThrowawayDir, err)
			}
			if _, statErr := os.Stat(old.ThrowawayDir); statErr == nil {
				if err := os.RemoveAll(old.ThrowawayDir); err != nil {
					return fmt.Errorf("remove the throwaway PostgreSQL a killed drill left in %s: %w", old.ThrowawayDir, err)
				}
				d.rep.CleanedUp = append(d.rep.CleanedUp, "throwaway PostgreSQL "+old.ThrowawayDir)
			}
		}
		if old.ThrowawaySocketDir != "" {
			if err := os.RemoveAll(old.ThrowawaySocketDir); err != nil {
				return fmt.Errorf("remove the socket directory %s a killed drill left: %w", old.ThrowawaySocketDir, err)
			}
		}
	}
	if d.server.Kind() == ServerEstate {
		db := d.server.Database()
		names := map[string]bool{}
		if old != nil && old.ScratchDatabase != "" && old.LiveDatabase == d.server.LiveDatabase() {
			names[old.ScratchDatabase] = true
		}
		found, err := listDatabases(ctx, db, d.server.LiveDatabase()+"_drill_")
		if err != nil {
			return err
		}
		for _, n := range found {
			if scratchRE.MatchString(strings.TrimPrefix(n, d.server.LiveDatabase())) {
				names[n] = true
			}
		}
		sorted := make([]string, 0, len(names))
		for n := range names {
			sorted = append(sorted, n)
		}
		sort.Strings(sorted)
		for _, n := range sorted {
			if n == d.server.LiveDatabase() || !strings.Contains(n, "_drill_") {
				continue // never the live one
			}
			exists, err := db.Exists(ctx, n)
			if err != nil {
				return err
			}
			if !exists {
				continue
			}
			if err := db.Drop(ctx, n); err != nil {
				return fmt.Errorf("drop the scratch database %s a killed drill left: %w", n, err)
			}
			d.rep.CleanedUp = append(d.rep.CleanedUp, "scratch database "+n)
		}
	}
	if err := d.store.clear(); err != nil {
		return err
	}
	if len(d.rep.CleanedUp) > 0 {
		d.rep.check(CheckCleanup, true, "removed what a killed drill left: %s", strings.Join(d.rep.CleanedUp, ", "))
	}
	return nil
}

var scratchRE = regexp.MustCompile(`^_drill_[0-9a-f]{8}$`)

// listDatabases lists the databases whose name starts with prefix, through the server's
// psql.
func listDatabases(ctx context.Context, db restore.Database, prefix string) ([]string, error) {
	pd, ok := db.(*restore.PsqlDatabase)
	if !ok {
		return nil, nil
	}
	out, err := psqlQuery(ctx, pd, "postgres", fmt.Sprintf("SELECT datname FROM pg_database WHERE starts_with(datname, '%s') ORDER BY 1;", strings.ReplaceAll(prefix, "'", "''")))
	if err != nil {
		return nil, fmt.Errorf("list scratch databases: %w", err)
	}
	return lines(out), nil
}

func psqlQuery(ctx context.Context, pd *restore.PsqlDatabase, dbName, sql string) (string, error) {
	c := pd.Command([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dbName, "-f", "-"},
		[]string{"PGOPTIONS=-c client_min_messages=warning"})
	c.Stdin = strings.NewReader(sql)
	out, err := runner.Output(ctx, pd.Runner, c)
	return strings.TrimSpace(string(out)), err
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// selectArchive is the archive given, else the newest archive of the directory (by the
// time in its name) that has a checksum file.
func (d *drill) selectArchive() (string, error) {
	if d.opts.ArchivePath != "" {
		return d.opts.ArchivePath, nil
	}
	list, err := retention.ListDir(d.opts.ArchiveDir)
	if err != nil {
		return "", err
	}
	var best string
	var bestT time.Time
	skipped := 0
	for _, a := range list {
		t, ok := retention.ParseName(a.Name)
		if !ok {
			continue
		}
		if a.Status != retention.Good {
			skipped++
			continue
		}
		if best == "" || t.After(bestT) {
			best, bestT = a.Name, t
		}
	}
	if best == "" {
		return "", fmt.Errorf("no archive with a checksum file in %s (%d without): run a backup first, or give path", d.opts.ArchiveDir, skipped)
	}
	return filepath.Join(d.opts.ArchiveDir, best), nil
}

func (d *drill) noteMetadata(md archive.Metadata) {
	a := &d.rep.Archive
	a.Timestamp, a.Version, a.DeploymentType, a.Estate = md.Timestamp, md.Version, md.DeploymentType, md.Estate
	d.rep.RecoveryPoint = md.Timestamp
	if !md.Timestamp.IsZero() {
		d.rep.RecoveryPointAge = d.now.Sub(md.Timestamp).Seconds()
	}
	rec := map[string]int64{}
	for k, v := range md.Extra {
		if t, ok := strings.CutPrefix(k, archive.ExtraDumpRowsPrefix); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				rec[t] = n
			}
		}
	}
	if len(rec) > 0 {
		d.rep.RowsRecorded = rec
	}
}

// walk reads the archive once through the verifying walk: PKI entries are kept for the
// PKI check, the dump goes into the scratch database through the restore's loader. It
// reports whether the dump was loaded.
func (d *drill) walk(ctx context.Context, path string) (bool, error) {
	pki := newPKIFiles()
	var loadErr error
	loaded := false
	md := archive.Metadata{}
	var manifest []archive.ManifestEntry
	if d.md != nil {
		md, manifest = *d.md, d.md.Manifest
	}
	fn := func(hdr *tar.Header, name string, r io.Reader) error {
		switch {
		case name == archive.DatabaseDump:
			if d.md != nil && !d.md.DatabaseIncluded {
				return nil
			}
			if err := d.load(ctx, r, md, hdr.Size); err != nil {
				loadErr = err
				return err
			}
			loaded = true
		case strings.HasPrefix(name, "pki/") && hdr.Typeflag == tar.TypeReg:
			b, err := io.ReadAll(r)
			if err != nil {
				return err
			}
			pki.add(name, b)
		}
		return nil
	}
	rep, err := archive.VerifyWalk(ctx, path, archive.VerifyOptions{ExpectedSHA256: d.sum, Limits: d.opts.Limits, Manifest: manifest,
		Decryption: d.opts.Decryption}, fn)
	switch {
	case loadErr != nil:
		if !d.failed(CheckFreeSpace) {
			d.rep.check(CheckLoad, false, "%v", loadErr)
		}
		return false, nil
	case err != nil:
		d.rep.check(CheckArchive, false, "%v", err)
		return false, nil
	}
	if d.md != nil && (rep.Metadata.Timestamp != d.md.Timestamp || rep.Metadata.Version != d.md.Version) {
		d.rep.check(CheckArchive, false, "the archive changed on disk while it was drilled: make sure nothing writes to it and drill again")
		return false, nil
	}
	d.rep.Archive.SHA256, d.rep.Archive.Size = rep.SHA256, rep.Size
	if d.md == nil {
		d.noteMetadata(rep.Metadata)
	}
	md = rep.Metadata
	d.verified = md
	for _, w := range rep.Warnings {
		d.warn("%s", w)
	}
	detail := fmt.Sprintf("checksum, structure and manifest of %s verified (sha256 %s)", filepath.Base(path), rep.SHA256)
	if s := d.rep.Archive.Signature; s != nil && s.Signed && s.Signer != nil {
		detail += "; signed by the trusted key " + s.Signer.Fingerprint
		if s.Signer.Principal != "" {
			detail += " (" + s.Signer.Principal + ")"
		}
	}
	d.rep.check(CheckArchive, true, "%s", detail)
	if md.DatabaseIncluded && !loaded {
		d.rep.check(CheckLoad, false, "metadata.json says the database is included, but the archive has no %s: the backup is incomplete", archive.DatabaseDump)
	}
	if loaded {
		d.rep.check(CheckLoad, true, "dump loaded into %s in %.1f s with the restore's loader and dump checks", d.rep.ScratchDatabase, d.rep.LoadSeconds)
	}
	var estateCA string
	if md.Estate != nil {
		estateCA = md.Estate.CAFingerprint
	}
	d.checkPKI(pki, estateCA)
	return loaded, nil
}

var dumpMajorRE = regexp.MustCompile(`(?m)^-- Dumped from database version (\d+)`)
var pgDumpMajorRE = regexp.MustCompile(`(?m)^-- Dumped by pg_dump version (\d+)`)

// dumpMajor reads the PostgreSQL major version from the dump's header, else from the
// versions the backup recorded.
func dumpMajor(head []byte, md archive.Metadata) int {
	for _, re := range []*regexp.Regexp{dumpMajorRE, pgDumpMajorRE} {
		if m := re.FindSubmatch(head); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			return n
		}
	}
	for _, k := range []string{"db_server_version", "pg_dump_version"} {
		if m := regexp.MustCompile(`(\d+)`).FindString(md.Extra[k]); m != "" {
			n, _ := strconv.Atoi(m)
			return n
		}
	}
	return 0
}

// load opens the scratch database and loads the dump into it.
func (d *drill) load(ctx context.Context, r io.Reader, md archive.Metadata, size int64) error {
	br := bufio.NewReaderSize(r, 256<<10)
	head, _ := br.Peek(64 << 10)
	d.rep.PostgresMajor = dumpMajor(head, md)

	if d.server.Kind() == ServerEstate && md.DeploymentType == archive.DeploymentKubernetes {
		return errors.New("a Kubernetes archive is drilled on a throwaway PostgreSQL, not beside a Podman estate's live database: set drill_server to throwaway")
	}
	st := &state{DrillID: d.rep.DrillID, PID: os.Getpid(), Started: time.Now().UTC(), Server: d.server.Kind()}
	live := ""
	if t, ok := d.server.(*Throwaway); ok {
		err := t.Open(ctx, d.rep.PostgresMajor, func(dir, bin, sock string) error {
			st.ThrowawayDir, st.ThrowawayBin, st.ThrowawaySocketDir = dir, bin, sock
			d.st = st
			return d.store.save(st)
		})
		if err != nil {
			return err
		}
		if err := t.PrepareRoles(ctx, md.Extra[archive.ExtraDBOwner]); err != nil {
			return err
		}
		live = md.Extra["db_name"]
	} else {
		live = d.server.LiveDatabase()
	}
	if live == "" {
		live = "flightctl"
	}
	if err := restore.ValidDatabaseName(live); err != nil {
		return err
	}
	if len(live) > 63-len("_drill_")-8 {
		return fmt.Errorf("database name %q is too long to add a drill suffix", live)
	}
	scratch := live + "_drill_" + d.rep.DrillID
	db := d.server.Database()
	if err := db.Ping(ctx); err != nil {
		return err
	}
	info, err := d.scratchInfo(ctx, db, live, md, size)
	if err != nil {
		return err
	}
	st.LiveDatabase, st.ScratchDatabase = d.server.LiveDatabase(), scratch
	d.st = st
	if err := d.store.save(st); err != nil {
		return err
	}
	d.rep.ScratchDatabase = scratch
	if err := db.Create(ctx, scratch, info); err != nil {
		return err
	}
	if err := d.checkpoint("created"); err != nil {
		return err
	}
	d.log.Info("loading the dump into the scratch database", "database", scratch)
	start := time.Now()
	recorded := make([]string, 0, len(d.rep.RowsRecorded))
	for t := range d.rep.RowsRecorded {
		recorded = append(recorded, t)
	}
	rows, warnings, err := restore.LoadDump(ctx, db, scratch, br, md, recorded, d.log)
	d.rep.LoadSeconds = time.Since(start).Seconds()
	for _, w := range warnings {
		d.warn("%s", w)
	}
	if err != nil {
		return err
	}
	d.dumpRows = rows
	if info.Owner != "" {
		// The live database's owner and grants, so that the application user reaches the
		// scratch database as it would the restored one.
		if err := db.SetPrivileges(ctx, scratch, info); err != nil {
			return err
		}
	}
	return nil
}

// scratchInfo is the scratch database's owner, encoding and locale (the live database's,
// else what the backup recorded), after the free-space check on the estate's server.
func (d *drill) scratchInfo(ctx context.Context, db restore.Database, live string, md archive.Metadata, dumpSize int64) (restore.DatabaseInfo, error) {
	info := restore.DatabaseInfo{Owner: md.Extra[archive.ExtraDBOwner]}
	var liveSize int64
	if d.server.Kind() == ServerEstate {
		exists, err := db.Exists(ctx, live)
		if err != nil {
			return info, err
		}
		if exists {
			li, err := db.Info(ctx, live)
			if err != nil {
				return info, err
			}
			info = li
			info.Size = 0
			liveSize = li.Size
		}
	}
	need := dumpSize
	if liveSize > need {
		need = liveSize
	}
	need = int64(float64(need) * d.opts.FreeSpaceFactor)
	free, known, err := db.FreeSpace(ctx)
	switch {
	case err != nil:
		d.warn("cannot tell the free space of the drill's PostgreSQL server (%v): make sure it can hold another copy of the database (about %d bytes)", err, need)
	case !known:
		d.warn("the free space of the drill's PostgreSQL server cannot be read from here: make sure it can hold another copy of the database (about %d bytes)", need)
	case free < need:
		d.rep.check(CheckFreeSpace, false, "%d bytes free in the data directory, about %d needed for the scratch database", free, need)
		return info, fmt.Errorf("not enough free space for the scratch database: %d bytes free, about %d needed: free some space, or run the drill on a throwaway PostgreSQL (drill_server: throwaway)", free, need)
	default:
		d.rep.check(CheckFreeSpace, true, "%d bytes free, about %d needed", free, need)
	}
	return info, nil
}

// countRows reports the rows of every table of the loaded database. The tables the backup
// recorded were counted as the dump loaded, and the loader compared them with the record as
// a restore does (psql stops at the first error, so they are what the database holds); the
// tables device preparation works on and those the backup did not record are counted in the
// database, and the former must equal the dump's. Counting only those keeps the drill from
// scanning the whole database again.
func (d *drill) countRows(ctx context.Context) {
	db := d.server.Database()
	var tables []string
	if pd, ok := db.(*restore.PsqlDatabase); ok {
		out, err := psqlQuery(ctx, pd, d.rep.ScratchDatabase, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1;")
		if err != nil {
			d.rep.check(CheckRows, false, "list the tables of %s: %v", d.rep.ScratchDatabase, err)
			return
		}
		tables = lines(out)
	}
	var missing []string
	for t := range d.rep.RowsRecorded {
		if !contains(tables, t) {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		d.rep.check(CheckRows, false, "tables the backup recorded are missing from the loaded database: %s", strings.Join(missing, ", "))
		return
	}
	if len(tables) == 0 {
		d.rep.check(CheckRows, false, "the loaded database has no tables: the dump holds no Flight Control data")
		return
	}
	var toCount []string
	for _, t := range tables {
		if _, rec := d.rep.RowsRecorded[t]; !rec || contains(restore.CountedTables, t) {
			toCount = append(toCount, t)
		}
	}
	counts, err := db.Counts(ctx, d.rep.ScratchDatabase, toCount)
	if err != nil {
		d.rep.check(CheckRows, false, "%v", err)
		return
	}
	qualified := map[string]int64{}
	for _, t := range tables {
		n, counted := counts[t]
		if !counted {
			n = d.dumpRows[t]
		}
		d.rep.Rows[t] = n
		qualified["public."+t] = n
	}
	var differ []string
	for _, t := range restore.CountedTables {
		if n, ok := counts[t]; ok {
			if dn, known := d.dumpRows[t]; known && dn != n {
				differ = append(differ, fmt.Sprintf("%s: %d rows loaded, %d in the dump", t, n, dn))
			}
		}
	}
	if len(differ) > 0 {
		d.rep.check(CheckRows, false, "the loaded database differs from the dump (%s): the load is not what a restore needs", strings.Join(differ, "; "))
		return
	}
	warnings, err := archive.CheckDumpRows(qualified, d.verified)
	if err != nil {
		d.rep.check(CheckRows, false, "%v", err)
		return
	}
	for _, w := range warnings {
		d.warn("%s", w)
	}
	if len(d.rep.RowsRecorded) == 0 {
		d.rep.check(CheckRows, true, "%d tables loaded and counted; the archive records no row counts to compare with (an upstream or Kubernetes archive)", len(tables))
		return
	}
	d.rep.check(CheckRows, true, "%d tables loaded, every row count equal to the one the backup recorded", len(tables))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// planDevices runs device preparation in dry-run mode on the scratch database.
func (d *drill) planDevices(ctx context.Context) {
	counts, _, err := d.server.Devices(d.rep.ScratchDatabase).Prepare(ctx, restore.DevicePrepRequest{RestoreID: "drill-" + d.rep.DrillID, FlushKV: true, DryRun: true})
	if err != nil {
		d.rep.check(CheckDevices, false, "%v", err)
		return
	}
	res, ok := counts.(*devprep.Result)
	if !ok || res == nil {
		d.rep.check(CheckDevices, false, "device preparation gave no plan")
		return
	}
	d.rep.Devices = &DevicePlan{DevicesToPrepare: res.DevicesUpdated, DevicesAlreadyAwaiting: res.DevicesAlreadyAwaiting,
		DevicesSkipped: res.DevicesSkippedDecommissioned, EnrollmentRequestsToPrepare: res.EnrollmentRequestsUpdated,
		KVKeysToWrite: res.KeysWritten, Organizations: res.Organizations}
	d.rep.check(CheckDevices, true, "a restore would mark %d devices and %d enrollment requests AwaitingReconnect and write %d KV keys",
		res.DevicesUpdated, res.EnrollmentRequestsUpdated, res.KeysWritten)
}

func (d *drill) checkPKI(p *pkiFiles, estateCA string) {
	if len(p.blobs) == 0 && len(p.problems) == 0 {
		d.rep.check(CheckPKICAKey, false, "the archive holds no PKI (pki/): a restored server would have no certificates")
		return
	}
	rep := checkPKI(p, d.now, d.opts.CertWarnDays, estateCA)
	d.rep.PKI = rep
	var caKey, chain, expiry []string
	for _, pr := range rep.Problems {
		switch {
		case strings.Contains(pr, "expired"):
			expiry = append(expiry, pr)
		case strings.Contains(pr, "CA key") || strings.Contains(pr, "no CA"):
			caKey = append(caKey, pr)
		default:
			chain = append(chain, pr)
		}
	}
	for _, n := range rep.Notes {
		d.warn("%s", n)
	}
	if len(caKey) > 0 {
		d.rep.check(CheckPKICAKey, false, "%s", strings.Join(caKey, "; "))
	} else {
		d.rep.check(CheckPKICAKey, true, "the CA key %s belongs to the CA certificate %s", rep.CAKey, rep.CA.Subject)
	}
	if len(chain) > 0 {
		d.rep.check(CheckPKIChain, false, "%s", strings.Join(chain, "; "))
	} else {
		servers := 0
		for _, c := range rep.Certificates {
			if c.Server {
				servers++
			}
		}
		d.rep.check(CheckPKIChain, true, "%d server certificates chain to the CA", servers)
	}
	if len(expiry) > 0 {
		d.rep.check(CheckPKIExpiry, false, "%s", strings.Join(expiry, "; "))
	} else if rep.SoonestExpiry != nil {
		d.rep.check(CheckPKIExpiry, true, "the first CA or server certificate expires on %s (%d days)", rep.SoonestExpiry.Format(time.RFC3339), int(rep.SoonestExpiry.Sub(d.now).Hours()/24))
	} else {
		d.rep.check(CheckPKIExpiry, true, "no CA or server certificate to expire")
	}
}

// dropScratch drops the scratch database; a throwaway server is stopped and removed
// whole. The state file is cleared once the server is released.
func (d *drill) dropScratch(ctx context.Context) error {
	if d.server.Kind() == ServerEstate {
		return d.server.Database().Drop(ctx, d.rep.ScratchDatabase)
	}
	return d.server.Close(ctx)
}

func (d *drill) failed(name string) bool {
	for _, c := range d.rep.Checks {
		if c.Name == name && !c.Passed {
			return true
		}
	}
	return false
}

// Summary is the report in a few lines, for the operator's morning read.
func Summary(r *Report) string {
	var b strings.Builder
	verdict := "PASSED"
	if !r.Passed {
		verdict = "FAILED"
	}
	estate := "estate not recorded"
	if r.Archive.Estate != nil && r.Archive.Estate.Name != "" {
		estate = "estate " + r.Archive.Estate.Name
	}
	fmt.Fprintf(&b, "restore drill %s %s: %s, %s\n", r.DrillID, verdict, filepath.Base(r.Archive.Path), estate)
	if !r.RecoveryPoint.IsZero() {
		fmt.Fprintf(&b, "recovery point: %s (%s old)\n", r.RecoveryPoint.UTC().Format(time.RFC3339), (time.Duration(r.RecoveryPointAge) * time.Second).Round(time.Second))
	}
	if r.LoadSeconds > 0 {
		fmt.Fprintf(&b, "database load: %.1f s on the %s server (PostgreSQL %d)\n", r.LoadSeconds, r.Server, r.PostgresMajor)
	}
	if len(r.Rows) > 0 {
		var total int64
		for _, n := range r.Rows {
			if n > 0 {
				total += n
			}
		}
		fmt.Fprintf(&b, "rows: %d in %d tables", total, len(r.Rows))
		for _, t := range []string{"devices", "fleets", "enrollment_requests"} {
			if n, ok := r.Rows[t]; ok {
				fmt.Fprintf(&b, ", %s %d", t, n)
			}
		}
		b.WriteString("\n")
	}
	if r.Devices != nil {
		fmt.Fprintf(&b, "devices that would be prepared: %d (enrollment requests %d)\n", r.Devices.DevicesToPrepare, r.Devices.EnrollmentRequestsToPrepare)
	}
	if r.PKI != nil && r.PKI.SoonestExpiry != nil {
		fmt.Fprintf(&b, "certificates: first expiry %s (%d days)\n", r.PKI.SoonestExpiry.Format("2006-01-02"), int(time.Until(*r.PKI.SoonestExpiry).Hours()/24))
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.Passed {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	return strings.TrimRight(b.String(), "\n")
}
