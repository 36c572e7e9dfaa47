package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/moduletest"
)

// TestVerifyEncryptedArchive: without a key the module checks the encrypted file and
// says its contents were not; with the identity (a file, the secret option, or the
// environment) it verifies everything; a wrong key fails naming the option to use; the
// identity never appears in the output.
func TestVerifyEncryptedArchive(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	rec, err := encrypt.ParseRecipients([]string{id.Recipient().String()})
	require.NoError(t, err)
	res := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump:       []byte(archivetest.Dump),
		Metadata:   archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true},
		Encryption: rec,
	})
	require.True(t, strings.HasSuffix(res.Path, ".tar.gz.age"))
	keyFile := filepath.Join(t.TempDir(), "key.txt")
	require.NoError(t, os.WriteFile(keyFile, []byte("# ops key\n"+id.String()+"\n"), 0o600))

	r := moduletest.Run(t, bin, map[string]any{"path": res.Path})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	enc := r.Out["archive_encryption"].(map[string]any)
	require.Equal(t, false, enc["contents_verified"])
	require.Equal(t, true, r.Out["checksum_verified"])
	require.Contains(t, r.Out["msg"], "contents were not checked")
	require.Contains(t, strings.Join(toStrings(r.Out["warnings"]), "\n"), "decryption_identity_file")

	for name, c := range map[string]struct {
		args map[string]any
		env  []string
	}{
		"identity file": {map[string]any{"path": res.Path, "decryption_identity_file": keyFile}, nil},
		"secret option": {map[string]any{"path": res.Path, "decryption_key": id.String()}, nil},
		"environment":   {map[string]any{"path": res.Path}, []string{"FLIGHTCTL_DR_AGE_IDENTITY=" + id.String()}},
	} {
		r := moduletest.Run(t, bin, c.args, c.env...)
		require.Nil(t, r.Out["failed"], "%s: %v", name, r.Out["msg"])
		enc := r.Out["archive_encryption"].(map[string]any)
		require.Equal(t, true, enc["contents_verified"], name)
		md := r.Out["metadata"].(map[string]any)
		require.Equal(t, map[string]any{"format": "age", "recipients": []any{id.Recipient().String()}}, md["archiveEncryption"], name)
		require.NotContains(t, r.Stdout, id.String(), name)
		require.NotContains(t, r.Stderr, id.String(), name)
	}

	other, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "decryption_key": other.String()})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], other.Recipient().String())
	require.Contains(t, r.Out["msg"], "encryption_recipients")
	require.NotContains(t, r.Stdout, other.String())
}

func toStrings(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
