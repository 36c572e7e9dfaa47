package restore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/restore"
)

type ageKey struct {
	ids *encrypt.Identities
	pub string
}

func newAgeKey(t *testing.T) ageKey {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	ids, err := encrypt.ParseIdentities(id.String())
	require.NoError(t, err)
	return ageKey{ids: ids, pub: id.Recipient().String()}
}

// writeEncrypted makes an archive of the estate with the real writer, encrypted to rec.
func (e *env) writeEncrypted(ctx context.Context, dir string, rec *encrypt.Recipients) string {
	cfg, err := os.ReadFile(e.cfg.configFile())
	require.NoError(e.t, err)
	return archivetest.Write(e.t, dir, archivetest.Content{
		Dump: e.dump(ctx), PKIDir: e.cfg.pki(), EncryptionDir: e.cfg.encryption(),
		Config: cfg, ConfigMode: 0o640, Metadata: metadata(), Encryption: rec,
	}).Path
}

// damaged writes b as an archive named like src in a new directory, with a checksum
// file for b (as someone who can write the bucket could): only age's own checks stand
// between it and the restore.
func damaged(t *testing.T, src string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), filepath.Base(src))
	require.NoError(t, os.WriteFile(p, b, 0o600))
	sum := sha256.Sum256(b)
	require.NoError(t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(p)+"\n"), 0o644))
	return p
}

// TestRestoreEncryptedArchive: an archive encrypted to an operations key and a
// break-glass key restores with either; a missing or wrong key, and a truncated,
// extended or byte-flipped encrypted file (with a checksum made to match it), are refused
// before any unit is stopped and leave the server as it was.
func TestRestoreEncryptedArchive(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	ops, glass := newAgeKey(t), newAgeKey(t)
	rec, err := encrypt.ParseRecipients([]string{ops.pub, glass.pub})
	require.NoError(t, err)
	path := e.writeEncrypted(ctx, filepath.Join(t.TempDir(), "out"), rec)
	require.Regexp(t, `flightctl-backup-\d{8}T\d{6}Z\.tar\.gz\.age$`, path)
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	e.damage(ctx)
	before := e.snapshot(ctx)

	flip := func(i int) []byte {
		b := append([]byte(nil), raw...)
		b[i] ^= 0x10
		return b
	}
	stranger := newAgeKey(t)
	refusals := []struct {
		name string
		path string
		ids  *encrypt.Identities
		want string
	}{
		{"no identity", path, nil, "decryption_identity_file"},
		{"wrong identity", path, stranger.ids, stranger.pub},
		{"truncated", damaged(t, path, raw[:len(raw)-3000]), ops.ids, "do not restore from it"},
		{"extended", damaged(t, path, append(append([]byte(nil), raw...), []byte("appended")...)), ops.ids, "do not restore from it"},
		{"byte flipped", damaged(t, path, flip(len(raw)/2)), ops.ids, "do not restore from it"},
		{"byte flipped, checksum as written", func() string {
			p := damaged(t, path, flip(len(raw)/3))
			require.NoError(t, os.WriteFile(p+".sha256", []byte(e.sum(path)), 0o644))
			return p
		}(), ops.ids, "checksum mismatch"},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			opts := e.options(ctx, c.path)
			opts.Decryption = c.ids
			_, stopped, err := runWatchingStop(ctx, opts)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
			require.False(t, stopped, "refused before any unit was stopped")
			e.assertUnchanged(ctx, before)
		})
	}

	t.Run("check mode names the recipients", func(t *testing.T) {
		e.t = t
		opts := e.options(ctx, path)
		opts.Decryption = glass.ids
		opts.CheckMode = true
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.Equal(t, &archive.ArchiveEncryption{Format: "age", Recipients: []string{ops.pub, glass.pub}}, res.Archive.ArchiveEncryption)
		e.assertUnchanged(ctx, before)
	})

	for _, k := range []struct {
		name string
		key  ageKey
	}{{"operations key", ops}, {"break-glass key", glass}} {
		t.Run("restores with the "+k.name, func(t *testing.T) {
			e.t = t
			opts := e.options(ctx, path)
			opts.Decryption = k.key.ids
			res, err := restore.Run(ctx, opts)
			require.NoError(t, err)
			require.True(t, res.Changed)
			require.Equal(t, []string{ops.pub, glass.pub}, res.Archive.ArchiveEncryption.Recipients)
			e.assertRestored(ctx)
			e.damage(ctx)
		})
	}
}

func (e *env) sum(path string) string {
	b, err := os.ReadFile(path + ".sha256")
	require.NoError(e.t, err)
	return string(b)
}

// TestRestoreEncryptedToAPassphrase: a small site's passphrase archive restores with the
// passphrase and is refused with another one.
func TestRestoreEncryptedToAPassphrase(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	rec, err := encrypt.NewPassphrase("staple battery horse correct", 10)
	require.NoError(t, err)
	path := e.writeEncrypted(ctx, filepath.Join(t.TempDir(), "out"), rec)
	e.damage(ctx)
	before := e.snapshot(ctx)

	wrong, err := encrypt.PassphraseIdentity("not the passphrase")
	require.NoError(t, err)
	opts := e.options(ctx, path)
	opts.Decryption = wrong
	_, stopped, err := runWatchingStop(ctx, opts)
	require.ErrorContains(t, err, "encrypted to a passphrase")
	require.False(t, stopped)
	e.assertUnchanged(ctx, before)

	right, err := encrypt.PassphraseIdentity("staple battery horse correct")
	require.NoError(t, err)
	opts = e.options(ctx, path)
	opts.Decryption = right
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err)
	require.Equal(t, []string{encrypt.PassphraseRecipient}, res.Archive.ArchiveEncryption.Recipients)
	e.assertRestored(ctx)
}
