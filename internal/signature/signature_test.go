package signature_test

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/signature"
)

// keygen makes a key pair with ssh-keygen, as an operator would.
func keygen(t *testing.T, dir, name, typ string) (priv, pub string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		if os.Getenv("FLIGHTCTL_DR_REQUIRE_REAL") == "1" {
			t.Fatal("ssh-keygen is not installed")
		}
		t.Skip("ssh-keygen is not installed")
	}
	priv = filepath.Join(dir, name)
	args := []string{"-q", "-t", typ, "-N", "", "-C", name + "@backup", "-f", priv}
	if typ == "rsa" {
		args = append(args, "-b", "2048")
	}
	out, err := exec.Command("ssh-keygen", args...).CombinedOutput()
	require.NoError(t, err, string(out))
	return priv, priv + ".pub"
}

func allowedSigners(t *testing.T, dir string, pubs ...string) string {
	var b strings.Builder
	for _, p := range pubs {
		raw, err := os.ReadFile(p)
		require.NoError(t, err)
		b.WriteString(`backup namespaces="flightctl-backup" ` + string(raw))
	}
	path := filepath.Join(dir, "allowed_signers")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
	return path
}

func trusted(t *testing.T, path string) *signature.Trusted {
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	tr, err := signature.ParseTrusted(raw, path)
	require.NoError(t, err)
	return tr
}

func TestSignaturesInteroperateWithSSHKeygen(t *testing.T) {
	for _, typ := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			priv, pub := keygen(t, dir, "signer", typ)
			archive := filepath.Join(dir, "flightctl-backup-20261201T000000Z.tar.gz")
			require.NoError(t, os.WriteFile(archive, bytes.Repeat([]byte("archive bytes "), 10000), 0o600))
			signers := allowedSigners(t, dir, pub)

			// Ours signs, ssh-keygen verifies.
			key, err := os.ReadFile(priv)
			require.NoError(t, err)
			s, err := signature.ParseSigner(key, nil)
			require.NoError(t, err)
			sigPath, err := s.SignFile(archive)
			require.NoError(t, err)
			require.Equal(t, archive+".sig", sigPath)
			cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", "backup", "-n", signature.Namespace, "-s", sigPath)
			f, err := os.Open(archive)
			require.NoError(t, err)
			cmd.Stdin = f
			out, err := cmd.CombinedOutput()
			f.Close()
			require.NoError(t, err, string(out))
			require.Contains(t, string(out), "Good \"flightctl-backup\" signature for backup")

			res, err := signature.VerifyFile(archive, sigPath, trusted(t, signers))
			require.NoError(t, err)
			require.Equal(t, "backup", res.Principal)
			require.Equal(t, s.Fingerprint(), res.Fingerprint)

			// ssh-keygen signs, ours verifies.
			require.NoError(t, os.Remove(sigPath))
			out, err = exec.Command("ssh-keygen", "-Y", "sign", "-f", priv, "-n", signature.Namespace, archive).CombinedOutput()
			require.NoError(t, err, string(out))
			res, err = signature.VerifyFile(archive, sigPath, trusted(t, signers))
			require.NoError(t, err)
			require.Equal(t, s.Fingerprint(), res.Fingerprint)

			// A plain .pub line is a trusted key too.
			res, err = signature.VerifyFile(archive, sigPath, trusted(t, pub))
			require.NoError(t, err)
			require.Equal(t, typ == "rsa", res.KeyType == "ssh-rsa")
		})
	}
}

func TestSignatureRefusals(t *testing.T) {
	dir := t.TempDir()
	priv, pub := keygen(t, dir, "signer", "ed25519")
	_, otherPub := keygen(t, dir, "other", "ed25519")
	key, err := os.ReadFile(priv)
	require.NoError(t, err)
	s, err := signature.ParseSigner(key, nil)
	require.NoError(t, err)
	a := filepath.Join(dir, "a.tar.gz")
	b := filepath.Join(dir, "b.tar.gz")
	require.NoError(t, os.WriteFile(a, []byte("archive a"), 0o600))
	require.NoError(t, os.WriteFile(b, []byte("archive b"), 0o600))
	_, err = s.SignFile(a)
	require.NoError(t, err)
	good := trusted(t, allowedSigners(t, dir, pub))

	// Unsigned.
	_, err = signature.VerifyFile(b, b+".sig", good)
	require.ErrorIs(t, err, signature.ErrUnsigned)

	// The signature of another archive.
	raw, err := os.ReadFile(a + ".sig")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(b+".sig", raw, 0o644))
	_, err = signature.VerifyFile(b, b+".sig", good)
	require.ErrorContains(t, err, "it does not match the archive (made for another archive, or the archive changed since it was signed)")

	// A key that is not trusted.
	_, err = signature.VerifyFile(a, a+".sig", trusted(t, otherPub))
	require.ErrorContains(t, err, "which is not among the trusted keys")

	// A trusted key limited to another namespace.
	raw, err = os.ReadFile(pub)
	require.NoError(t, err)
	ns, err := signature.ParseTrusted(append([]byte(`backup namespaces="file" `), raw...), "inline")
	require.NoError(t, err)
	_, err = signature.VerifyFile(a, a+".sig", ns)
	require.ErrorContains(t, err, "not among the trusted keys")

	// A signature made for another namespace.
	require.NoError(t, os.Remove(b+".sig"))
	out, err := exec.Command("ssh-keygen", "-Y", "sign", "-f", priv, "-n", "file", b).CombinedOutput()
	require.NoError(t, err, string(out))
	_, err = signature.VerifyFile(b, b+".sig", good)
	require.ErrorContains(t, err, `it is made for "file", not for backup archives`)

	// Garbage.
	require.NoError(t, os.WriteFile(b+".sig", []byte("not a signature"), 0o644))
	_, err = signature.VerifyFile(b, b+".sig", good)
	require.ErrorContains(t, err, "it is not an SSH signature")
	require.False(t, errors.Is(err, signature.ErrUnsigned))

	_, err = signature.ParseTrusted([]byte("# nothing\n"), "empty")
	require.ErrorContains(t, err, "hold no key")
}

// BenchmarkVerifyFile is the cost a restore with trusted keys adds: one read of the
// archive through SHA-512.
func BenchmarkVerifyFile(b *testing.B) {
	dir := b.TempDir()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "k")).CombinedOutput()
	if err != nil {
		b.Skip(string(out))
	}
	key, _ := os.ReadFile(filepath.Join(dir, "k"))
	s, err := signature.ParseSigner(key, nil)
	require.NoError(b, err)
	archive := filepath.Join(dir, "a.tar.gz")
	require.NoError(b, os.WriteFile(archive, bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7, 8}, 32<<20), 0o600))
	_, err = s.SignFile(archive)
	require.NoError(b, err)
	pub, _ := os.ReadFile(filepath.Join(dir, "k.pub"))
	tr, err := signature.ParseTrusted(pub, "k.pub")
	require.NoError(b, err)
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for range b.N {
		if _, err := signature.VerifyFile(archive, archive+".sig", tr); err != nil {
			b.Fatal(err)
		}
	}
}
