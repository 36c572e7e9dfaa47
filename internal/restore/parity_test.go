package restore_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/restore"
)

// A restore sets the database users' passwords before the units stop (that a stale password is
// replaced is TestPodmanRestoreSyncsPasswords in internal/estate) and, on a host with SELinux
// enabled, gives the files it put in place their labels; both are journaled steps, in
// this order, and the result says what was done. SELinux cannot be enabled here:
// selinuxenabled and restorecon are fakes in PATH (shell scripts) that record what
// restorecon was asked, and which CA it saw in place at that moment.
func TestRestoreSyncsPasswordsAndRelabels(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	bin := t.TempDir()
	log := filepath.Join(t.TempDir(), "restorecon.log")
	require.NoError(t, os.WriteFile(filepath.Join(bin, "selinuxenabled"), []byte("#!/bin/sh\nexit 0\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bin, "restorecon"), []byte("#!/bin/sh\necho \"$@\" >> "+log+"\ncat "+filepath.Join(e.cfg.pki(), "ca.crt")+" >> "+log+"\n"), 0o755))
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)

	opts := e.options(ctx, path)
	var order []string
	opts.Checkpoint = func(name string) error {
		if !strings.Contains(name, ":") {
			order = append(order, name)
		}
		return nil
	}
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	e.assertRestored(ctx)
	require.Equal(t, []string{restore.StepLoadDatabase, restore.StepSyncPasswords, restore.StepStopUnits, restore.StepSwapDatabase,
		restore.StepSwapFiles, restore.StepVolume, restore.StepRelabel, restore.StepDevicePrep, restore.StepStartUnits}, order)
	require.Equal(t, "set to db_password", res.PasswordSync["flightctl_app"])
	require.Equal(t, "set to the password this restore connects with (db_admin_password)", res.PasswordSync["admin"])
	c, err := pgx.Connect(ctx, e.pg.DSN("flightctl", "flightctl_app", "apppass"))
	require.NoError(t, err, "the application user has the deployment's password")
	c.Close(ctx)

	require.Equal(t, []string{e.cfg.pki(), e.cfg.encryption(), e.cfg.configFile()}, res.Relabeled)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	require.Equal(t, "-R "+e.cfg.pki()+" "+e.cfg.encryption()+" "+e.cfg.configFile()+"\n-----CA CERT-----\n", string(b),
		"restorecon ran once, on the restored files in place")
}
