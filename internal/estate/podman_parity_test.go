package estate_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// recorder runs commands for real and keeps every command line and stdin it saw.
type recorder struct {
	runner.Exec
	mu    sync.Mutex
	argv  []string
	stdin []string
}

func (r *recorder) Run(ctx context.Context, c runner.Cmd) error {
	r.mu.Lock()
	r.argv = append(r.argv, c.String())
	r.mu.Unlock()
	if c.Stdin != nil {
		b, err := io.ReadAll(c.Stdin)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.stdin = append(r.stdin, string(b))
		r.mu.Unlock()
		c.Stdin = strings.NewReader(string(b))
	}
	return r.Exec.Run(ctx, c)
}

func canLogin(ctx context.Context, pg *testbed.Postgres, user, password string) bool {
	c, err := pgx.Connect(ctx, pg.DSN("flightctl", user, password))
	if err != nil {
		return false
	}
	c.Close(ctx)
	return true
}

// After the database swap the application and admin users get the deployment's current
// passwords (upstream does; without it a database from another cluster, or a secret
// regenerated since the backup, locks the server out). Here the users still have other
// passwords; the admin one comes from a real Podman secret, the application one from the
// password this restore was given. Neither password nor its hash ever reaches argv.
func TestPodmanRestoreSyncsPasswords(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql")
	pod := testbed.PodmanForTest(t)
	pg := testbed.PostgresForTest(t)
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: "old-App-1111", Admin: "old-Admin-1111"}))

	adminSecret := testbed.PodmanName("fdr-master-password")
	appSecret := testbed.PodmanName("fdr-user-password")
	cli := pod.Client()
	require.NoError(t, cli.CreateSecret(ctx, adminSecret, "new-Admin-2222", true))
	require.NoError(t, cli.CreateSecret(ctx, appSecret, "new-App-2222", true))
	t.Cleanup(func() {
		_ = cli.RemoveSecret(context.Background(), adminSecret)
		_ = cli.RemoveSecret(context.Background(), appSecret)
	})

	newTarget := func(cfg estate.PodmanConfig) (*estate.PodmanRestore, *recorder) {
		rec := &recorder{Exec: runner.Exec{BaseEnv: append(os.Environ(), pod.Env...)}}
		p := &estate.PodmanRestore{Config: cfg, Runner: rec, UnitManager: noUnits{}}
		require.NoError(t, p.Open(ctx))
		return p, rec
	}
	cfg := estate.DefaultPodmanConfig()
	cfg.ConfigFile = filepath.Join(t.TempDir(), "service-config.yaml")
	// The restore connects as postgres over the server's socket here; admin is a user
	// like flightctl_app.
	cfg.DBAccess, cfg.DBHost, cfg.DBPort, cfg.DBName = estate.DBAccessDirect, pg.SocketDir, pg.Port, "flightctl"
	cfg.DBAdminUser, cfg.DBAdminPassword = "postgres", ""
	cfg.DBPassword, cfg.DBAdminPasswordSecret = "new-App-3333", adminSecret
	p, rec := newTarget(cfg)

	require.True(t, canLogin(ctx, pg, "flightctl_app", "old-App-1111"))
	done, err := p.SyncPasswords(ctx)
	require.NoError(t, err)
	require.Equal(t, map[string]string{
		"flightctl_app": "set to db_password",
		"admin":         "set from podman secret " + adminSecret,
	}, done)
	require.True(t, canLogin(ctx, pg, "flightctl_app", "new-App-3333"))
	require.False(t, canLogin(ctx, pg, "flightctl_app", "old-App-1111"))
	require.True(t, canLogin(ctx, pg, "admin", "new-Admin-2222"))
	require.False(t, canLogin(ctx, pg, "admin", "old-Admin-1111"))
	for _, a := range rec.argv {
		for _, pw := range []string{"new-App-3333", "new-Admin-2222", "SCRAM-SHA-256"} {
			require.NotContains(t, a, pw, "argv: %s", a)
		}
	}
	sql := strings.Join(rec.stdin, "\n")
	require.Contains(t, sql, `ALTER ROLE "admin" WITH PASSWORD 'SCRAM-SHA-256$4096:`)
	require.NotContains(t, sql, "new-Admin-2222", "the server is sent a SCRAM verifier, not the password")

	// Without db_password the application user's password is the secret's, as backup
	// reads it (db_password_secret); a secret that does not exist leaves the user alone
	// and says so.
	cfg.DBPassword, cfg.DBPasswordSecret = "", appSecret
	cfg.DBAdminPasswordSecret = testbed.PodmanName("fdr-no-such-secret")
	p, _ = newTarget(cfg)
	done, err = p.SyncPasswords(ctx)
	require.NoError(t, err)
	require.Equal(t, "set from podman secret "+appSecret, done["flightctl_app"])
	require.Contains(t, done["admin"], "not set: ")
	require.Contains(t, done["admin"], cfg.DBAdminPasswordSecret)
	require.True(t, canLogin(ctx, pg, "flightctl_app", "new-App-2222"))
	require.True(t, canLogin(ctx, pg, "admin", "new-Admin-2222"), "left as it was")
}

// SELinux: where it is enabled the files put in place get their policy labels, as
// restorecon gives them. SELinux cannot be enabled on this machine: selinuxenabled and
// restorecon are fakes (shell scripts in PATH) that say "enabled" and record the call.
func TestPodmanRestoreRelabelsWithFakeSELinux(t *testing.T) {
	ctx := context.Background()
	bin := t.TempDir()
	log := filepath.Join(t.TempDir(), "restorecon.log")
	write := func(name, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755))
	}
	write("restorecon", `echo "$@" >> `+log)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	cfg := estate.DefaultPodmanConfig()
	cfg.ConfigFile = filepath.Join(t.TempDir(), "service-config.yaml")
	p := &estate.PodmanRestore{Config: cfg, Runner: runner.Exec{BaseEnv: []string{"PATH=" + bin}}, UnitManager: noUnits{}}
	require.NoError(t, p.Open(ctx))

	// No selinuxenabled (SELinux tools not installed): nothing is labelled.
	enabled, err := p.Relabel(ctx, []string{"/x/pki"})
	require.NoError(t, err)
	require.False(t, enabled)
	write("selinuxenabled", "exit 1")
	enabled, err = p.Relabel(ctx, []string{"/x/pki"})
	require.NoError(t, err)
	require.False(t, enabled, "selinuxenabled says disabled")
	_, err = os.Stat(log)
	require.ErrorIs(t, err, os.ErrNotExist, "restorecon never ran")

	write("selinuxenabled", "exit 0")
	enabled, err = p.Relabel(ctx, []string{"/x/pki", "/x/service-config.yaml"})
	require.NoError(t, err)
	require.True(t, enabled)
	b, err := os.ReadFile(log)
	require.NoError(t, err)
	require.Equal(t, "-R /x/pki /x/service-config.yaml\n", string(b))

	write("restorecon", "echo 'restorecon: permission denied' >&2; exit 1")
	_, err = p.Relabel(ctx, []string{"/x/pki"})
	require.ErrorContains(t, err, "restorecon -R /x/pki")
}
