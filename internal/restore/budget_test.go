package restore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/testbed"
)

// smallFS mounts a tmpfs of size (mount's notation, "8m") on a new directory, unmounted
// when t ends: a real file system that fills up. It needs root.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testbed.Unavailable(t, "mounting a small file system needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		testbed.Unavailable(t, "cannot mount a tmpfs: "+strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	return int64(st.Bavail) * int64(st.Bsize)
}

// hexLines is n bytes of SQL comment lines that do not compress much (as a real dump's
// data does not compress a thousand times).
func hexLines(n int64) string {
	var b strings.Builder
	raw := make([]byte, 64)
	for int64(b.Len()) < n {
		_, _ = rand.Read(raw)
		b.WriteString("-- ")
		b.WriteString(hex.EncodeToString(raw))
		b.WriteString("\n")
	}
	return b.String()
}

// An archive whose dump is larger than the database server's free space is refused before
// anything is stopped or loaded, with the budget, where it comes from and what to do: the
// database's data directory is a small real file system. Our archives are refused from
// their manifest; an upstream archive (no manifest) from the dump's header, as the
// verification reaches it.
func TestDumpPastDatabaseFreeSpaceRefused(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql", "/usr/lib/postgresql/15/bin/pg_dump")
	mnt := smallFS(t, "72m")
	pg, err := testbed.StartPostgres(ctx, testbed.PostgresOptions{Dir: filepath.Join(mnt, "pg")})
	if err != nil && strings.Contains(err.Error(), "No space left") {
		t.Fatalf("the cluster does not fit the small file system: %v", err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = pg.Stop() })
	e := newEnvOn(t, pg)
	free := freeBytes(t, pg.DataDir)
	t.Logf("free in the data directory: %d bytes", free)
	dump := string(e.dump(ctx))
	preamble := "SET row_security = off;\n"
	big := []byte(strings.Replace(dump, preamble, preamble+hexLines(free+(4<<20)), 1))
	ours := e.writeArchive(ctx, filepath.Join(t.TempDir(), "ours"), metadata(), big)
	upstream := e.writeUpstreamArchive(filepath.Join(t.TempDir(), "upstream"), big)
	e.damage(ctx)
	before := e.snapshot(ctx)

	for name, p := range map[string]string{"ours": ours, "upstream": upstream} {
		t.Run(name, func(t *testing.T) {
			e.t = t
			res, stopped, err := runWatchingStop(ctx, e.options(ctx, p))
			require.Error(t, err)
			require.Contains(t, err.Error(), `archive entry "db/dump.sql" brings the database dump to more than `)
			require.Contains(t, err.Error(), "past the budget of the free space in the database server's data directory")
			require.Contains(t, err.Error(), "free space on the database server")
			ie, ok := archive.IsIntegrityError(err)
			require.True(t, ok, "%v", err)
			require.Equal(t, archive.KindLimit, ie.Kind)
			require.False(t, stopped, "no unit stopped")
			require.Empty(t, res.RestoreID, "refused before the restore began: nothing loaded")
			e.assertUnchanged(ctx, before)
		})
	}
}

// An archive whose staged files exceed the free space where they are staged (beside the
// live files, here on a small real file system) is refused before anything is stopped or
// loaded, instead of filling the file system halfway through.
func TestStagedFilesPastFreeSpaceRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.cfg.Root = smallFS(t, "8m")
	e.writeFiles()
	pki := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("-----CA CERT-----\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(pki, "big.crt"), []byte(hexLines(9<<20)), 0o644))
	cfg, err := os.ReadFile(e.cfg.configFile())
	require.NoError(t, err)
	p := archivetest.Write(t, filepath.Join(t.TempDir(), "a"), archivetest.Content{Dump: e.dump(ctx), PKIDir: pki,
		EncryptionDir: e.cfg.encryption(), Config: cfg, ConfigMode: 0o640, Metadata: metadata()}).Path
	before := e.snapshot(ctx)

	res, stopped, err := runWatchingStop(ctx, e.options(ctx, p))
	require.Error(t, err)
	require.Contains(t, err.Error(), `archive entry "pki/big.crt" brings the files staged beside the live ones to more than `)
	require.Contains(t, err.Error(), "past the budget of the free space of the file system holding "+filepath.Join(e.cfg.Root, "etc/flightctl"))
	require.Contains(t, err.Error(), "free space there")
	ie, ok := archive.IsIntegrityError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, archive.KindLimit, ie.Kind)
	require.False(t, stopped, "no unit stopped")
	require.Empty(t, res.RestoreID, "refused before the restore began")
	e.assertUnchanged(ctx, before)
}
