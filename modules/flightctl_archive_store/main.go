// flightctl_archive_store keeps off-host copies of backup archives in an S3-compatible
// bucket under <prefix>/<estate>/<archive>: copy (multipart, resumable, verified, the
// .sha256 marker written last, never overwriting), list, and fetch (the newest archive
// that checks out, or one named; check mode reads its metadata from the object's tail).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/objstore"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/s3opts"
	"flightctl.dr/internal/signature"
)

// Options are the module's options; the sidecar flightctl_archive_store.yml documents them.
type Options struct {
	Action  string `ansible:"action" default:"copy" choices:"copy,list,fetch" help:"copy an archive to the bucket, list the estate's archives, or fetch one"`
	Archive string `ansible:"archive,abspath" help:"copy: the local archive (its .sha256 beside it)"`
	Name    string `ansible:"name" help:"fetch: the archive's name (default: the newest that checks out)"`
	DestDir string `ansible:"dest_dir,abspath" help:"fetch: the directory that receives the archive and its .sha256"`
	Estate  string `ansible:"estate,required" help:"the estate (server) whose archives these are: the folder under prefix"`
	s3opts.Connection
	Bucket       string `ansible:"bucket,required" help:"the bucket"`
	PartSize     int    `ansible:"part_size" default:"16777216" min:"5242880" help:"upload part size in bytes (5 MiB or more)"`
	Concurrency  int    `ansible:"concurrency" default:"2" min:"1" max:"64" help:"parts uploaded at once (more for a link with a long round trip)"`
	RetainDays   int    `ansible:"object_lock_retain_days" default:"0" min:"0" help:"copy: Object Lock retention of the archive and its marker, in days (0: the bucket's default)"`
	RetainMode   string `ansible:"object_lock_mode" default:"governance" choices:"governance,compliance" help:"copy: the Object Lock mode of that retention"`
	CreateBucket bool   `ansible:"create_bucket" default:"false" help:"create the bucket when it does not exist"`
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	if err := objstore.ValidEstate(o.Estate); err != nil {
		return err
	}
	switch o.Action {
	case "copy":
		if o.Archive == "" {
			return errors.New("action=copy needs archive: give the local archive to copy")
		}
	case "fetch":
		if o.DestDir == "" {
			return errors.New("action=fetch needs dest_dir: give the directory that receives the archive")
		}
		if o.Name != "" && !retention.IsArchiveName(o.Name) {
			return fmt.Errorf("name %q is not an archive name (flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz)", o.Name)
		}
	}
	return nil
}

func (o *Options) store() (*objstore.Store, error) {
	cfg := o.Config(o.Bucket)
	cfg.PartSize, cfg.Concurrency = int64(o.PartSize), o.Concurrency
	return objstore.Open(cfg)
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	s, err := o.store()
	if err != nil {
		return nil, fmt.Errorf("object store: %w", err)
	}
	env.Log.Info("object store", "bucket", o.Bucket, "prefix", s.Prefix(), "estate", o.Estate, "credentials", s.CredentialSource)
	if o.CreateBucket && !env.CheckMode {
		if err := s.EnsureBucket(ctx, o.Region, false); err != nil {
			return nil, err
		}
	}
	switch o.Action {
	case "copy":
		return copyArchive(ctx, env, s, o)
	case "list":
		return list(ctx, s, o)
	default:
		return fetch(ctx, env, s, o)
	}
}

func copyArchive(ctx context.Context, env *ansiblemod.Env, s *objstore.Store, o *Options) (*ansiblemod.Result, error) {
	name := filepath.Base(o.Archive)
	key := s.Key(o.Estate, name)
	if env.CheckMode {
		stored := false
		if _, err := s.Check(ctx, o.Estate, name); err == nil {
			stored = true
		}
		_, serr := os.Stat(o.Archive + signature.Suffix)
		signed := serr == nil
		msg := fmt.Sprintf("%s would be copied to s3://%s/%s", o.Archive, o.Bucket, key)
		if signed {
			msg += ", with its signature"
		}
		if stored {
			msg = fmt.Sprintf("s3://%s/%s already holds %s", o.Bucket, key, name)
		}
		values := map[string]any{"key": key, "bucket": o.Bucket, "uploaded": false, "stored": stored, "signed": signed, "signature_key": ""}
		if signed {
			values["signature_key"] = s.Key(o.Estate, name+signature.Suffix)
		}
		return &ansiblemod.Result{Changed: !stored, Msg: msg, Values: values}, nil
	}
	uopts := objstore.UploadOptions{}
	if o.RetainDays > 0 {
		uopts.RetainUntil = time.Now().UTC().Add(time.Duration(o.RetainDays) * 24 * time.Hour)
		uopts.RetainMode = minio.Governance
		if o.RetainMode == "compliance" {
			uopts.RetainMode = minio.Compliance
		}
	}
	r, err := s.Upload(ctx, o.Estate, o.Archive, uopts)
	if err != nil {
		return nil, fmt.Errorf("copy to bucket %s: %w", o.Bucket, err)
	}
	msg := fmt.Sprintf("s3://%s/%s already held %s, complete: nothing copied", o.Bucket, r.Key, name)
	if r.Uploaded {
		msg = fmt.Sprintf("%s copied to s3://%s/%s and verified (%d parts", o.Archive, o.Bucket, r.Key, r.Parts)
		if r.Resumed {
			msg += fmt.Sprintf(", %d of them sent by an earlier interrupted copy", r.Reused)
		}
		msg += ")"
		if r.SignatureKey != "" {
			msg += ", with its signature"
		}
	} else if r.MarkerWritten {
		msg = fmt.Sprintf("s3://%s/%s was complete without its marker: verified and its marker written", o.Bucket, r.Key)
	} else if r.SignatureWritten {
		msg = fmt.Sprintf("s3://%s/%s already held %s, complete: its signature was added", o.Bucket, r.Key, name)
	}
	mbps := 0.0
	if r.Duration > 0 {
		mbps = float64(r.Size) / r.Duration.Seconds() / (1 << 20)
	}
	return &ansiblemod.Result{Changed: r.Uploaded || r.MarkerWritten || r.SignatureWritten, Msg: msg, Values: map[string]any{
		"bucket": o.Bucket, "key": r.Key, "marker_key": r.MarkerKey, "sha256": r.SHA256, "size": r.Size,
		"crc64nvme": r.CRC64NVME, "checksum": r.Checksum, "checksum_algorithm": r.ChecksumAlgorithm, "uploaded": r.Uploaded, "resumed": r.Resumed, "parts": r.Parts,
		"parts_reused": r.Reused, "part_size": r.PartSize, "duration": r.Duration.Seconds(), "mib_per_second": mbps,
		"signed": r.SignatureKey != "", "signature_key": r.SignatureKey, "signature_written": r.SignatureWritten,
	}}, nil
}

func list(ctx context.Context, s *objstore.Store, o *Options) (*ansiblemod.Result, error) {
	l, err := s.List(ctx, o.Estate)
	if err != nil {
		return nil, err
	}
	var archives []map[string]any
	for _, a := range l {
		t, ok := retention.ParseName(a.Name)
		if !ok {
			continue
		}
		archives = append(archives, map[string]any{"name": a.Name, "time": t.Format(time.RFC3339), "size": a.Size, "complete": a.Status == retention.Good, "status": a.Status.String(), "detail": a.Detail, "signed": a.Signed})
	}
	newest, sum, err := s.NewestOf(ctx, o.Estate, l)
	if err != nil {
		newest, sum = "", ""
	}
	return &ansiblemod.Result{Msg: fmt.Sprintf("%d archives of %s in s3://%s/%s", len(archives), o.Estate, o.Bucket, strings.TrimSuffix(s.Key(o.Estate, ""), "/")), Values: map[string]any{
		"archives": nonNil(archives), "newest": newest, "newest_sha256": sum, "bucket": o.Bucket,
	}}, nil
}

func nonNil(a []map[string]any) []map[string]any {
	if a == nil {
		return []map[string]any{}
	}
	return a
}

func fetch(ctx context.Context, env *ansiblemod.Env, s *objstore.Store, o *Options) (*ansiblemod.Result, error) {
	name, sum := o.Name, ""
	var err error
	if name == "" {
		name, sum, err = s.Newest(ctx, o.Estate)
		if err != nil {
			return nil, err
		}
	} else if sum, err = s.Check(ctx, o.Estate, name); err != nil {
		return nil, fmt.Errorf("archive %s in bucket %s is not a complete backup: %w: name another archive, or leave name out for the newest", name, o.Bucket, err)
	}
	path := filepath.Join(o.DestDir, name)
	values := map[string]any{"name": name, "sha256": sum, "bucket": o.Bucket, "key": s.Key(o.Estate, name), "archive": path, "checksum_file": path + ".sha256"}
	if env.CheckMode {
		signed, err := s.HasSignature(ctx, o.Estate, name)
		if err != nil {
			return nil, err
		}
		values["signed"], values["signature_file"] = signed, ""
		if signed {
			values["signature_file"] = path + signature.Suffix
		}
		md, read, err := s.ReadMetadata(ctx, o.Estate, name)
		switch {
		case err == nil:
			values["metadata"], values["bytes_read"] = md, read
		case errors.Is(err, archive.ErrNoQuickMetadata):
			env.Warn("the metadata of %s cannot be read from its tail (an encrypted archive, or one not written by this tool): the restore will read it after the download", name)
		default:
			return nil, fmt.Errorf("read the metadata of %s: %w", name, err)
		}
		values["downloaded"] = false
		msg := fmt.Sprintf("%s would be downloaded from s3://%s/%s to %s", name, o.Bucket, s.Key(o.Estate, name), path)
		if signed {
			msg += ", with its signature"
		} else {
			msg += "; the bucket holds no signature for it (a restore with trusted keys refuses it unless allow_unsigned is set)"
		}
		return &ansiblemod.Result{Changed: true, Msg: msg, Values: values}, nil
	}
	r, err := s.Fetch(ctx, o.Estate, name, o.DestDir)
	if err != nil {
		return nil, err
	}
	p, downloaded := r.Path, r.Downloaded
	values["archive"], values["checksum_file"], values["downloaded"] = p, p+".sha256", downloaded
	values["signed"], values["signature_file"] = r.SignatureFile != "", r.SignatureFile
	msg := fmt.Sprintf("%s downloaded from s3://%s/%s and verified", p, o.Bucket, s.Key(o.Estate, name))
	if !downloaded {
		msg = fmt.Sprintf("%s is already here with the bucket's checksum: nothing downloaded", p)
	}
	if r.SignatureFile != "" {
		msg += fmt.Sprintf("; its signature is beside it (%s)", r.SignatureFile)
	} else {
		msg += "; the bucket holds no signature for it"
	}
	return &ansiblemod.Result{Changed: downloaded, Msg: msg, Values: values}, nil
}

// App is the binary: an Ansible module, or a CLI for people and timers.
var App = cli.App[Options]{
	Module: ansiblemod.Module[Options]{Name: "flightctl_archive_store", Run: run},
	Short:  "Copy Flight Control backup archives to an S3 bucket, list them, fetch them",
	Long: "Keeps off-host copies of backup archives in an S3-compatible bucket under <prefix>/<estate>/<archive>: " +
		"copies are multipart, resumable and verified (the store's whole-object checksum and the archive's sha256), " +
		"the .sha256 marker is written last and nothing is ever overwritten. Credentials come from the options, " +
		"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file; they are never printed.",
	Human: human,
}

func human(w io.Writer, out ansiblemod.Output) {
	fmt.Fprintln(w, out["msg"])
	if as, ok := out["archives"].([]any); ok {
		for _, a := range as {
			m, _ := a.(map[string]any)
			signed := ""
			if m["signed"] == true {
				signed = "  signed"
			}
			fmt.Fprintf(w, "  %-45v %12v bytes  %v%s\n", m["name"], m["size"], m["status"], signed)
		}
		if n, _ := out["newest"].(string); n != "" {
			fmt.Fprintf(w, "newest complete: %s\n", n)
		}
	}
}

func main() { cli.Main(App) }
