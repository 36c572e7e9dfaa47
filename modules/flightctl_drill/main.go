// flightctl_drill proves that a Flight Control backup restores: it verifies the archive,
// loads its dump into a scratch database with the restore's loader and dump checks,
// compares the rows with what the backup recorded, plans device preparation there,
// checks the archive's PKI and drops the scratch database. Nothing of the live server is
// stopped or changed; the module fails when any check fails.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archiveopts"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/drill"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
)

// Options are the module's options; the sidecar flightctl_drill.yml documents them.
type Options struct {
	Path            string `ansible:"path,abspath" help:"the archive to drill; without it, the newest archive in archive_dir"`
	ArchiveDir      string `ansible:"archive_dir,abspath" help:"the directory of the estate's archives, whose newest archive (with its checksum file) is drilled when path is not given"`
	ChecksumFile    string `ansible:"checksum_file,abspath" help:"the checksum file (default: <path>.sha256)"`
	DrillServer     string `ansible:"drill_server" default:"estate" choices:"estate,throwaway" help:"where the scratch database goes: estate, beside the live database on the estate's own PostgreSQL (named <db>_drill_<id>, after a free-space check); throwaway, a PostgreSQL of the dump's major version the drill starts on this machine and removes afterwards"`
	ThrowawayBinDir string `ansible:"throwaway_bin_dir,abspath" help:"with drill_server throwaway: the directory of initdb, pg_ctl, postgres and psql (default: the dump's major version's, /usr/lib/postgresql/<major>/bin or /usr/pgsql-<major>/bin)"`
	ThrowawayDir    string `ansible:"throwaway_dir,abspath" help:"with drill_server throwaway: where its temporary directory is made (default: the system's temporary directory)"`
	StateDir        string `ansible:"state_dir,abspath" default:"/var/lib/flightctl-dr" help:"where the drill records what it makes, so that the next drill removes what a killed one left"`
	CertWarnDays    int    `ansible:"cert_warn_days" default:"30" min:"0" max:"3650" help:"a CA or server certificate expiring within this many days gives a warning (an expired one fails the drill)"`

	DBAccess         string `ansible:"db_access" default:"container" choices:"container,direct" help:"drill_server estate: run psql inside the database container, or locally against db_host"`
	DBContainer      string `ansible:"db_container" default:"flightctl-db" help:"the database container"`
	DBHost           string `ansible:"db_host" help:"database host for direct access and device preparation's plan (default: direct 127.0.0.1; container: where podman publishes the container's 5432/tcp, else its IP)"`
	DBPort           int    `ansible:"db_port" min:"0" max:"65535" help:"database port (default: direct 5432; container: found with podman port)"`
	DBName           string `ansible:"db_name" help:"the live database (default: db.name of the service config, else flightctl)"`
	DBAdminUser      string `ansible:"db_admin_user" help:"superuser that creates, loads and drops the scratch database (default: postgres in the container, admin when direct)"`
	DBAdminPassword  string `ansible:"db_admin_password,secret" help:"its password (direct access; default: the podman secret flightctl-postgresql-master-password)"`
	DBUser           string `ansible:"db_user" default:"flightctl_app" help:"application user that device preparation's plan connects as"`
	DBPassword       string `ansible:"db_password,secret" env:"DB_PASSWORD" help:"its password (default: the podman secret db_password_secret)"`
	DBPasswordSecret string `ansible:"db_password_secret" default:"flightctl-postgresql-user-password" help:"the podman secret holding the application user's password"`
	KVContainer      string `ansible:"kv_container" default:"flightctl-kv" help:"the KV container, asked where it publishes 6379/tcp (container access)"`
	KVHost           string `ansible:"kv_host" help:"KV store host, read (never written) by device preparation's plan (default: direct 127.0.0.1; container: where podman publishes kv_container's 6379/tcp)"`
	KVPort           int    `ansible:"kv_port" min:"0" max:"65535" help:"KV store port (default: direct 6379; container: found with podman port)"`
	KVPassword       string `ansible:"kv_password,secret" env:"KV_PASSWORD" help:"KV password (default: the podman secret kv_password_secret)"`
	KVPasswordSecret string `ansible:"kv_password_secret" default:"flightctl-kv-password" help:"the podman secret holding the KV password"`
	ConfigFile       string `ansible:"config_file,abspath" default:"/etc/flightctl/service-config.yaml" help:"the live service configuration (its db.name)"`
	archiveopts.Acceptance
	archiveopts.Decryption
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	if o.Path == "" && o.ArchiveDir == "" {
		return errors.New("give path (the archive to drill) or archive_dir (the directory whose newest archive is drilled)")
	}
	if o.DBPort < 0 || o.DBPort > 65535 || o.KVPort < 0 || o.KVPort > 65535 {
		return errors.New("db_port and kv_port must be TCP ports (1-65535)")
	}
	if o.StateDir == "" {
		return errors.New("state_dir is empty: the drill records what it makes there")
	}
	return nil
}

// estateServer is the estate's own PostgreSQL, reached as flightctl_restore reaches it;
// its unit manager refuses every unit, so the drill cannot stop the server.
func (o *Options) estateServer(ctx context.Context, env *ansiblemod.Env) (*drill.EstateServer, error) {
	c := estate.DefaultPodmanConfig()
	c.ConfigFile, c.PAMVolume = o.ConfigFile, ""
	c.DBAccess, c.DBContainer, c.DBHost, c.DBPort, c.DBName = estate.DBAccess(o.DBAccess), o.DBContainer, o.DBHost, o.DBPort, o.DBName
	c.DBUser, c.DBPassword, c.DBPasswordSecret, c.KVPasswordSecret = o.DBUser, o.DBPassword, o.DBPasswordSecret, o.KVPasswordSecret
	c.DBAdminUser, c.DBAdminPassword = o.DBAdminUser, o.DBAdminPassword
	if c.DBAdminUser == "" {
		c.DBAdminUser = "postgres"
		if c.DBAccess == estate.DBAccessDirect {
			c.DBAdminUser = "admin"
		}
	}
	c.KVContainer, c.KVHost, c.KVPort, c.KVPassword = o.KVContainer, o.KVHost, o.KVPort, o.KVPassword
	exec := runner.Exec{}
	if c.DBAccess == estate.DBAccessDirect && c.DBAdminPassword == "" {
		if pw, err := (&podman.Client{Runner: exec}).ReadSecret(ctx, estate.SecretDBMasterPassword); err == nil {
			c.DBAdminPassword = pw
		}
	}
	target := &estate.PodmanRestore{Config: c, Runner: exec, UnitManager: drill.NoUnits{}, Logger: env.Log}
	if err := target.Open(ctx); err != nil {
		return nil, err
	}
	return &drill.EstateServer{Target: target}, nil
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	sig, err := o.Signature()
	if err != nil {
		return nil, fmt.Errorf("restore drill: %w", err)
	}
	ids, err := o.Identities(nil)
	if err != nil {
		return nil, fmt.Errorf("restore drill: %w", err)
	}
	var server drill.Server
	if o.DrillServer == drill.ServerThrowaway {
		server = &drill.Throwaway{BinDir: o.ThrowawayBinDir, Parent: o.ThrowawayDir, Logger: env.Log}
	} else {
		es, err := o.estateServer(ctx, env)
		if err != nil {
			return nil, fmt.Errorf("restore drill: %w", err)
		}
		server = es
	}
	rep, err := drill.Run(ctx, drill.Options{
		ArchivePath: o.Path, ArchiveDir: o.ArchiveDir, ChecksumFile: o.ChecksumFile,
		Limits: o.Limits(), Signature: sig, Decryption: ids,
		Server: server, StateDir: o.StateDir, CertWarnDays: o.CertWarnDays,
		Logger: env.Log,
	})
	if rep == nil {
		return nil, err
	}
	logger := env.Log
	env.Log = nil // the engine logged its warnings already
	for _, w := range rep.Warnings {
		env.Warn("%s", w)
	}
	env.Log = logger
	values, verr := reportValues(rep)
	if verr != nil {
		return nil, verr
	}
	first, _, _ := strings.Cut(rep.Summary, "\n")
	return &ansiblemod.Result{Changed: false, Msg: first, Values: values}, err
}

// reportValues turns the report into the module's return values, one key per field.
func reportValues(rep *drill.Report) (map[string]any, error) {
	b, err := json.Marshal(rep)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	delete(m, "warnings") // Ansible's own warnings carry them
	return m, nil
}

// App is the binary: an Ansible module, or a CLI for people.
var App = cli.App[Options]{
	Module:     ansiblemod.Module[Options]{Name: "flightctl_drill", Run: run},
	Short:      "Drill a restore of a Flight Control backup without touching the server",
	Long:       "Verifies a Flight Control backup archive, loads its dump into a scratch database (beside the live one, or on a throwaway PostgreSQL) with the restore's loader and checks, compares the rows with what the backup recorded, plans device preparation, checks the PKI's CA chain and certificate expiry, then drops the scratch database. Nothing of the running server is stopped or changed. It fails when any check fails.",
	Positional: []string{"path"},
	Human:      human,
}

func human(w io.Writer, out ansiblemod.Output) {
	if s, _ := out["summary"].(string); s != "" {
		fmt.Fprintln(w, s)
		return
	}
	cli.PrintHuman(w, out)
}

func main() { cli.Main(App) }
