// flightctl_restore restores a Flight Control server on a systemd/Podman host, or a
// Kubernetes/Helm install through the Kubernetes API, from an archive made by
// flightctl_backup or upstream flightctl-backup: verified before anything
// is touched, journaled so that an interrupted restore can be finished or undone, and
// rolled back on failure. Without an archive it runs device preparation only, as upstream's
// older flightctl-restore did.
package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archiveopts"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kubeopts"
	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
)

// Options are the module's options; the sidecar flightctl_restore.yml documents them.
type Options struct {
	Path                 string   `ansible:"path,abspath" help:"the archive to restore; without it only device preparation runs"`
	ChecksumFile         string   `ansible:"checksum_file,abspath" help:"the checksum file (default: <path>.sha256)"`
	DeploymentType       string   `ansible:"deployment_type" default:"auto" choices:"auto,podman,kubernetes" help:"the installation type; auto asks systemd and looks for a kubeconfig"`
	SystemdScope         string   `ansible:"systemd_scope" default:"system" choices:"system,user" help:"the systemd manager running the units"`
	SystemdBusAddress    string   `ansible:"systemd_bus_address" help:"D-Bus address of that manager (default: the scope's usual one)"`
	ServerVersion        string   `ansible:"server_version" help:"the running server's release (default: discovered)"`
	AllowVersionMismatch bool     `ansible:"allow_version_mismatch" default:"false" help:"restore an archive of another server version, with a warning"`
	DBAccess             string   `ansible:"db_access" default:"container" choices:"container,direct" help:"run psql inside the database container, or locally against db_host"`
	DBContainer          string   `ansible:"db_container" default:"flightctl-db" help:"the database container"`
	DBHost               string   `ansible:"db_host" help:"database host for direct access and device preparation (default: direct 127.0.0.1; container: where podman publishes the container's 5432/tcp, else its IP)"`
	DBPort               int      `ansible:"db_port" min:"0" max:"65535" help:"database port (default: direct 5432; container: found with podman port)"`
	DBName               string   `ansible:"db_name" help:"the database (default: db.name of the service config, else flightctl)"`
	DBAdminUser          string   `ansible:"db_admin_user" help:"superuser that replaces the database (default: postgres in the container, admin when direct)"`
	DBAdminPassword      string   `ansible:"db_admin_password,secret" help:"its password (direct access; default: the podman secret flightctl-postgresql-master-password)"`
	DBUser               string   `ansible:"db_user" default:"flightctl_app" help:"application user for device preparation"`
	DBPassword           string   `ansible:"db_password,secret" env:"DB_PASSWORD" help:"its password (default: the podman secret db_password_secret)"`
	DBPasswordSecret     string   `ansible:"db_password_secret" default:"flightctl-postgresql-user-password" help:"the podman secret holding the application user's password, read when db_password is not given and set on that user after the database swap"`
	KVContainer          string   `ansible:"kv_container" default:"flightctl-kv" help:"the KV container, asked where it publishes 6379/tcp (container access)"`
	KVHost               string   `ansible:"kv_host" help:"KV store host (default: direct 127.0.0.1; container: where podman publishes kv_container's 6379/tcp, else its IP)"`
	KVPort               int      `ansible:"kv_port" min:"0" max:"65535" help:"KV store port (default: direct 6379; container: found with podman port)"`
	KVPassword           string   `ansible:"kv_password,secret" env:"KV_PASSWORD" help:"KV password (default: the podman secret kv_password_secret)"`
	KVPasswordSecret     string   `ansible:"kv_password_secret" default:"flightctl-kv-password" help:"the podman secret holding the KV password, read when kv_password is not given"`
	PKIDir               string   `ansible:"pki_dir,abspath" default:"/etc/flightctl/pki" help:"the live PKI directory"`
	EncryptionDir        string   `ansible:"encryption_dir,abspath" default:"/etc/flightctl/encryption" help:"the live data-at-rest key directory"`
	ConfigFile           string   `ansible:"config_file,abspath" default:"/etc/flightctl/service-config.yaml" help:"the live service configuration"`
	PAMVolume            string   `ansible:"pam_volume" default:"flightctl-pam-issuer-etc" help:"the PAM issuer volume; empty to leave it alone"`
	KeepOldDB            bool     `ansible:"keep_old_db" default:"false" help:"keep the previous database as <db>_old_<id> after success"`
	DBLoadConnections    int      `ansible:"db_load_connections" default:"0" min:"0" max:"64" help:"database sessions the dump loads over, and the most device preparation alone splits its device update over (0: one per CPU, 2 to 8, within the server's free connections; 1: one psql reading the dump, as psql -f, and one device update session)"`
	StateDir             string   `ansible:"state_dir,abspath" default:"/var/lib/flightctl-dr" help:"where the restore journal is kept"`
	FlushKV              bool     `ansible:"flush_kv" default:"true" help:"clear the KV store before device preparation (as upstream)"`
	Units                []string `ansible:"units" items:"unit" help:"the application units to stop and start (default: upstream's list)"`
	Rollback             bool     `ansible:"rollback" default:"false" help:"undo the unfinished restore recorded in the journal"`
	Force                bool     `ansible:"force" default:"false" help:"restore again from an archive already restored"`
	AllowRunningUnits    bool     `ansible:"allow_running_units" default:"false" help:"without path: prepare devices although application units are running (the KV store is flushed under a live server); by default device preparation alone refuses until they are stopped"`
	EstateName           string   `ansible:"estate_name" help:"this server's estate name; an archive recording another estate is refused unless source_estate names it (default: the host name)"`
	SourceEstate         string   `ansible:"source_estate" help:"the estate the archive comes from, when it is not this server's (a replacement host taking over that estate)"`
	Src                  string   `ansible:"src" help:"an archive on the controller instead of path: the action plugin puts it in the task's temporary directory on the server"`
	archiveopts.Acceptance
	// An encrypted archive's identity: decryption_identity_file, decryption_key,
	// decryption_passphrase.
	archiveopts.Decryption

	// Kubernetes / Helm (deployment_type kubernetes): the connection as flightctl_backup
	// takes it, then what only a restore needs.
	kubeopts.Connection
	Deployments    []string `ansible:"deployments" help:"Kubernetes: the application Deployments to scale to 0 and back, as name or namespace/name (default: upstream's seven, in the release or internal namespace)"`
	DevprepAccess  string   `ansible:"devprep_access" default:"port-forward" choices:"port-forward,direct" help:"Kubernetes: how device preparation reaches the database and the KV store: a port-forward through the API server, or direct to devprep_db_host and kv_host"`
	DevprepDBHost  string   `ansible:"devprep_db_host" help:"Kubernetes, devprep_access direct: the database host (default: the Service flightctl-db.<internal_namespace>.svc)"`
	DevprepDBPort  int      `ansible:"devprep_db_port" min:"0" max:"65535" help:"Kubernetes, devprep_access direct: the database port (default 5432)"`
	GitOpsPaused   bool     `ansible:"gitops_paused" default:"false" help:"Kubernetes: the GitOps controller (Argo CD, Flux) owning the Deployments has been suspended; without it such a restore is refused"`
	QuiesceTimeout int      `ansible:"quiesce_timeout" default:"300" min:"1" help:"Kubernetes: seconds to wait for a Deployment's pods to go after it is scaled to 0"`
	// JournalLocation: a restore run in the cluster (a Job's pod) loses its file system
	// with the pod, so its journal lives in a Secret there.
	JournalLocation string `ansible:"journal_location" default:"auto" choices:"auto,state_dir,cluster" help:"where the restore journal is kept: state_dir (a file in state_dir), cluster (Kubernetes: the Secret flightctl-dr-restore-journal in namespace, locked with a Lease), or auto (cluster when the restore runs inside the cluster with its pod's service account, else state_dir)"`
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	// 0 is "not given": the target finds the port (container access) or uses the default.
	if o.DBPort < 0 || o.DBPort > 65535 || o.KVPort < 0 || o.KVPort > 65535 {
		return errors.New("db_port and kv_port must be TCP ports (1-65535)")
	}
	if o.Rollback && o.Path != "" {
		return errors.New("rollback undoes the unfinished restore in the journal: give it without path")
	}
	if o.StateDir == "" {
		return errors.New("state_dir is empty: the journal needs a directory")
	}
	if o.Src != "" {
		return errors.New("src names an archive on the controller, which only the flightctl.dr.flightctl_restore action plugin can copy: run the module through Ansible by its name flightctl.dr.flightctl_restore, or give path (an archive on the server)")
	}
	return nil
}

func (o *Options) podmanConfig() estate.PodmanConfig {
	c := estate.DefaultPodmanConfig()
	c.PKIDir, c.EncryptionDir, c.ConfigFile, c.PAMVolume = o.PKIDir, o.EncryptionDir, o.ConfigFile, o.PAMVolume
	c.DBAccess, c.DBContainer, c.DBHost, c.DBPort, c.DBName = estate.DBAccess(o.DBAccess), o.DBContainer, o.DBHost, o.DBPort, o.DBName
	c.DBUser, c.DBPassword = o.DBUser, o.DBPassword
	c.DBPasswordSecret, c.KVPasswordSecret = o.DBPasswordSecret, o.KVPasswordSecret
	c.DBAdminUser, c.DBAdminPassword = o.DBAdminUser, o.DBAdminPassword
	if c.DBAdminUser == "" {
		c.DBAdminUser = "postgres"
		if c.DBAccess == estate.DBAccessDirect {
			c.DBAdminUser = "admin"
		}
	}
	// Left empty with container access, host and ports are found from the containers.
	c.KVContainer, c.KVHost, c.KVPort, c.KVPassword = o.KVContainer, o.KVHost, o.KVPort, o.KVPassword
	c.SystemdScope, c.SystemdBusAddress = o.SystemdScope, o.SystemdBusAddress
	if len(o.Units) > 0 {
		c.Units = o.Units
	}
	return c
}

// kubernetesConfig maps the options onto a Helm install, as flightctl_backup does: the
// database options keep their meaning inside the database pod; the credentials come from
// the Secret flightctl-db-app-secret unless db_password is given (then with db_user).
func (o *Options) kubernetesConfig() estate.KubernetesConfig {
	return o.Install(kubeopts.Database{Access: o.DBAccess, Host: o.DBHost, Port: o.DBPort, Name: o.DBName, User: o.DBUser, Password: o.DBPassword})
}

// kubernetesRestoreConfig is what a Kubernetes restore needs beyond the backup's options.
func (o *Options) kubernetesRestoreConfig() estate.KubernetesRestoreConfig {
	return estate.KubernetesRestoreConfig{
		Deployments: o.Deployments, DBAdminUser: o.DBAdminUser, DBAdminPassword: o.DBAdminPassword,
		DevprepAccess: o.DevprepAccess, DevprepDBHost: o.DevprepDBHost, DevprepDBPort: o.DevprepDBPort,
		KVHost: o.KVHost, KVPort: o.KVPort, KVPassword: o.KVPassword,
		QuiesceTimeout: time.Duration(o.QuiesceTimeout) * time.Second, GitOpsPaused: o.GitOpsPaused,
	}
}

// deploymentType resolves auto. A restore interrupted after stopping the API unit leaves
// nothing for detection to see, so an unfinished journal answers instead (one written
// before journals recorded the deployment type is a Podman one).
func deploymentType(ctx context.Context, o *Options, env *ansiblemod.Env) (estate.Type, error) {
	if o.DeploymentType != estate.AutoDetect {
		return estate.ParseType(o.DeploymentType)
	}
	if j, err := restore.ReadJournal(o.StateDir); err == nil && j != nil && j.State == restore.StateRunning {
		typ := estate.Podman
		if j.DeploymentType != "" {
			if t, err := estate.ParseType(j.DeploymentType); err == nil {
				typ = t
			}
		}
		env.Warn("deployment_type auto: taken as %s from the unfinished restore %s recorded in %s (the stopped server cannot be detected); set deployment_type to override", typ, j.ID, o.StateDir)
		return typ, nil
	}
	active, installed, closeFn, err := estate.SystemdUnitState(ctx, o.SystemdScope, o.SystemdBusAddress)
	if err != nil {
		active = func(context.Context, string) (bool, error) { return false, err }
		installed = nil
	} else {
		defer closeFn()
	}
	// The runbooks stop the application units before restoring: an installed, stopped
	// flightctl-api.service is a Podman install too.
	typ, stopped, err := estate.DetectRestoreType(ctx, estate.DetectOptions{Requested: o.DeploymentType, UnitActive: active}, installed)
	if stopped {
		env.Log.Info("deployment type: podman (" + estate.APIUnit + " is installed and stopped)")
	}
	return typ, err
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	log := env.Log
	typ, err := deploymentType(ctx, o, env)
	if err != nil {
		return nil, err
	}
	cfg := o.podmanConfig()
	exec := runner.Exec{}
	if typ == estate.Podman && cfg.DBAccess == estate.DBAccessDirect && cfg.DBAdminPassword == "" && o.Path != "" {
		// The quadlet admin password lives in a Podman secret; a missing one is left to
		// psql's own error (a .pgpass or trust may still let it in).
		if pw, err := (&podman.Client{Runner: exec}).ReadSecret(ctx, estate.SecretDBMasterPassword); err == nil {
			cfg.DBAdminPassword = pw
		}
	}
	target, closeTarget, err := estate.OpenRestoreTarget(ctx, estate.RestoreTargetOptions{
		Type: typ, Podman: cfg, Kubernetes: o.kubernetesConfig(), KubernetesRestore: o.kubernetesRestoreConfig(),
		Runner: exec, RunningVersion: o.ServerVersion, JournalLocation: o.JournalLocation, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	defer closeTarget()

	sig, err := o.Signature()
	if err != nil {
		return nil, err
	}
	ids, err := o.Identities(nil)
	if err != nil {
		return nil, err
	}
	res, err := restore.Run(ctx, restore.Options{
		Limits:      o.Limits(),
		Signature:   sig,
		Decryption:  ids,
		ArchivePath: o.Path, ChecksumFile: o.ChecksumFile, Target: target,
		ServerVersion: o.ServerVersion, AllowVersionMismatch: o.AllowVersionMismatch,
		KeepOldDB: o.KeepOldDB, StateDir: o.StateDir, FlushKV: o.FlushKV, LoadConnections: o.DBLoadConnections,
		CheckMode: env.CheckMode, Diff: env.Diff, Rollback: o.Rollback, Force: o.Force,
		AllowRunningUnits: o.AllowRunningUnits,
		EstateName:        estateName(o.EstateName),
		SourceEstate:      o.SourceEstate,
		Logger:            log,
	})
	// A full file system gets advice on where room is needed.
	err = restore.DiskFullAdvice(err, o.StateDir, o.PKIDir, o.EncryptionDir, filepath.Dir(o.ConfigFile))
	if res == nil {
		return nil, err
	}
	// The engine logged its warnings as they happened: add them to the result only.
	logger := env.Log
	env.Log = nil
	for _, w := range res.Warnings {
		env.Warn("%s", w)
	}
	env.Log = logger
	out := &ansiblemod.Result{
		Changed: res.Changed,
		Msg:     res.Message,
		Values: map[string]any{
			"restore_id":         res.RestoreID,
			"archive":            res.Archive,
			"plan":               res.Plan,
			"steps":              res.Steps,
			"device_preparation": res.DevicePrep,
			"database_load":      res.DatabaseLoad,
			"old_database":       res.OldDatabase,
			"rolled_back":        res.RolledBack,
			"drift":              res.Drift,
			"duration":           res.Duration.Seconds(),
		},
	}
	if res.PasswordSync != nil {
		out.Values["password_sync"] = res.PasswordSync
	}
	if res.Relabeled != nil {
		out.Values["selinux_relabeled"] = res.Relabeled
	}
	if !res.AlreadyRestoredAt.IsZero() {
		out.Values["already_restored_at"] = res.AlreadyRestoredAt
	}
	if res.Diff != nil {
		out.Diff = &ansiblemod.Diff{Before: res.Diff.Before, After: res.Diff.After}
	}
	if out.Msg == "" && o.Path == "" && !o.Rollback {
		out.Msg = "device preparation done"
		if env.CheckMode {
			out.Msg = "check mode: device preparation would run; nothing was changed"
		}
	}
	return out, err
}

// App is the binary: an Ansible module, or a CLI for people.
var App = cli.App[Options]{
	Module:     ansiblemod.Module[Options]{Name: "flightctl_restore", Run: run},
	Short:      "Restore a Flight Control server from a backup archive",
	Long:       "Restores a Flight Control server on a systemd/Podman host, or a Kubernetes/Helm install through the Kubernetes API (deployment_type kubernetes), from an archive made by flightctl_backup or upstream flightctl-backup. The archive is verified before anything is touched; the restore is journaled (re-run it to finish an interrupted one, or use --rollback to undo it) and rolled back on failure. Without an archive it runs device preparation only.",
	Positional: []string{"path"},
	Human:      human,
	Personalities: []cli.Personality{{
		Name:        "flightctl-restore",
		Use:         "flightctl-restore [archive-path] [flags]",
		VersionLine: "Flight Control Restore Version: %s",
		Long: "Restores a Flight Control server from an archive made by flightctl-backup (upstream's or ours): verified before anything is touched, journaled, rolled back on failure. " +
			"Without an archive argument it runs device preparation only, as the Red Hat runbooks do after a database restored by other means: " +
			"it says what it will do (KV store flushed, devices marked AwaitingReconnect) and refuses while application units are running (stop them first, or give --allow-running-units). " +
			"DB_PASSWORD and KV_PASSWORD are read from the environment.",
		Args:  cobra.MaximumNArgs(1),
		Words: map[string]string{"path": "the archive argument", "keep_old_db": "--keep-old-db"},
		Flags: upstreamFlags,
	}},
}

// upstreamFlags are upstream flightctl-restore's flags (UPSTREAM §1.2).
func upstreamFlags(fs *pflag.FlagSet) func(args []string) (map[string]any, error) {
	shared := cli.RegisterUpstreamFlags(fs)
	keep := fs.Bool("keep-old-db", false, "keep the pre-restore database as <db>_old_<id>")
	return func(args []string) (map[string]any, error) {
		opts := map[string]any{"keep_old_db": *keep, "kv_container": *shared.KVContainer}
		if len(args) == 1 {
			opts["path"] = args[0]
		}
		// Upstream's Kubernetes flags, registered with the shared ones.
		for flag, option := range map[string]string{"namespace": "namespace", "internal-namespace": "internal_namespace"} {
			if f := fs.Lookup(flag); f != nil && f.Changed && f.Value.String() != "" {
				opts[option] = f.Value.String()
			}
		}
		return opts, shared.Apply(opts)
	}
}

// estateName is this server's estate: the one given, else the host name (the default of
// flightctl_backup's estate_name).
func estateName(given string) string {
	if given != "" {
		return given
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return ""
}

func main() { cli.Main(App) }
