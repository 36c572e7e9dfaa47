// flightctl_backup makes a full, upstream-compatible backup of a Flight Control server on
// a systemd/Podman host: database dump, PKI, encryption keys, service config and the PAM
// issuer volume, streamed into one archive with its .sha256 beside it. Invoked as
// flightctl-backup it accepts upstream's flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archiveopts"
	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kubeopts"
	"flightctl.dr/internal/signature"
)

// Options are the module's options; the sidecar flightctl_backup.yml documents them.
type Options struct {
	OutputDir         string `ansible:"output_dir,required,abspath" help:"directory that receives the archive and its .sha256 (created when missing)"`
	DeploymentType    string `ansible:"deployment_type" default:"auto" choices:"auto,podman,kubernetes" help:"the installation type; auto asks systemd and looks for a kubeconfig"`
	SystemdScope      string `ansible:"systemd_scope" default:"system" choices:"system,user" help:"the systemd manager running the units"`
	SystemdBusAddress string `ansible:"systemd_bus_address" help:"D-Bus address of that manager (default: the scope's usual one)"`
	ServerVersion     string `ansible:"server_version" help:"the server release recorded in metadata.json (default: discovered)"`
	DBAccess          string `ansible:"db_access" default:"container" choices:"container,direct" help:"run pg_dump inside the database container, or locally against db_host"`
	DBContainer       string `ansible:"db_container" default:"flightctl-db" help:"the database container"`
	DBHost            string `ansible:"db_host" default:"127.0.0.1" help:"database host (as seen from inside the container with container access)"`
	DBPort            int    `ansible:"db_port" default:"5432" min:"1" max:"65535" help:"database port"`
	DBName            string `ansible:"db_name" help:"the database (default: db.name of the service config, else flightctl)"`
	DBUser            string `ansible:"db_user" default:"flightctl_app" help:"the user pg_dump connects as"`
	DBPassword        string `ansible:"db_password,secret" help:"its password (default: the podman secret db_password_secret)"`
	DBPasswordSecret  string `ansible:"db_password_secret" default:"flightctl-postgresql-user-password" help:"the podman secret holding the password when db_password is not given"`
	APIContainer      string `ansible:"api_container" default:"flightctl-api" help:"the container whose image tag is the server version"`
	PKIDir            string `ansible:"pki_dir,abspath" default:"/etc/flightctl/pki" help:"the PKI directory (required)"`
	EncryptionDir     string `ansible:"encryption_dir,abspath" default:"/etc/flightctl/encryption" help:"the data-at-rest key directory (optional)"`
	ConfigFile        string `ansible:"config_file,abspath" default:"/etc/flightctl/service-config.yaml" help:"the service configuration (required)"`
	PAMVolume         string `ansible:"pam_volume" default:"flightctl-pam-issuer-etc" help:"the PAM issuer volume (optional); empty to skip it"`
	CompressionLevel  int    `ansible:"compression_level" default:"2" min:"1" max:"9" help:"gzip level, 1 (fastest) to 9 (smallest); 2 nearly keeps up with pg_dump on a 2-CPU host"`
	Compression       string `ansible:"compression" default:"fixed" choices:"adaptive,fixed" help:"adaptive: compression_level while the compressor keeps pace with the dump, faster settings (level 1, then Huffman-only) while it falls behind; fixed: compression_level throughout"`
	EstateName        string `ansible:"estate_name" help:"the estate's name recorded in metadata.json, with the API endpoint and CA fingerprint the server gives (default: the host name)"`
	SigningKey        string `ansible:"signing_key,secret,multiline" help:"an OpenSSH private key (its content) that signs the archive: <archive>.sig beside it, checked by restores with trusted keys"`
	SigningKeyPath    string `ansible:"signing_key_path,abspath" help:"a file on the host holding that private key, instead of signing_key"`
	SigningPassphrase string `ansible:"signing_key_passphrase,secret" help:"the signing key's passphrase, when it has one"`
	// Encryption of the archive with age: encryption_recipients, encryption_recipients_file,
	// encryption_passphrase.
	archiveopts.Encryption

	// Kubernetes / Helm (deployment_type kubernetes); names as in kubernetes.core.
	kubeopts.Connection
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	if strings.TrimSpace(o.OutputDir) == "" {
		return errors.New("output_dir is empty: give the directory that receives the archive")
	}
	if o.DBPort <= 0 || o.DBPort > 65535 {
		return fmt.Errorf("db_port %d is not a TCP port (1-65535)", o.DBPort)
	}
	if o.CompressionLevel < 1 || o.CompressionLevel > 9 {
		return fmt.Errorf("compression_level %d is out of range: use 1 (fastest) to 9 (smallest)", o.CompressionLevel)
	}
	return nil
}

// sourceOptions name the estate the backup reads (estate.OpenBackupSource builds it).
func (o *Options) sourceOptions(env *ansiblemod.Env) estate.BackupSourceOptions {
	c := estate.DefaultPodmanConfig()
	c.PKIDir, c.EncryptionDir, c.ConfigFile, c.PAMVolume = o.PKIDir, o.EncryptionDir, o.ConfigFile, o.PAMVolume
	c.DBAccess, c.DBContainer, c.DBHost, c.DBPort = estate.DBAccess(o.DBAccess), o.DBContainer, o.DBHost, o.DBPort
	c.DBName, c.DBUser, c.DBPassword = o.DBName, o.DBUser, o.DBPassword
	c.DBPasswordSecret, c.APIContainer = o.DBPasswordSecret, o.APIContainer
	c.SystemdScope, c.SystemdBusAddress = o.SystemdScope, o.SystemdBusAddress
	return estate.BackupSourceOptions{
		DeploymentType: o.DeploymentType,
		Podman:         c,
		Kubernetes:     o.kubernetesConfig(),
		ServerVersion:  o.ServerVersion,
		EstateName:     o.EstateName,
		Logger:         env.Log,
	}
}

// backupOptions are the engine's: where the archive goes and how it is written.
func (o *Options) backupOptions(env *ansiblemod.Env) backup.Options {
	return backup.Options{
		OutputDir:        o.OutputDir,
		CompressionLevel: o.CompressionLevel,
		Compression:      o.Compression,
		Logger:           env.Log,
	}
}

// kubernetesConfig maps the options onto a Helm install. The database options keep their
// meaning inside the database pod (db_host 127.0.0.1, db_port 5432); the credentials come
// from the Secret flightctl-db-app-secret unless db_password is given (then with db_user).
// With db_access direct, the default db_host means the Service flightctl-db.<internal_namespace>.svc.
func (o *Options) kubernetesConfig() estate.KubernetesConfig {
	host := o.DBHost
	if o.DBAccess == string(estate.DBAccessDirect) && host == "127.0.0.1" {
		host = ""
	}
	return o.Install(kubeopts.Database{Access: o.DBAccess, Host: host, Port: o.DBPort, Name: o.DBName, User: o.DBUser, Password: o.DBPassword})
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	opts := o.backupOptions(env)
	signer, err := signature.LoadSigner(o.SigningKeyPath, o.SigningKey, o.SigningPassphrase)
	if err != nil {
		return nil, fmt.Errorf("signing_key: %w", err)
	}
	opts.Signer = signer
	if opts.Encryption, err = o.Recipients(); err != nil {
		return nil, err
	}
	archiveName := "flightctl-backup-<time>.tar.gz"
	if opts.Encryption != nil {
		archiveName += archive.EncryptedSuffix
	}
	src, closeSource, err := estate.OpenBackupSource(ctx, o.sourceOptions(env))
	if err != nil {
		return nil, err
	}
	defer closeSource()
	if env.CheckMode {
		p, err := backup.Plan(ctx, src, opts)
		if err != nil {
			return nil, err
		}
		for _, w := range p.Warnings {
			env.Warn("%s", w)
		}
		values := map[string]any{
			"plan":            p.Estate,
			"components":      p.Components,
			"server_version":  p.ServerVersion,
			"deployment_type": p.DeploymentType,
			"output_dir":      p.OutputDir,
			"estimated_size":  p.Estate.EstimatedSize,
			"free_space":      p.FreeSpace,
			"estate":          p.Identity,
			"encrypted":       opts.Encryption != nil,
		}
		res := &ansiblemod.Result{
			Changed: true,
			Msg:     fmt.Sprintf("a backup of %s would be written to %s (at most %d bytes before compression, %d free)", describe(p.Components), p.OutputDir, p.Estate.EstimatedSize, p.FreeSpace),
			Values:  values,
		}
		if env.Diff {
			res.Diff = &ansiblemod.Diff{Before: map[string]any{"output_dir": p.OutputDir}, After: map[string]any{"output_dir": p.OutputDir, "archive": archiveName, "components": p.Components}}
		}
		return res, nil
	}
	r, err := backup.Run(ctx, src, opts)
	if err != nil {
		return nil, err
	}
	for _, w := range r.Warnings {
		env.Warn("%s", w)
	}
	return &ansiblemod.Result{
		Changed: true,
		Msg:     fmt.Sprintf("Backup completed successfully: %s", r.Archive),
		Values: map[string]any{
			"archive":       r.Archive,
			"checksum_file": r.ChecksumFile,
			"sha256":        r.SHA256,
			"size":          r.Size,
			"metadata":      r.Metadata,
			"components":    r.Components,
			"captured":      r.Captured,
			"duration":      r.Duration.Seconds(),
			"estate":        r.Metadata.Estate,
			// The signature beside the archive; "" without a signing key.
			"signature_file": r.SignatureFile,
			// Encrypted with age (.tar.gz.age), to these public keys (or a passphrase).
			"encrypted":  opts.Encryption != nil,
			"recipients": recipientsOf(opts.Encryption),
		},
	}, nil
}

// recipientsOf lists the public keys an archive is encrypted to (empty: not encrypted).
func recipientsOf(r *encrypt.Recipients) []string {
	if r == nil {
		return []string{}
	}
	return r.Public
}

// describe names the parts of the server a backup holds.
func describe(c archive.Components) string {
	var parts []string
	for _, p := range []struct {
		on   bool
		name string
	}{{c.Database, "database"}, {c.PKI, "PKI"}, {c.Encryption, "encryption keys"}, {c.Config, "service config"}, {c.Volumes, "PAM issuer volume"}} {
		if p.on {
			parts = append(parts, p.name)
		}
	}
	return strings.Join(parts, ", ")
}

// App is the binary: an Ansible module, a CLI for people, and upstream's flightctl-backup.
var App = cli.App[Options]{
	Module: ansiblemod.Module[Options]{Name: "flightctl_backup", Run: run},
	Short:  "Back up a Flight Control server (systemd/Podman host, or Kubernetes/Helm through the API)",
	Long: "Backs up a Flight Control server installed from the RPM (systemd units running Podman containers): " +
		"database dump, PKI, encryption keys, service config and PAM issuer volume, streamed into one " +
		"flightctl-backup-<time>.tar.gz with its .sha256, in upstream's format. Nothing is staged on disk; " +
		"an interrupted backup leaves nothing behind.",
	Human: human,
	Personalities: []cli.Personality{{
		Name:        "flightctl-backup",
		Use:         "flightctl-backup [flags]",
		VersionLine: "Flight Control Backup Version: %s",
		Long: "Backs up a Flight Control server into flightctl-backup-<time>.tar.gz with its .sha256, in upstream's format. " +
			"Upstream's flags work, and --config FILE as the Red Hat runbooks give it (default /etc/flightctl/service-config.yaml).",
		Args:  cobra.NoArgs,
		Words: map[string]string{"output_dir": "--output"},
		Flags: upstreamFlags,
	}},
}

// upstreamFlags are upstream flightctl-backup's flags (UPSTREAM §1.1).
func upstreamFlags(fs *pflag.FlagSet) func(args []string) (map[string]any, error) {
	output := fs.String("output", ".", "output directory for the backup archive")
	release := fs.String("helm-release-name", "", "Helm release name (Kubernetes only)")
	shared := cli.RegisterUpstreamFlags(fs)
	return func([]string) (map[string]any, error) {
		opts := map[string]any{"output_dir": *output}
		if *release != "" {
			opts["helm_release"] = *release
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

func human(w io.Writer, out ansiblemod.Output) {
	if msg, _ := out["msg"].(string); msg != "" {
		fmt.Fprintln(w, msg)
	}
	if a, ok := out["archive"]; ok {
		fmt.Fprintf(w, "archive:    %v\nchecksum:   %v\nsha256:     %v\nsize:       %v bytes\n", a, out["checksum_file"], out["sha256"], out["size"])
	}
	if c, ok := out["components"].(map[string]any); ok {
		fmt.Fprintf(w, "components: db=%v pki=%v encryption=%v config=%v volumes=%v\n", c["db"], c["pki"], c["encryption"], c["config"], c["volumes"])
	}
}

func main() { cli.Main(App) }
