package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/humanize"
	"flightctl.dr/internal/restore"
)

// human prints the result for a person: the message first, then what matters in aligned
// sections (archive, units, database, files, volume, devices), never raw JSON. --json
// gives the module's object.
func human(w io.Writer, out ansiblemod.Output) {
	if msg, _ := out["msg"].(string); msg != "" {
		fmt.Fprintln(w, msg)
	}
	var arch *restore.ArchiveSummary
	var plan *restore.Plan
	var dev *devprep.Result
	decode(out["archive"], &arch)
	decode(out["plan"], &plan)
	decode(out["device_preparation"], &dev)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(title, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", title, fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(w)
	if arch != nil {
		line("Archive", "%s (%s, sha256 %s)", filepath.Base(arch.Path), humanize.Bytes(arch.Size), short(arch.SHA256))
		what := "with the database dump"
		if !arch.DatabaseIncluded {
			what = "without a database dump (external database)"
		}
		line("", "made %s by server %s (%s), %s", arch.Timestamp.UTC().Format("2006-01-02 15:04:05 UTC"), arch.Version, arch.DeploymentType, what)
	}
	steps := asStrings(out["steps"])
	if plan != nil {
		writePlan(line, plan, len(steps) > 0)
	}
	if len(steps) > 0 {
		line("Steps done", "%s", strings.Join(steps, ", "))
	}
	if dev != nil {
		writeDevices(line, dev)
	}
	if old, _ := out["old_database"].(string); old != "" {
		line("Previous DB", "kept as %s: drop it when you no longer need it", old)
	}
	if rb, _ := out["rolled_back"].(bool); rb {
		line("Rolled back", "the previous database and files are back; the units that were running were started again")
	}
	if d, ok := out["duration"].(float64); ok {
		line("Took", "%.1f s", d)
	}
	tw.Flush()
	if _, ok := out["diff"].(map[string]any); ok {
		fmt.Fprintln(w)
		cli.PrintDiff(w, out)
	}
}

// writePlan shows the plan; done says it was carried out (the live side is then what
// was there before the restore).
func writePlan(line func(string, string, ...any), p *restore.Plan, done bool) {
	stop, now := "stop, then start again", "now"
	if done {
		stop, now = "stopped, then started again", "before"
	}
	if len(p.UnitsToStop) > 0 {
		line("Units", "%s: %s", stop, strings.Join(trimService(p.UnitsToStop), ", "))
	} else {
		line("Units", "none running: nothing to stop or start")
	}
	if len(p.UnitsMissing) > 0 {
		line("", "not on this host, skipped: %s", strings.Join(trimService(p.UnitsMissing), ", "))
	}
	if d := p.Database; d != nil {
		switch {
		case d.External:
			line("Database", "left alone (external, or no dump in the archive)")
		default:
			live := "did not exist"
			if d.LiveExists {
				live = fmt.Sprintf("%s %s, owner %s", humanize.Bytes(d.LiveSize), now, d.Owner)
			}
			free := "free space unknown"
			if d.FreeSpaceKnown {
				free = humanize.Bytes(d.FreeSpace) + " free"
			}
			line("Database", "%s: %s; the archive's dump: %s of SQL; %s", d.Name, live, humanize.Bytes(d.DumpSize), free)
			if len(d.CountsNow) > 0 || len(d.CountsArchive) > 0 {
				line("", "%-20s %8s %8s", "rows", now, "archive")
				for _, t := range restore.CountedTables {
					line("", "%-20s %8s %8s", strings.ReplaceAll(t, "_", " "), rowCount(d.CountsNow, t), rowCount(d.CountsArchive, t))
				}
			}
		}
	}
	for i, f := range p.Files {
		title := ""
		if i == 0 {
			title = "Files"
		}
		line(title, "%-10s %s: %s", f.Name, f.Path, fileChanges(f))
		for _, x := range []struct {
			what  string
			paths []string
		}{{"added", f.Added}, {"replaced", f.Replaced}, {"removed", f.Removed}} {
			if len(x.paths) > 0 && !(len(x.paths) == 1 && x.paths[0] == "") {
				line("", "%-10s   %s: %s", "", x.what, list(x.paths, 8))
			}
		}
	}
	if p.Volume != "" {
		line("Volume", "%s: content replaced by the archive's", p.Volume)
	}
	if !done {
		for i, c := range p.Space {
			title := ""
			if i == 0 {
				title = "Space"
			}
			line(title, "%s: %s, %s free (%s)", c.What, humanize.Bytes(c.Bytes), humanize.Bytes(c.FreeBytes), c.Where)
		}
	}
}

func writeDevices(line func(string, string, ...any), d *devprep.Result) {
	if d.Before != nil {
		// Device preparation alone, in check mode: what a run would do.
		line("Devices", "%d to mark awaiting reconnection (%d already are)", d.Before.DevicesToPrepare, d.Before.DevicesAwaitingReconnect)
		line("", "%d enrollment requests to mark (%d already are)", d.Before.EnrollmentRequestsToPrepare, d.Before.EnrollmentRequestsAwaitingReconnect)
		line("", "awaiting-reconnect keys: %d present, %d missing", d.Before.KeysPresent, d.Before.KeysMissing)
		return
	}
	line("Devices", "%d marked awaiting reconnection, %d already were, %d decommissioned left alone",
		d.DevicesUpdated, d.DevicesAlreadyAwaiting, d.DevicesSkippedDecommissioned)
	line("", "%d enrollment requests marked, %d approved left alone", d.EnrollmentRequestsUpdated, d.EnrollmentRequestsApproved)
	kv := "KV store kept"
	if d.KVFlushed {
		kv = "KV store flushed"
	}
	line("", "%s; %d awaiting-reconnect keys written, %d of %d verified, across %d organizations",
		kv, d.KeysWritten, d.KeysVerified, d.KeysExpected, d.Organizations)
	if d.EventCreated {
		line("", "SystemRestored event %s recorded", d.EventName)
	}
	line("", "devices report their real state when they reconnect; review ConflictPaused ones, then: flightctl resume device NAME")
}

// decode turns a plain JSON value of the output back into the engine's type.
func decode(v any, dst any) {
	if v == nil {
		return
	}
	b, err := json.Marshal(v)
	if err == nil {
		_ = json.Unmarshal(b, dst)
	}
}

func fileChanges(f restore.FileChanges) string {
	var parts []string
	if n := len(f.Added); n > 0 {
		parts = append(parts, fmt.Sprintf("%d added", n))
	}
	if n := len(f.Replaced); n > 0 {
		parts = append(parts, fmt.Sprintf("%d replaced", n))
	}
	if n := len(f.Removed); n > 0 {
		parts = append(parts, fmt.Sprintf("%d removed", n))
	}
	if len(parts) == 0 {
		return fmt.Sprintf("no change (%d unchanged)", f.Unchanged)
	}
	if f.Unchanged > 0 {
		parts = append(parts, fmt.Sprintf("%d unchanged", f.Unchanged))
	}
	return strings.Join(parts, ", ")
}

func rowCount(c map[string]int64, table string) string {
	n, ok := c[table]
	switch {
	case !ok:
		return "-"
	case n < 0:
		return "no table"
	}
	return fmt.Sprint(n)
}

// list shows at most max paths, then how many more.
func list(paths []string, max int) string {
	if len(paths) <= max {
		return strings.Join(paths, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(paths[:max], ", "), len(paths)-max)
}

func trimService(units []string) []string {
	out := make([]string, len(units))
	for i, u := range units {
		out[i] = strings.TrimSuffix(u, ".service")
	}
	return out
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12] + "…"
	}
	return sha
}

func asStrings(v any) []string {
	var out []string
	if list, ok := v.([]any); ok {
		for _, x := range list {
			out = append(out, fmt.Sprint(x))
		}
	}
	return out
}
