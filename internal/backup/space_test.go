package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The free-space check wanted the database's size on disk plus the files, before
// compression: it refused backups that fit. It now wants an estimate of the archive.
func TestFreeSpaceCheckWantsTheCompressedSize(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	opts := f.options()
	p, err := planBackup(ctx, opts)
	require.NoError(t, err)
	uncompressed := p.Estate.EstimatedSize
	require.Greater(t, uncompressed, int64(4<<20), "the test database must be a few MiB on disk")

	// Room for the archive (a few hundred KiB here), not for the database's size on disk.
	opts.OutputDir = mountTmpfs(t, fmt.Sprintf("%dk", uncompressed*65/100/1024))
	p, err = planBackup(ctx, opts)
	require.NoError(t, err, "a backup that fits must not be refused")
	assert.Less(t, p.EstimatedArchiveSize, uncompressed)
	res, err := runBackup(ctx, opts)
	require.NoError(t, err)
	assert.Less(t, res.Size, p.EstimatedArchiveSize, "the estimate bounds the real archive")
}

// A full disk while writing gave "write .../(unnamed): no space left on device" and no
// advice.
func TestDiskFullWhileWritingSaysWhatToDo(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	opts := f.options()
	opts.OutputDir = mountTmpfs(t, "512k")
	opts.ignoreFreeSpace = true
	bigPKI := filepath.Join(t.TempDir(), "pki")
	writePKI(t, bigPKI)
	require.NoError(t, os.WriteFile(filepath.Join(bigPKI, "bundle.bin"), randomBytes(t, 2<<20), 0o600))
	opts.Podman.PKIDir = bigPKI
	_, err := runBackup(ctx, opts)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no space left on device")
	assert.Contains(t, err.Error(), "the file system of "+opts.OutputDir+" is full")
	assert.Contains(t, err.Error(), "output_dir")
	assert.Contains(t, err.Error(), "nothing was left behind")
	assert.Empty(t, dirEntries(t, opts.OutputDir))
}
