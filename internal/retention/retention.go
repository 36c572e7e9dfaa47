// Package retention decides which backup archives to keep. One policy applies
// the same way to the server's archive directory, the controller's directory
// and an object-store prefix: the caller lists one estate's archives (names
// and whether their checksum is good), Plan says what stays and what goes and
// why, and the caller deletes.
//
// The rules are restic's: keep_last keeps the n newest archives; keep_hourly,
// keep_daily, keep_weekly, keep_monthly and keep_yearly keep the newest
// archive of each of the n newest calendar buckets (UTC; ISO weeks) that hold
// one; keep_within keeps everything made within a duration. An archive is
// kept when any rule keeps it. Unlike restic, only archives whose checksum is
// good count, keep_within is measured from the newest verified archive rather
// than the newest one (backups that stopped working never age the good ones
// out), min_keep good archives always stay, and the newest archive that
// verifies is never removed.
package retention

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Unlimited as a count keeps every bucket (restic's -1).
const Unlimited = -1

// DefaultMinKeep is min_keep when the policy does not set it.
const DefaultMinKeep = 1

// DefaultInProgressGrace is how long an archive without checksum that is
// newer than the newest verified one is left alone: its upload or its
// checksum may still be being written.
const DefaultInProgressGrace = 6 * time.Hour

// Policy is what to keep. The zero value is refused: an empty policy would
// keep only min_keep archives, which is never what someone meant.
type Policy struct {
	KeepLast    int
	KeepHourly  int
	KeepDaily   int
	KeepWeekly  int
	KeepMonthly int
	KeepYearly  int
	// KeepWithin keeps every good archive made at most this long before the
	// newest verified archive.
	KeepWithin time.Duration
	// MinKeep good archives always stay (0 means DefaultMinKeep).
	MinKeep int
}

// ErrEmptyPolicy is returned for a policy without any keep rule.
var ErrEmptyPolicy = errors.New("the retention policy is empty: set at least one of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within")

// Validate refuses an empty policy and negative counts other than Unlimited.
func (p Policy) Validate() error {
	counts := []struct {
		name string
		n    int
	}{{"keep_last", p.KeepLast}, {"keep_hourly", p.KeepHourly}, {"keep_daily", p.KeepDaily}, {"keep_weekly", p.KeepWeekly}, {"keep_monthly", p.KeepMonthly}, {"keep_yearly", p.KeepYearly}}
	any := p.KeepWithin > 0
	for _, c := range counts {
		if c.n < Unlimited {
			return fmt.Errorf("%s is %d: give a count of archives to keep, or -1 for all of them", c.name, c.n)
		}
		if c.n != 0 {
			any = true
		}
	}
	if p.KeepWithin < 0 {
		return fmt.Errorf("keep_within is negative (%s): give a duration such as 168h or 14d", FormatDuration(p.KeepWithin))
	}
	if p.MinKeep < 0 {
		return fmt.Errorf("min_keep is %d: give 1 or more", p.MinKeep)
	}
	if !any {
		return ErrEmptyPolicy
	}
	return nil
}

func (p Policy) minKeep() int {
	if p.MinKeep <= 0 {
		return DefaultMinKeep
	}
	return p.MinKeep
}

// String is the policy as its option names.
func (p Policy) String() string {
	var parts []string
	add := func(name string, n int) {
		if n != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", name, n))
		}
	}
	add("keep_last", p.KeepLast)
	add("keep_hourly", p.KeepHourly)
	add("keep_daily", p.KeepDaily)
	add("keep_weekly", p.KeepWeekly)
	add("keep_monthly", p.KeepMonthly)
	add("keep_yearly", p.KeepYearly)
	if p.KeepWithin > 0 {
		parts = append(parts, "keep_within="+FormatDuration(p.KeepWithin))
	}
	parts = append(parts, fmt.Sprintf("min_keep=%d", p.minKeep()))
	return strings.Join(parts, " ")
}

// Status is what is known of an archive's checksum.
type Status int

const (
	// Good: the checksum file (or marker object) is there and well formed,
	// and, where it was checked, matches the archive.
	Good Status = iota
	// NoChecksum: the archive has no checksum file: it is not complete and
	// is never a backup.
	NoChecksum
	// BadChecksum: the checksum is unreadable or does not match.
	BadChecksum
)

func (s Status) String() string {
	switch s {
	case Good:
		return "good"
	case NoChecksum:
		return "no checksum"
	default:
		return "bad checksum"
	}
}

// Archive is one archive of the estate, as the caller listed it.
type Archive struct {
	Name   string // base name, flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz (.tar.gz.age encrypted)
	Status Status
	Detail string // why the status is not Good
	Size   int64
	Time   time.Time // from the name; filled by Plan
	// Signed: a detached signature (<archive>.sig) is stored beside it; it is kept and
	// removed with the archive.
	Signed bool
}

// nameRE matches the archives this tool writes: plain, and encrypted with age (.age).
var nameRE = regexp.MustCompile(`^flightctl-backup-(\d{8}T\d{6}Z)\.tar\.gz(\.age)?$`)

// ParseName returns the time an archive name carries, and false for a name
// this tool does not write (those are never touched).
func ParseName(name string) (time.Time, bool) {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102T150405Z", m[1])
	if err != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

// IsArchiveName says whether name is an archive name this tool writes.
func IsArchiveName(name string) bool { _, ok := ParseName(name); return ok }

// ChecksumName is the checksum file beside an archive.
func ChecksumName(archive string) string { return archive + ".sha256" }

// SignatureSuffix ends the name of an archive's detached signature (internal/signature).
const SignatureSuffix = ".sig"

// SignatureName is the signature beside an archive.
func SignatureName(archive string) string { return archive + SignatureSuffix }

// SignatureOf returns the archive a signature name belongs to, and false for names
// that are not the signature of an archive name this tool writes.
func SignatureOf(name string) (string, bool) {
	a, ok := strings.CutSuffix(name, SignatureSuffix)
	if !ok || !IsArchiveName(a) {
		return "", false
	}
	return a, true
}

// IsCompanionName says whether name is an archive name this tool writes, or its
// checksum or its signature: the only names a prune removes.
func IsCompanionName(name string) bool {
	if IsArchiveName(name) {
		return true
	}
	if a, ok := strings.CutSuffix(name, ".sha256"); ok && IsArchiveName(a) {
		return true
	}
	_, ok := SignatureOf(name)
	return ok
}

// VerifyFunc checks an archive completely (its content against its
// checksum); Plan calls it on good archives, newest first, until one passes.
type VerifyFunc func(a Archive) error

// Options are what Plan needs besides the policy and the listing.
type Options struct {
	// Now is the time of the run (default time.Now); only the in-progress
	// grace uses it.
	Now time.Time
	// InProgressGrace (default DefaultInProgressGrace): an archive without
	// checksum that is newer than the newest verified one and younger than
	// this is left alone.
	InProgressGrace time.Duration
	// Verify, when set, is how the newest verified archive is found.
	// Without it the newest good archive counts as verified.
	Verify VerifyFunc
}

// Decision is what happens to one archive.
type Decision struct {
	Archive Archive
	Keep    bool
	// Rules that keep it (e.g. "keep_daily 2026-11-30", "newest verified").
	Rules []string
	// Reason it goes (or, for an archive kept although not good, why).
	Reason string
}

// Plan is the outcome of applying a policy to one estate's listing.
type Plan struct {
	Policy Policy
	// Decisions, newest first: every archive this tool writes.
	Decisions []Decision
	// NewestVerified is the newest archive that verified ("" when none).
	NewestVerified string
	// Ignored are the names that are not archives this tool writes.
	Ignored []string
	// OrphanSignatures are signatures (<archive>.sig) whose archive is no longer
	// there, as an interrupted prune leaves them: not archives, never counted,
	// removed after the archives.
	OrphanSignatures []string
}

// Keep and Remove list the archives kept and removed, newest first.
func (p *Plan) Keep() []Archive   { return p.filter(true) }
func (p *Plan) Remove() []Archive { return p.filter(false) }

func (p *Plan) filter(keep bool) []Archive {
	var out []Archive
	for _, d := range p.Decisions {
		if d.Keep == keep {
			out = append(out, d.Archive)
		}
	}
	return out
}

type bucketRule struct {
	name  string
	count int
	key   func(time.Time) string
}

func isoWeek(t time.Time) string {
	y, w := t.ISOWeek()
	return fmt.Sprintf("%04d-W%02d", y, w)
}

// Make applies the policy to the archives (any order; names that are not
// archives of this tool are passed back in Ignored and never removed).
func Make(policy Policy, archives []Archive, opts Options) (*Plan, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.InProgressGrace == 0 {
		opts.InProgressGrace = DefaultInProgressGrace
	}
	plan := &Plan{Policy: policy}
	list := make([]Archive, 0, len(archives))
	present := make(map[string]int, len(archives))
	var sigs []string
	for _, a := range archives {
		t, ok := ParseName(a.Name)
		if !ok {
			if _, sig := SignatureOf(a.Name); sig {
				sigs = append(sigs, a.Name)
			} else {
				plan.Ignored = append(plan.Ignored, a.Name)
			}
			continue
		}
		a.Time = t
		present[a.Name] = len(list)
		list = append(list, a)
	}
	// A signature listed as a name of its own goes with its archive; one whose
	// archive is gone is an orphan.
	for _, n := range sigs {
		a, _ := SignatureOf(n)
		if i, ok := present[a]; ok {
			list[i].Signed = true
		} else {
			plan.OrphanSignatures = append(plan.OrphanSignatures, n)
		}
	}
	sort.Strings(plan.OrphanSignatures)
	sort.Slice(list, func(i, j int) bool {
		if !list[i].Time.Equal(list[j].Time) {
			return list[i].Time.After(list[j].Time)
		}
		return list[i].Name > list[j].Name
	})
	sort.Strings(plan.Ignored)

	newest := -1
	for i := range list {
		if list[i].Status != Good {
			continue
		}
		if opts.Verify != nil {
			if err := opts.Verify(list[i]); err != nil {
				list[i].Status, list[i].Detail = BadChecksum, err.Error()
				continue
			}
		}
		newest = i
		break
	}

	rules := []bucketRule{
		{"keep_hourly", policy.KeepHourly, func(t time.Time) string { return t.Format("2006-01-02T15h") }},
		{"keep_daily", policy.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"keep_weekly", policy.KeepWeekly, isoWeek},
		{"keep_monthly", policy.KeepMonthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"keep_yearly", policy.KeepYearly, func(t time.Time) string { return t.Format("2006") }},
	}
	left := make([]int, len(rules))
	last := make([]string, len(rules))
	for i, r := range rules {
		left[i] = r.count
	}
	keepLast := policy.KeepLast
	var withinFrom time.Time
	if newest >= 0 && policy.KeepWithin > 0 {
		withinFrom = list[newest].Time.Add(-policy.KeepWithin)
	}

	plan.Decisions = make([]Decision, len(list))
	kept := 0
	for i, a := range list {
		d := Decision{Archive: a}
		if a.Status != Good {
			switch {
			case a.Status == NoChecksum && (newest < 0 || a.Time.After(list[newest].Time)) && opts.Now.Sub(a.Time) < opts.InProgressGrace:
				d.Keep = true
				d.Reason = fmt.Sprintf("no checksum yet, newer than the newest verified archive and younger than %s: may still be being written", FormatDuration(opts.InProgressGrace))
			case a.Status == NoChecksum:
				d.Reason = "no checksum: the archive never completed, it is not a backup"
			default:
				d.Reason = "checksum does not verify: " + a.Detail
				if a.Detail == "" {
					d.Reason = "checksum does not verify"
				}
			}
			plan.Decisions[i] = d
			continue
		}
		if i == newest {
			d.Rules = append(d.Rules, "newest verified")
			plan.NewestVerified = a.Name
		}
		if keepLast == Unlimited || keepLast > 0 {
			d.Rules = append(d.Rules, "keep_last")
			if keepLast > 0 {
				keepLast--
			}
		}
		for j, r := range rules {
			if left[j] == 0 {
				continue
			}
			k := r.key(a.Time)
			if k == last[j] {
				continue
			}
			last[j] = k
			d.Rules = append(d.Rules, r.name+" "+k)
			if left[j] > 0 {
				left[j]--
			}
		}
		if !withinFrom.IsZero() && !a.Time.Before(withinFrom) {
			d.Rules = append(d.Rules, "keep_within "+FormatDuration(policy.KeepWithin)+" of the newest verified")
		}
		if len(d.Rules) > 0 {
			d.Keep = true
			kept++
		} else {
			d.Reason = "no rule keeps it"
		}
		plan.Decisions[i] = d
	}
	for i := 0; i < len(plan.Decisions) && kept < policy.minKeep(); i++ {
		d := &plan.Decisions[i]
		if d.Keep || d.Archive.Status != Good {
			continue
		}
		d.Keep, d.Reason = true, ""
		d.Rules = append(d.Rules, fmt.Sprintf("min_keep %d", policy.minKeep()))
		kept++
	}
	return plan, nil
}

// Deletions are the names to delete for the archives Remove lists, in the
// order to delete them: each archive's checksum first, so that an
// interrupted prune never leaves an archive that looks complete, then the
// archive, then its signature; last the orphan signatures.
func (p *Plan) Deletions() []string {
	var out []string
	for _, a := range p.Remove() {
		if a.Status != NoChecksum {
			out = append(out, ChecksumName(a.Name))
		}
		out = append(out, a.Name)
		if a.Signed {
			out = append(out, SignatureName(a.Name))
		}
	}
	return append(out, p.OrphanSignatures...)
}

// Lines is the dry run: one line per archive, newest first, with the rules
// that keep it or the reason it goes.
func (p *Plan) Lines() []string {
	out := make([]string, 0, len(p.Decisions)+len(p.Ignored))
	for _, d := range p.Decisions {
		if d.Keep {
			why := strings.Join(d.Rules, ", ")
			if d.Reason != "" {
				why = d.Reason
			}
			out = append(out, fmt.Sprintf("keep   %s  (%s)", d.Archive.Name, why))
		} else {
			out = append(out, fmt.Sprintf("remove %s  (%s)", d.Archive.Name, d.Reason))
		}
	}
	for _, n := range p.OrphanSignatures {
		out = append(out, fmt.Sprintf("remove %s  (signature of an archive that is no longer there)", n))
	}
	for _, n := range p.Ignored {
		out = append(out, fmt.Sprintf("ignore %s  (not an archive name this tool writes)", n))
	}
	return out
}

// ParseDuration reads a retention period: Go durations ("168h0m0s", as the
// seed's retentionPeriod) plus days and weeks ("14d", "2w", "1w3d12h").
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	var total time.Duration
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9') {
			i++
		}
		if i == 0 || i == len(rest) || (rest[i] != 'd' && rest[i] != 'w') {
			break
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return 0, fmt.Errorf("duration %q: %w", s, err)
		}
		unit := 24 * time.Hour
		if rest[i] == 'w' {
			unit *= 7
		}
		total += time.Duration(n) * unit
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("duration %q is not a duration: write it as 168h, 14d, 2w or 1w3d12h", s)
		}
		total += d
	}
	return total, nil
}

// FormatDuration writes a duration in days when it is a whole number of them.
func FormatDuration(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
