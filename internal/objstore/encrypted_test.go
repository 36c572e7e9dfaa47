package objstore

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/testbed"
)

// TestEncryptedArchiveStored: a .tar.gz.age archive is copied, listed as a good archive
// (the newest, over an older plain one), downloaded and verified like any other; its
// metadata is not read from the tail (it would need the key) but after the download.
func TestEncryptedArchiveStored(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "encrypted", false, 5<<20)
	ctx := context.Background()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	rec, err := encrypt.ParseRecipients([]string{id.Recipient().String()})
	require.NoError(t, err)
	ids, err := encrypt.ParseIdentities(id.String())
	require.NoError(t, err)

	older := writeArchive(t, t.TempDir(), time.Now().Add(-time.Hour), 1<<20)
	enc := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump:       randomBytes(t, 6<<20),
		Config:     []byte("db:\n  name: flightctl\n"),
		Metadata:   archive.Metadata{Timestamp: time.Now().UTC(), Version: "1.0.0", DeploymentType: archive.DeploymentPodman, DatabaseIncluded: true},
		Encryption: rec,
	})
	for _, a := range []*archive.Result{older, enc} {
		res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
		require.NoError(t, err, a.Path)
		assert.True(t, res.Uploaded)
		assert.Equal(t, a.SHA256, res.SHA256)
	}
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, a := range list {
		assert.Equal(t, retention.Good, a.Status, a.Name)
	}
	name, sum, err := s.Newest(ctx, estate)
	require.NoError(t, err)
	assert.Equal(t, filepath.Base(enc.Path), name)
	assert.Equal(t, enc.SHA256, sum)

	_, _, err = s.ReadMetadata(ctx, estate, name)
	require.ErrorIs(t, err, archive.ErrNoQuickMetadata)

	path, fetched, err := s.Download(ctx, estate, name, t.TempDir())
	require.NoError(t, err)
	assert.True(t, fetched)
	rep, err := archive.Verify(ctx, path, archive.VerifyOptions{RequireChecksum: true, Decryption: ids})
	require.NoError(t, err)
	assert.Equal(t, enc.SHA256, rep.SHA256)
	assert.True(t, rep.ArchiveEncryption.ContentsVerified)
}
