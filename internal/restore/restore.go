// Package restore puts a Flight Control server back from an archive: it verifies the
// archive, computes a plan (which is also check mode), then runs journaled steps against a
// Target (stop units, load and swap the database, stage and swap files, re-import the PAM
// volume, prepare devices, start units, finalise). A failure, a signal or a crash never
// leaves the server worse off: a failure before the end puts the previous database and
// files back and starts the units that were running; a run interrupted even by SIGKILL is
// finished (or undone with Rollback) by the next run with the same archive.
package restore

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/wrap"
)

// DefaultStateDir holds the journal and the saved PAM volume while a restore runs.
const DefaultStateDir = "/var/lib/flightctl-dr"

// CountedTables are the tables whose rows the plan counts, live and in the dump.
var CountedTables = []string{"devices", "fleets", "enrollment_requests"}

// Options configure one restore.
type Options struct {
	// ArchivePath is the archive to restore. Empty: device preparation only, as upstream's
	// older flightctl-restore did after a database restored by other means.
	ArchivePath string
	// ChecksumFile defaults to <ArchivePath>.sha256; it is required.
	ChecksumFile string
	Target       Target
	// ServerVersion is the running server's release; empty: Target.ServerVersion.
	ServerVersion string
	// AllowVersionMismatch turns a version mismatch into a warning.
	AllowVersionMismatch bool
	// KeepOldDB keeps the previous database as <db>_old_<id> after success.
	KeepOldDB bool
	// LoadConnections is the number of database sessions the dump loads over, when the
	// Database is a ParallelLoader (0: its default from the CPUs and the server's free
	// connections; 1: one psql reading the dump, as psql -f), and the most that device
	// preparation's update of the live database splits over (DevicePrepRequest.Connections).
	LoadConnections int
	// StateDir holds the journal (DefaultStateDir) unless Journal or the target keeps it
	// elsewhere, and the saved PAM volume.
	StateDir string
	// Journal keeps the journal; nil: the target's own (JournalKeeper), else a file in
	// StateDir.
	Journal JournalStore
	// FlushKV clears the KV store before device preparation (upstream does).
	FlushKV bool
	// CheckMode computes the plan and changes nothing.
	CheckMode bool
	// Diff adds before/after text to the result.
	Diff bool
	// Rollback undoes an unfinished restore recorded in the journal and starts its units.
	Rollback bool
	// Force restores again from an archive the journal says was already restored.
	Force bool
	// AllowRunningUnits lets device preparation without an archive run while application
	// units are active; by default it refuses (see devicesOnlyGuard).
	AllowRunningUnits bool
	// EstateName is this server's estate; an archive of another estate is refused unless
	// SourceEstate names it. Empty: no estate check.
	EstateName string
	// SourceEstate is the estate the operator says the archive comes from (a replacement
	// host restoring the estate it replaces).
	SourceEstate string
	// SourceEstateHint tells the operator how to name the source estate in the words of
	// their interface ("{estate}" is replaced); empty: the module option.
	SourceEstateHint string
	Limits           archive.Limits
	Logger           *slog.Logger
	// Checkpoint, when set, is called at every named point between changes; an error it
	// returns fails the restore there. Tests use it to interrupt a restore exactly there.
	Checkpoint func(name string) error

	// Signature: with trusted keys, the archive's signature is checked before anything
	// else and an unsigned archive is refused unless AllowUnsigned.
	Signature archive.SignatureOptions
	// Decryption reads an encrypted (age) archive, decrypted in the passes that verify
	// and load it; an encrypted archive without it is refused before anything changes.
	Decryption *encrypt.Identities
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o.Target == nil {
		return errors.New("restore: no target: tell which installation to restore (deployment_type)")
	}
	if o.Rollback && o.ArchivePath != "" {
		return errors.New("restore: rollback undoes the unfinished restore in the journal: give it without an archive")
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.ArchivePath != "" && o.ChecksumFile == "" {
		o.ChecksumFile = o.ArchivePath + ".sha256"
	}
	if o.Target != nil && o.Target.Database() != nil {
		if err := ValidDatabaseName(o.Target.Database().Name()); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if len(o.Target.Database().Name()) > 63-len("_restore_")-8 {
			return fmt.Errorf("restore: database name %q is too long to add a restore suffix", o.Target.Database().Name())
		}
	}
	return nil
}

// ArchiveSummary describes the archive restored from.
type ArchiveSummary struct {
	Path             string    `json:"path"`
	SHA256           string    `json:"sha256"`
	Size             int64     `json:"size"`
	Version          string    `json:"version"`
	DeploymentType   string    `json:"deployment_type"`
	Timestamp        time.Time `json:"timestamp"`
	DatabaseIncluded bool      `json:"database_included"`
	// Estate is the estate the archive was made on (nil: not recorded).
	Estate *archive.Estate `json:"estate,omitempty"`
	// Signature says whether the archive's signature was checked, and whose it is.
	Signature *archive.SignatureReport `json:"signature,omitempty"`
	// ArchiveEncryption, for an encrypted archive, lists the recipients it was made for
	// (their public keys): the keys that can restore it.
	ArchiveEncryption *archive.ArchiveEncryption `json:"archive_encryption,omitempty"`
}

// DatabasePlan says what happens to the database.
type DatabasePlan struct {
	Name           string           `json:"name"`
	External       bool             `json:"external"`
	LiveExists     bool             `json:"live_exists"`
	LiveSize       int64            `json:"live_size"`
	DumpSize       int64            `json:"dump_size"`
	FreeSpace      int64            `json:"free_space,omitempty"`
	FreeSpaceKnown bool             `json:"free_space_known"`
	Owner          string           `json:"owner,omitempty"`
	CountsNow      map[string]int64 `json:"counts_now,omitempty"`
	CountsArchive  map[string]int64 `json:"counts_archive,omitempty"`
	// liveInfo is the live database's owner, grants and size, for the journal.
	liveInfo DatabaseInfo
}

// Plan is what a restore would do (check mode) or did.
type Plan struct {
	UnitsToStop  []string      `json:"units_to_stop"`
	UnitsMissing []string      `json:"units_missing"`
	Database     *DatabasePlan `json:"database,omitempty"`
	Files        []FileChanges `json:"files"`
	Volume       string        `json:"volume,omitempty"`
	// Objects are the components restored into objects (Kubernetes Secrets).
	Objects []string `json:"objects,omitempty"`
	// EstateChecks are what the estate's own preflight found (controllers that would
	// undo the quiesce and how they are handled, missing optional workloads).
	EstateChecks []string `json:"estate_checks,omitempty"`
	// Space is, for each place a fresh restore writes to before the swap, its free space
	// and what the archive puts there (the bounds the archive is held to: budget.go).
	Space []SpaceCheck `json:"space,omitempty"`
}

// SpaceCheck is one place a restore writes to before the swap.
type SpaceCheck struct {
	// What is written there: "the database dump", "the files staged beside the live ones".
	What string `json:"what"`
	// Where says whose free space it is.
	Where     string `json:"where"`
	FreeBytes int64  `json:"free_bytes"`
	// Bytes is what the archive's entries written there hold (the dump's SQL, the files).
	Bytes int64 `json:"bytes"`
}

// Diff is Ansible's before/after.
type Diff struct {
	Before string `json:"before"`
	After  string `json:"after"`
}

// Result is what a restore did.
type Result struct {
	Changed   bool   `json:"changed"`
	Message   string `json:"msg,omitempty"`
	RestoreID string `json:"restore_id,omitempty"`
	// AlreadyRestoredAt is set when nothing was done because the journal says this
	// archive was restored then.
	AlreadyRestoredAt time.Time `json:"already_restored_at,omitzero"`
	// Drift lists how the server no longer matches an earlier restore from this archive
	// (the reason it is restored again).
	Drift       []string        `json:"drift,omitempty"`
	Archive     *ArchiveSummary `json:"archive,omitempty"`
	Plan        *Plan           `json:"plan,omitempty"`
	Steps       []string        `json:"steps"`
	DevicePrep  any             `json:"device_preparation,omitempty"`
	OldDatabase string          `json:"old_database,omitempty"`
	RolledBack  bool            `json:"rolled_back,omitempty"`
	// PasswordSync says, per database user, whether its password was set to the
	// deployment's secret after the swap.
	PasswordSync map[string]string `json:"password_sync,omitempty"`
	// Relabeled are the paths given their SELinux labels (SELinux enabled only).
	Relabeled []string `json:"selinux_relabeled,omitempty"`
	// DatabaseLoad says over how many sessions the dump was loaded and where the database
	// part of device preparation ran.
	DatabaseLoad *DatabaseLoad `json:"database_load,omitempty"`
	Warnings     []string      `json:"warnings"`
	Duration     time.Duration `json:"-"`
	Diff         *Diff         `json:"diff,omitempty"`
}

func (r *Result) warn(logger *slog.Logger, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logger.Warn(msg)
	r.Warnings = append(r.Warnings, msg)
}

// run carries one restore's state.
type run struct {
	opts    Options
	logger  *slog.Logger
	target  Target
	store   *journalStore
	journal *Journal
	// journal0 is the journal as this run found it.
	journal0 *Journal
	report   *archive.Report
	verified bool // report comes from a full archive.Verify; else from quickCheck
	res      *Result
	files    []FileTarget    // targets present in the archive
	items    []ItemComponent // object components present in the archive
	hasDump  bool
	volume   bool // the archive has the PAM volume and the target has one
	// swapSession is the database swap's session, started before the units stop.
	swapSession PreparedSwap
	// staging is the awaiting-reconnect keys being staged before the units stop
	// (stageKeys), nil once prepareDevices took them.
	staging *keysStaging
	// dbSpace is the database server's free space, read once (budget.go).
	dbSpace *freeSpace
	// survey is the live database's, asked once (budget.go).
	survey *survey
	// produced is what finalize read the restore left on the server, for recordLiveState.
	produced    *LiveState
	producedErr error
	// loadSessionsAsked is the load's number of sessions, told by the load step's drop and
	// creation of the temporary database (recreateForLoad); 0 when not asked.
	loadSessionsAsked int
}

// Run restores (or, in check mode, plans) as opts say.
func Run(ctx context.Context, opts Options) (*Result, error) {
	start := time.Now()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &run{opts: opts, logger: logger, target: opts.Target, store: newJournalStore(journalFor(opts)),
		res: &Result{Steps: []string{}, Warnings: []string{}}}
	var err error
	switch {
	case opts.Rollback:
		err = r.rollbackOnly(ctx)
	case opts.ArchivePath == "":
		err = r.devicesOnly(ctx)
	default:
		err = r.restore(ctx)
	}
	r.res.Duration = time.Since(start)
	return r.res, err
}

// journalFor is where the journal of a restore with opts is kept.
func journalFor(opts Options) JournalStore {
	if opts.Journal != nil {
		return opts.Journal
	}
	if jk, ok := opts.Target.(JournalKeeper); ok {
		if s := jk.JournalStore(); s != nil {
			return s
		}
	}
	return NewFileJournal(opts.StateDir)
}

func (r *run) checkpoint(name string) error {
	if r.opts.Checkpoint != nil {
		if err := r.opts.Checkpoint(name); err != nil {
			return fmt.Errorf("at %s: %w", name, err)
		}
	}
	return nil
}

// lockJournal takes the journal's lock (two restores never run at once on one journal)
// and reads the journal under it; unlock releases the lock.
func (r *run) lockJournal(ctx context.Context) (j *Journal, unlock func(), err error) {
	unlock, err = r.store.store.Lock(ctx, r.opts.CheckMode)
	if err != nil {
		return nil, nil, err
	}
	if j, err = r.store.load(); err != nil {
		unlock()
		return nil, nil, err
	}
	return j, unlock, nil
}

// devicesOnly runs device preparation alone.
func (r *run) devicesOnly(ctx context.Context) error {
	dev := r.target.Devices()
	if dev == nil {
		return errors.New("device preparation: this target has no database and KV connection configured")
	}
	if err := dev.Check(ctx); err != nil {
		return wrap.Prefix("device preparation", err)
	}
	running, err := r.devicesOnlyGuard(ctx, dev)
	if err != nil {
		return err
	}
	counts, changed, err := dev.Prepare(ctx, DevicePrepRequest{FlushKV: r.opts.FlushKV, DryRun: r.opts.CheckMode,
		Connections: r.opts.LoadConnections, ServerRunning: running})
	if err != nil {
		return wrap.Prefix("device preparation", err)
	}
	r.res.DevicePrep = counts
	r.res.Steps = append(r.res.Steps, StepDevicePrep)
	r.res.Changed = changed
	if !r.opts.CheckMode {
		r.res.Message = devicesOnlyDone(counts)
	}
	return nil
}

// restore verifies, plans and applies.
func (r *run) restore(ctx context.Context) error {
	j, unlock, err := r.lockJournal(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	sig, err := r.checkSignature()
	if err != nil {
		return err
	}
	fresh := j == nil || j.State != StateRunning
	// A fresh restore of one of our archives checks the checksum and reads metadata.json
	// from the archive's tail now, and the rest (structure, manifest) during the load into
	// the temporary database, before anything is stopped. Anything else is verified in
	// full first.
	var report *archive.Report
	quick := !r.opts.CheckMode && !r.opts.Diff && fresh
	var sum checksum
	if fresh {
		// What the archive may inflate to, from the free space where it goes, before it
		// is read (budget.go); found while the checksum is computed, which reads every
		// byte but keeps none. A resumed restore has already been held to it, and what it
		// loaded and staged since takes some of that space.
		var budgets []archive.Budget
		hash := func() {}
		if quick {
			limits := r.opts.Limits
			hash = func() { sum = r.archiveChecksum(ctx, limits) }
		}
		runner.Concurrently(func() { budgets = r.budgets(ctx) }, hash)
		r.opts.Limits.Budgets = budgets
	}
	if quick {
		report, err = r.quickCheck(ctx, sum)
		if errors.Is(err, archive.ErrNoQuickMetadata) {
			quick = false
		} else if err != nil {
			return err
		}
	}
	if !quick {
		r.logger.Info("verifying archive", "archive", r.opts.ArchivePath)
		report, err = archive.Verify(ctx, r.opts.ArchivePath, archive.VerifyOptions{
			ChecksumFile: r.opts.ChecksumFile, RequireChecksum: true, Limits: r.opts.Limits, CheckDump: true, Decryption: r.opts.Decryption})
		if err != nil {
			return wrap.Prefix("archive integrity check failed", err)
		}
	}
	r.report = report
	r.verified = !quick
	md := report.Metadata
	r.res.Archive = &ArchiveSummary{Path: r.opts.ArchivePath, SHA256: report.SHA256, Size: report.Size,
		Version: md.Version, DeploymentType: md.DeploymentType, Timestamp: md.Timestamp, DatabaseIncluded: md.DatabaseIncluded, Estate: md.Estate, Signature: sig, ArchiveEncryption: md.ArchiveEncryption}
	msg := "archive verified"
	if quick {
		msg = "archive checksum verified, metadata read"
	}
	r.logger.Info(msg, "version", md.Version, "deploymentType", md.DeploymentType,
		"databaseIncluded", md.DatabaseIncluded, "timestamp", md.Timestamp)

	resume := false
	if j != nil && j.State == StateRunning {
		if j.ArchiveSHA256 != report.SHA256 {
			return fmt.Errorf("an unfinished restore (id %s) from archive %s (sha256 %s), started %s, is recorded in %s: run the restore again with that archive to finish it, or with rollback to undo it, before restoring another archive",
				j.ID, j.ArchivePath, j.ArchiveSHA256, j.Started.Format(time.RFC3339), r.store.path)
		}
		resume = true
	}
	if !resume {
		if err := r.checkEstate(); err != nil {
			return err
		}
	}
	if j != nil && j.State == StateDone && j.ArchiveSHA256 == report.SHA256 && !r.opts.Force {
		// Whether to restore again follows the live state, not the journal's history: a
		// server that still holds what this restore produced is left alone; one that lost
		// its database, files or KV keys since is restored again.
		drift, err := r.liveDrift(ctx, j)
		if err != nil {
			return err
		}
		if len(drift) == 0 {
			r.res.RestoreID = j.ID
			r.res.AlreadyRestoredAt = j.Updated
			still := "its database, files and KV keys are still the ones that restore put in place"
			if j.Produced == nil {
				still = "by a version that did not record what it put in place"
			}
			r.res.Message = fmt.Sprintf("Nothing done: this server was already restored from this archive at %s (restore %s), and %s. Set force: true (--force on the command line) to restore it again.",
				humanTime(j.Updated), j.ID, still)
			return nil
		}
		r.res.Drift = drift
		r.res.warn(r.logger, "this server no longer holds what the restore from this archive at %s (restore %s) put in place: %s; it is restored again",
			humanTime(j.Updated), j.ID, strings.Join(drift, "; "))
	}

	r.journal0 = j
	if err := r.checkCompatibility(ctx, resume); err != nil {
		return err
	}
	if err := r.selectComponents(); err != nil {
		return err
	}
	if resume {
		r.journal = j
		r.res.RestoreID = j.ID
		r.logger.Info("resuming an interrupted restore", "id", j.ID, "done", j.Done)
		if r.opts.CheckMode {
			r.res.Changed = true
			r.res.Message = fmt.Sprintf("Check mode, nothing changed. An interrupted restore from this archive (restore %s, started %s) would be finished; steps done so far: %s.",
				j.ID, humanTime(j.Started), stepList(j.Done))
			return nil
		}
		return r.applyAndRecord(ctx)
	}

	plan, err := r.preflight(ctx)
	if err != nil {
		return err
	}
	r.res.Plan = plan
	if r.opts.Diff {
		r.res.Diff = planDiff(plan)
	}
	if r.opts.CheckMode {
		r.res.Changed = true
		r.res.Message = "Check mode, nothing changed. A restore would " + plan.Summary() + "."
		return nil
	}
	if err := r.newJournal(ctx, plan); err != nil {
		return err
	}
	return r.applyAndRecord(ctx)
}

// checksum is the archive's sha256 as archiveChecksum found it (checked against the
// checksum file).
type checksum struct {
	sum  string
	size int64
	err  error
}

func (r *run) archiveChecksum(ctx context.Context, limits archive.Limits) checksum {
	r.logger.Info("checking the archive's checksum", "archive", r.opts.ArchivePath)
	sum, size, err := archive.ChecksumOK(ctx, r.opts.ArchivePath, archive.VerifyOptions{
		ChecksumFile: r.opts.ChecksumFile, RequireChecksum: true, Limits: limits})
	return checksum{sum: sum, size: size, err: err}
}

// quickCheck takes the archive's checksum, once checked, and reads metadata.json from its
// tail. The report's entries are the manifest's; the archive's structure and content are
// checked later, by the load pass. archive.ErrNoQuickMetadata: verify the archive in full
// instead.
func (r *run) quickCheck(ctx context.Context, c checksum) (*archive.Report, error) {
	sum, size, err := c.sum, c.size, c.err
	if err != nil {
		return nil, wrap.Prefix("archive integrity check failed", err)
	}
	md, err := archive.ReadMetadataWith(ctx, r.opts.ArchivePath, r.opts.Decryption)
	if errors.Is(err, archive.ErrNoQuickMetadata) {
		return nil, err
	}
	if err != nil {
		return nil, wrap.Prefix("archive integrity check failed", err)
	}
	if md.FormatVersion < 1 || len(md.Manifest) == 0 {
		return nil, archive.ErrNoQuickMetadata
	}
	// The rules verify applies to the metadata apply now, before the plan is made from it.
	if err := archive.CheckMetadata(md, r.opts.Limits); err != nil {
		return nil, err
	}
	entries := make([]archive.Entry, 0, len(md.Manifest))
	for _, m := range md.Manifest {
		entries = append(entries, archive.Entry{Path: m.Path, Type: m.Type, Size: m.Size, Mode: m.Mode, SHA256: m.SHA256})
	}
	return &archive.Report{Path: r.opts.ArchivePath, SHA256: sum, Size: size, ChecksumVerified: true,
		Metadata: *md, HasManifest: true, Entries: entries}, nil
}

// checkCompatibility refuses a deployment-type or version mismatch. A resumed restore
// passed the version check when it started; the stopped server may no longer be able to
// tell its version (quadlet removes a stopped unit's container).
func (r *run) checkCompatibility(ctx context.Context, resume bool) error {
	md := r.report.Metadata
	current := r.target.DeploymentType()
	if md.DeploymentType != current {
		return fmt.Errorf("deployment type mismatch: archive was created on a %q deployment but the current environment is %q; cross-deployment restore is not supported",
			md.DeploymentType, current)
	}
	if resume {
		r.res.warn(r.logger, "version check skipped: this run finishes the interrupted restore %s, which passed the check when it started (the stopped server may no longer be able to tell its version)", r.journal0.ID)
		return nil
	}
	running := r.opts.ServerVersion
	if running == "" {
		v, err := r.target.ServerVersion(ctx)
		if err != nil {
			if !r.opts.AllowVersionMismatch {
				return fmt.Errorf("cannot find the running server's version to compare with the archive's %q: %w; give server_version, or allow_version_mismatch to restore anyway", md.Version, err)
			}
			r.res.warn(r.logger, "the running server's version is unknown (%v); restoring an archive of version %q anyway because allow_version_mismatch is set", err, md.Version)
			return nil
		}
		running = v
	}
	if md.Version != running {
		if !r.opts.AllowVersionMismatch {
			return fmt.Errorf("version mismatch: the archive was made by server version %q but this server runs %q; only same-version restore is supported: install version %q first, or set allow_version_mismatch if you know the schemas match",
				md.Version, running, md.Version)
		}
		r.res.warn(r.logger, "version mismatch: archive %q, server %q; restoring anyway because allow_version_mismatch is set", md.Version, running)
	}
	return nil
}

// selectComponents decides what the archive restores on this target.
func (r *run) selectComponents() error {
	entries := map[string]archive.Entry{}
	for _, e := range r.report.Entries {
		entries[e.Path] = e
	}
	_, r.hasDump = entries[archive.DatabaseDump]
	if r.hasDump && r.target.Database() == nil {
		r.res.warn(r.logger, "the archive holds a database dump but this server's database is external: the dump is not loaded; restore it with your database tools")
		r.hasDump = false
	}
	for _, t := range r.target.Files() {
		e, ok := entries[t.Entry]
		if ok && ((t.Kind == KindDir) != (e.Type == archive.TypeDir)) {
			return fmt.Errorf("archive entry %s is a %s but a %s is expected: this archive cannot be restored here", t.Entry, e.Type, t.Kind)
		}
		if !ok {
			if t.Required {
				return fmt.Errorf("%s missing from archive: %s not found; this archive cannot restore %s", t.Name, t.Entry, t.Path)
			}
			r.res.warn(r.logger, "no %s in the archive (%s): %s is left as it is", t.Name, t.Entry, t.Path)
			continue
		}
		r.files = append(r.files, t)
	}
	if err := r.selectItems(entries); err != nil {
		return err
	}
	if v := r.target.Volume(); v != nil {
		if _, ok := entries[volumeEntry]; ok {
			r.volume = true
		} else {
			r.res.warn(r.logger, "PAM issuer volume archive not found in backup: volume %s is left as it is", v.VolumeName())
		}
	}
	return nil
}

const volumeEntry = "volumes/pam-issuer-etc.tar"

// preflight checks everything a restore needs before anything is touched, and computes
// the plan. A failure here changes nothing and stops nothing.
func (r *run) preflight(ctx context.Context) (*Plan, error) {
	plan := &Plan{UnitsToStop: []string{}, UnitsMissing: []string{}, Files: []FileChanges{}}
	plan.Space = spaceChecks(r.opts.Limits.Budgets, r.report)
	if err := r.estatePreflight(ctx, plan); err != nil {
		return nil, err
	}
	if len(r.items) > 0 {
		plan.Objects = itemPlan(r.items)
	}
	units := r.target.Units()
	for _, u := range r.target.UnitNames() {
		st, err := units.UnitState(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("check unit %s: %w", u, err)
		}
		switch {
		case !st.Exists:
			plan.UnitsMissing = append(plan.UnitsMissing, u)
		case st.Active:
			plan.UnitsToStop = append(plan.UnitsToStop, u)
		}
	}
	if len(plan.UnitsMissing) == len(r.target.UnitNames()) && len(plan.UnitsMissing) > 0 {
		// A typo in units, or the wrong host: restoring would replace the database and
		// files under a server whose units were never stopped.
		return nil, fmt.Errorf("none of the units to stop exists on this host (%s): nothing was touched; check the unit names in units (role variable flightctl_dr_app_units) for a typo (systemctl list-units 'flightctl-*' shows the real ones), or that this is the Flight Control server",
			strings.Join(plan.UnitsMissing, ", "))
	}

	db := r.target.Database()
	if db == nil {
		plan.Database = &DatabasePlan{External: true}
		r.res.warn(r.logger, "No database dump found in archive — external database detected. To restore the database, import the dump manually using your database backup tools and then re-run the restore command.")
	} else if r.hasDump {
		dp, err := r.databasePreflight(ctx, db)
		if err != nil {
			return nil, err
		}
		plan.Database = dp
	} else {
		plan.Database = &DatabasePlan{Name: db.Name(), External: true}
		r.res.warn(r.logger, "No database dump found in archive — external database detected. To restore the database, import the dump manually using your database backup tools and then re-run the restore command.")
	}
	if dev := r.target.Devices(); dev != nil && (!r.hasDump || plan.Database.LiveExists) {
		if err := dev.Check(ctx); err != nil {
			return nil, fmt.Errorf("device preparation would fail: %w", err)
		}
	}
	if r.volume {
		plan.Volume = r.target.Volume().VolumeName()
	}

	// The archive's side of the plan: counts in the dump and file hashes, in one pass.
	// Only check and diff mode need it; a real run counts while loading.
	if r.opts.CheckMode || r.opts.Diff {
		if err := r.scanArchive(ctx, plan); err != nil {
			return nil, err
		}
	}
	return plan, nil
}

func (r *run) databasePreflight(ctx context.Context, db Database) (*DatabasePlan, error) {
	dp := &DatabasePlan{Name: db.Name()}
	for _, e := range r.report.Entries {
		if e.Path == archive.DatabaseDump {
			dp.DumpSize = e.Size
		}
	}
	// One psql (one podman or kubectl exec with container access), already asked beside
	// the archive's checksum for the data directory (budget.go).
	sv, err := r.surveyDatabase(ctx, db)
	if err != nil {
		return nil, err
	}
	dp.LiveExists = sv.Exists
	if sv.Exists {
		dp.CountsNow = sv.Counts
		dp.LiveSize, dp.Owner, dp.liveInfo = sv.Info.Size, sv.Info.Owner, sv.Info
	} else {
		r.res.warn(r.logger, "database %s does not exist yet: the restore creates it", db.Name())
	}
	free, known, err := r.databaseFreeSpace(ctx, db)
	if err != nil {
		r.res.warn(r.logger, "cannot tell the free space of the database server (%v): make sure it can hold a second copy of the database; the dump was bounded only by max_total_size (%d bytes)", err, r.ceiling())
	}
	dp.FreeSpace, dp.FreeSpaceKnown = free, known
	need := dp.LiveSize
	if dp.DumpSize > need {
		need = dp.DumpSize
	}
	if known && free < need {
		return nil, fmt.Errorf("not enough free space for a second copy of the database: %d bytes free in the data directory, about %d needed (the restored copy sits beside the live one until the swap): free some space first",
			free, need)
	}
	if !known && err == nil {
		r.res.warn(r.logger, "the free space of the database server's data directory cannot be read from here: make sure it can hold a second copy of the database (about %d bytes); the dump was bounded only by max_total_size (%d bytes)", need, r.ceiling())
	}
	return dp, nil
}

// scanArchive fills the archive's side of the plan.
func (r *run) scanArchive(ctx context.Context, plan *Plan) error {
	counter := newCopyCounter(CountedTables)
	after := make([]map[string]FileState, len(r.files))
	for i := range after {
		after[i] = map[string]FileState{}
	}
	err := streamArchive(ctx, r.opts.ArchivePath, r.report.SHA256, r.opts.Limits, r.opts.Decryption, func(hdr *tar.Header, name string, rd io.Reader) error {
		if name == archive.DatabaseDump && r.hasDump {
			return planDump(rd, counter.Counts, r.report.Metadata, r.res, r.logger)
		}
		i, rel, ok := entryOf(r.files, name)
		if !ok || (rel == "" && r.files[i].Kind == KindDir) {
			return nil
		}
		st := FileState{Mode: fmt.Sprintf("%04o", hdr.Mode&0o777), Dir: hdr.Typeflag == tar.TypeDir}
		if !st.Dir {
			rh, h := hashingReader(rd)
			if _, err := io.Copy(io.Discard, rh); err != nil {
				return err
			}
			st.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
		after[i][rel] = st
		return nil
	})
	if err != nil {
		return fmt.Errorf("read archive for the plan: %w", err)
	}
	if r.hasDump && plan.Database != nil {
		plan.Database.CountsArchive = counter.Counts
	}
	for i, t := range r.files {
		before, err := liveTree(t)
		if err != nil {
			return fmt.Errorf("read %s: %w", t.Path, err)
		}
		c := FileChanges{Name: t.Name, Path: t.Path, InArchive: true, before: before, after: after[i]}
		compareTrees(&c)
		plan.Files = append(plan.Files, c)
	}
	return nil
}

func newID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newJournal records everything a later run needs to finish or undo this restore.
func (r *run) newJournal(ctx context.Context, plan *Plan) error {
	id := newID()
	j := &Journal{FormatVersion: 1, ID: id, ArchivePath: r.opts.ArchivePath, ArchiveSHA256: r.report.SHA256,
		DeploymentType: r.target.DeploymentType(), State: StateRunning, Started: time.Now().UTC(), Done: []string{}}
	if db := r.target.Database(); db != nil && r.hasDump {
		jd := &JournalDatabase{Live: db.Name(), Temp: db.Name() + "_restore_" + id, Old: db.Name() + "_old_" + id,
			LiveExisted: plan.Database.LiveExists}
		if jd.LiveExisted {
			jd.Info = plan.Database.liveInfo // read by the preflight just before
		} else {
			// This host lost the database: it is created with the owner and grants the
			// backup recorded.
			jd.Info = recordedInfo(r.report.Metadata)
		}
		j.Database = jd
	}
	for _, t := range r.files {
		had, err := exists(t.Path)
		if err != nil {
			return fmt.Errorf("check %s: %w", t.Path, err)
		}
		j.Files = append(j.Files, JournalFileSet{Name: t.Name, Live: t.Path, Staged: stagedPath(t.Path, id), Old: oldPath(t.Path, id), HadLive: had})
	}
	if r.volume {
		j.Volume = &JournalVolume{Name: r.target.Volume().VolumeName()}
	}
	if len(r.items) > 0 {
		j.Items = &JournalItems{Components: itemComponentNames(r.items)}
	}
	r.journal = j
	r.res.RestoreID = id
	if err := r.store.save(j); err != nil {
		return err
	}
	r.logger.Info("restore journal created", "id", id, "journal", r.store.path)
	return nil
}
