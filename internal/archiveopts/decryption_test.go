package archiveopts

import (
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/encrypt"
)

func TestDecryptionSources(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	pub := id.Recipient().String()
	file := filepath.Join(t.TempDir(), "key.txt")
	require.NoError(t, os.WriteFile(file, []byte("# created by age-keygen\n"+id.String()+"\n"), 0o600))
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	ids, err := (&Decryption{}).Identities(env(nil))
	require.NoError(t, err)
	require.True(t, ids.Empty(), "no option, no environment: no identity")

	ids, err = (&Decryption{DecryptionIdentityFile: file}).Identities(env(nil))
	require.NoError(t, err)
	require.Equal(t, []string{pub}, ids.Public)

	ids, err = (&Decryption{}).Identities(env(map[string]string{EnvAgeIdentity: id.String()}))
	require.NoError(t, err)
	require.Equal(t, []string{pub}, ids.Public, "the environment when no option is given")

	ids, err = (&Decryption{DecryptionPassphrase: "p"}).Identities(env(map[string]string{EnvAgeIdentity: id.String()}))
	require.NoError(t, err)
	require.Equal(t, []string{encrypt.PassphraseRecipient}, ids.Public, "an option wins over the environment")

	_, err = (&Decryption{DecryptionKey: "AGE-SECRET-KEY-1XYZ"}).Identities(env(nil))
	require.ErrorContains(t, err, "decryption_key")
	require.NotContains(t, err.Error(), "XYZ")
	_, err = (&Decryption{DecryptionIdentityFile: filepath.Join(t.TempDir(), "missing")}).Identities(env(nil))
	require.ErrorContains(t, err, "decryption_identity_file")
}

func TestEncryptionSources(t *testing.T) {
	a, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	b, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), "recipients.txt")
	require.NoError(t, os.WriteFile(file, []byte("# break-glass\n"+b.Recipient().String()+"\n"), 0o644))

	r, err := (&Encryption{}).Recipients()
	require.NoError(t, err)
	require.Nil(t, r, "no option: a plain archive")

	r, err = (&Encryption{EncryptionRecipients: []string{a.Recipient().String()}, EncryptionRecipientsFile: file}).Recipients()
	require.NoError(t, err)
	require.Equal(t, []string{a.Recipient().String(), b.Recipient().String()}, r.Public)

	_, err = (&Encryption{EncryptionRecipients: []string{a.Recipient().String()}, EncryptionPassphrase: "p"}).Recipients()
	require.ErrorContains(t, err, "exclude each other")

	r, err = (&Encryption{EncryptionPassphrase: "p"}).Recipients()
	require.NoError(t, err)
	require.True(t, r.Passphrase)

	_, err = (&Encryption{EncryptionRecipients: []string{"age1notakey"}}).Recipients()
	require.ErrorContains(t, err, "encryption_recipients")
}
