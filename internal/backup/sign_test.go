package backup

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/signature"
	"flightctl.dr/internal/testbed"
)

// A backup with a signing key writes <archive>.sig, which ssh-keygen and verify accept;
// its metadata records the dump's own row counts and the database's owner and grants.
func TestBackupSignsAndRecordsDumpAndGrants(t *testing.T) {
	testbed.Need(t, "pg_dump", "psql", "ssh-keygen")
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "signing")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "backup@test", "-f", key).CombinedOutput()
	require.NoError(t, err, string(out))
	signer, err := signature.LoadSigner(key, "", "")
	require.NoError(t, err)

	opts := f.options()
	opts.Signer = signer
	res, err := runBackup(ctx, opts)
	require.NoError(t, err)
	require.Equal(t, res.Archive+".sig", res.SignatureFile)
	assert.ElementsMatch(t, []string{filepath.Base(res.Archive), filepath.Base(res.Archive) + ".sha256", filepath.Base(res.Archive) + ".sig"}, dirEntries(t, f.out))

	pub, err := os.ReadFile(key + ".pub")
	require.NoError(t, err)
	signers := filepath.Join(keyDir, "allowed_signers")
	require.NoError(t, os.WriteFile(signers, append([]byte("backup "), pub...), 0o644))
	cmd := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", "backup", "-n", signature.Namespace, "-s", res.SignatureFile)
	a, err := os.Open(res.Archive)
	require.NoError(t, err)
	defer a.Close()
	cmd.Stdin = a
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, string(out))

	trusted, err := signature.LoadTrusted(signers, "")
	require.NoError(t, err)
	rep, err := archive.Verify(ctx, res.Archive, archive.VerifyOptions{RequireChecksum: true, CheckDump: true,
		Signature: archive.SignatureOptions{Trusted: trusted}})
	require.NoError(t, err)
	require.True(t, rep.Signature.Signed)
	require.Equal(t, signer.Fingerprint(), rep.Signature.Signer.Fingerprint)
	require.Empty(t, rep.Warnings)

	extra := rep.Metadata.Extra
	assert.Equal(t, "25", extra[archive.ExtraDumpRowsPrefix+"devices"], "rows counted from the dump itself")
	assert.Equal(t, "4", extra[archive.ExtraDumpRowsPrefix+"fleets"])
	assert.Equal(t, "admin", extra[archive.ExtraDBOwner])
	var acl []string
	require.NoError(t, json.Unmarshal([]byte(extra[archive.ExtraDBACL]), &acl))
	assert.Contains(t, acl, "flightctl_app=c/admin")
	assert.Contains(t, acl, "flightctl_migrator=C/admin")
}
