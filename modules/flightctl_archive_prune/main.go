// flightctl_archive_prune applies a retention policy to one estate's archives in a
// directory (the server's or the controller's) or in an S3 bucket: the rules of
// flightctl.dr's retention package (restic's calendar rules in UTC, keep_within measured
// from the newest verified archive, min_keep, the newest archive that verifies never
// removed, only this tool's names touched), each checksum removed before its archive.
// Check mode lists every archive with the rule that keeps it or the reason it goes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/objstore"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/s3opts"
)

// Options are the module's options; the sidecar flightctl_archive_prune.yml documents them.
type Options struct {
	Path           string `ansible:"path,abspath" help:"the directory holding the estate's archives (give path or bucket)"`
	Bucket         string `ansible:"bucket" help:"the bucket holding them under prefix/estate (give path or bucket)"`
	Estate         string `ansible:"estate" help:"the estate whose archives are pruned (required with bucket)"`
	KeepLast       int    `ansible:"keep_last" default:"0" min:"-1" help:"keep the n newest archives (-1: all)"`
	KeepHourly     int    `ansible:"keep_hourly" default:"0" min:"-1" help:"keep the newest archive of each of the n newest hours (UTC) that have one"`
	KeepDaily      int    `ansible:"keep_daily" default:"0" min:"-1" help:"the same per day (UTC)"`
	KeepWeekly     int    `ansible:"keep_weekly" default:"0" min:"-1" help:"the same per ISO week"`
	KeepMonthly    int    `ansible:"keep_monthly" default:"0" min:"-1" help:"the same per month"`
	KeepYearly     int    `ansible:"keep_yearly" default:"0" min:"-1" help:"the same per year"`
	KeepWithin     string `ansible:"keep_within" help:"keep every archive made within this period before the newest verified one (168h, 14d, 2w)"`
	MinKeep        int    `ansible:"min_keep" default:"1" min:"1" help:"always keep at least this many good archives"`
	RequireArchive string `ansible:"require_archive" help:"prune only when this archive (this run's backup) is the newest that verifies"`
	Verify         bool   `ansible:"verify" default:"true" help:"check the newest archives' content against their checksums to find the newest that verifies"`
	s3opts.Connection
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	if (o.Path == "") == (o.Bucket == "") {
		return errors.New("give exactly one of path (a directory of archives) and bucket (archives in S3)")
	}
	if o.Bucket != "" {
		if err := objstore.ValidEstate(o.Estate); err != nil {
			return err
		}
	}
	if o.RequireArchive != "" && !retention.IsArchiveName(filepath.Base(o.RequireArchive)) {
		return fmt.Errorf("require_archive %q is not an archive name (flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz)", o.RequireArchive)
	}
	_, err := o.policy()
	return err
}

func (o *Options) policy() (retention.Policy, error) {
	within, err := retention.ParseDuration(o.KeepWithin)
	if err != nil {
		return retention.Policy{}, fmt.Errorf("keep_within: %w", err)
	}
	p := retention.Policy{KeepLast: o.KeepLast, KeepHourly: o.KeepHourly, KeepDaily: o.KeepDaily, KeepWeekly: o.KeepWeekly,
		KeepMonthly: o.KeepMonthly, KeepYearly: o.KeepYearly, KeepWithin: within, MinKeep: o.MinKeep}
	return p, p.Validate()
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	policy, err := o.policy()
	if err != nil {
		return nil, err
	}
	var (
		list   []retention.Archive
		verify retention.VerifyFunc
		remove func([]string) ([]string, error)
		where  string
	)
	if o.Path != "" {
		where = o.Path
		if list, err = retention.ListDir(o.Path); err != nil {
			return nil, err
		}
		verify = func(a retention.Archive) error {
			_, _, err := archive.ChecksumOK(ctx, filepath.Join(o.Path, a.Name), archive.VerifyOptions{})
			return err
		}
		remove = func(names []string) ([]string, error) { return retention.DeleteInDir(ctx, o.Path, names) }
	} else {
		s, err := objstore.Open(o.Config(o.Bucket))
		if err != nil {
			return nil, fmt.Errorf("object store: %w", err)
		}
		where = "s3://" + o.Bucket + "/" + s.Key(o.Estate, "")
		if list, err = s.List(ctx, o.Estate); err != nil {
			return nil, err
		}
		verify = func(a retention.Archive) error { _, err := s.Check(ctx, o.Estate, a.Name); return err }
		remove = func(names []string) ([]string, error) { return s.Delete(ctx, o.Estate, names) }
	}
	if !o.Verify {
		verify = nil
	}
	plan, err := retention.Make(policy, list, retention.Options{Now: time.Now(), Verify: verify})
	if err != nil {
		return nil, err
	}
	if o.RequireArchive != "" && plan.NewestVerified != filepath.Base(o.RequireArchive) {
		return nil, fmt.Errorf("nothing pruned in %s: this run's archive %s is not the newest that verifies (that is %q): fix the backup first, pruning only follows a verified backup", where, filepath.Base(o.RequireArchive), plan.NewestVerified)
	}
	if plan.NewestVerified == "" && len(plan.Remove()) > 0 {
		env.Warn("no archive in %s verifies: only archives that are not backups (no or bad checksum) are removed", where)
	}
	decisions := make([]map[string]any, 0, len(plan.Decisions))
	for _, d := range plan.Decisions {
		decisions = append(decisions, map[string]any{"name": d.Archive.Name, "time": d.Archive.Time.Format(time.RFC3339), "keep": d.Keep, "rules": nonNil(d.Rules), "reason": d.Reason, "status": d.Archive.Status.String()})
	}
	names := func(as []retention.Archive) []string {
		out := make([]string, 0, len(as))
		for _, a := range as {
			out = append(out, a.Name)
		}
		return out
	}
	values := map[string]any{
		"location": where, "policy": policy.String(), "plan": plan.Lines(), "decisions": decisions,
		"kept": names(plan.Keep()), "removed": names(plan.Remove()), "newest_verified": plan.NewestVerified,
		"ignored": nonNil(plan.Ignored), "deleted": []string{}, "orphan_signatures": nonNil(plan.OrphanSignatures),
	}
	n := len(plan.Remove())
	res := &ansiblemod.Result{Changed: n > 0, Values: values}
	if env.CheckMode {
		res.Msg = fmt.Sprintf("%d archives in %s would be removed, %d kept (%s)", n, where, len(plan.Keep()), policy)
		if env.Diff {
			res.Diff = &ansiblemod.Diff{Before: map[string]any{"archives": names(append(plan.Keep(), plan.Remove()...))}, After: map[string]any{"archives": names(plan.Keep())}}
		}
		return res, nil
	}
	deleted, err := remove(plan.Deletions())
	values["deleted"] = nonNil(deleted)
	if err != nil {
		return nil, fmt.Errorf("prune %s (removed %d of %d names first): %w", where, len(deleted), len(plan.Deletions()), err)
	}
	res.Msg = fmt.Sprintf("%d archives removed from %s, %d kept (%s)", n, where, len(plan.Keep()), policy)
	return res, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// App is the binary: an Ansible module, or a CLI for people and timers.
var App = cli.App[Options]{
	Module: ansiblemod.Module[Options]{Name: "flightctl_archive_prune", Run: run},
	Short:  "Apply a retention policy to Flight Control backup archives (directory or S3 bucket)",
	Long: "Removes the archives a retention policy does not keep, in a directory or under <prefix>/<estate>/ in an S3 " +
		"bucket: keep_last, keep_hourly/daily/weekly/monthly/yearly (UTC calendar buckets, as restic), keep_within from " +
		"the newest verified archive, min_keep; the newest archive that verifies always stays, and only this tool's " +
		"archive names are touched. With --check it only lists what it would do and why.",
	Human: human,
}

func human(w io.Writer, out ansiblemod.Output) {
	fmt.Fprintln(w, out["msg"])
	if lines, ok := out["plan"].([]any); ok {
		for _, l := range lines {
			fmt.Fprintf(w, "  %v\n", l)
		}
	}
}

func main() { cli.Main(App) }
