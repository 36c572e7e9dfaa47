package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/moduletest"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_archive_verify"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_archive_verify", &Options{})
}

// writeArchive makes a small archive with the real writer.
func writeArchive(t *testing.T, version string) *archive.Result {
	t.Helper()
	pki := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o644))
	return archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump: []byte(archivetest.Dump), PKIDir: pki,
		Metadata: archive.Metadata{Version: version, DeploymentType: "podman", DatabaseIncluded: true},
	})
}

func TestVerifyGoodArchive(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	res := writeArchive(t, "v1.4.0")
	for _, check := range []bool{false, true} {
		r := moduletest.Run(t, bin, map[string]any{"path": res.Path, "expected_version": "v1.4.0", "_ansible_check_mode": check})
		require.Nil(t, r.Out["failed"], r.Out["msg"])
		require.Equal(t, false, r.Out["changed"], "verify never changes anything")
		require.Equal(t, res.SHA256, r.Out["sha256"])
		require.Equal(t, float64(res.Size), r.Out["size"])
		require.Equal(t, true, r.Out["checksum_verified"])
		require.Equal(t, map[string]any{"db": true, "pki": true, "encryption": false, "config": false, "volumes": false}, r.Out["components"])
		require.Equal(t, "v1.4.0", r.Out["metadata"].(map[string]any)["version"])
		require.NotEmpty(t, r.Out["entries"])
	}
	// sha256sum agrees with our checksum file.
	cmd := exec.Command("sha256sum", "-c", filepath.Base(res.ChecksumPath))
	cmd.Dir = filepath.Dir(res.Path)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), ": OK")
}

func TestVerifyRefusesBadArchives(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	res := writeArchive(t, "v1.4.0")

	r := moduletest.Run(t, bin, map[string]any{"path": res.Path, "expected_version": "v1.5.0"})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "v1.5.0")

	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "expected_deployment_type": "kubernetes"})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "deployment type mismatch")

	// A flipped byte.
	data, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	require.NoError(t, os.WriteFile(res.Path, data, 0o600))
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "checksum")

	// No checksum file: refused by default, structure still checked when allowed.
	require.NoError(t, os.Remove(res.ChecksumPath))
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path})
	require.Equal(t, true, r.Out["failed"])
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "require_checksum": "no"})
	require.Equal(t, true, r.Out["failed"], "the flipped byte breaks the structure or the manifest")

	r = moduletest.Run(t, bin, map[string]any{"path": filepath.Join(t.TempDir(), "missing.tar.gz")})
	require.Equal(t, true, r.Out["failed"])
}

func TestVerifyParameterErrors(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	r := moduletest.Run(t, bin, map[string]any{})
	require.Equal(t, true, r.Out["failed"])
	require.Equal(t, "missing required arguments: path", r.Out["msg"])

	r = moduletest.Run(t, bin, map[string]any{"path": "x", "checksum": "y"})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "Unsupported parameters: checksum")
	require.Contains(t, r.Out["msg"], "checksum_file")

	r = moduletest.Run(t, bin, map[string]any{"path": "/x", "require_checksum": "perhaps"})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "require_checksum")

	r = moduletest.Run(t, bin, map[string]any{"path": "/x", "expected_deployment_type": "docker"})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "value of expected_deployment_type must be one of: podman, kubernetes")
}

func TestCLIHumanOutput(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	res := writeArchive(t, "v1.4.0")
	out, err := exec.Command(bin, res.Path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "is intact")
	require.Contains(t, string(out), "version:    v1.4.0")
	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(out), "flightctl_archive_verify version "))
}

// With trusted_keys_path the module checks the signature ssh-keygen made; an unsigned
// archive fails unless allow_unsigned, which warns; a hostile dump fails as restore would.
func TestVerifySignatureAndDump(t *testing.T) {
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen is not installed")
	}
	bin := moduletest.Build(t, pkg)
	keys := t.TempDir()
	key := filepath.Join(keys, "k")
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput()
	require.NoError(t, err, string(out))
	pub, err := os.ReadFile(key + ".pub")
	require.NoError(t, err)
	signers := filepath.Join(keys, "allowed_signers")
	require.NoError(t, os.WriteFile(signers, append([]byte("backup "), pub...), 0o644))
	res := writeArchive(t, "v1.4.0")

	r := moduletest.Run(t, bin, map[string]any{"path": res.Path, "trusted_keys_path": signers})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "the archive is not signed")

	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "trusted_keys_path": signers, "allow_unsigned": true})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	require.Contains(t, r.Out["warnings"], "the archive is not signed (no "+res.Path+".sig): accepted only because allow_unsigned is set; its origin is not proven")
	require.Equal(t, true, r.Out["signature"].(map[string]any)["unsigned_allowed"])

	out, err = exec.Command("ssh-keygen", "-Y", "sign", "-f", key, "-n", "flightctl-backup", res.Path).CombinedOutput()
	require.NoError(t, err, string(out))
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "trusted_keys_path": signers})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	require.Equal(t, true, r.Out["signature"].(map[string]any)["signed"])

	pki := t.TempDir()
	bad := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump: []byte("\\! touch /tmp/x\n" + archivetest.Dump), PKIDir: pki,
		Metadata: archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true},
	})
	r = moduletest.Run(t, bin, map[string]any{"path": bad.Path})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], `database dump refused: the database dump is refused at line 1: the psql meta-command \!`)
}

// max_total_size bounds what the archive may inflate to, and an entry larger than the
// manifest says is refused from its header in the words a restore uses.
func TestVerifySizeLimits(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	res := writeArchive(t, "v1.4.0")
	r := moduletest.Run(t, bin, map[string]any{"path": res.Path, "max_total_size": 100})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], "past the limit of 100 bytes in total")
	require.Contains(t, r.Out["msg"], "the limit is the max_total_size option")
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path, "max_total_size": 1 << 20})
	require.Nil(t, r.Out["failed"], r.Out["msg"])

	archivetest.TamperMetadata(t, res.Path, func(md *archive.Metadata) {
		for i := range md.Manifest {
			if md.Manifest[i].Path == archive.DatabaseDump {
				md.Manifest[i].Size = 10
			}
		}
	})
	r = moduletest.Run(t, bin, map[string]any{"path": res.Path})
	require.Equal(t, true, r.Out["failed"])
	require.Contains(t, r.Out["msg"], `archive entry "db/dump.sql" is `+strconv.Itoa(len(archivetest.Dump))+` bytes but the manifest says 10: the archive was altered, do not restore from it`)
}
