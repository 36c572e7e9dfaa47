package restore_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/restore"
)

func TestRestoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	for _, layout := range []string{"writer", "upstream"} {
		t.Run(layout, func(t *testing.T) {
			e.t = t
			dump := e.dump(ctx)
			var path string
			if layout == "writer" {
				path = e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), dump)
			} else {
				path = e.writeUpstreamArchive(filepath.Join(t.TempDir(), "out"), dump)
			}
			e.damage(ctx)
			require.NotEqual(t, e.rowsBefore, e.rows(ctx))
			require.NotEqual(t, e.filesBefore, e.files())

			opts := e.options(ctx, path)
			stoppedDuringRestore := false
			opts.Checkpoint = func(name string) error {
				if name == restore.StepStopUnits {
					stoppedDuringRestore = !e.unitActive(ctx, "flightctl-api.service") && e.unitActive(ctx, "flightctl-db.service")
				}
				return nil
			}
			res, err := restore.Run(ctx, opts)
			require.NoError(t, err)
			require.True(t, res.Changed)
			require.True(t, stoppedDuringRestore, "the API unit is stopped while the database is replaced, the database unit is not")
			require.Contains(t, res.Steps, restore.StepSwapDatabase)
			require.Contains(t, res.Steps, restore.StepFinalize)
			require.NotNil(t, res.DevicePrep)
			require.Empty(t, res.OldDatabase)
			e.assertRestored(ctx)

			// The same archive again: nothing to do.
			again, err := restore.Run(ctx, e.options(ctx, path))
			require.NoError(t, err)
			require.False(t, again.Changed)
			require.Empty(t, again.Steps)
			require.Equal(t, res.RestoreID, again.RestoreID)
			require.False(t, again.AlreadyRestoredAt.IsZero())
			// The operator reads what happened, when, and how to override it.
			require.Contains(t, again.Message, "Nothing done: this server was already restored from this archive at "+
				again.AlreadyRestoredAt.UTC().Format("2006-01-02 15:04:05 UTC")+" (restore "+res.RestoreID+")")
			require.Contains(t, again.Message, "force: true")
			require.Contains(t, res.Message, "Restored from "+filepath.Base(path)+" (restore "+res.RestoreID+"): database flightctl replaced")
			// Reset the KV so the next layout starts from the same place.
			require.NoError(t, e.kv.FlushAll(ctx).Err())
			conn, err := e.pg.SuperuserConn(ctx, "flightctl")
			require.NoError(t, err)
			_, err = conn.Exec(ctx, `DELETE FROM events`)
			require.NoError(t, err)
			conn.Close(ctx)
			_ = os.Remove(filepath.Join(e.cfg.StateDir, restore.JournalFile))
		})
	}
}
