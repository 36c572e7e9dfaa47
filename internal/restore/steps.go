package restore

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/wrap"
)

// cleanupTimeout bounds rollback and unit start after a failure or a signal: they run on
// a fresh context because the restore's own may be cancelled.
const cleanupTimeout = 5 * time.Minute

// apply runs the steps the journal does not mark done. A failure before the units are
// started again rolls everything back and starts the units that were stopped.
func (r *run) apply(ctx context.Context) error {
	j := r.journal
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		// The dump loads into a temporary database while the server still runs: a bad dump
		// fails before anything is stopped, and the server is down only for the swap.
		{StepLoadDatabase, r.loadAndStage},
		// The database users are the server's, not the dump's: their passwords are set
		// before the stop, outside the downtime (see syncPasswords).
		{StepSyncPasswords, r.syncPasswords},
		{StepStopUnits, r.stopUnits},
		{StepSwapDatabase, r.swapDatabase},
		{StepSwapFiles, r.swapFiles},
		{StepVolume, r.replaceVolume},
		{StepRelabel, r.relabelFiles},
		{StepDevicePrep, r.prepareDevices},
	}
	defer func() {
		if r.swapSession != nil {
			r.swapSession.Close()
			r.swapSession = nil
		}
		r.discardStagedKeys()
	}()
	for _, s := range steps {
		if j.isDone(s.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return r.fail(s.name, err)
		}
		r.logger.Info("restore step", "step", s.name)
		if s.name == StepSyncPasswords {
			r.prepareSwap(ctx) // starts while the passwords are set
			r.stageKeys(ctx)   // the same
		}
		if err := s.fn(ctx); err != nil {
			return r.fail(s.name, err)
		}
		if err := r.checkpoint(s.name); err != nil {
			return r.fail(s.name, err)
		}
	}
	r.res.Changed = true

	// The restored state is in place from here on: a failure to start a unit is reported,
	// not undone, and the next run tries again. A signal no longer stops anything: the
	// units must come back.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if !j.isDone(StepStartUnits) {
		if err := r.startUnits(ctx); err != nil {
			return fmt.Errorf("the restore is complete but units failed to start: %w; start them by hand (%s) or run the restore again to retry",
				err, r.manualStart(j))
		}
		if err := r.checkpoint(StepStartUnits); err != nil {
			return err
		}
	}
	if err := r.finalize(ctx); err != nil {
		return err
	}
	r.res.Message = r.doneSummary()
	return nil
}

// done marks a step done in the journal and the result.
func (r *run) done(step string) error {
	r.journal.markDone(step)
	r.res.Steps = append(r.res.Steps, step)
	return r.store.save(r.journal)
}

// prepareSwap starts the swap's psql (its podman exec) ahead of the stop, where the swap
// is still to come: it waits for its statements, and in the downtime the swap only sends
// them.
func (r *run) prepareSwap(ctx context.Context) {
	j := r.journal
	if j.Database != nil && !j.isDone(StepSwapDatabase) && r.swapSession == nil {
		r.swapSession = r.target.Database().PrepareSwap(ctx)
	}
}

// keysStaging is stageKeys at work.
type keysStaging struct {
	done chan struct{}
	keys *devprep.StagedKeys
}

// stageKeys starts writing the awaiting-reconnect keys of the prepared temporary database
// into a spare database of the KV store, when the estate can (KeyStager): the KV part of
// device preparation in the downtime then swaps them in instead of writing them.
func (r *run) stageKeys(ctx context.Context) {
	j := r.journal
	if r.staging != nil || !r.opts.FlushKV || j.DevicesPrepared == nil || j.DevicesPrepared.After == nil || j.isDone(StepDevicePrep) {
		return
	}
	st, ok := r.target.Devices().(KeyStager)
	if !ok {
		return
	}
	k := &keysStaging{done: make(chan struct{})}
	r.staging = k
	go func() {
		defer close(k.done)
		k.keys = st.StageKeys(ctx, DevicePrepRequest{RestoreID: j.ID, FlushKV: true, DatabasePrepared: j.DevicesPrepared})
	}()
}

// takeStagedKeys waits for stageKeys and gives its keys (nil without), once.
func (r *run) takeStagedKeys() *devprep.StagedKeys {
	if r.staging == nil {
		return nil
	}
	<-r.staging.done
	keys := r.staging.keys
	r.staging = nil
	return keys
}

// discardStagedKeys empties the spare database when no device preparation took the keys.
func (r *run) discardStagedKeys() {
	staged := r.takeStagedKeys()
	if staged == nil {
		return
	}
	if st, ok := r.target.Devices().(KeyStager); ok {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		st.DiscardStagedKeys(ctx, staged)
	}
}

func (r *run) stopUnits(ctx context.Context) error {
	j := r.journal
	r.prepareSwap(ctx)
	if r.staging != nil {
		<-r.staging.done // staged before the stop, not waited for inside the downtime
	}
	if !j.UnitsRecorded {
		// Record what is active before stopping anything, so that whatever happens next
		// exactly these are started again.
		active := []string{}
		units := r.target.Units()
		for _, u := range r.target.UnitNames() {
			st, err := units.UnitState(ctx, u)
			if err != nil {
				return fmt.Errorf("check unit %s: %w", u, err)
			}
			if st.Exists && st.Active {
				active = append(active, u)
				if st.Scale > 0 {
					if j.Scales == nil {
						j.Scales = map[string]int32{}
					}
					j.Scales[u] = st.Scale
				}
			}
		}
		j.ActiveUnits, j.UnitsRecorded = active, true
		if err := r.store.save(j); err != nil {
			return err
		}
		if err := r.checkpoint("stop_units:recorded"); err != nil {
			return err
		}
	}
	if len(j.ActiveUnits) > 0 {
		r.logger.Info("stopping units", "units", j.ActiveUnits)
		if err := r.target.Units().StopUnits(ctx, j.ActiveUnits); err != nil {
			return wrap.Prefix("stop units", err)
		}
	}
	return r.done(StepStopUnits)
}

// loadAndStage reads the archive once: the dump goes into the temporary database, the
// files into staged copies beside the live ones, the PAM volume into the state directory.
func (r *run) loadAndStage(ctx context.Context) error {
	j := r.journal
	needLoad := j.Database != nil && !j.isDone(StepLoadDatabase) && !j.isDone(StepSwapDatabase)
	needStage := len(j.Files) > 0 && !j.isDone(StepStageFiles)
	needVolume := j.Volume != nil && !j.isDone(StepStageFiles)
	needItems := j.Items != nil && !j.isDone(StepStageFiles)
	if !needLoad && !needStage && !needVolume && !needItems {
		if err := r.verifyNow(ctx); err != nil {
			return err
		}
		return r.done(StepLoadDatabase)
	}
	db := r.target.Database()
	if needLoad {
		// A temporary database left by a dead run may be half-loaded: start it afresh.
		if err := r.recreateForLoad(ctx, db, j.Database.Temp, j.Database.Info); err != nil {
			return err
		}
		if err := r.checkpoint("load_database:created"); err != nil {
			return err
		}
	}
	var st *stager
	if needStage {
		st = newStager(r.files, j.Files)
		if err := st.prepare(); err != nil {
			return err
		}
	}
	var items *itemBuffer
	if needItems {
		items = newItemBuffer(r.items)
	}
	var volFile *os.File
	if needVolume {
		f, err := os.OpenFile(r.volumeStagePath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("stage the PAM volume: %w", err)
		}
		volFile = f
		defer f.Close()
	}
	counter := newCopyCounter(CountedTables)
	loaded := false
	load := func(hdr *tar.Header, name string, rd io.Reader) error {
		switch {
		case name == archive.DatabaseDump && needLoad:
			r.logger.Info("loading the dump into the temporary database", "database", j.Database.Temp)
			loaded = true
			return r.loadDump(ctx, db, j.Database.Temp, rd, counter.Counts)
		case name == volumeEntry && needVolume:
			if _, err := io.Copy(volFile, rd); err != nil {
				return fmt.Errorf("stage the PAM volume: %w", err)
			}
			return volFile.Sync()
		case items != nil && items.wants(name) && hdr.Typeflag == tar.TypeReg:
			return items.add(name, rd)
		case st != nil:
			return st.entry(hdr, name, rd)
		}
		return nil
	}
	var err error
	if r.verified {
		err = streamArchive(ctx, r.opts.ArchivePath, j.ArchiveSHA256, r.opts.Limits, r.opts.Decryption, load)
	} else {
		// This pass is also the archive's verification: any failure drops what it loaded
		// and staged (rollback), and nothing has been stopped yet.
		r.logger.Info("verifying the archive while loading it", "archive", r.opts.ArchivePath)
		var rep *archive.Report
		rep, err = archive.VerifyWalk(ctx, r.opts.ArchivePath, archive.VerifyOptions{
			ChecksumFile: r.opts.ChecksumFile, RequireChecksum: true, Limits: r.opts.Limits,
			Manifest: r.report.Metadata.Manifest, CheckDump: !needLoad, Decryption: r.opts.Decryption}, load)
		if err == nil {
			err = r.acceptReport(rep)
		}
	}
	if err != nil {
		return err
	}
	if needLoad && !loaded {
		return fmt.Errorf("%s not found in the archive on the second read: %w", archive.DatabaseDump, errArchiveChanged)
	}
	if err := r.checkpoint("load_database:loaded"); err != nil {
		return err
	}
	if st != nil {
		if err := st.finish(); err != nil {
			return err
		}
		for i, t := range r.files {
			r.logger.Info("staged", "component", t.Name, "files", st.counts[i], "path", j.Files[i].Staged)
		}
	}
	if needLoad {
		r.logger.Info("dump loaded", "database", j.Database.Temp, "rows", counter.Counts)
		if r.res.Plan != nil && r.res.Plan.Database != nil {
			r.res.Plan.Database.CountsArchive = counter.Counts
		}
	}
	if items != nil {
		if err := r.stageItems(ctx, items); err != nil {
			return err
		}
	}
	r.journal.markDone(StepStageFiles)
	return r.done(StepLoadDatabase)
}

// verifyNow verifies the archive in full when nothing has yet.
func (r *run) verifyNow(ctx context.Context) error {
	if r.verified {
		return nil
	}
	r.logger.Info("verifying archive", "archive", r.opts.ArchivePath)
	rep, err := archive.Verify(ctx, r.opts.ArchivePath, archive.VerifyOptions{
		ChecksumFile: r.opts.ChecksumFile, RequireChecksum: true, Limits: r.opts.Limits, CheckDump: true, Decryption: r.opts.Decryption})
	if err != nil {
		return wrap.Prefix("archive integrity check failed", err)
	}
	return r.acceptReport(rep)
}

// acceptReport takes the full verification's report in place of the quick check's,
// which it must agree with: the plan was made from the quick one.
func (r *run) acceptReport(rep *archive.Report) error {
	if rep.SHA256 != r.report.SHA256 || !reflect.DeepEqual(rep.Metadata, r.report.Metadata) {
		return errArchiveChanged
	}
	r.report, r.verified = rep, true
	r.logger.Info("archive verified", "sha256", rep.SHA256)
	return nil
}

func (r *run) volumeStagePath() string {
	return filepath.Join(r.opts.StateDir, "pam-volume-restore-"+r.journal.ID+".tar")
}

func (r *run) volumeSavePath() string {
	return filepath.Join(r.opts.StateDir, "pam-volume-before-"+r.journal.ID+".tar")
}

// swapDatabase renames the live database aside and the restored one into its place and
// gives it the live database's owner and grants, in the database's one swap session: it
// looks at which databases exist, so it resumes after an interrupt, and the renames, owner
// and grants commit together, so the named points after them are passed only once both
// renames are in place (a kill there resumes as after the swap).
func (r *run) swapDatabase(ctx context.Context) error {
	jd := r.journal.Database
	if jd == nil {
		return r.done(StepSwapDatabase)
	}
	r.logger.Info("swapping the databases", "live", jd.Live, "restored", jd.Temp, "aside", jd.Old)
	out, err := r.target.Database().SwapDatabases(ctx, SwapRequest{Live: jd.Live, Temp: jd.Temp, Old: jd.Old, LiveExisted: jd.LiveExisted, Info: jd.Info}, r.swapSession)
	r.swapSession = nil
	if err != nil {
		return err
	}
	if len(out.Sessions) > 0 {
		r.logger.Info("sessions ended before the rename", "sessions", strings.Join(out.Sessions, ", "))
	}
	if out.LiveRenamed {
		if err := r.checkpoint("swap_database:live_renamed"); err != nil {
			return err
		}
	}
	if out.TempRenamed {
		if err := r.checkpoint("swap_database:temp_renamed"); err != nil {
			return err
		}
	}
	r.logger.Info("databases swapped", "live_renamed", out.LiveRenamed, "restored_renamed", out.TempRenamed)
	return r.done(StepSwapDatabase)
}

func (r *run) swapFiles(ctx context.Context) error {
	for _, set := range r.journal.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := swapFileSet(set); err != nil {
			return err
		}
		r.logger.Info("replaced", "component", set.Name, "path", set.Live)
		if err := r.checkpoint("swap_files:" + set.Name); err != nil {
			return err
		}
	}
	if err := r.applyItems(ctx); err != nil {
		return err
	}
	return r.done(StepSwapFiles)
}

// replaceVolume saves the volume's content, then replaces it with the archive's.
func (r *run) replaceVolume(ctx context.Context) error {
	jv := r.journal.Volume
	if jv == nil {
		return r.done(StepVolume)
	}
	vol := r.target.Volume()
	if jv.Saved == "" {
		existed, err := vol.VolumeExists(ctx)
		if err != nil {
			return fmt.Errorf("PAM volume: %w", err)
		}
		if existed {
			if err := exportTo(ctx, vol, r.volumeSavePath()); err != nil {
				return err
			}
			jv.Saved = r.volumeSavePath()
		}
		jv.Existed = existed
		if jv.Saved == "" {
			jv.Saved = "-" // nothing to save: the volume did not exist
		}
		if err := r.store.save(r.journal); err != nil {
			return err
		}
		if err := r.checkpoint("pam_volume:saved"); err != nil {
			return err
		}
	}
	f, err := os.Open(r.volumeStagePath())
	if err != nil {
		return fmt.Errorf("PAM volume: %w", err)
	}
	defer f.Close()
	if err := vol.ReplaceVolume(ctx, f); err != nil {
		return fmt.Errorf("re-import PAM volume %s: %w", jv.Name, err)
	}
	r.logger.Info("PAM Issuer volume restored", "volume", jv.Name)
	return r.done(StepVolume)
}

func exportTo(ctx context.Context, vol VolumeManager, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("save PAM volume %s: %w", vol.VolumeName(), err)
	}
	if err := vol.ExportVolume(ctx, f); err != nil {
		f.Close()
		return fmt.Errorf("save PAM volume %s before replacing it: %w", vol.VolumeName(), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (r *run) prepareDevices(ctx context.Context) error {
	dev := r.target.Devices()
	if dev == nil {
		r.res.warn(r.logger, "device preparation skipped: no database and KV connection configured")
		return r.done(StepDevicePrep)
	}
	if r.opts.FlushKV && !r.journal.KVMayBeFlushed {
		r.journal.KVMayBeFlushed = true
		if err := r.store.save(r.journal); err != nil {
			return err
		}
	}
	req := DevicePrepRequest{RestoreID: r.journal.ID, FlushKV: r.opts.FlushKV, Connections: r.opts.LoadConnections}
	if f, ok := dev.(PreparedDatabaseFinisher); ok && f.FinishesPreparedDatabase() && r.journal.DevicesPrepared != nil {
		req.DatabasePrepared = r.journal.DevicesPrepared
	}
	if req.DatabasePrepared != nil {
		req.StagedKeys = r.takeStagedKeys()
		r.loadReport().DevicePrep = DevicePrepTemporaryDatabase
	} else {
		r.loadReport().DevicePrep = DevicePrepInDowntime
	}
	counts, _, err := dev.Prepare(ctx, req)
	if err != nil {
		return wrap.Prefix("device preparation", err)
	}
	r.res.DevicePrep = counts
	return r.done(StepDevicePrep)
}

func (r *run) startUnits(ctx context.Context) error {
	j := r.journal
	if len(j.ActiveUnits) > 0 {
		r.logger.Info("starting units", "units", j.ActiveUnits)
		if err := r.startRecorded(ctx, j); err != nil {
			return err
		}
	}
	return r.done(StepStartUnits)
}

// finalize drops what was kept for a rollback and marks the journal done. What the
// restore left on the server is read beside the drop (each is a psql of its own, a
// podman or kubectl exec with container access); recordLiveState stores it.
func (r *run) finalize(ctx context.Context) error {
	j := r.journal
	dropOld := func() {
		if jd := j.Database; jd != nil && jd.LiveExisted {
			if r.opts.KeepOldDB {
				r.res.OldDatabase = jd.Old
			} else if err := r.target.Database().Drop(ctx, jd.Old); err != nil {
				r.res.warn(r.logger, "could not drop the previous database %s (%v): drop it by hand when you no longer need it", jd.Old, err)
				r.res.OldDatabase = jd.Old
			}
		}
	}
	runner.Concurrently(dropOld, func() { r.produced, r.producedErr = r.liveState(ctx, j) })
	for _, set := range j.Files {
		if err := os.RemoveAll(set.Old); err != nil {
			r.res.warn(r.logger, "could not remove the previous copy %s: %v", set.Old, err)
		}
	}
	for _, p := range []string{r.volumeStagePath(), r.volumeSavePath()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.res.warn(r.logger, "could not remove %s: %v", p, err)
		}
	}
	j.State = StateDone
	j.Warnings = append(j.Warnings, r.res.Warnings...)
	if err := r.done(StepFinalize); err != nil {
		return err
	}
	r.logger.Info("restore completed", "id", j.ID)
	return nil
}

// fail rolls back after a failed step and starts the units that were active.
func (r *run) fail(step string, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	r.logger.Error("restore step failed, rolling back", "step", step, "err", cause)
	rbErr := r.rollback(ctx)
	r.res.RolledBack = rbErr == nil
	r.journal.Error = cause.Error()
	if rbErr != nil {
		_ = r.store.save(r.journal)
		return fmt.Errorf("restore failed at %s: %w; the rollback also failed: %v; run the restore with rollback to try again (journal %s)",
			step, cause, rbErr, r.store.path)
	}
	return fmt.Errorf("restore failed at %s: %w; everything was put back as it was and the units that were running were started again", step, cause)
}

// rollback undoes whatever the journal says may have happened, in reverse order, then
// starts the units that were active. Each part checks what is on disk and in the
// database, so it is safe to run more than once.
func (r *run) rollback(ctx context.Context) error {
	j := r.journal
	var errs []error
	if jv := j.Volume; jv != nil {
		if err := r.rollbackVolume(ctx, jv); err != nil {
			errs = append(errs, err)
		}
	}
	if err := r.rollbackItems(ctx); err != nil {
		errs = append(errs, err)
	}
	for i := len(j.Files) - 1; i >= 0; i-- {
		if err := rollbackFileSet(j.Files[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if jd := j.Database; jd != nil {
		if err := r.rollbackDatabase(ctx, jd); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []string{r.volumeStagePath()} {
		_ = os.Remove(p)
	}
	if len(errs) == 0 {
		r.rollbackKV(ctx)
	}
	if j.UnitsRecorded && len(j.ActiveUnits) > 0 {
		if err := r.startRecorded(ctx, j); err != nil {
			errs = append(errs, fmt.Errorf("start units %v: %w", j.ActiveUnits, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if r.journal.Volume != nil {
		_ = os.Remove(r.volumeSavePath())
	}
	j.State = StateRolledBack
	return r.store.save(j)
}

// rollbackKV prepares the KV store for the database the rollback put back, when device
// preparation may already have cleared it: without its awaiting-reconnect keys a device of
// that database would stay AwaitingReconnect for ever. A failure is a warning that says
// what to run: the database and files are back either way.
func (r *run) rollbackKV(ctx context.Context) {
	j := r.journal
	if !j.KVMayBeFlushed {
		return
	}
	dev := r.target.Devices()
	if dev == nil {
		r.res.warn(r.logger, "the restore had cleared the KV store and this run cannot reach it: run device preparation (flightctl_restore without path, or flightctl_devprep) before the server serves devices again")
		return
	}
	r.logger.Info("the KV store was cleared by the restore: preparing it for the database that was put back")
	if _, _, err := dev.Prepare(ctx, DevicePrepRequest{RestoreID: j.ID + "-rollback", FlushKV: true}); err != nil {
		r.res.warn(r.logger, "the restore had cleared the KV store and preparing it for the database that was put back failed (%v): run device preparation (flightctl_restore without path, or flightctl_devprep) before the server serves devices again", err)
		return
	}
	r.res.warn(r.logger, "the restore had cleared the KV store: device preparation ran again for the database that was put back, so its devices reconnect and report their state")
	j.KVMayBeFlushed = false
}

func (r *run) rollbackVolume(ctx context.Context, jv *JournalVolume) error {
	if jv.Saved == "" || jv.Saved == "-" {
		return nil // nothing saved: either never replaced or there was no volume before
	}
	f, err := os.Open(jv.Saved)
	if err != nil {
		return fmt.Errorf("put PAM volume %s back: %w", jv.Name, err)
	}
	defer f.Close()
	if err := r.target.Volume().ReplaceVolume(ctx, f); err != nil {
		return fmt.Errorf("put PAM volume %s back from %s: %w", jv.Name, jv.Saved, err)
	}
	return nil
}

func (r *run) rollbackDatabase(ctx context.Context, jd *JournalDatabase) error {
	db := r.target.Database()
	oldThere, err := db.Exists(ctx, jd.Old)
	if err != nil {
		return fmt.Errorf("roll back database: %w", err)
	}
	switch {
	case oldThere:
		// The live database was renamed aside: whatever is live now is the restored copy.
		if err := db.Drop(ctx, jd.Live); err != nil {
			return fmt.Errorf("roll back database: %w", err)
		}
		if err := db.Rename(ctx, jd.Old, jd.Live); err != nil {
			return fmt.Errorf("roll back database: the previous data is in %s: rename it to %s by hand: %w", jd.Old, jd.Live, err)
		}
	case !jd.LiveExisted && r.journal.isDone(StepLoadDatabase):
		tempThere, err := db.Exists(ctx, jd.Temp)
		if err != nil {
			return fmt.Errorf("roll back database: %w", err)
		}
		if !tempThere {
			// The restored copy became the live one; there was none before.
			if err := db.Drop(ctx, jd.Live); err != nil {
				return fmt.Errorf("roll back database: %w", err)
			}
		}
	}
	if err := db.Drop(ctx, jd.Temp); err != nil {
		return fmt.Errorf("roll back database: %w", err)
	}
	return nil
}

// rollbackOnly undoes the unfinished restore recorded in the journal.
func (r *run) rollbackOnly(ctx context.Context) error {
	j, unlock, err := r.lockJournal(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if j == nil || j.State != StateRunning {
		r.res.Message = "Nothing to roll back: no unfinished restore is recorded in " + r.store.path + "."
		return nil
	}
	r.journal = j
	r.res.RestoreID = j.ID
	if r.opts.CheckMode {
		r.res.Changed = true
		r.res.Message = fmt.Sprintf("Check mode, nothing changed. The unfinished restore %s (started %s) would be rolled back; steps done so far: %s.",
			j.ID, humanTime(j.Started), stepList(j.Done))
		return nil
	}
	if err := r.rollback(ctx); err != nil {
		return fmt.Errorf("roll back restore %s: %w", j.ID, err)
	}
	r.res.Changed, r.res.RolledBack = true, true
	r.res.Message = fmt.Sprintf("Restore %s rolled back: the previous database and files are back, and the units that were running were started again.", j.ID)
	return nil
}

func formatCounts(title string, c map[string]int64) string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s:\n", title)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %d\n", k, c[k])
	}
	return b.String()
}

// planDiff shows the plan as Ansible's before/after text.
func planDiff(p *Plan) *Diff {
	var before, after strings.Builder
	fmt.Fprintf(&before, "units active: %s\n", strings.Join(p.UnitsToStop, " "))
	fmt.Fprintf(&after, "units active: %s (stopped during the restore, started again)\n", strings.Join(p.UnitsToStop, " "))
	if d := p.Database; d != nil && !d.External {
		fmt.Fprintf(&before, "database %s: exists=%v size=%d owner=%s\n", d.Name, d.LiveExists, d.LiveSize, d.Owner)
		before.WriteString(formatCounts("  rows", d.CountsNow))
		fmt.Fprintf(&after, "database %s: from the archive's dump (%d bytes of SQL), owner=%s\n", d.Name, d.DumpSize, d.Owner)
		after.WriteString(formatCounts("  rows", d.CountsArchive))
	}
	for _, f := range p.Files {
		paths := map[string]bool{}
		for k := range f.before {
			paths[k] = true
		}
		for k := range f.after {
			paths[k] = true
		}
		keys := make([]string, 0, len(paths))
		for k := range paths {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if b, ok := f.before[k]; ok {
				fmt.Fprintf(&before, "%s %s %s\n", f.displayPath(k), b.Mode, describe(b))
			}
			if a, ok := f.after[k]; ok {
				fmt.Fprintf(&after, "%s %s %s\n", f.displayPath(k), a.Mode, describe(a))
			}
		}
	}
	if p.Volume != "" {
		fmt.Fprintf(&before, "volume %s: current content\n", p.Volume)
		fmt.Fprintf(&after, "volume %s: the archive's content\n", p.Volume)
	}
	return &Diff{Before: before.String(), After: after.String()}
}

func describe(s FileState) string {
	if s.Dir {
		return "dir"
	}
	return "sha256:" + s.SHA256
}
