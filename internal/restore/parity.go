package restore

import (
	"context"
	"fmt"
	"sort"
)

// Steps that keep parity with upstream's restore where upstream is right.
const (
	// StepSyncPasswords sets the database users' passwords to the deployment's current
	// secrets (upstream's "Synchronizing database credentials with current deployment",
	// which upstream runs after the swap): a secret regenerated since the backup, or users
	// made with other passwords, would otherwise lock the server out. It runs once the
	// dump is loaded, before the units stop.
	StepSyncPasswords = "sync_passwords"
	// StepRelabel gives the files put in place their SELinux policy labels, as restorecon
	// would, on a host where SELinux is enabled.
	StepRelabel = "selinux_relabel"
)

// PasswordSyncer is a Target that can set the database users' passwords to the
// deployment's current secrets. The passwords never travel in argv.
type PasswordSyncer interface {
	// SyncPasswords returns, per database user, what was done ("set from podman secret
	// X", "not set: ...").
	SyncPasswords(ctx context.Context) (map[string]string, error)
}

// Relabeler is a Target that labels files for SELinux.
type Relabeler interface {
	// Relabel restores the policy labels of paths (recursively) when SELinux is enabled;
	// enabled says whether it was.
	Relabel(ctx context.Context, paths []string) (enabled bool, err error)
}

// syncPasswords runs after the load and before the units stop, so outside the downtime.
// The database users are cluster-wide: they are not in the dump and do not move with the
// swap, so the live and the restored database see the same users whenever this runs, and
// the passwords it sets are the ones the deployment's services use, running or not (the
// running server keeps its open sessions; only one started before its secrets were changed
// could open no new one in the seconds until the stop). For the same
// reasons a rollback does not undo it: the previous database works with those passwords
// as well as the restored one. A run killed before the step is journaled does it again.
func (r *run) syncPasswords(ctx context.Context) error {
	ps, ok := r.target.(PasswordSyncer)
	if !ok || r.journal.Database == nil {
		return r.done(StepSyncPasswords)
	}
	done, err := ps.SyncPasswords(ctx)
	if err != nil {
		return fmt.Errorf("set the database users' passwords to the deployment's secrets: %w", err)
	}
	r.res.PasswordSync = done
	users := make([]string, 0, len(done))
	for u := range done {
		users = append(users, u)
	}
	sort.Strings(users)
	for _, u := range users {
		r.logger.Info("database user password", "user", u, "result", done[u])
	}
	return r.done(StepSyncPasswords)
}

// relabelFiles runs after the files and the volume are in place.
func (r *run) relabelFiles(ctx context.Context) error {
	rl, ok := r.target.(Relabeler)
	if !ok || len(r.journal.Files) == 0 {
		return r.done(StepRelabel)
	}
	paths := make([]string, 0, len(r.journal.Files))
	for _, f := range r.journal.Files {
		if ok, err := exists(f.Live); err == nil && ok {
			paths = append(paths, f.Live)
		}
	}
	enabled, err := rl.Relabel(ctx, paths)
	if err != nil {
		return fmt.Errorf("SELinux labels: %w", err)
	}
	if enabled {
		r.res.Relabeled = paths
		r.logger.Info("SELinux labels restored", "paths", paths)
	}
	return r.done(StepRelabel)
}
