package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/moduletest"
)

// TestModuleEncryptedBackup: with encryption_recipients the module writes
// flightctl-backup-<time>.tar.gz.age of a real database, which sha256sum checks without
// the key, each recipient's identity verifies and `age -d` turns into an archive our
// reader (and so upstream's format rules) accepts; a passphrase is masked in the output.
func TestModuleEncryptedBackup(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	h := newHost(t)
	ops, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	glass, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	recFile := filepath.Join(t.TempDir(), "recipients.txt")
	require.NoError(t, os.WriteFile(recFile, []byte("# break-glass, kept offline\n"+glass.Recipient().String()+"\n"), 0o644))

	r := moduletest.Run(t, bin, h.args(map[string]any{"encryption_recipients": []string{ops.Recipient().String()}, "encryption_recipients_file": recFile}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	path := r.Out["archive"].(string)
	require.Regexp(t, `/flightctl-backup-\d{8}T\d{6}Z\.tar\.gz\.age$`, path)
	require.Equal(t, true, r.Out["encrypted"])
	require.Equal(t, []any{ops.Recipient().String(), glass.Recipient().String()}, r.Out["recipients"])
	md := r.Out["metadata"].(map[string]any)
	require.Equal(t, map[string]any{"format": "age", "recipients": r.Out["recipients"]}, md["archiveEncryption"])

	cmd := exec.Command("sha256sum", "-c", filepath.Base(path)+".sha256")
	cmd.Dir = filepath.Dir(path)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)

	for _, id := range []*age.X25519Identity{ops, glass} {
		ids, err := encrypt.ParseIdentities(id.String())
		require.NoError(t, err)
		rep, err := archive.Verify(context.Background(), path, archive.VerifyOptions{RequireChecksum: true, CheckDump: true, Decryption: ids})
		require.NoError(t, err)
		require.True(t, rep.Components.Database && rep.Components.PKI && rep.Components.Config)
	}

	// age -d, then sha256sum > .sha256: an upstream archive.
	keyFile := filepath.Join(t.TempDir(), "glass.txt")
	require.NoError(t, os.WriteFile(keyFile, []byte(glass.String()+"\n"), 0o600))
	plain := filepath.Join(t.TempDir(), strings.TrimSuffix(filepath.Base(path), ".age"))
	if _, err := exec.LookPath("age"); err == nil {
		out, err = exec.Command("age", "-d", "-i", keyFile, "-o", plain, path).CombinedOutput()
		require.NoError(t, err, "%s", out)
	} else {
		t.Skip("age is not installed (apt-get install age)")
	}
	sum, err := exec.Command("sha256sum", plain).Output()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(plain+".sha256", []byte(strings.Replace(string(sum), plain, filepath.Base(plain), 1)), 0o644))
	rep, err := archive.Verify(context.Background(), plain, archive.VerifyOptions{RequireChecksum: true, CheckDump: true, ExpectedDeploymentType: "podman"})
	require.NoError(t, err)
	require.True(t, rep.Components.Database)

	// A passphrase: masked in the invocation and in no output.
	const pass = "module-test passphrase 7f3a"
	r = moduletest.Run(t, bin, h.args(map[string]any{"encryption_passphrase": pass}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	require.Equal(t, []any{encrypt.PassphraseRecipient}, r.Out["recipients"])
	require.NotContains(t, r.Stdout+r.Stderr, pass)
	require.Equal(t, ansiblemod.NoLogValue, r.Out["invocation"].(map[string]any)["module_args"].(map[string]any)["encryption_passphrase"])

	// A private key given as a recipient is refused without being echoed.
	r = moduletest.Run(t, bin, h.args(map[string]any{"encryption_recipients": []string{ops.String()}}))
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "encryption_recipients")
	require.NotContains(t, r.Out["msg"], ops.String())
}
