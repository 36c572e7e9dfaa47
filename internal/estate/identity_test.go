package estate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIdentity(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "service-config.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("service:\n  baseUrl: https://api.site-a.example:3443/\ndb:\n  name: flightctl\n"), 0o600))
	pki := filepath.Join(dir, "pki")
	require.NoError(t, os.Mkdir(pki, 0o700))
	der := []byte("not really DER, but the fingerprint is of these bytes")
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	require.NoError(t, os.WriteFile(filepath.Join(pki, CAFile), append([]byte("# comment\n"), pemData...), 0o644))

	id, warnings := Identity(" site-a ", cfg, pki)
	require.Empty(t, warnings)
	sum := sha256.Sum256(der)
	require.Equal(t, "site-a", id.Name)
	require.Equal(t, "https://api.site-a.example:3443/", id.APIEndpoint)
	require.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), id.CAFingerprint)

	// No name: the host's; no baseUrl, no PEM CA: empty, and the backup goes on.
	host, err := os.Hostname()
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, []byte("db:\n  name: flightctl\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(pki, CAFile), []byte("CA"), 0o644))
	id, warnings = Identity("", cfg, pki)
	require.Empty(t, warnings)
	require.Equal(t, host, id.Name)
	require.Empty(t, id.APIEndpoint)
	require.Empty(t, id.CAFingerprint)

	// An unreadable config is reported, not fatal.
	id, warnings = Identity("x", filepath.Join(dir, "missing.yaml"), "")
	require.Len(t, warnings, 1)
	require.Equal(t, "x", id.Name)
}
