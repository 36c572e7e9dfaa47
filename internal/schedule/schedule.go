// Package schedule validates backup schedules: a cron line (as the seed's
// `backup_restore.schedule: "0 0 * * *"`) or a systemd OnCalendar expression, always in
// UTC. A cron line is turned into the OnCalendar expression that fires at the same
// minutes; the shortest interval between two runs is computed, so that a schedule that
// fires faster than a backup takes can be flagged.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"flightctl.dr/internal/runner"
)

// Schedule is a validated schedule.
type Schedule struct {
	Input      string        `json:"input"`
	OnCalendar string        `json:"on_calendar"` // with " UTC"
	Cron       bool          `json:"cron"`        // the input was a cron line
	Interval   time.Duration `json:"-"`           // shortest time between two runs (0: unknown)
	Next       []time.Time   `json:"next"`        // the next runs, UTC
}

var shorthands = map[string]string{
	"@hourly":   "0 * * * *",
	"@daily":    "0 0 * * *",
	"@midnight": "0 0 * * *",
	"@weekly":   "0 0 * * 0",
	"@monthly":  "0 0 1 * *",
	"@yearly":   "0 0 1 1 *",
	"@annually": "0 0 1 1 *",
}

// IsCron says whether s looks like a cron line (five fields without ':', or @daily...).
func IsCron(s string) bool {
	s = strings.TrimSpace(s)
	if _, ok := shorthands[s]; ok {
		return true
	}
	f := strings.Fields(s)
	return len(f) == 5 && !strings.Contains(s, ":")
}

type field struct {
	name     string
	min, max int
	names    map[string]int
}

var (
	fMinute = field{"minute", 0, 59, nil}
	fHour   = field{"hour", 0, 23, nil}
	fDom    = field{"day of month", 1, 31, nil}
	fMonth  = field{"month", 1, 12, map[string]int{"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12}}
	fDow    = field{"day of week", 0, 7, map[string]int{"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}}
)

// parseField returns the values a cron field allows, and whether it is "*".
func parseField(s string, f field) (map[int]bool, bool, error) {
	vals := map[int]bool{}
	star := s == "*"
	num := func(x string) (int, error) {
		if f.names != nil {
			if n, ok := f.names[strings.ToLower(x)]; ok {
				return n, nil
			}
		}
		n, err := strconv.Atoi(x)
		if err != nil || n < f.min || n > f.max {
			return 0, fmt.Errorf("%s %q is not a number from %d to %d", f.name, x, f.min, f.max)
		}
		return n, nil
	}
	for _, part := range strings.Split(s, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepS)
			if err != nil || n < 1 {
				return nil, false, fmt.Errorf("%s step %q is not a positive number", f.name, stepS)
			}
			step = n
		}
		lo, hi := f.min, f.max
		switch {
		case rng == "*":
		case strings.Contains(rng, "-"):
			a, b, _ := strings.Cut(rng, "-")
			var err error
			if lo, err = num(a); err != nil {
				return nil, false, err
			}
			if hi, err = num(b); err != nil {
				return nil, false, err
			}
			if hi < lo {
				return nil, false, fmt.Errorf("%s range %q runs backwards", f.name, rng)
			}
		default:
			n, err := num(rng)
			if err != nil {
				return nil, false, err
			}
			lo = n
			if !hasStep {
				hi = n
			}
		}
		for v := lo; v <= hi; v += step {
			vals[v] = true
		}
	}
	if f.name == fDow.name && vals[7] {
		vals[0] = true
		delete(vals, 7)
	}
	return vals, star, nil
}

func list(vals map[int]bool, width int, names []string) string {
	keys := make([]int, 0, len(vals))
	for v := range vals {
		keys = append(keys, v)
	}
	sort.Ints(keys)
	parts := make([]string, len(keys))
	for i, v := range keys {
		if names != nil {
			parts[i] = names[v]
		} else {
			parts[i] = fmt.Sprintf("%0*d", width, v)
		}
	}
	return strings.Join(parts, ",")
}

type cron struct {
	min, hour, dom, month, dow map[int]bool
	domStar, dowStar           bool
}

func parseCron(s string) (*cron, string, error) {
	s = strings.TrimSpace(s)
	if full, ok := shorthands[s]; ok {
		s = full
	}
	f := strings.Fields(s)
	if len(f) != 5 {
		return nil, "", fmt.Errorf("cron line %q has %d fields, not 5 (minute hour day-of-month month day-of-week)", s, len(f))
	}
	c := &cron{}
	var err error
	if c.min, _, err = parseField(f[0], fMinute); err != nil {
		return nil, "", err
	}
	if c.hour, _, err = parseField(f[1], fHour); err != nil {
		return nil, "", err
	}
	if c.dom, c.domStar, err = parseField(f[2], fDom); err != nil {
		return nil, "", err
	}
	if c.month, _, err = parseField(f[3], fMonth); err != nil {
		return nil, "", err
	}
	if c.dow, c.dowStar, err = parseField(f[4], fDow); err != nil {
		return nil, "", err
	}
	if !c.domStar && !c.dowStar {
		return nil, "", fmt.Errorf("cron line %q restricts both the day of month and the day of week (cron runs on either, systemd only on both): give one of them as *, or write the schedule as an OnCalendar expression", s)
	}
	days := []string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
	cal := ""
	if !c.dowStar {
		cal = list(c.dow, 0, days) + " "
	}
	cal += "*-" + star(c.month, 12, 1, 2) + "-" + star(c.dom, 31, 1, 2) + " " + star(c.hour, 24, 0, 2) + ":" + star(c.min, 60, 0, 2) + ":00 UTC"
	return c, cal, nil
}

func star(vals map[int]bool, n, first, width int) string {
	if len(vals) == n {
		return "*"
	}
	return list(vals, width, nil)
}

func (c *cron) matches(t time.Time) bool {
	return c.min[t.Minute()] && c.hour[t.Hour()] && c.month[int(t.Month())] && c.dom[t.Day()] && c.dow[int(t.Weekday())]
}

// next lists the next n firing times after from (UTC), looking up to 5 years ahead.
func (c *cron) next(from time.Time, n int) []time.Time {
	var out []time.Time
	t := from.UTC().Truncate(time.Minute).Add(time.Minute)
	end := t.AddDate(5, 0, 0)
	for len(out) < n && t.Before(end) {
		if !c.month[int(t.Month())] {
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if !c.dom[t.Day()] || !c.dow[int(t.Weekday())] {
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
			continue
		}
		if !c.hour[t.Hour()] {
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, time.UTC)
			continue
		}
		if c.matches(t) {
			out = append(out, t)
		}
		t = t.Add(time.Minute)
	}
	return out
}

// Options for Parse.
type Options struct {
	// Now (default time.Now) is where the next runs are counted from.
	Now time.Time
	// Runner runs systemd-analyze to validate an OnCalendar expression; nil:
	// runner.Exec. When systemd-analyze is missing, an OnCalendar expression is
	// accepted as it is, without next runs.
	Runner runner.Runner
	// Iterations is how many next runs to list (default 10).
	Iterations int
}

// ErrEmpty is returned for an empty schedule.
var ErrEmpty = errors.New("the schedule is empty: give a cron line such as \"0 2 * * *\" or an OnCalendar expression such as \"*-*-* 02:00:00\"")

// Parse validates a schedule and gives its OnCalendar form in UTC.
func Parse(ctx context.Context, s string, opts Options) (*Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, ErrEmpty
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.Iterations <= 0 {
		opts.Iterations = 10
	}
	out := &Schedule{Input: s}
	if IsCron(s) {
		c, cal, err := parseCron(s)
		if err != nil {
			return nil, err
		}
		out.Cron, out.OnCalendar = true, cal
		// A year of runs is enough to find the shortest gap of any cron line.
		all := c.next(opts.Now, 20000)
		if len(all) == 0 {
			return nil, fmt.Errorf("cron line %q never fires (no such date): check the day and month", s)
		}
		out.Next = all[:min(len(all), opts.Iterations)]
		out.Interval = shortest(all)
		return out, nil
	}
	cal, err := utc(s)
	if err != nil {
		return nil, err
	}
	out.OnCalendar = cal
	r := opts.Runner
	if r == nil {
		r = runner.Exec{}
	}
	b, err := runner.Output(ctx, r, runner.Cmd{Name: "systemd-analyze", Args: []string{"calendar", "--iterations=" + strconv.Itoa(max(opts.Iterations, 50)), cal}, Env: []string{"TZ=UTC", "LC_ALL=C"}})
	if err != nil {
		var nf *runner.NotFoundError
		if errors.As(err, &nf) {
			return out, nil
		}
		return nil, fmt.Errorf("OnCalendar expression %q is not valid (systemd-analyze calendar: %v): see systemd.time(7), or give a cron line", s, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok || (k != "Next elapse" && !strings.HasPrefix(k, "Iter. #")) {
			continue
		}
		if t, err := time.Parse("Mon 2006-01-02 15:04:05 MST", strings.TrimSpace(v)); err == nil {
			out.Next = append(out.Next, t.UTC())
		}
	}
	if len(out.Next) == 0 {
		return nil, fmt.Errorf("OnCalendar expression %q never fires: check the date", s)
	}
	out.Interval = shortest(out.Next)
	out.Next = out.Next[:min(len(out.Next), opts.Iterations)]
	return out, nil
}

// utc adds " UTC" to an OnCalendar expression without time zone and refuses another zone.
func utc(s string) (string, error) {
	f := strings.Fields(s)
	last := f[len(f)-1]
	switch {
	case last == "UTC" || last == "utc" || last == "Z":
		return strings.Join(append(f[:len(f)-1], "UTC"), " "), nil
	case strings.Contains(last, "/") || (len(last) >= 3 && strings.ToUpper(last) == last && !strings.ContainsAny(last, "0123456789*:-.,")):
		return "", fmt.Errorf("schedule %q is in time zone %s: give it in UTC (archive names and retention buckets are UTC)", s, last)
	}
	return s + " UTC", nil
}

func shortest(ts []time.Time) time.Duration {
	var d time.Duration
	for i := 1; i < len(ts); i++ {
		if g := ts[i].Sub(ts[i-1]); d == 0 || g < d {
			d = g
		}
	}
	return d
}

// Warnings says what an operator should know about a valid schedule: one that
// fires faster than the last backup took (lastDuration, 0 for unknown).
func (s *Schedule) Warnings(lastDuration time.Duration) []string {
	var w []string
	if s.Interval > 0 && lastDuration > 0 && s.Interval < lastDuration {
		w = append(w, fmt.Sprintf("schedule %q fires every %s but the last backup took %s: runs will be skipped while one is still going (the lock keeps them from overlapping); choose a longer interval", s.Input, s.Interval, lastDuration.Round(time.Second)))
	}
	return w
}
