package estate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
)

var (
	_ restore.PasswordSyncer = (*PodmanRestore)(nil)
	_ restore.Relabeler      = (*PodmanRestore)(nil)
)

// AdminUser is the quadlet install's database superuser, whose password is the Podman
// secret flightctl-postgresql-master-password.
const AdminUser = "admin"

// SyncPasswords sets the application user's and the admin user's passwords to the
// deployment's current ones (before the units stop; upstream does it after the swap): the
// application user's is the password this restore uses for device preparation
// (db_password, else the Podman secret db_password_secret); the admin user's is the
// password the restore connects with (direct access), else the Podman secret
// flightctl-postgresql-master-password. A password that cannot be found leaves that user
// as it is and says why.
func (p *PodmanRestore) SyncPasswords(ctx context.Context) (map[string]string, error) {
	db, ok := p.Database().(*restore.PsqlDatabase)
	if !ok || db == nil {
		return nil, nil
	}
	c := p.Config
	result := map[string]string{}
	passwords := map[string]string{}
	how := map[string]string{}

	app := orDefault(c.DBUser, "flightctl_app")
	if c.DBPassword != "" {
		passwords[app], how[app] = c.DBPassword, "set to db_password"
	} else if pw, err := p.readSecretFor(ctx, orDefault(c.DBPasswordSecret, SecretDBUserPassword)); err != nil {
		result[app] = "not set: " + err.Error()
	} else {
		passwords[app], how[app] = pw, "set from podman secret "+orDefault(c.DBPasswordSecret, SecretDBUserPassword)
	}
	if _, dup := passwords[AdminUser]; !dup && app != AdminUser {
		if c.DBAccess == DBAccessDirect && c.DBAdminUser == AdminUser && c.DBAdminPassword != "" {
			passwords[AdminUser], how[AdminUser] = c.DBAdminPassword, "set to the password this restore connects with (db_admin_password)"
		} else if pw, err := p.readSecretFor(ctx, orDefault(c.DBAdminPasswordSecret, SecretDBMasterPassword)); err != nil {
			result[AdminUser] = "not set: " + err.Error()
		} else {
			passwords[AdminUser], how[AdminUser] = pw, "set from podman secret "+orDefault(c.DBAdminPasswordSecret, SecretDBMasterPassword)
			if c.DBAccess == DBAccessDirect && c.DBAdminUser == AdminUser {
				// The restore goes on as this user (it drops the old database at the end).
				p.Config.DBAdminPassword = pw
			}
		}
	}
	return result, setPasswords(ctx, db, passwords, how, result)
}

// setPasswords sets passwords (user → password) and records in result, per user, how
// its password was set (how) or why it was not.
func setPasswords(ctx context.Context, db *restore.PsqlDatabase, passwords, how, result map[string]string) error {
	missing, err := db.SetPasswords(ctx, passwords)
	if err != nil {
		return err
	}
	for u, h := range how {
		result[u] = h
	}
	for _, u := range missing {
		result[u] = "not set: the database has no such user"
	}
	return nil
}

// readSecretFor reads a Podman secret for the password sync, in words for the result.
func (p *PodmanRestore) readSecretFor(ctx context.Context, name string) (string, error) {
	pw, err := p.podman().ReadSecret(ctx, name)
	var nf *runner.NotFoundError
	switch {
	case errors.As(err, &nf):
		return "", fmt.Errorf("podman is not installed here, so podman secret %s cannot be read", name)
	case err != nil:
		return "", err
	case pw == "":
		return "", fmt.Errorf("podman secret %s is empty", name)
	}
	return pw, nil
}

// Relabel runs restorecon -R on paths when SELinux is enabled (selinuxenabled exits 0).
// Files renamed into place keep the label of the staging directory they were written in;
// restorecon gives them the policy's label for where they now are.
func (p *PodmanRestore) Relabel(ctx context.Context, paths []string) (bool, error) {
	if len(paths) == 0 {
		return false, nil
	}
	if err := p.Runner.Run(ctx, runner.Cmd{Name: "selinuxenabled"}); err != nil {
		var nf *runner.NotFoundError
		var ee *runner.ExitError
		if errors.As(err, &nf) || errors.As(err, &ee) {
			return false, nil
		}
		return false, fmt.Errorf("selinuxenabled: %w", err)
	}
	args := append([]string{"-R"}, paths...)
	if err := p.Runner.Run(ctx, runner.Cmd{Name: "restorecon", Args: args}); err != nil {
		return true, fmt.Errorf("restorecon: %w; restore the labels by hand (restorecon -R %s) before starting the units", err, joinSpace(paths))
	}
	return true, nil
}

func joinSpace(s []string) string { return strings.Join(s, " ") }
