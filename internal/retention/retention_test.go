package retention

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func name(t time.Time) string {
	return fmt.Sprintf("flightctl-backup-%s.tar.gz", t.UTC().Format("20060102T150405Z"))
}

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func good(ts ...string) []Archive {
	var out []Archive
	for _, s := range ts {
		out = append(out, Archive{Name: name(at(s))})
	}
	return out
}

func kept(p *Plan) []string {
	var out []string
	for _, a := range p.Keep() {
		out = append(out, a.Time.Format("2006-01-02 15:04"))
	}
	return out
}

func ruleOf(p *Plan, n string) []string {
	for _, d := range p.Decisions {
		if d.Archive.Name == n {
			return d.Rules
		}
	}
	return nil
}

func TestEmptyPolicyRefused(t *testing.T) {
	_, err := Make(Policy{}, good("2026-01-01 00:00"), Options{})
	require.ErrorIs(t, err, ErrEmptyPolicy)
	_, err = Make(Policy{MinKeep: 5}, good("2026-01-01 00:00"), Options{})
	require.ErrorIs(t, err, ErrEmptyPolicy, "min_keep alone is not a policy")
	_, err = Make(Policy{KeepDaily: -2}, nil, Options{})
	require.ErrorContains(t, err, "keep_daily is -2")
}

// Daily archives over four years, calendar rules combined as restic does.
func TestCalendarRulesAcrossYears(t *testing.T) {
	var list []Archive
	for d := at("2023-01-01 01:30"); !d.After(at("2026-11-30 01:30")); d = d.Add(24 * time.Hour) {
		list = append(list, Archive{Name: name(d)}, Archive{Name: name(d.Add(12 * time.Hour))})
	}
	p, err := Make(Policy{KeepDaily: 3, KeepWeekly: 3, KeepMonthly: 4, KeepYearly: 3}, list, Options{})
	require.NoError(t, err)
	want := []string{
		"2026-11-30 13:30", // daily, weekly 2026-W49, monthly 2026-11, yearly 2026
		"2026-11-29 13:30", // daily, weekly 2026-W48 (Sunday)
		"2026-11-28 13:30", // daily
		"2026-11-22 13:30", // weekly 2026-W47
		"2026-10-31 13:30", // monthly
		"2026-09-30 13:30", // monthly
		"2026-08-31 13:30", // monthly
		"2025-12-31 13:30", // yearly
		"2024-12-31 13:30", // yearly
	}
	assert.Equal(t, want, kept(p))
	assert.Equal(t, []string{"newest verified", "keep_daily 2026-11-30", "keep_weekly 2026-W49", "keep_monthly 2026-11", "keep_yearly 2026"}, ruleOf(p, name(at("2026-11-30 13:30"))))
	assert.Equal(t, []string{"keep_yearly 2024"}, ruleOf(p, name(at("2024-12-31 13:30"))))
	assert.Len(t, p.Remove(), len(list)-len(want))
	for _, d := range p.Decisions {
		if !d.Keep {
			assert.Equal(t, "no rule keeps it", d.Reason)
		}
	}
}

// ISO weeks straddle the new year: 2020-12-31 and 2021-01-03 are both 2020-W53.
func TestWeeklyAcrossYearBoundary(t *testing.T) {
	p, err := Make(Policy{KeepWeekly: 2}, good("2020-12-31 10:00", "2021-01-03 10:00", "2021-01-04 10:00"), Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"2021-01-04 10:00", "2021-01-03 10:00"}, kept(p))
	assert.Equal(t, []string{"keep_weekly 2020-W53"}, ruleOf(p, name(at("2021-01-03 10:00"))))
}

// Buckets are UTC whatever the local zone of the listing's times.
func TestBucketsAreUTC(t *testing.T) {
	p, err := Make(Policy{KeepDaily: 2}, good("2026-03-01 23:30", "2026-03-02 00:30", "2026-03-02 01:30"), Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"2026-03-02 01:30", "2026-03-01 23:30"}, kept(p))
}

// Two weeks of failed backups do not age out the last good ones (the seed's
// `find -mtime +14 -delete` would leave nothing).
func TestKeepWithinFromNewestVerified(t *testing.T) {
	var list []Archive
	for d := at("2026-09-01 00:00"); d.Before(at("2026-11-01 00:01")); d = d.Add(24 * time.Hour) {
		list = append(list, Archive{Name: name(d)})
	}
	for d := at("2026-11-02 00:00"); d.Before(at("2026-11-30 00:01")); d = d.Add(24 * time.Hour) {
		st := NoChecksum
		if d.Day()%2 == 0 {
			st = BadChecksum
		}
		list = append(list, Archive{Name: name(d), Status: st, Detail: "sha256 differs"})
	}
	p, err := Make(Policy{KeepWithin: 7 * 24 * time.Hour}, list, Options{Now: at("2026-11-30 12:00")})
	require.NoError(t, err)
	assert.Equal(t, name(at("2026-11-01 00:00")), p.NewestVerified)
	assert.Equal(t, []string{"2026-11-01 00:00", "2026-10-31 00:00", "2026-10-30 00:00", "2026-10-29 00:00", "2026-10-28 00:00", "2026-10-27 00:00", "2026-10-26 00:00", "2026-10-25 00:00"}, kept(p))
	for _, d := range p.Decisions {
		switch d.Archive.Status {
		case NoChecksum:
			assert.False(t, d.Keep)
			assert.Contains(t, d.Reason, "no checksum")
		case BadChecksum:
			assert.False(t, d.Keep)
			assert.Equal(t, "checksum does not verify: sha256 differs", d.Reason)
		}
	}
}

// The newest archive that verifies stays whatever the policy; archives whose
// full check fails are demoted and never count as kept good ones.
func TestNewestVerifiedNeverRemoved(t *testing.T) {
	list := good("2026-11-28 00:00", "2026-11-29 00:00", "2026-11-30 00:00", "2026-11-30 06:00")
	var verified []string
	verify := func(a Archive) error {
		verified = append(verified, a.Name)
		if a.Time.After(at("2026-11-29 12:00")) {
			return errors.New("content does not match its checksum")
		}
		return nil
	}
	p, err := Make(Policy{KeepWithin: time.Minute}, list, Options{Verify: verify})
	require.NoError(t, err)
	assert.Equal(t, []string{name(at("2026-11-30 06:00")), name(at("2026-11-30 00:00")), name(at("2026-11-29 00:00"))}, verified)
	assert.Equal(t, name(at("2026-11-29 00:00")), p.NewestVerified)
	assert.Equal(t, []string{"2026-11-29 00:00"}, kept(p))
	assert.Equal(t, []string{"newest verified", "keep_within 1m0s of the newest verified"}, ruleOf(p, p.NewestVerified))
	for _, d := range p.Decisions[:2] {
		assert.Equal(t, "checksum does not verify: content does not match its checksum", d.Reason)
	}

	// keep_last counts good archives only.
	p, err = Make(Policy{KeepLast: 2}, list, Options{Verify: verify})
	require.NoError(t, err)
	assert.Equal(t, []string{"2026-11-29 00:00", "2026-11-28 00:00"}, kept(p))
}

func TestMinKeep(t *testing.T) {
	list := good("2026-01-01 00:00", "2026-02-01 00:00", "2026-03-01 00:00", "2026-04-01 00:00")
	p, err := Make(Policy{KeepHourly: 1, MinKeep: 3}, list, Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"2026-04-01 00:00", "2026-03-01 00:00", "2026-02-01 00:00"}, kept(p))
	assert.Equal(t, []string{"min_keep 3"}, ruleOf(p, name(at("2026-02-01 00:00"))))
	// Default min_keep is one: nothing verified, nothing kept but in-progress.
	p, err = Make(Policy{KeepLast: 1}, []Archive{{Name: name(at("2026-01-01 00:00")), Status: BadChecksum}}, Options{})
	require.NoError(t, err)
	assert.Empty(t, p.Keep())
	assert.Equal(t, "", p.NewestVerified)
}

func TestOnlyOwnNamesTouched(t *testing.T) {
	list := append(good("2026-11-30 00:00", "2026-11-01 00:00"),
		Archive{Name: "notes.txt"},
		Archive{Name: "flightctl-backup-20261101T000000Z.tar.gz.partial"},
		Archive{Name: ".flightctl-backup-20261001T000000Z.tar.gz"},
		Archive{Name: "flightctl-backup-2026.tar.gz"},
		Archive{Name: "other-backup-20261001T000000Z.tar.gz"},
	)
	p, err := Make(Policy{KeepLast: 1}, list, Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{".flightctl-backup-20261001T000000Z.tar.gz", "flightctl-backup-2026.tar.gz", "flightctl-backup-20261101T000000Z.tar.gz.partial", "notes.txt", "other-backup-20261001T000000Z.tar.gz"}, p.Ignored)
	assert.Equal(t, []string{name(at("2026-11-01 00:00")) + ".sha256", name(at("2026-11-01 00:00"))}, p.Deletions())
	for _, l := range p.Lines() {
		if strings.HasPrefix(l, "ignore") {
			assert.Contains(t, l, "not an archive name this tool writes")
		}
	}
}

func TestInProgressLeftAlone(t *testing.T) {
	list := append(good("2026-11-30 00:00", "2026-11-29 00:00"),
		Archive{Name: name(at("2026-11-30 11:00")), Status: NoChecksum},
		Archive{Name: name(at("2026-11-30 01:00")), Status: NoChecksum},
		Archive{Name: name(at("2026-11-28 11:00")), Status: NoChecksum},
	)
	p, err := Make(Policy{KeepLast: 1}, list, Options{Now: at("2026-11-30 12:00")})
	require.NoError(t, err)
	assert.Equal(t, []string{"2026-11-30 11:00", "2026-11-30 00:00"}, kept(p))
	assert.Equal(t, []string{
		name(at("2026-11-30 01:00")),
		name(at("2026-11-29 00:00")) + ".sha256", name(at("2026-11-29 00:00")),
		name(at("2026-11-28 11:00")),
	}, p.Deletions(), "checksum first; archives without checksum have none to delete")
	lines := p.Lines()
	assert.True(t, strings.HasPrefix(lines[0], "keep   "+name(at("2026-11-30 11:00"))+"  (no checksum yet"), lines[0])
	assert.Equal(t, "remove "+name(at("2026-11-30 01:00"))+"  (no checksum: the archive never completed, it is not a backup)", lines[1])
	assert.Equal(t, "keep   "+name(at("2026-11-30 00:00"))+"  (newest verified, keep_last)", lines[2])
}

func TestUnlimited(t *testing.T) {
	list := good("2024-06-01 00:00", "2025-06-01 00:00", "2026-06-01 00:00", "2026-06-02 00:00")
	p, err := Make(Policy{KeepYearly: Unlimited}, list, Options{})
	require.NoError(t, err)
	assert.Equal(t, []string{"2026-06-02 00:00", "2025-06-01 00:00", "2024-06-01 00:00"}, kept(p))
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"168h0m0s": 168 * time.Hour,
		"168h":     168 * time.Hour,
		"14d":      14 * 24 * time.Hour,
		"2w":       14 * 24 * time.Hour,
		"1w3d12h":  (10*24 + 12) * time.Hour,
		"90m":      90 * time.Minute,
		"":         0,
	} {
		got, err := ParseDuration(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, in := range []string{"5", "two weeks", "3x", "d"} {
		_, err := ParseDuration(in)
		assert.Error(t, err, in)
	}
	assert.Equal(t, "7d", FormatDuration(168*time.Hour))
	assert.Equal(t, "1h30m0s", FormatDuration(90*time.Minute))
}

// An independent statement of the rules: for each calendar rule, the newest
// good archive of each bucket, the n newest buckets; keep_last the n newest
// good ones; keep_within from the newest verified. Checked against Make over
// random archives spread across years.
func oracle(p Policy, list []Archive) map[string]bool {
	var goods []Archive
	for _, a := range list {
		if a.Status == Good {
			a.Time, _ = ParseName(a.Name)
			goods = append(goods, a)
		}
	}
	sort.Slice(goods, func(i, j int) bool { return goods[i].Time.After(goods[j].Time) })
	keep := map[string]bool{}
	take := func(n int, key func(time.Time) string) {
		newestOf := map[string]Archive{}
		var keys []string
		for _, a := range goods {
			k := key(a.Time)
			if _, ok := newestOf[k]; !ok {
				newestOf[k] = a
				keys = append(keys, k)
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(keys)))
		for i, k := range keys {
			if n != Unlimited && i >= n {
				break
			}
			keep[newestOf[k].Name] = true
		}
	}
	take(p.KeepLast, func(t time.Time) string { return t.Format(time.RFC3339Nano) })
	take(p.KeepHourly, func(t time.Time) string { return t.Format("2006-01-02T15") })
	take(p.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") })
	take(p.KeepWeekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-%02d", y, w) })
	take(p.KeepMonthly, func(t time.Time) string { return t.Format("2006-01") })
	take(p.KeepYearly, func(t time.Time) string { return t.Format("2006") })
	if len(goods) > 0 {
		keep[goods[0].Name] = true
		for _, a := range goods {
			if p.KeepWithin > 0 && !a.Time.Before(goods[0].Time.Add(-p.KeepWithin)) {
				keep[a.Name] = true
			}
		}
		n := 0
		for _, a := range goods {
			if keep[a.Name] {
				n++
			}
		}
		for _, a := range goods {
			if n >= p.minKeep() {
				break
			}
			if !keep[a.Name] {
				keep[a.Name] = true
				n++
			}
		}
	}
	return keep
}

func randomArchives(r *rand.Rand, n int) []Archive {
	start := at("2019-01-01 00:00")
	seen := map[string]bool{}
	var out []Archive
	for len(out) < n {
		t := start.Add(time.Duration(r.Int63n(int64(8 * 365 * 24 * time.Hour))))
		t = t.Truncate(time.Second)
		nm := name(t)
		if seen[nm] {
			continue
		}
		seen[nm] = true
		st := Good
		if r.Intn(10) == 0 {
			st = Status(1 + r.Intn(2))
		}
		out = append(out, Archive{Name: nm, Status: st})
	}
	return out
}

func TestAgainstOracle(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		list := randomArchives(r, 1+r.Intn(400))
		pick := func() int { return []int{0, 0, 1, 2, 3, 7, 12, Unlimited}[r.Intn(8)] }
		p := Policy{KeepLast: pick(), KeepHourly: pick(), KeepDaily: pick(), KeepWeekly: pick(), KeepMonthly: pick(), KeepYearly: pick(), MinKeep: r.Intn(4)}
		if r.Intn(2) == 0 {
			p.KeepWithin = time.Duration(r.Intn(60*24)) * time.Hour
		}
		if p.Validate() != nil {
			continue
		}
		plan, err := Make(p, list, Options{Now: at("2030-01-01 00:00")})
		require.NoError(t, err)
		want := oracle(p, list)
		for _, d := range plan.Decisions {
			require.Equal(t, want[d.Archive.Name], d.Keep, "policy %s, archive %s (%s): rules %v reason %q", p, d.Archive.Name, d.Archive.Status, d.Rules, d.Reason)
		}
	}
}

func BenchmarkPlan10000(b *testing.B) {
	list := randomArchives(rand.New(rand.NewSource(2)), 10000)
	p := Policy{KeepLast: 3, KeepDaily: 14, KeepWeekly: 8, KeepMonthly: 12, KeepYearly: Unlimited, KeepWithin: 48 * time.Hour}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Make(p, list, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDirListAndDelete(t *testing.T) {
	dir := t.TempDir()
	write := func(n, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte(body), 0o600))
	}
	sum := strings.Repeat("ab", 32)
	for _, ts := range []string{"2026-11-01 00:00", "2026-11-02 00:00", "2026-11-03 00:00"} {
		n := name(at(ts))
		write(n, "x")
		write(n+".sha256", sum+"  "+n+"\n")
	}
	write(name(at("2026-11-04 00:00")), "x")                                         // no checksum
	write(name(at("2026-11-05 00:00")), "x")                                         // malformed checksum
	write(name(at("2026-11-05 00:00"))+".sha256", "garbage\n")                       //
	write(".flightctl-backup-20261106T000000Z.tar.gz.1234.partial", "being written") // hidden
	write("notes.txt", "mine")
	require.NoError(t, os.Mkdir(filepath.Join(dir, "sub"), 0o700))

	list, err := ListDir(dir)
	require.NoError(t, err)
	plan, err := Make(Policy{KeepLast: 1}, list, Options{Now: at("2026-12-01 00:00")})
	require.NoError(t, err)
	assert.Equal(t, []string{"notes.txt", "sub/"}, plan.Ignored)
	assert.Equal(t, name(at("2026-11-03 00:00")), plan.NewestVerified)
	done, err := DeleteInDir(context.Background(), dir, plan.Deletions())
	require.NoError(t, err)
	assert.Equal(t, plan.Deletions(), done)
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	n3 := name(at("2026-11-03 00:00"))
	assert.Equal(t, []string{".flightctl-backup-20261106T000000Z.tar.gz.1234.partial", n3, n3 + ".sha256", "notes.txt", "sub"}, left)
	_, err = DeleteInDir(context.Background(), dir, []string{"notes.txt"})
	require.ErrorContains(t, err, "not an archive this tool writes")
}
