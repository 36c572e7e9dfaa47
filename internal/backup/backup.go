// Package backup makes a full, upstream-compatible backup of a Flight Control server: a
// Source (internal/backup/source: a Podman / systemd host or a Helm install, which
// internal/estate builds with estate.OpenBackupSource) yields its sources, which are
// streamed straight into one archive (SPEC §2). Nothing is staged on disk: the database
// dump is compressed while pg_dump still runs, and the archive only gets its name once
// complete and synced. The engine imports no estate.
package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/backup/source"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/humanize"
	"flightctl.dr/internal/signature"
	"flightctl.dr/internal/version"
)

// Source is an installation a backup reads from (estate.OpenBackupSource builds one).
type Source = source.Source

// Options configure a backup.
type Options struct {
	// OutputDir receives the archive and its .sha256; created (0755) when missing.
	OutputDir string
	// CompressionLevel 1..9, 0 for archive.DefaultCompressionLevel; Concurrency 0 for every CPU.
	CompressionLevel int
	Concurrency      int
	// Compression is archive.CompressionAdaptive or archive.CompressionFixed; "" is
	// archive.DefaultCompression.
	Compression string
	// Signer, when set, signs the archive: <archive>.sig beside it, an OpenSSH SSHSIG
	// signature that restores with trusted keys check (and ssh-keygen -Y verify too).
	Signer *signature.Signer
	// Encryption, when set, encrypts the archive with age as it is written: no plaintext
	// byte reaches the disk; flightctl-backup-<time>.tar.gz.age, its .sha256 (and
	// signature) of the encrypted file, its metadata listing the recipients.
	Encryption *encrypt.Recipients

	Logger *slog.Logger
	// Now gives the archive's time (default time.Now).
	Now func() time.Time

	// ignoreFreeSpace lets tests reach a full disk while writing.
	ignoreFreeSpace bool
}

// Validate fills defaults and checks the options.
func (o *Options) Validate() error {
	if strings.TrimSpace(o.OutputDir) == "" {
		return errors.New("output_dir is required: the directory that receives the archive")
	}
	if o.CompressionLevel < 0 || o.CompressionLevel > 9 {
		return fmt.Errorf("compression level %d is out of range: use 1 (fastest) to 9 (smallest), or 0 for the default", o.CompressionLevel)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

func (o *Options) log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Preview is what a backup would do, from Plan (check mode).
type Preview struct {
	DeploymentType source.Type `json:"deployment_type"`
	ServerVersion  string      `json:"server_version"`
	OutputDir      string      `json:"output_dir"`
	OutputDirFresh bool        `json:"output_dir_missing"`
	FreeSpace      uint64      `json:"free_space"`
	// EstimatedArchiveSize is what the free-space check wants (EstimateArchiveSize).
	EstimatedArchiveSize int64              `json:"estimated_archive_size"`
	Estate               *source.Plan       `json:"plan"`
	Components           archive.Components `json:"components"`
	// Identity is the estate the archive records (metadata.json estate).
	Identity *archive.Estate `json:"estate"`
	Warnings []string        `json:"warnings"`
}

// Result is a completed backup.
type Result struct {
	Archive      string                     `json:"archive"`
	ChecksumFile string                     `json:"checksum_file"`
	SHA256       string                     `json:"sha256"`
	Size         int64                      `json:"size"`
	Metadata     archive.Metadata           `json:"metadata"`
	Components   archive.Components         `json:"components"`
	Captured     []source.CapturedComponent `json:"captured"`
	Warnings     []string                   `json:"warnings"`
	Duration     time.Duration              `json:"duration"`

	// SignatureFile is the archive's signature; "" when no signing key is configured.
	SignatureFile string `json:"signature_file,omitempty"`
}

// Plan checks every precondition of a backup and reports what would be captured,
// writing nothing: the deployment type, the server version, the estate's sources and
// credentials, the output directory's writability and its free space against the
// estimated size.
func Plan(ctx context.Context, src Source, opts Options) (*Preview, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("backup: no source to back up")
	}
	p, err := prepare(ctx, src, &opts)
	_ = src.Close()
	return p, err
}

// prepare resolves the deployment type (the source detects it when asked to) and
// establishes the server version, the source's plan, the output directory and the
// identity. When the source reads early (a backup asked it to, Run), its dump started
// with the checks; the caller closes the source when it does not write the backup. The
// server version is looked up beside the source's checks: on a Podman host each is a
// podman call.
func prepare(ctx context.Context, src Source, opts *Options) (*Preview, error) {
	log := opts.log()
	typ, err := src.DeploymentType(ctx)
	if err != nil {
		return nil, err
	}
	log.Info("Deployment type: " + string(typ))
	var ver string
	var verErr error
	verDone := make(chan struct{})
	go func() {
		defer close(verDone)
		ver, verErr = src.ServerVersion(ctx)
	}()
	outDir, fresh, free, err := checkOutputDir(opts.OutputDir)
	var plan *source.Plan
	if err == nil {
		plan, err = src.Plan(ctx)
	}
	<-verDone
	// The errors in the order the checks had when they ran one after the other.
	for _, e := range []error{verErr, err} {
		if e != nil {
			_ = src.Close()
			return nil, e
		}
	}
	if ver == "" {
		// The plan gives it (on Kubernetes, the Helm release's chart appVersion).
		ver = plan.ServerVersion
	}
	if ver == "" {
		_ = src.Close()
		return nil, errors.New("cannot find the Flight Control server version: set server_version to the release this server runs")
	}
	need := EstimateArchiveSize(plan)
	if !opts.ignoreFreeSpace && uint64(need) > free {
		_ = src.Close()
		return nil, fmt.Errorf("not enough free space in %s: %s free, the archive needs about %s (the database is %s on disk, its compressed dump about half that at most, plus the files): free some space or choose another output_dir",
			outDir, humanize.Bytes(int64(free)), humanize.Bytes(need), humanize.Bytes(plan.EstimatedSize))
	}
	p := &Preview{
		DeploymentType:       typ,
		ServerVersion:        ver,
		OutputDir:            outDir,
		OutputDirFresh:       fresh,
		FreeSpace:            free,
		EstimatedArchiveSize: need,
		Estate:               plan,
		Components:           planComponents(plan),
		Warnings:             append([]string{}, plan.Warnings...),
	}
	var idWarnings []string
	p.Identity, idWarnings = src.Identity()
	p.Warnings = append(p.Warnings, idWarnings...)
	return p, nil
}

// checkOutputDir returns the absolute output directory, whether it would be created, and
// the free space where it is or would be. It writes nothing.
func checkOutputDir(dir string) (string, bool, uint64, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, 0, fmt.Errorf("output directory %s: %w", dir, err)
	}
	existing, fresh := abs, false
	for {
		st, err := os.Stat(existing)
		if err == nil {
			if !st.IsDir() {
				if existing == abs {
					return "", false, 0, fmt.Errorf("output directory %s is not a directory: choose another output_dir", abs)
				}
				return "", false, 0, fmt.Errorf("output directory %s cannot be created: %s is not a directory", abs, existing)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", false, 0, fmt.Errorf("output directory %s: %w", abs, err)
		}
		fresh = true
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	// access(2) reports a read-only filesystem even to root, who ignores modes.
	if err := syscall.Access(existing, 2 /* W_OK */); err != nil {
		verb := "is not writable"
		if fresh {
			verb = "cannot be created (" + existing + " is not writable)"
		}
		return "", false, 0, fmt.Errorf("output directory %s %s: %w: choose a writable output_dir", abs, verb, err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(existing, &sfs); err != nil {
		return "", false, 0, fmt.Errorf("output directory %s: free space: %w", abs, err)
	}
	return abs, fresh, sfs.Bavail * uint64(sfs.Bsize), nil
}

func planComponents(plan *source.Plan) archive.Components {
	c := archive.Components{Database: plan.DatabaseIncluded}
	for _, s := range plan.Sources {
		switch s.Component {
		case source.ComponentPKI:
			c.PKI = s.Present
		case source.ComponentEncryption:
			c.Encryption = s.Present
		case source.ComponentConfig:
			c.Config = s.Present
		case source.ComponentVolumes:
			c.Volumes = s.Present
		}
	}
	return c
}

// Run makes the backup. On any failure, or when ctx is cancelled, nothing is left in the
// output directory: no partial archive, no checksum, no temporary file.
func Run(ctx context.Context, src Source, opts Options) (*Result, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if src == nil {
		return nil, errors.New("backup: no source to back up")
	}
	start := time.Now()
	log := opts.log()
	log.Info("Starting Flight Control backup operation")
	log.Info("Output directory: " + opts.OutputDir)
	if e, ok := src.(source.EarlyReader); ok {
		e.ReadEarly()
	}
	preview, err := prepare(ctx, src, &opts)
	if err != nil {
		return nil, err
	}
	// A no-op once WriteBackup has taken the dump that started early.
	defer src.Close()
	log.Info(fmt.Sprintf("Starting backup workflow (deployment type: %s)", preview.DeploymentType))
	if err := os.MkdirAll(preview.OutputDir, 0o755); err != nil {
		return nil, fmt.Errorf("create output directory %s: %w: choose a writable output_dir", preview.OutputDir, err)
	}
	w, err := archive.NewWriter(ctx, archive.WriterOptions{
		Dir:              preview.OutputDir,
		Now:              opts.Now,
		CompressionLevel: opts.CompressionLevel,
		Compression:      opts.Compression,
		Concurrency:      opts.Concurrency,
		Logger:           opts.Logger,
		Encryption:       opts.Encryption,
	})
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	// Abort is a no-op after Commit; on any failure it drops the unnamed archive.
	defer w.Abort()

	outcome, err := src.WriteBackup(ctx, w, preview.Estate)
	if err != nil {
		return nil, withCancel(ctx, diskFull(err, preview.OutputDir))
	}
	meta := archive.Metadata{
		Timestamp:        opts.Now().UTC(), // after collection, as upstream
		Version:          preview.ServerVersion,
		DeploymentType:   string(preview.DeploymentType),
		DatabaseIncluded: outcome.DatabaseIncluded,
		Producer:         "flightctl.dr " + version.Version,
		Extra:            outcome.Extra,
		Estate:           preview.Identity,
	}
	res, err := w.Commit(meta)
	if err != nil {
		return nil, withCancel(ctx, diskFull(fmt.Errorf("backup: %w", err), preview.OutputDir))
	}
	log.Info("Archive created: " + res.Path)
	log.Info("Checksum generated: " + res.ChecksumPath)
	sigFile := ""
	if opts.Signer != nil {
		if sigFile, err = opts.Signer.SignFile(res.Path); err != nil {
			return nil, fmt.Errorf("backup: the archive %s was written but not signed: %w; restores that require signatures will refuse it: fix the signing key and back up again", res.Path, err)
		}
		log.Info("Signature written: "+sigFile, "key", opts.Signer.Fingerprint())
	}
	log.Info("Backup completed successfully")
	log.Info("Archive: " + res.Path)
	log.Info("Checksum: " + res.ChecksumPath)

	comps := archive.Components{Database: outcome.DatabaseIncluded}
	for _, c := range outcome.Components {
		switch c.Component {
		case source.ComponentPKI:
			comps.PKI = true
		case source.ComponentEncryption:
			comps.Encryption = true
		case source.ComponentConfig:
			comps.Config = true
		case source.ComponentVolumes:
			comps.Volumes = true
		}
	}
	result := &Result{
		Archive:      res.Path,
		ChecksumFile: res.ChecksumPath,
		SHA256:       res.SHA256,
		Size:         res.Size,
		Metadata:     res.Metadata,
		Components:   comps,
		Captured:     outcome.Components,
		Warnings:     dedupe(append(preview.Warnings, outcome.Warnings...)),
		Duration:     time.Since(start),
	}
	result.SignatureFile = sigFile
	return result, nil
}

// dumpShare bounds the compressed dump as a share of the database's size on disk
// (pg_database_size, which counts indexes and free space the dump does not carry). Measured
// (bench/RESULTS.md): a flightctl-shaped database of 970 MB gives a 235 MB archive at the
// default level (0.24); dumps of random hex text, the least compressible content the
// server stores, compress to about 0.45 of the dump. Half is a bound with room to spare.
const dumpShare = 0.5

// archiveOverhead covers tar headers, metadata.json and the manifest.
const archiveOverhead = 256 << 10

// EstimateArchiveSize is the archive a plan will produce, at most: the compressed dump
// (dumpShare of the database's size on disk) plus the files as they are (keys and
// certificates hardly compress) plus the archive's own overhead.
func EstimateArchiveSize(plan *source.Plan) int64 {
	var db int64
	if plan.Database != nil {
		db = plan.Database.Size
	}
	files := plan.EstimatedSize - db
	return int64(float64(db)*dumpShare) + files + archiveOverhead
}

// diskFull adds what to do when the output directory's file system filled up while the
// archive was written (the writer has removed the unnamed archive by then).
func diskFull(err error, dir string) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: the file system of %s is full: free space there (df -h %s shows it) or choose another output_dir, then back up again; nothing was left behind", err, dir, dir)
	}
	return err
}

// withCancel says plainly that the backup was interrupted when it was.
func withCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("backup interrupted, nothing was written: %w", err)
	}
	return err
}

func dedupe(list []string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
