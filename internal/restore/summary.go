package restore

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"
)

// Summary says in one sentence what the plan does, for check mode's msg: "stop 6 units
// (...), replace database flightctl (devices 30 → 28, ...), replace pki (2 added, ...),
// re-import volume X, then prepare the devices and start the units again".
func (p *Plan) Summary() string {
	var parts []string
	if n := len(p.UnitsToStop); n > 0 {
		parts = append(parts, fmt.Sprintf("stop %s (%s)", plural(n, "unit"), strings.Join(shortUnits(p.UnitsToStop), ", ")))
	}
	if d := p.Database; d != nil {
		switch {
		case d.External:
			parts = append(parts, "leave the database alone (external, or no dump in the archive: restore it with your database tools)")
		case !d.LiveExists:
			parts = append(parts, fmt.Sprintf("create database %s from the archive%s", d.Name, countChanges(nil, d.CountsArchive)))
		default:
			parts = append(parts, fmt.Sprintf("replace database %s%s", d.Name, countChanges(d.CountsNow, d.CountsArchive)))
		}
	}
	var same []string
	for _, f := range p.Files {
		if f.identical() {
			same = append(same, f.Name)
			continue
		}
		parts = append(parts, "replace "+f.Name+" ("+f.changeCounts()+")")
	}
	if len(same) > 0 {
		parts = append(parts, "rewrite "+joinAnd(same)+" (identical to the archive)")
	}
	if p.Volume != "" {
		parts = append(parts, "re-import volume "+p.Volume)
	}
	parts = append(parts, "then prepare the devices")
	if len(p.UnitsToStop) > 0 {
		parts[len(parts)-1] += " and start the units again"
	}
	return strings.Join(parts, ", ")
}

// identical reports whether the live copy already matches the archive.
func (c FileChanges) identical() bool {
	return len(c.Added) == 0 && len(c.Replaced) == 0 && len(c.Removed) == 0
}

// joinAnd is "a", "a and b", "a, b and c".
func joinAnd(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

// changeCounts is "2 added, 1 replaced, 3 unchanged" (or "no change").
func (c FileChanges) changeCounts() string {
	var out []string
	for _, x := range []struct {
		n    int
		what string
	}{{len(c.Added), "added"}, {len(c.Replaced), "replaced"}, {len(c.Removed), "removed"}} {
		if x.n > 0 {
			out = append(out, fmt.Sprintf("%d %s", x.n, x.what))
		}
	}
	if len(out) == 0 {
		return fmt.Sprintf("no change, %d unchanged", c.Unchanged)
	}
	if c.Unchanged > 0 {
		out = append(out, fmt.Sprintf("%d unchanged", c.Unchanged))
	}
	return strings.Join(out, ", ")
}

// countChanges is " (devices 30 → 28, fleets 6 → 6, enrollment requests 6 → 5)" for the
// counted tables, now → archive; "" when nothing is known.
func countChanges(now, archive map[string]int64) string {
	if len(now) == 0 && len(archive) == 0 {
		return ""
	}
	var out []string
	for _, t := range CountedTables {
		a, inArchive := archive[t]
		n, inNow := now[t]
		name := strings.ReplaceAll(t, "_", " ")
		switch {
		case inNow && inArchive:
			out = append(out, fmt.Sprintf("%s %s → %s", name, count(n), count(a)))
		case inArchive:
			out = append(out, fmt.Sprintf("%s %s", name, count(a)))
		case inNow:
			out = append(out, fmt.Sprintf("%s now %s", name, count(n)))
		}
	}
	return " (" + strings.Join(out, ", ") + ")"
}

// count shows -1 (no such table) as "none".
func count(n int64) string {
	if n < 0 {
		return "none"
	}
	return fmt.Sprint(n)
}

// doneSummary says what a finished restore did, for its msg.
func (r *run) doneSummary() string {
	j := r.journal
	var parts []string
	if jd := j.Database; jd != nil {
		if jd.LiveExisted {
			parts = append(parts, "database "+jd.Live+" replaced")
		} else {
			parts = append(parts, "database "+jd.Live+" created from the archive (it did not exist)")
		}
	}
	if len(j.Files) > 0 {
		names := make([]string, len(j.Files))
		for i, f := range j.Files {
			names[i] = f.Name
		}
		parts = append(parts, joinAnd(names)+" replaced")
	}
	if j.Volume != nil {
		parts = append(parts, "volume "+j.Volume.Name+" re-imported")
	}
	if j.Items != nil && len(j.Items.Staged) > 0 {
		parts = append(parts, joinAnd(j.Items.Components)+" Secrets applied")
	}
	if r.target.Devices() != nil {
		parts = append(parts, "devices prepared")
	}
	if n := len(j.ActiveUnits); n > 0 {
		parts = append(parts, plural(n, "unit")+" started again")
	}
	msg := fmt.Sprintf("Restored from %s (restore %s): %s.", filepath.Base(r.opts.ArchivePath), j.ID, strings.Join(parts, "; "))
	if r.res.OldDatabase != "" {
		msg += " The previous database is kept as " + r.res.OldDatabase + "."
	}
	return msg
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// shortUnits drops ".service", which says nothing to the reader.
func shortUnits(units []string) []string {
	out := make([]string, len(units))
	for i, u := range units {
		out[i] = strings.TrimSuffix(u, ".service")
	}
	return out
}

// humanTime is a time an operator reads without converting: UTC, to the second.
func humanTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// stepList is "load_database, stop_units" or "none".
func stepList(steps []string) string {
	if len(steps) == 0 {
		return "none"
	}
	return strings.Join(steps, ", ")
}
