package backup

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// recordingRunner runs commands for real and records when each started and ended, in
// order; failPID makes the container PID lookup fail (as where /proc is out of reach).
type recordingRunner struct {
	inner   runner.Runner
	failPID bool
	mu      sync.Mutex
	events  []string // "start <args>" / "end <args>"
}

func (r *recordingRunner) note(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recordingRunner) Run(ctx context.Context, c runner.Cmd) error {
	args := strings.Join(c.Args, " ")
	if r.failPID && strings.Contains(args, "{{.State.Pid}}") {
		return &runner.ExitError{Cmd: "podman container inspect", ExitCode: 125, Stderr: "Error: refused by the test"}
	}
	r.note("start " + args)
	defer r.note("end " + args)
	return r.inner.Run(ctx, c)
}

// index is the position of the first event with that prefix containing part, -1 if none.
func (r *recordingRunner) index(prefix, part string) int {
	for i, e := range r.events {
		if strings.HasPrefix(e, prefix) && strings.Contains(e, part) {
			return i
		}
	}
	return -1
}

// TestContainerBackupFastPathRealPodman: through a real podman container running
// PostgreSQL, the dump's exec starts before any other podman call of the backup has
// ended (the secret lookup, the preflight and the version lookup run beside it, so the
// fixed start-up work does not delay the dump), the preflight is one exec, the dump is
// read through a FIFO in the container that is gone afterwards, and when that FIFO
// cannot be made the dump comes through the exec's stdout, equal in content.
func TestContainerBackupFastPathRealPodman(t *testing.T) {
	pm := testbed.PodmanForTest(t)
	db := testbed.PodmanPostgresForTest(t, pm, testbed.PodmanName("flightctl-db"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, db.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	seedRows(t, db.Postgres, "flightctl", 40, 3, 5)
	secret := testbed.PodmanName("flightctl-postgresql-user-password")
	require.NoError(t, pm.CreateSecret(ctx, secret, appPassword))

	root := t.TempDir()
	pki := filepath.Join(root, "pki")
	writePKI(t, pki)
	config := filepath.Join(root, "service-config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("db:\n  name: flightctl\n"), 0o600))
	cfg := estate.DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile = pki, filepath.Join(root, "no-encryption"), config
	cfg.DBContainer, cfg.DBPasswordSecret, cfg.PAMVolume = db.Container, secret, ""

	backupWith := func(failPID bool) (*Result, *recordingRunner, string) {
		rec := &recordingRunner{inner: runner.Exec{BaseEnv: append(os.Environ(), pm.Env...)}, failPID: failPID}
		var logs bytes.Buffer
		opts := testOptions{
			DeploymentType: "podman",
			Podman:         cfg,
			ServerVersion:  "0.10.0",
			OutputDir:      filepath.Join(root, "out"),
			Runner:         rec,
			Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		res, err := runBackup(ctx, opts)
		require.NoError(t, err, logs.String())
		return res, rec, logs.String()
	}

	res, rec, logs := backupWith(false)
	dumpStart := rec.index("start exec", "pg_dump --clean")
	require.GreaterOrEqual(t, dumpStart, 0, "the dump ran: %q", rec.events)
	firstEnd := rec.index("end ", "")
	assert.Less(t, dumpStart, firstEnd, "the dump's exec starts before any other podman call ends: %q", rec.events)
	var execs []string
	for _, e := range rec.events {
		if strings.HasPrefix(e, "start exec") {
			execs = append(execs, e)
		}
	}
	assert.Len(t, execs, 2, "one exec for the preflight, one for the dump: %q", execs)
	assert.Contains(t, logs, "the dump is read through a FIFO in the database container")
	left, err := pm.Podman(ctx, "exec", db.Container, "ls", "-a", "/tmp")
	require.NoError(t, err)
	assert.NotContains(t, left, "flightctl-dr", "the FIFO is removed")
	viaFIFO := extractEntry(t, res.Archive, "db/dump.sql")
	assert.Contains(t, string(viaFIFO), "PostgreSQL database dump complete")
	_, err = archive.Verify(ctx, res.Archive, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)

	// Without the container's process, the dump comes through podman exec's stdout.
	res2, _, logs := backupWith(true)
	assert.NotContains(t, logs, "read through a FIFO")
	viaStdout := extractEntry(t, res2.Archive, "db/dump.sql")
	assert.Equal(t, dumpLines(viaFIFO), dumpLines(viaStdout), "the same dump either way")
}

// dumpLines is a dump without pg_dump's per-run \restrict key lines.
func dumpLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, `\restrict`) && !strings.HasPrefix(l, `\unrestrict`) {
			out = append(out, l)
		}
	}
	return out
}
