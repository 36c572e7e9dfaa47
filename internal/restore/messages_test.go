package restore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/units"
)

// requireOnce fails unless prefix appears exactly once in msg: each layer used to add the
// operation's name again ("stop units: stop units: ...").
func requireOnce(t *testing.T, msg, prefix string) {
	t.Helper()
	require.Equal(t, 1, strings.Count(msg, prefix), "%q must appear once in: %s", prefix, msg)
}

// targetWith is the harness's target with its configuration changed by edit.
func targetWith(ctx context.Context, t *testing.T, cfg envConfig, edit func(*estate.PodmanConfig)) *estate.PodmanRestore {
	pc := estate.DefaultPodmanConfig()
	pc.PKIDir, pc.EncryptionDir, pc.ConfigFile, pc.PAMVolume = cfg.pki(), cfg.encryption(), cfg.configFile(), ""
	pc.DBAccess, pc.DBHost, pc.DBPort = estate.DBAccessDirect, "127.0.0.1", cfg.PGPort
	pc.DBAdminUser, pc.DBAdminPassword = "admin", "adminpass"
	pc.DBUser, pc.DBPassword = "flightctl_app", "apppass"
	pc.KVHost, pc.KVPort, pc.KVPassword = cfg.RedisHost, cfg.RedisPort, cfg.RedisPass
	pc.SystemdScope, pc.SystemdBusAddress = string(units.ScopeUser), cfg.BusAddress
	pc.Units = appUnits
	edit(&pc)
	p := &estate.PodmanRestore{Config: pc, RunningVersion: testVersion, Logger: testLogger(t)}
	require.NoError(t, p.Open(ctx))
	t.Cleanup(p.Close)
	return p
}

func TestRestoreMessagesNameEachStepOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	good := e.writeArchive(ctx, filepath.Join(t.TempDir(), "good"), metadata(), e.dump(ctx))

	t.Run("archive integrity", func(t *testing.T) {
		e.t = t
		corrupt := filepath.Join(t.TempDir(), "corrupt.tar.gz")
		data, err := os.ReadFile(good)
		require.NoError(t, err)
		data[len(data)/2] ^= 0xff
		require.NoError(t, os.WriteFile(corrupt, data, 0o600))
		sum, err := os.ReadFile(good + ".sha256")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(corrupt+".sha256", sum, 0o644))
		_, err = restore.Run(ctx, e.options(ctx, corrupt))
		require.Error(t, err)
		requireOnce(t, err.Error(), "archive integrity check failed")
	})

	t.Run("stop units", func(t *testing.T) {
		e.t = t
		// The restore is interrupted (SIGTERM, SIGHUP) just as it stops the units.
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		opts := e.options(ctx, good)
		opts.Checkpoint = func(name string) error {
			if name == "stop_units:recorded" {
				cancel()
			}
			return nil
		}
		_, err := restore.Run(rctx, opts)
		require.Error(t, err)
		require.True(t, errors.Is(err, context.Canceled), "%v", err)
		requireOnce(t, err.Error(), "stop units")
		require.True(t, e.unitActive(ctx, "flightctl-api.service"), "the units are running again after the interrupted stop")
	})

	t.Run("device preparation", func(t *testing.T) {
		e.t = t
		conn, err := e.pg.SuperuserConn(ctx, "postgres")
		require.NoError(t, err)
		_, err = conn.Exec(ctx, `CREATE DATABASE emptydb`)
		require.NoError(t, err)
		require.NoError(t, conn.Close(ctx))
		tg := targetWith(ctx, t, e.cfg, func(c *estate.PodmanConfig) { c.DBName = "emptydb" })
		_, err = restore.Run(ctx, restore.Options{Target: tg, StateDir: e.cfg.StateDir, FlushKV: true, AllowRunningUnits: true})
		require.Error(t, err)
		requireOnce(t, err.Error(), "device preparation")
	})
}

// A typo in units (flightctl-apii.service) used to give a warning and then a full restore
// under the running server, whose units were never stopped.
func TestRestoreRefusesWhenNoneOfTheUnitsExist(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	good := e.writeArchive(ctx, filepath.Join(t.TempDir(), "good"), metadata(), e.dump(ctx))
	e.damage(ctx)
	before := e.snapshot(ctx)
	for _, check := range []bool{false, true} {
		tg := targetWith(ctx, t, e.cfg, func(c *estate.PodmanConfig) { c.Units = []string{"flightctl-apii.service"} })
		opts := restore.Options{ArchivePath: good, Target: tg, StateDir: e.cfg.StateDir, FlushKV: true, CheckMode: check}
		_, err := restore.Run(ctx, opts)
		require.Error(t, err, "check mode %v", check)
		require.Contains(t, err.Error(), "none of the units to stop exists on this host (flightctl-apii.service)")
		require.Contains(t, err.Error(), "units")
		e.assertUnchanged(ctx, before)
		_, statErr := os.Stat(filepath.Join(e.cfg.StateDir, restore.JournalFile))
		require.True(t, errors.Is(statErr, os.ErrNotExist), "no journal for a refused restore")
	}
}
