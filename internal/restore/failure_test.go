package restore_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/restore"
)

// snapshot is the state a refused or rolled-back restore must leave untouched.
type snapshot struct {
	rows  map[string][]string
	files map[string]string
	priv  string
	dbs   []string
}

func (e *env) snapshot(ctx context.Context) snapshot {
	return snapshot{rows: e.rows(ctx), files: e.files(), priv: e.privileges(ctx, "flightctl"), dbs: e.databases(ctx)}
}

func (e *env) assertUnchanged(ctx context.Context, want snapshot) {
	t := e.t
	require.Equal(t, want.rows, e.rows(ctx), "database rows unchanged")
	require.Equal(t, want.files, e.files(), "files unchanged")
	require.Equal(t, want.priv, e.privileges(ctx, "flightctl"), "owner and grants unchanged")
	require.Equal(t, want.dbs, e.databases(ctx), "no database added or left behind")
	require.True(t, e.unitActive(ctx, "flightctl-api.service"), "api running")
	require.True(t, e.unitActive(ctx, "flightctl-worker.service"), "worker running")
	require.False(t, e.unitActive(ctx, "flightctl-periodic.service"))
}

func TestRestoreRefusedBeforeTouchingAnything(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	good := e.writeArchive(ctx, filepath.Join(t.TempDir(), "good"), metadata(), e.dump(ctx))
	otherVersion := metadata()
	otherVersion.Version = "v0.0.0-fake"
	wrongVersion := e.writeArchive(ctx, filepath.Join(t.TempDir(), "version"), otherVersion, e.dump(ctx))
	kube := metadata()
	kube.DeploymentType = "kubernetes"
	wrongType := e.writeArchive(ctx, filepath.Join(t.TempDir(), "type"), kube, e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)

	corrupt := filepath.Join(t.TempDir(), "corrupt.tar.gz")
	data, err := os.ReadFile(good)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	require.NoError(t, os.WriteFile(corrupt, data, 0o600))
	sum, err := os.ReadFile(good + ".sha256")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(corrupt+".sha256", sum, 0o644))

	cases := []struct {
		name, path, want string
		allow            bool
	}{
		{"version mismatch", wrongVersion, `version mismatch: the archive was made by server version "v0.0.0-fake" but this server runs "v1.4.0-test"`, false},
		{"type mismatch", wrongType, `deployment type mismatch: archive was created on a "kubernetes" deployment but the current environment is "podman"; cross-deployment restore is not supported`, true},
		{"checksum mismatch", corrupt, "archive integrity check failed", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			opts := e.options(ctx, c.path)
			opts.AllowVersionMismatch = c.allow
			_, err := restore.Run(ctx, opts)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
			e.assertUnchanged(ctx, before)
			_, statErr := os.Stat(filepath.Join(e.cfg.StateDir, restore.JournalFile))
			require.True(t, errors.Is(statErr, os.ErrNotExist), "no journal for a refused restore")
		})
	}

	t.Run("allow_version_mismatch warns and restores", func(t *testing.T) {
		e.t = t
		opts := e.options(ctx, wrongVersion)
		opts.AllowVersionMismatch = true
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.NotEmpty(t, res.Warnings)
		require.Contains(t, res.Warnings[0], "version mismatch")
		e.assertRestored(ctx)
	})
}

func TestRestoreInvalidDumpLeavesLiveDatabase(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	bad := append(e.dump(ctx), []byte("\nCREATE TABLE broken (;\n")...)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), bad)
	e.damage(ctx)
	before := e.snapshot(ctx)

	res, stopped, err := runWatchingStop(ctx, e.options(ctx, path))
	require.Error(t, err)
	require.Contains(t, err.Error(), "load_database")
	require.False(t, stopped, "a dump that does not load stops nothing")
	require.Contains(t, err.Error(), "everything was put back")
	e.assertRolledBackUnchanged(ctx, res, before)
}

// runWatchingStop runs a restore and says whether it ever got as far as stopping units.
func runWatchingStop(ctx context.Context, opts restore.Options) (res *restore.Result, stopped bool, err error) {
	opts.Checkpoint = func(name string) error {
		stopped = stopped || name == "stop_units:recorded"
		return nil
	}
	res, err = restore.Run(ctx, opts)
	return res, stopped, err
}

// assertRolledBackUnchanged checks that a failed restore was rolled back, left the estate
// as it was before and recorded the rollback in its journal.
func (e *env) assertRolledBackUnchanged(ctx context.Context, res *restore.Result, before snapshot) {
	e.t.Helper()
	require.True(e.t, res.RolledBack)
	e.assertUnchanged(ctx, before)
	j := readJournal(e.t, e.cfg.StateDir)
	require.Equal(e.t, restore.StateRolledBack, j.State)
}

func TestRestoreFailureAfterSwapPutsEverythingBack(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)
	for _, point := range []string{"swap_database:temp_renamed", restore.StepSwapDatabase, "swap_files:encryption", restore.StepSwapFiles, restore.StepDevicePrep} {
		t.Run(point, func(t *testing.T) {
			e.t = t
			opts := e.options(ctx, path)
			opts.Checkpoint = func(name string) error {
				if name == point {
					return errors.New("injected failure")
				}
				return nil
			}
			res, err := restore.Run(ctx, opts)
			require.Error(t, err)
			require.Contains(t, err.Error(), "injected failure")
			require.True(t, res.RolledBack)
			e.assertUnchanged(ctx, before)
			require.Equal(t, restore.StateRolledBack, readJournal(t, e.cfg.StateDir).State)
		})
	}
}

// A signal cancels the context: the restore rolls back and starts the units again.
func TestRestoreCancelledRollsBackAndStartsUnits(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := e.options(ctx, path)
	opts.Checkpoint = func(name string) error {
		if name == "swap_database:live_renamed" {
			cancel()
		}
		return nil
	}
	res, err := restore.Run(runCtx, opts)
	require.Error(t, err)
	require.ErrorIs(t, err, context.Canceled)
	require.True(t, res.RolledBack)
	e.assertUnchanged(ctx, before)
}

func TestRestoreCheckModeChangesNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)
	keysBefore, err := e.kv.Keys(ctx, "*").Result()
	require.NoError(t, err)

	opts := e.options(ctx, path)
	opts.CheckMode, opts.Diff = true, true
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertUnchanged(ctx, before)
	keysAfter, err := e.kv.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.ElementsMatch(t, keysBefore, keysAfter)
	_, statErr := os.Stat(e.cfg.StateDir)
	require.True(t, errors.Is(statErr, os.ErrNotExist), "check mode creates no state directory")

	p := res.Plan
	require.True(t, res.Changed)
	require.Equal(t, []string{"flightctl-api.service", "flightctl-worker.service"}, p.UnitsToStop)
	require.Equal(t, []string{"flightctl-gateway.service"}, p.UnitsMissing)
	require.Equal(t, map[string]int64{"devices": 17, "fleets": 4, "enrollment_requests": 3}, p.Database.CountsNow)
	require.Equal(t, map[string]int64{"devices": 20, "fleets": 3, "enrollment_requests": 3}, p.Database.CountsArchive)
	require.Equal(t, "admin", p.Database.Owner)
	require.Len(t, p.Files, 3)
	byName := map[string]restore.FileChanges{}
	for _, f := range p.Files {
		byName[f.Name] = f
	}
	require.Equal(t, []string{"ca.crt", "ca.key"}, byName["pki"].Replaced)
	require.Equal(t, []string{"stray.pem"}, byName["pki"].Removed)
	require.Equal(t, []string{}, byName["pki"].Added)
	require.Equal(t, []string{"key"}, byName["encryption"].Added)
	require.Equal(t, []string{""}, byName["config"].Replaced)
	require.NotNil(t, res.Diff)
	require.Contains(t, res.Diff.Before, "stray.pem")
	require.NotContains(t, res.Diff.After, "stray.pem")
	require.Contains(t, res.Diff.After, "fleets: 3")
	require.Equal(t, "Check mode, nothing changed. A restore would stop 2 units (flightctl-api, flightctl-worker), "+
		"replace database flightctl (devices 17 → 20, fleets 4 → 3, enrollment requests 3 → 3), "+
		"replace pki (2 replaced, 1 removed, 2 unchanged), replace encryption (1 added), replace config (1 replaced), "+
		"then prepare the devices and start the units again.", res.Message)
}

func readJournal(t testing.TB, dir string) restore.Journal {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, restore.JournalFile))
	require.NoError(t, err)
	var j restore.Journal
	require.NoError(t, json.Unmarshal(b, &j))
	return j
}

// Checkpoints in the order a restore passes them (no PAM volume in these tests).
var killPoints = []string{
	"load_database:created", "load_database:loaded", restore.StepLoadDatabase, restore.StepSyncPasswords,
	"stop_units:recorded", restore.StepStopUnits,
	"swap_database:live_renamed", "swap_database:temp_renamed", restore.StepSwapDatabase,
	"swap_files:pki", "swap_files:encryption", "swap_files:config", restore.StepSwapFiles,
	restore.StepVolume, restore.StepDevicePrep, restore.StepStartUnits,
}

const childEnv = "FLIGHTCTL_DR_RESTORE_CHILD"

// TestRestoreChild is the child process of the SIGKILL tests: it runs a restore that kills
// itself with SIGKILL at the checkpoint it is given. It does nothing when run normally.
func TestRestoreChild(t *testing.T) {
	raw := os.Getenv(childEnv)
	if raw == "" {
		t.Skip("only runs as the child of the SIGKILL tests")
	}
	var cfg envConfig
	require.NoError(t, json.Unmarshal([]byte(raw), &cfg))
	ctx := context.Background()
	opts := restore.Options{ArchivePath: cfg.Archive, Target: target(ctx, t, cfg, testLogger(t)), StateDir: cfg.StateDir, FlushKV: true}
	opts.Checkpoint = func(name string) error {
		if name == cfg.KillAt {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	}
	_, err := restore.Run(ctx, opts)
	t.Fatalf("the child should have been killed at %s; restore returned %v", cfg.KillAt, err)
}

func runKilledChild(t *testing.T, cfg envConfig, killAt string) {
	t.Helper()
	cfg.KillAt = killAt
	raw, err := json.Marshal(cfg)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^TestRestoreChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "child output:\n%s", out)
	ws := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child must die by SIGKILL at %s; output:\n%s", killAt, out)
}

func TestRestoreResumesAfterSIGKILLAtEveryStep(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.cfg.Archive = path
	for _, point := range killPoints {
		t.Run(point, func(t *testing.T) {
			e.t = t
			e.damage(ctx)
			runKilledChild(t, e.cfg, point)
			j := readJournal(t, e.cfg.StateDir)
			require.Equal(t, restore.StateRunning, j.State, "the killed run left its journal")
			res, err := restore.Run(ctx, e.options(ctx, path))
			require.NoError(t, err)
			require.True(t, res.Changed)
			require.Equal(t, j.ID, res.RestoreID, "the second run finishes the first one")
			require.Contains(t, strings.Join(res.Warnings, "\n"), "version check skipped: this run finishes the interrupted restore "+j.ID)
			e.assertRestored(ctx)
			require.Equal(t, restore.StateDone, readJournal(t, e.cfg.StateDir).State)
			require.NoError(t, os.Remove(filepath.Join(e.cfg.StateDir, restore.JournalFile)))
		})
	}
}

func TestRestoreUnfinishedJournalOtherArchiveAndRollback(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "a"), metadata(), e.dump(ctx))
	other := e.writeArchive(ctx, filepath.Join(t.TempDir(), "b"), metadata(), e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)
	e.cfg.Archive = path
	runKilledChild(t, e.cfg, "swap_files:pki")
	require.False(t, e.unitActive(ctx, "flightctl-api.service"), "the killed restore left the units stopped")

	_, err := restore.Run(ctx, e.options(ctx, other))
	require.Error(t, err)
	require.Contains(t, err.Error(), "an unfinished restore")
	require.Contains(t, err.Error(), "rollback")

	opts := e.options(ctx, "")
	opts.Rollback = true
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	require.True(t, res.RolledBack)
	e.assertUnchanged(ctx, before)
	require.Equal(t, restore.StateRolledBack, readJournal(t, e.cfg.StateDir).State)

	// Now the other archive restores.
	res, err = restore.Run(ctx, e.options(ctx, other))
	require.NoError(t, err)
	require.True(t, res.Changed)
	_ = archive.DatabaseDump
}

// A damaged archive whose checksum file was rewritten to match is only found out by the
// structure checks, which run while the dump loads: the restore must still stop nothing
// and leave no database behind.
func TestRestoreForgedChecksumRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	// Enough incompressible SQL comment that the dump spans several gzip members.
	pad := make([]byte, 3<<20)
	_, _ = rand.Read(pad)
	dump := append(e.dump(ctx), []byte("\n-- "+hex.EncodeToString(pad)+"\n")...)
	good := e.writeArchive(ctx, filepath.Join(t.TempDir(), "good"), metadata(), dump)
	e.damage(ctx)
	before := e.snapshot(ctx)

	data, err := os.ReadFile(good)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	forged := filepath.Join(t.TempDir(), filepath.Base(good))
	require.NoError(t, os.WriteFile(forged, data, 0o600))
	sum := sha256.Sum256(data)
	require.NoError(t, os.WriteFile(forged+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(forged)+"\n"), 0o644))

	res, stopped, err := runWatchingStop(ctx, e.options(ctx, forged))
	require.Error(t, err)
	require.Contains(t, err.Error(), "archive integrity check failed")
	require.False(t, stopped, "a damaged archive stops nothing")
	e.assertRolledBackUnchanged(ctx, res, before)
}
