// flightctl_archive_verify checks a Flight Control backup archive: its checksum, its gzip
// and tar structure, metadata.json, and every manifest entry. It changes nothing.
package main

import (
	"context"
	"fmt"
	"io"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/signature"
)

// Options are the module's options; the sidecar flightctl_archive_verify.yml documents them.
type Options struct {
	Path                   string `ansible:"path,required,abspath" help:"the archive (.tar.gz) to verify"`
	ChecksumFile           string `ansible:"checksum_file,abspath" help:"the checksum file (default: <path>.sha256)"`
	RequireChecksum        bool   `ansible:"require_checksum" default:"true" help:"fail when the checksum file is missing"`
	ExpectedVersion        string `ansible:"expected_version" help:"fail unless the archive was made from this server release"`
	ExpectedDeploymentType string `ansible:"expected_deployment_type" choices:"podman,kubernetes" help:"fail unless the archive was made on this deployment type"`
	TrustedKeysPath        string `ansible:"trusted_keys_path,abspath" help:"an allowed_signers file (or .pub lines) of the keys backups are signed with; with it an unsigned or wrongly signed archive fails"`
	TrustedKeys            string `ansible:"trusted_keys" help:"trusted public keys given inline, one per line, in the same format"`
	AllowUnsigned          bool   `ansible:"allow_unsigned" default:"false" help:"with trusted keys, accept an archive that has no signature (an upstream archive), with a warning"`
	SignatureFile          string `ansible:"signature_file,abspath" help:"the signature (default: <path>.sig)"`
	MaxExpansion           int    `ansible:"max_expansion" default:"200" min:"1" help:"how many times its compressed size the archive may inflate to (past the first 64 MiB)"`
	MaxPKISize             int64  `ansible:"max_pki_size" default:"67108864" min:"1" help:"bytes the files under pki/ may hold in all"`
	MaxEncryptionSize      int64  `ansible:"max_encryption_size" default:"1048576" min:"1" help:"bytes the files under encryption/ may hold in all"`
	MaxConfigSize          int64  `ansible:"max_config_size" default:"16777216" min:"1" help:"bytes the files under config/ may hold in all"`
	MaxVolumeSize          int64  `ansible:"max_volume_size" default:"1073741824" min:"1" help:"bytes the PAM issuer volume archive may hold"`
}

// limits are the archive limits the options set.
func (o *Options) limits() archive.Limits {
	l := archive.DefaultLimits()
	l.MaxExpansion = float64(o.MaxExpansion)
	l.MaxPKISize, l.MaxEncryptionSize, l.MaxConfigSize, l.MaxVolumeSize = o.MaxPKISize, o.MaxEncryptionSize, o.MaxConfigSize, o.MaxVolumeSize
	return l
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	if o.Path == "" {
		return fmt.Errorf("path is empty: give the archive to verify")
	}
	return nil
}

func verify(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	env.Log.Info("verifying archive", "path", o.Path)
	trusted, err := signature.LoadTrusted(o.TrustedKeysPath, o.TrustedKeys)
	if err != nil {
		return nil, fmt.Errorf("verify archive %s: %w", o.Path, err)
	}
	report, err := archive.Verify(ctx, o.Path, archive.VerifyOptions{
		ChecksumFile:           o.ChecksumFile,
		RequireChecksum:        o.RequireChecksum,
		ExpectedVersion:        o.ExpectedVersion,
		ExpectedDeploymentType: o.ExpectedDeploymentType,
		Limits:                 o.limits(),
		CheckDump:              true,
		Signature:              archive.SignatureOptions{Trusted: trusted, File: o.SignatureFile, AllowUnsigned: o.AllowUnsigned},
	})
	if err != nil {
		return nil, fmt.Errorf("verify archive %s: %w", o.Path, err)
	}
	for _, w := range report.Warnings {
		env.Warn("%s", w)
	}
	if !report.ChecksumVerified {
		env.Warn("no checksum file beside %s: the archive's structure and manifest were checked, but not that it is the file the backup wrote", o.Path)
	}
	if !report.HasManifest {
		env.Log.Info("archive has no manifest (as upstream writes them): entries checked for structure only")
	}
	return &ansiblemod.Result{
		Changed: false,
		Msg:     fmt.Sprintf("archive %s is intact: %d entries, server %s, %s, %s", o.Path, len(report.Entries), report.Metadata.Version, report.Metadata.DeploymentType, estateLabel(report.Metadata.Estate)),
		Values: map[string]any{
			"path":              report.Path,
			"sha256":            report.SHA256,
			"size":              report.Size,
			"checksum_file":     report.ChecksumFile,
			"checksum_verified": report.ChecksumVerified,
			"has_manifest":      report.HasManifest,
			"metadata":          report.Metadata,
			"entries":           report.Entries,
			"components":        report.Components,
			"estate":            report.Metadata.Estate,
			"signature":         report.Signature,
		},
	}, nil
}

// App is the binary: an Ansible module, or a CLI for people.
var App = cli.App[Options]{
	Module:     ansiblemod.Module[Options]{Name: "flightctl_archive_verify", Run: verify},
	Short:      "Verify a Flight Control backup archive",
	Long:       "Verifies a Flight Control backup archive (ours or upstream flightctl-backup's): checksum, gzip and tar structure, metadata.json and the manifest. It changes nothing.",
	Positional: []string{"path"},
	Human:      human,
}

func human(w io.Writer, out ansiblemod.Output) {
	fmt.Fprintln(w, out["msg"])
	fmt.Fprintf(w, "sha256:     %v\nsize:       %v bytes\nchecksum:   verified=%v (%v)\n", out["sha256"], out["size"], out["checksum_verified"], out["checksum_file"])
	if md, ok := out["metadata"].(map[string]any); ok {
		fmt.Fprintf(w, "made:       %v\nversion:    %v\ntype:       %v\ndatabase:   %v\n", md["timestamp"], md["version"], md["deploymentType"], md["databaseIncluded"])
	}
	if c, ok := out["components"].(map[string]any); ok {
		fmt.Fprintf(w, "components: db=%v pki=%v encryption=%v config=%v volumes=%v\n", c["db"], c["pki"], c["encryption"], c["config"], c["volumes"])
	}
	if e, ok := out["estate"].(map[string]any); ok {
		fmt.Fprintf(w, "estate:     %v\napi:        %v\nca:         %v\n", e["name"], e["apiEndpoint"], e["caFingerprint"])
	}
}

// estateLabel names the estate an archive was made on, in the verify message.
func estateLabel(e *archive.Estate) string {
	if e == nil || e.Name == "" {
		return "estate not recorded"
	}
	s := "estate " + e.Name
	if e.APIEndpoint != "" {
		s += " (" + e.APIEndpoint + ")"
	}
	return s
}

func main() { cli.Main(App) }
