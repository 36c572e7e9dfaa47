package restore_test

import (
	"context"
	"errors"
	"path/filepath"
	"sort"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/restore"
)

// preparedKeys are the awaiting-reconnect keys the live database's devices need.
func (e *env) preparedKeys(ctx context.Context) []string {
	t := e.t
	conn, err := e.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT 'v1/' || org_id::text || '/device/' || name || '/awaiting-reconnect' FROM devices
		WHERE deleted_at IS NULL AND COALESCE(status->'lifecycle'->>'status', '') NOT IN ('Decommissioned', 'Decommissioning') ORDER BY 1`)
	require.NoError(t, err)
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return keys
}

func (e *env) awaitingKeys(ctx context.Context) []string {
	keys, err := e.kv.Keys(ctx, "v1/*/device/*/awaiting-reconnect").Result()
	require.NoError(e.t, err)
	sort.Strings(keys)
	return keys
}

// A rollback after device preparation had cleared the KV store left it without the
// awaiting-reconnect keys of the restored-back database's devices (devices then stay
// AwaitingReconnect forever): the rollback prepares the KV store for that database.
func TestRollbackAfterKVFlushPreparesTheKVStore(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "a"), metadata(), e.dump(ctx))

	t.Run("failure after device preparation", func(t *testing.T) {
		e.t = t
		e.damage(ctx)
		opts := e.options(ctx, path)
		opts.Checkpoint = func(name string) error {
			if name == restore.StepDevicePrep {
				return errors.New("injected failure after device preparation")
			}
			return nil
		}
		res, err := restore.Run(ctx, opts)
		require.Error(t, err)
		require.True(t, res.RolledBack, "%v", err)
		require.NotEmpty(t, e.preparedKeys(ctx))
		require.Equal(t, e.preparedKeys(ctx), e.awaitingKeys(ctx), "the KV store serves the restored-back database")
		require.True(t, e.unitActive(ctx, "flightctl-api.service"))
	})

	t.Run("rollback after SIGKILL at device preparation", func(t *testing.T) {
		e.t = t
		e.cfg.Archive = path
		runKilledChild(t, e.cfg, restore.StepDevicePrep)
		// A clean KV store is what the flush left; the rollback must fill it again.
		require.NoError(t, e.kv.FlushAll(ctx).Err())
		opts := e.options(ctx, "")
		opts.Rollback = true
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.True(t, res.RolledBack)
		require.Equal(t, e.preparedKeys(ctx), e.awaitingKeys(ctx), "the KV store serves the restored-back database")
		require.True(t, e.unitActive(ctx, "flightctl-api.service"))
	})
}
