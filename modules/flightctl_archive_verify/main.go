// flightctl_archive_verify checks a Flight Control backup archive: its checksum, its gzip
// and tar structure, metadata.json, and every manifest entry. It changes nothing.
package main

import (
	"context"
	"fmt"
	"io"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archiveopts"
	"flightctl.dr/internal/cli"
)

// Options are the module's options; the sidecar flightctl_archive_verify.yml documents them.
type Options struct {
	Path                   string `ansible:"path,required,abspath" help:"the archive (.tar.gz, or .tar.gz.age encrypted) to verify"`
	ChecksumFile           string `ansible:"checksum_file,abspath" help:"the checksum file (default: <path>.sha256)"`
	RequireChecksum        bool   `ansible:"require_checksum" default:"true" help:"fail when the checksum file is missing"`
	ExpectedVersion        string `ansible:"expected_version" help:"fail unless the archive was made from this server release"`
	ExpectedDeploymentType string `ansible:"expected_deployment_type" choices:"podman,kubernetes" help:"fail unless the archive was made on this deployment type"`
	archiveopts.Acceptance
	archiveopts.Decryption
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
	sig, err := o.Signature()
	if err != nil {
		return nil, fmt.Errorf("verify archive %s: %w", o.Path, err)
	}
	ids, err := o.Identities(nil)
	if err != nil {
		return nil, fmt.Errorf("verify archive %s: %w", o.Path, err)
	}
	report, err := archive.Verify(ctx, o.Path, archive.VerifyOptions{
		// Without an identity an encrypted archive is checked as a file: checksum,
		// signature and age header, and the result says its contents were not.
		Decryption:             ids,
		CiphertextOnly:         true,
		ChecksumFile:           o.ChecksumFile,
		RequireChecksum:        o.RequireChecksum,
		ExpectedVersion:        o.ExpectedVersion,
		ExpectedDeploymentType: o.ExpectedDeploymentType,
		Limits:                 o.Limits(),
		CheckDump:              true,
		Signature:              sig,
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
	msg := fmt.Sprintf("archive %s is intact: %d entries, server %s, %s, %s", o.Path, len(report.Entries), report.Metadata.Version, report.Metadata.DeploymentType, estateLabel(report.Metadata.Estate))
	if e := report.ArchiveEncryption; e != nil && !e.ContentsVerified {
		msg = fmt.Sprintf("encrypted archive %s (to %s): its checksum and age header are intact; its contents were not checked (no identity given)", o.Path, e.RecipientTypes)
	}
	return &ansiblemod.Result{
		Changed: false,
		Msg:     msg,
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
			// Set for an encrypted archive: whom it is encrypted to, and whether its
			// contents were decrypted and verified.
			"archive_encryption": report.ArchiveEncryption,
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
