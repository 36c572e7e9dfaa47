package restore

import (
	"context"
	"io"
	"log/slog"

	"flightctl.dr/internal/archive"
)

// LoadDump loads a plain-SQL dump into the existing database name exactly as the
// load_database step of a restore does: the same dump checks (psql gets only checked
// statements, in restricted mode), the same loader (db.Load, or the parallel loader when
// db is a ParallelLoader) and the same comparison of the rows the dump holds with those md
// records. Nothing else of a restore runs: no device preparation in the loaded database.
// A restore drill calls it so that what it proves is what a restore would do. It returns
// the rows the dump's COPY blocks held for CountedTables and for tables (bare names, as
// "devices"), and the warnings of the comparison.
func LoadDump(ctx context.Context, db Database, name string, dump io.Reader, md archive.Metadata, tables []string, logger *slog.Logger) (map[string]int64, []string, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &run{logger: logger, report: &archive.Report{Metadata: md}, res: &Result{Warnings: []string{}},
		journal: &Journal{ID: "load-" + name}, target: loadOnlyTarget{db: db}}
	counts := newCopyCounter(CountedTables).Counts
	for _, t := range tables {
		counts[t] = 0
	}
	err := r.loadDump(ctx, db, name, dump, counts)
	return counts, r.res.Warnings, err
}

// loadOnlyTarget is the target of LoadDump: a database and nothing else to act on.
type loadOnlyTarget struct{ db Database }

func (loadOnlyTarget) DeploymentType() string                        { return "" }
func (loadOnlyTarget) ServerVersion(context.Context) (string, error) { return "", nil }
func (loadOnlyTarget) Units() UnitManager                            { return nil }
func (loadOnlyTarget) UnitNames() []string                           { return nil }
func (t loadOnlyTarget) Database() Database                          { return t.db }
func (loadOnlyTarget) Files() []FileTarget                           { return nil }
func (loadOnlyTarget) Volume() VolumeManager                         { return nil }
func (loadOnlyTarget) Devices() DevicePreparer                       { return nil }
