package objstore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/signature"
	"flightctl.dr/internal/testbed"
)

// newSigner makes an ed25519 signing key and the trusted keys that accept it.
func newSigner(t *testing.T) (*signature.Signer, *signature.Trusted) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	signer, err := signature.ParseSigner(pem.EncodeToMemory(block), nil)
	require.NoError(t, err)
	trusted, err := signature.ParseTrusted([]byte("backup@site-a "+signer.PublicKey()+"\n"), "test")
	require.NoError(t, err)
	return signer, trusted
}

// TestSignatureTravelsWithCopy: a signed archive, plain and encrypted, is copied with its
// signature (written before the marker), listed as signed, fetched with its signature
// beside it, and accepted by a restore's signature check with the trusted keys.
func TestSignatureTravelsWithCopy(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "signed", false, 5<<20)
	ctx := context.Background()
	signer, trusted := newSigner(t)
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	rec, err := encrypt.ParseRecipients([]string{id.Recipient().String()})
	require.NoError(t, err)
	ids, err := encrypt.ParseIdentities(id.String())
	require.NoError(t, err)

	plain := writeArchive(t, t.TempDir(), time.Date(2026, 11, 29, 2, 0, 0, 0, time.UTC), 6<<20)
	enc := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump:       randomBytes(t, 6<<20),
		Metadata:   archive.Metadata{Timestamp: time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC), Version: "1.0.0", DeploymentType: archive.DeploymentPodman, DatabaseIncluded: true},
		Encryption: rec,
	})
	require.True(t, strings.HasSuffix(enc.Path, archive.EncryptedSuffix))
	for _, a := range []*archive.Result{plain, enc} {
		sigFile, err := signer.SignFile(a.Path)
		require.NoError(t, err)
		name := filepath.Base(a.Path)

		res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
		require.NoError(t, err, name)
		assert.Equal(t, s.Key(estate, name+".sig"), res.SignatureKey)
		assert.True(t, res.SignatureWritten)
		stored, err := s.getSmall(ctx, res.SignatureKey)
		require.NoError(t, err)
		local, err := os.ReadFile(sigFile)
		require.NoError(t, err)
		assert.Equal(t, local, stored, "the stored signature is the archive's")
		// The signature went before the marker: the marker is the newest object.
		sigInfo, err := s.Client().StatObject(ctx, "signed", res.SignatureKey, statOpts())
		require.NoError(t, err)
		markerInfo, err := s.Client().StatObject(ctx, "signed", res.MarkerKey, statOpts())
		require.NoError(t, err)
		assert.False(t, markerInfo.LastModified.Before(sigInfo.LastModified), "the marker is written last")

		has, err := s.HasSignature(ctx, estate, name)
		require.NoError(t, err)
		assert.True(t, has)

		// Fetched with its signature; the restore's signature check passes with the trusted keys.
		dir := t.TempDir()
		r, err := s.Fetch(ctx, estate, name, dir)
		require.NoError(t, err)
		assert.True(t, r.Downloaded)
		assert.Equal(t, filepath.Join(dir, name+".sig"), r.SignatureFile)
		rep, warnings, err := archive.CheckSignature(r.Path, archive.SignatureOptions{Trusted: trusted})
		require.NoError(t, err)
		assert.Empty(t, warnings)
		assert.True(t, rep.Signed)
		vopts := archive.VerifyOptions{RequireChecksum: true, Signature: archive.SignatureOptions{Trusted: trusted}}
		if a == enc {
			vopts.Decryption = ids
		}
		vrep, err := archive.Verify(ctx, r.Path, vopts)
		require.NoError(t, err)
		require.NotNil(t, vrep.Signature)
		assert.True(t, vrep.Signature.Signed)

		// A second fetch reuses the local copy and its signature.
		r, err = s.Fetch(ctx, estate, name, dir)
		require.NoError(t, err)
		assert.False(t, r.Downloaded)
		assert.Equal(t, filepath.Join(dir, name+".sig"), r.SignatureFile)

		// Copying again changes nothing.
		again, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
		require.NoError(t, err)
		assert.False(t, again.Uploaded)
		assert.False(t, again.SignatureWritten)
	}
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	require.Len(t, list, 2)
	for _, a := range list {
		assert.Equal(t, retention.Good, a.Status, a.Name)
		assert.True(t, a.Signed, a.Name)
	}
}

// TestMissingSignatureRefused: a bucket copy whose signature is gone is fetched without
// one; a restore's signature check with trusted keys refuses it, and accepts it with
// allow_unsigned, saying so. A signature that differs from a stored one is never
// written over it.
func TestMissingSignatureRefused(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "unsigned", false, 5<<20)
	ctx := context.Background()
	signer, trusted := newSigner(t)
	a := writeArchive(t, t.TempDir(), time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC), 1<<20)
	_, err := signer.SignFile(a.Path)
	require.NoError(t, err)
	name := filepath.Base(a.Path)
	res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, res.SignatureKey)

	// The signature is lost in the bucket (removed by hand, a tool that copies
	// archives and checksums only...).
	_, err = s.Delete(ctx, estate, []string{name + ".sig"})
	require.NoError(t, err)
	has, err := s.HasSignature(ctx, estate, name)
	require.NoError(t, err)
	assert.False(t, has)
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.False(t, list[0].Signed)

	dir := t.TempDir()
	r, err := s.Fetch(ctx, estate, name, dir)
	require.NoError(t, err)
	assert.Empty(t, r.SignatureFile)
	assert.NoFileExists(t, r.Path+".sig")
	_, _, err = archive.CheckSignature(r.Path, archive.SignatureOptions{Trusted: trusted})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not signed")
	_, err = archive.Verify(ctx, r.Path, archive.VerifyOptions{RequireChecksum: true, Signature: archive.SignatureOptions{Trusted: trusted}})
	require.Error(t, err)
	rep, warnings, err := archive.CheckSignature(r.Path, archive.SignatureOptions{Trusted: trusted, AllowUnsigned: true})
	require.NoError(t, err)
	assert.True(t, rep.UnsignedAllowed)
	require.Len(t, warnings, 1)
	assert.Contains(t, warnings[0], "allow_unsigned")

	// Copying the archive again puts its signature back; nothing else changes.
	again, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	assert.False(t, again.Uploaded)
	assert.True(t, again.SignatureWritten)
	r, err = s.Fetch(ctx, estate, name, dir)
	require.NoError(t, err)
	assert.False(t, r.Downloaded)
	assert.FileExists(t, r.Path+".sig", "a reused local copy gets the bucket's signature")
	_, _, err = archive.CheckSignature(r.Path, archive.SignatureOptions{Trusted: trusted})
	require.NoError(t, err)

	// Another signature of the same archive is never written over the stored one.
	other, _ := newSigner(t)
	dir2 := t.TempDir()
	copyFile(t, a.Path, filepath.Join(dir2, name))
	copyFile(t, a.ChecksumPath, filepath.Join(dir2, name+".sha256"))
	_, err = other.SignFile(filepath.Join(dir2, name))
	require.NoError(t, err)
	_, err = s.Upload(ctx, estate, filepath.Join(dir2, name), UploadOptions{})
	require.ErrorContains(t, err, "never overwritten")
}

// TestPruneRemovesSignature: retention in the bucket removes a pruned archive's
// signature after its marker and the archive; an orphan signature (an interrupted
// prune's) is not an archive, never counts, and is removed.
func TestPruneRemovesSignature(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "prune-signed", false, 5<<20)
	ctx := context.Background()
	signer, _ := newSigner(t)
	var names []string
	for _, d := range []int{1, 2, 3} {
		a := writeArchive(t, t.TempDir(), time.Date(2026, 11, d, 3, 0, 0, 0, time.UTC), 1<<10)
		_, err := signer.SignFile(a.Path)
		require.NoError(t, err)
		_, err = s.Upload(ctx, estate, a.Path, UploadOptions{})
		require.NoError(t, err)
		names = append(names, filepath.Base(a.Path))
	}
	// An orphan: the signature of an archive a prune already removed.
	orphan := "flightctl-backup-20261001T030000Z.tar.gz.sig"
	_, err := s.Client().PutObject(ctx, "prune-signed", s.Key(estate, orphan), strings.NewReader("x"), 1, putOpts())
	require.NoError(t, err)

	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	plan, err := retention.Make(retention.Policy{KeepLast: 1}, list, retention.Options{Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Verify: func(a retention.Archive) error { _, err := s.Check(ctx, estate, a.Name); return err }})
	require.NoError(t, err)
	assert.Equal(t, names[2], plan.NewestVerified)
	assert.Len(t, plan.Decisions, 3, "the orphan signature is not an archive")
	assert.Empty(t, plan.Ignored)
	assert.Equal(t, []string{orphan}, plan.OrphanSignatures)
	removed, err := s.Delete(ctx, estate, plan.Deletions())
	require.NoError(t, err)
	assert.Equal(t, []string{
		names[1] + ".sha256", names[1], names[1] + ".sig",
		names[0] + ".sha256", names[0], names[0] + ".sig",
		orphan,
	}, removed)
	var left []string
	for o := range s.Client().ListObjects(ctx, "prune-signed", listOpts(s.Key(estate, ""))) {
		require.NoError(t, o.Err)
		left = append(left, strings.TrimPrefix(o.Key, s.Key(estate, "")))
	}
	assert.ElementsMatch(t, []string{names[2], names[2] + ".sha256", names[2] + ".sig"}, left)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o600))
}

func statOpts() minio.StatObjectOptions { return minio.StatObjectOptions{} }
func putOpts() minio.PutObjectOptions   { return minio.PutObjectOptions{} }
func listOpts(prefix string) minio.ListObjectsOptions {
	return minio.ListObjectsOptions{Prefix: prefix, Recursive: true}
}
