package archive

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"flightctl.dr/internal/pgdump"
)

// dumpWatch feeds the dump to the checker and stops the read at its first refusal.
type dumpWatch struct{ w *pgdump.Watcher }

func (d *dumpWatch) Write(p []byte) (int, error) {
	if err := d.w.Refused(); err != nil {
		return 0, err
	}
	return d.w.Write(p)
}

// DumpRefused words a refusal of db/dump.sql by the dump checker; verify and restore
// both use it.
func DumpRefused(err error) *IntegrityError {
	return &IntegrityError{Kind: KindDump, Entry: DatabaseDump, Detail: "database dump refused: " + err.Error() +
		"; the archive was not written by flightctl-backup from a Flight Control database, or was altered after: do not restore from it"}
}

// CheckDumpRows compares the rows the dump's COPY blocks hold (by table, "public.devices")
// with the metadata: the counts a backup took from the dump itself (dump_rows_*) must
// match exactly; the counts older backups took by a query before the dump (count_*) only
// give a warning.
func CheckDumpRows(rows map[string]int64, md Metadata) (warnings []string, err error) {
	keys := make([]string, 0, len(md.Extra))
	exact := false
	for k := range md.Extra {
		keys = append(keys, k)
		if strings.HasPrefix(k, ExtraDumpRowsPrefix) {
			exact = true
		}
	}
	sort.Strings(keys)
	var bad, hint []string
	for _, k := range keys {
		table, isRows := strings.CutPrefix(k, ExtraDumpRowsPrefix)
		if !isRows {
			var isCount bool
			if table, isCount = strings.CutPrefix(k, ExtraCountPrefix); !isCount || exact {
				continue
			}
		}
		want, perr := strconv.ParseInt(md.Extra[k], 10, 64)
		if perr != nil {
			return nil, &IntegrityError{Kind: KindMetadata, Entry: MetadataName, Detail: fmt.Sprintf("metadata.json records %s = %q, not a number: the metadata is corrupt, do not restore from this archive", k, md.Extra[k])}
		}
		qualified := table
		if !strings.Contains(table, ".") {
			qualified = "public." + table
		}
		if got := rows[qualified]; got != want {
			msg := fmt.Sprintf("%s: the dump holds %d rows, metadata.json says %d", table, got, want)
			if isRows {
				bad = append(bad, msg)
			} else {
				hint = append(hint, msg)
			}
		}
	}
	if len(bad) > 0 {
		return nil, &IntegrityError{Kind: KindDump, Entry: DatabaseDump, Detail: fmt.Sprintf("database dump refused: its row counts differ from those the backup recorded (%s): the dump is not the one the backup wrote, do not restore from this archive", strings.Join(bad, "; "))}
	}
	if len(hint) > 0 {
		warnings = append(warnings, fmt.Sprintf("row counts differ from the counts the backup took before dumping (%s): normal when the server was busy during the backup; check the restored data", strings.Join(hint, "; ")))
	}
	return warnings, nil
}
