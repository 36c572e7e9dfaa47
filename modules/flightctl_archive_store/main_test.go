package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/signature"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_archive_store"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_archive_store", &Options{})
}

func TestCopyListFetch(t *testing.T) {
	m := testbed.MinIOForTest(t)
	bin := moduletest.Build(t, pkg)
	dump := make([]byte, 7<<20)
	_, _ = rand.Read(dump)
	a := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump:     dump,
		Metadata: archive.Metadata{Timestamp: time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC), Version: "1.2.0", DeploymentType: "podman", DatabaseIncluded: true},
	})
	base := map[string]any{"endpoint": m.URL, "bucket": "dr-copies", "prefix": "site1", "estate": "server-a", "create_bucket": true, "part_size": 5 << 20}
	args := func(extra map[string]any) map[string]any {
		out := map[string]any{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	creds := []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}

	// Credentials given as options are masked in everything returned.
	r := moduletest.Run(t, bin, args(map[string]any{"action": "copy", "archive": a.Path, "access_key": m.AccessKey, "secret_key": m.SecretKey}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	assert.Equal(t, true, r.Out["uploaded"])
	assert.Equal(t, "site1/server-a/"+filepath.Base(a.Path), r.Out["key"])
	assert.Equal(t, a.SHA256, r.Out["sha256"])
	assert.NotContains(t, r.Stdout, m.SecretKey)
	assert.NotContains(t, r.Stderr, m.SecretKey)

	// Again, from the environment: nothing to do.
	r = moduletest.Run(t, bin, args(map[string]any{"action": "copy", "archive": a.Path}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, false, r.Out["changed"])

	r = moduletest.Run(t, bin, args(map[string]any{"action": "list"}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, filepath.Base(a.Path), r.Out["newest"])
	require.Len(t, r.Out["archives"], 1)

	// Check mode plans the fetch from the object's tail.
	dest := t.TempDir()
	r = moduletest.Run(t, bin, args(map[string]any{"action": "fetch", "dest_dir": dest, "_ansible_check_mode": true}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, "1.2.0", r.Out["metadata"].(map[string]any)["version"])
	assert.Less(t, r.Out["bytes_read"].(float64), float64(a.Size)/2)
	assert.NoFileExists(t, filepath.Join(dest, filepath.Base(a.Path)))

	r = moduletest.Run(t, bin, args(map[string]any{"action": "fetch", "dest_dir": dest}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["downloaded"])
	_, err := archive.Verify(t.Context(), filepath.Join(dest, filepath.Base(a.Path)), archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)

	// No credentials at all: a clear message.
	r = moduletest.Run(t, bin, args(map[string]any{"action": "list"}), "HOME="+t.TempDir(), "AWS_SHARED_CREDENTIALS_FILE=/nonexistent")
	require.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "AWS_ACCESS_KEY_ID")
}

// TestSignedCopyFetch: the signature beside an archive travels to the bucket and back;
// check mode says whether the bucket holds one.
func TestSignedCopyFetch(t *testing.T) {
	m := testbed.MinIOForTest(t)
	bin := moduletest.Build(t, pkg)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "")
	require.NoError(t, err)
	signer, err := signature.ParseSigner(pem.EncodeToMemory(block), nil)
	require.NoError(t, err)
	mk := func(day int) string {
		a := archivetest.Write(t, t.TempDir(), archivetest.Content{
			Dump:     []byte("SELECT 1;\n"),
			Metadata: archive.Metadata{Timestamp: time.Date(2026, 11, day, 2, 0, 0, 0, time.UTC), Version: "1.2.0", DeploymentType: "podman", DatabaseIncluded: true},
		})
		return a.Path
	}
	signed, unsigned := mk(29), mk(28)
	_, err = signer.SignFile(signed)
	require.NoError(t, err)
	base := map[string]any{"endpoint": m.URL, "bucket": "dr-signed", "estate": "server-a", "create_bucket": true}
	args := func(extra map[string]any) map[string]any {
		out := map[string]any{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	creds := []string{"AWS_ACCESS_KEY_ID=" + m.AccessKey, "AWS_SECRET_ACCESS_KEY=" + m.SecretKey}

	r := moduletest.Run(t, bin, args(map[string]any{"action": "copy", "archive": signed}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["signed"])
	assert.Equal(t, "server-a/"+filepath.Base(signed)+".sig", r.Out["signature_key"])
	r = moduletest.Run(t, bin, args(map[string]any{"action": "copy", "archive": unsigned}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, false, r.Out["signed"])

	r = moduletest.Run(t, bin, args(map[string]any{"action": "list"}), creds...)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	bySigned := map[string]any{}
	for _, a := range r.Out["archives"].([]any) {
		e := a.(map[string]any)
		bySigned[e["name"].(string)] = e["signed"]
	}
	assert.Equal(t, map[string]any{filepath.Base(signed): true, filepath.Base(unsigned): false}, bySigned)

	dest := t.TempDir()
	for _, c := range []struct {
		path   string
		signed bool
	}{{signed, true}, {unsigned, false}} {
		name := filepath.Base(c.path)
		r = moduletest.Run(t, bin, args(map[string]any{"action": "fetch", "name": name, "dest_dir": dest, "_ansible_check_mode": true}), creds...)
		require.Nil(t, r.Out["failed"], r.Out["msg"])
		assert.Equal(t, c.signed, r.Out["signed"], name)
		if !c.signed {
			assert.Contains(t, r.Out["msg"], "no signature")
		}
		r = moduletest.Run(t, bin, args(map[string]any{"action": "fetch", "name": name, "dest_dir": dest}), creds...)
		require.Nil(t, r.Out["failed"], r.Out["msg"])
		assert.Equal(t, c.signed, r.Out["signed"], name)
		if c.signed {
			assert.Equal(t, filepath.Join(dest, name+".sig"), r.Out["signature_file"])
			assert.FileExists(t, filepath.Join(dest, name+".sig"))
		} else {
			assert.Equal(t, "", r.Out["signature_file"])
			assert.NoFileExists(t, filepath.Join(dest, name+".sig"))
		}
	}
}
