package restore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/restore"
)

// TestRestoreFollowsLiveState is the disaster-twice case: after a restore, a disaster
// (database dropped, PKI deleted, KV store flushed) makes the next run with the same archive
// restore again, in check mode too; a run on a server that still holds the restore changes
// nothing.
func TestRestoreFollowsLiveState(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), metadata(), e.dump(ctx))
	e.damage(ctx)

	first, err := restore.Run(ctx, e.options(ctx, path))
	require.NoError(t, err)
	require.True(t, first.Changed)
	e.assertRestored(ctx)
	j, err := restore.ReadJournal(e.cfg.StateDir)
	require.NoError(t, err)
	require.NotNil(t, j.Produced, "the journal records what the restore put in place")
	require.NotEmpty(t, j.Produced.DatabaseOID)
	require.NotEmpty(t, j.Produced.Files)

	unchanged := func(t *testing.T) {
		t.Helper()
		again, err := restore.Run(ctx, e.options(ctx, path))
		require.NoError(t, err)
		require.False(t, again.Changed, again.Message)
		require.Empty(t, again.Steps)
		require.Empty(t, again.Drift)
		require.Contains(t, again.Message, "Nothing done: this server was already restored from this archive at ")
		require.Contains(t, again.Message, "still the ones that restore put in place")
	}
	unchanged(t)

	disasters := []struct {
		name  string
		do    func(t *testing.T)
		drift string
	}{
		{"database dropped", func(t *testing.T) {
			conn, err := e.pg.SuperuserConn(ctx, "postgres")
			require.NoError(t, err)
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, `DROP DATABASE flightctl WITH (FORCE)`)
			require.NoError(t, err)
		}, "database flightctl is missing"},
		{"PKI deleted", func(t *testing.T) {
			require.NoError(t, os.RemoveAll(e.cfg.pki()))
		}, e.cfg.pki() + " is missing"},
		{"KV flushed", func(t *testing.T) {
			require.NoError(t, e.kv.FlushAll(ctx).Err())
		}, "the KV store lacks 18 awaiting-reconnect keys (it was flushed or replaced since)"},
		{"PKI file changed", func(t *testing.T) {
			require.NoError(t, os.WriteFile(filepath.Join(e.cfg.pki(), "ca.crt"), []byte("another CA\n"), 0o644))
		}, e.cfg.pki() + " changed"},
	}
	for _, d := range disasters {
		t.Run(d.name, func(t *testing.T) {
			e.t = t
			d.do(t)

			check := e.options(ctx, path)
			check.CheckMode = true
			planned, err := restore.Run(ctx, check)
			require.NoError(t, err)
			require.True(t, planned.Changed, "check mode says the restore would run: %s", planned.Message)
			require.Contains(t, planned.Drift, d.drift)
			require.NotNil(t, planned.Plan, "check mode shows the plan")

			again, err := restore.Run(ctx, e.options(ctx, path))
			require.NoError(t, err)
			require.True(t, again.Changed, "the second restore brings the server back")
			require.Contains(t, again.Drift, d.drift)
			require.Contains(t, again.Steps, restore.StepFinalize)
			require.NotEqual(t, first.RestoreID, again.RestoreID)
			require.Equal(t, e.rowsBefore, e.rows(ctx))
			require.Equal(t, e.filesBefore, e.files())

			unchanged(t)
		})
	}
}

// TestRestoreRefusesAnotherEstate: an archive records its estate; restoring it onto another
// estate is refused unless the source estate is named.
func TestRestoreRefusesAnotherEstate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	md := metadata()
	md.Estate = &archive.Estate{Name: "site-b", APIEndpoint: "https://api.site-b.example:3443/", CAFingerprint: "sha256:00ff"}
	path := e.writeArchive(ctx, filepath.Join(t.TempDir(), "out"), md, e.dump(ctx))
	e.damage(ctx)
	damaged := e.rows(ctx)

	opts := e.options(ctx, path)
	opts.EstateName = "site-a"
	_, err := restore.Run(ctx, opts)
	require.Error(t, err)
	require.True(t, errors.Is(err, restore.ErrOtherEstate), err.Error())
	require.Contains(t, err.Error(), "made on estate site-b (API https://api.site-b.example:3443/, CA sha256:00ff) but this server is estate site-a")
	require.Contains(t, err.Error(), "source_estate: site-b")
	require.Equal(t, damaged, e.rows(ctx), "nothing was restored")
	_, statErr := os.Stat(filepath.Join(e.cfg.StateDir, restore.JournalFile))
	require.True(t, os.IsNotExist(statErr), "no journal: nothing started")

	opts.SourceEstate = "site-c"
	_, err = restore.Run(ctx, opts)
	require.ErrorContains(t, err, "not on the source estate named (site-c)")

	opts.SourceEstateHint = "flightctl_dr_restore_source_estate={estate}"
	opts.SourceEstate = ""
	_, err = restore.Run(ctx, opts)
	require.ErrorContains(t, err, "name the source estate (flightctl_dr_restore_source_estate=site-b)")

	// Named: the replacement-host case goes ahead, and says so.
	opts.SourceEstate = "site-b"
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	require.True(t, res.Changed)
	require.Equal(t, "site-b", res.Archive.Estate.Name)
	require.Contains(t, res.Warnings, "restoring estate site-b's archive onto estate site-a, as asked (source estate site-b): this server takes site-b's database, PKI and keys")
	require.Equal(t, e.rowsBefore, e.rows(ctx))

	// The archive's own estate needs no name.
	own := e.options(ctx, path)
	own.EstateName = "site-b"
	own.Force = true
	_, err = restore.Run(ctx, own)
	require.NoError(t, err)
}
