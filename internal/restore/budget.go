package restore

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"flightctl.dr/internal/archive"
)

// freeSpace is the database server's free space as read once per restore: the budget of
// the dump and the plan's check both use it.
type freeSpace struct {
	bytes int64
	known bool
	err   error
}

// databaseFreeSpace reads the database server's free space (Database.FreeSpaceAt: df in
// the database container or pod, statfs for a direct database) in the data directory the
// survey found, the first time it is asked.
func (r *run) databaseFreeSpace(ctx context.Context, db Database) (int64, bool, error) {
	if r.dbSpace == nil {
		r.dbSpace = &freeSpace{}
		if sv, err := r.surveyDatabase(ctx, db); err != nil {
			r.dbSpace.err = fmt.Errorf("find the database data directory: %w", err)
		} else {
			r.dbSpace.bytes, r.dbSpace.known, r.dbSpace.err = db.FreeSpaceAt(ctx, sv.DataDirectory)
		}
	}
	return r.dbSpace.bytes, r.dbSpace.known, r.dbSpace.err
}

// surveyDatabase is Database.Survey of the live database, asked once: first for the data
// directory's free space, beside the archive's checksum, then read again by the plan.
func (r *run) surveyDatabase(ctx context.Context, db Database) (DatabaseSurvey, error) {
	if r.survey == nil {
		sv, err := db.Survey(ctx, db.Name(), CountedTables)
		r.survey = &survey{DatabaseSurvey: sv, err: err}
	}
	return r.survey.DatabaseSurvey, r.survey.err
}

type survey struct {
	DatabaseSurvey
	err error
}

// budgets bound what a fresh restore lets the archive inflate to, by where each entry
// goes, before the archive is read: the verification and the load refuse an entry that
// passes one from its header (and from the manifest, before anything, for our archives).
// Under them, Limits.MaxTotalSize (max_total_size) remains the ceiling, and the only bound
// where a free space cannot be known.
//
//   - The dump goes into the database server, never to this machine's disk: it is loaded
//     into a second database beside the live one until the swap, so its bytes are held to
//     the free space in the server's data directory. A database loaded from N bytes of SQL
//     may take less room than N (COPY text is wordier than the pages it fills) or more
//     (its indexes); no margin either way is right for every database, so the bound is the
//     dump's own bytes (the plan's check then also asks for room for a copy as large as
//     the live database).
//   - The files are staged beside the live ones, the PAM volume in the state directory:
//     their bytes are held, per file system, to its free space. Objects (Kubernetes
//     Secrets) are not written to this machine and draw only on the ceiling.
func (r *run) budgets(ctx context.Context) []archive.Budget {
	var out []archive.Budget
	if db := r.target.Database(); db != nil {
		// When it cannot be known the plan's check says so in a warning (databasePreflight).
		if free, known, err := r.databaseFreeSpace(ctx, db); err == nil && known {
			out = append(out, archive.Budget{What: "the database dump", Bytes: free,
				From:   "the free space in the database server's data directory",
				Advice: "the dump is loaded into a second database beside the live one until the swap, and its bytes are held to that free space: free space on the database server (df -h of its data directory shows it), then run the restore again",
				Holds:  func(name string) bool { return name == archive.DatabaseDump }})
		}
	}
	return append(out, r.stagingBudgets()...)
}

// spaceChecks lists the budgets with what the archive's entries (report's, from its
// manifest or its tar) put under each.
func spaceChecks(budgets []archive.Budget, report *archive.Report) []SpaceCheck {
	var out []SpaceCheck
	for _, b := range budgets {
		c := SpaceCheck{What: b.What, Where: b.From, FreeBytes: b.Bytes}
		if report != nil {
			for _, e := range report.Entries {
				if e.Type != archive.TypeDir && b.Holds(path.Clean(e.Path)) {
					c.Bytes += e.Size
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// stagePlace is a file system the restore stages entries on.
type stagePlace struct {
	dirs    []string
	free    int64
	targets []FileTarget
	volume  bool
}

func (r *run) stagingBudgets() []archive.Budget {
	var places []*stagePlace
	byDev := map[uint64]*stagePlace{}
	add := func(dir string, t *FileTarget) {
		dir = existingDir(dir)
		var st syscall.Stat_t
		free, known, _ := LocalFreeSpace(dir)
		if err := syscall.Stat(dir, &st); err != nil || !known {
			r.res.warn(r.logger, "cannot tell the free space of the file system holding %s: what the restore stages there is bounded only by max_total_size (%d bytes)", dir, r.ceiling())
			return
		}
		dev := uint64(st.Dev)
		p := byDev[dev]
		if p == nil {
			p = &stagePlace{free: free}
			byDev[dev] = p
			places = append(places, p)
		}
		if !slices.Contains(p.dirs, dir) {
			p.dirs = append(p.dirs, dir)
		}
		if t == nil {
			p.volume = true
		} else {
			p.targets = append(p.targets, *t)
		}
	}
	for _, t := range r.target.Files() {
		add(filepath.Dir(t.Path), &t)
	}
	if r.target.Volume() != nil {
		add(r.opts.StateDir, nil)
	}
	var out []archive.Budget
	for _, p := range places {
		var what []string
		if len(p.targets) > 0 {
			what = append(what, "the files staged beside the live ones")
		}
		if p.volume {
			what = append(what, "the PAM volume staged in the state directory")
		}
		targets, volume := p.targets, p.volume
		out = append(out, archive.Budget{What: strings.Join(what, " and "), Bytes: p.free,
			From:   "the free space of the file system holding " + strings.Join(p.dirs, ", "),
			Advice: fmt.Sprintf("they are written there before the swap: free space there (df -h %s shows it), or set state_dir to a directory with room for the PAM volume, then run the restore again", strings.Join(p.dirs, " ")),
			Holds: func(name string) bool {
				if _, _, ok := entryOf(targets, name); ok {
					return true
				}
				return volume && name == volumeEntry
			}})
	}
	return out
}

// existingDir is dir, or its nearest ancestor that exists (the state directory of a check
// run is not created).
func existingDir(dir string) string {
	for {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return dir
		}
		dir = parent
	}
}

// ceiling is Limits.MaxTotalSize as the archive reader applies it.
func (r *run) ceiling() int64 {
	if r.opts.Limits.MaxTotalSize > 0 {
		return r.opts.Limits.MaxTotalSize
	}
	return archive.DefaultLimits().MaxTotalSize
}
