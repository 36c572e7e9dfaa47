package main

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_drill"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_drill", &Options{})
}

// writePKI writes a CA with its key and one server certificate signed by it; with
// wrongKey, ca.key holds another key.
func writePKI(t *testing.T, dir string, wrongKey bool) {
	t.Helper()
	ca, err := testbed.NewKeyPair(&x509.Certificate{Subject: pkix.Name{CommonName: "flightctl-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, NotAfter: time.Now().AddDate(10, 0, 0)}, nil)
	require.NoError(t, err)
	srv, err := testbed.NewKeyPair(&x509.Certificate{Subject: pkix.Name{CommonName: "flightctl-api"}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	require.NoError(t, err)
	key := ca.KeyPEM()
	if wrongKey {
		other, err := testbed.NewKeyPair(&x509.Certificate{Subject: pkix.Name{CommonName: "other"}, IsCA: true, BasicConstraintsValid: true}, nil)
		require.NoError(t, err)
		key = other.KeyPEM()
	}
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "flightctl-api"), 0o755))
	for name, b := range map[string][]byte{"ca.crt": ca.CertPEM(), "ca.key": key, "flightctl-api/server.crt": srv.CertPEM(), "flightctl-api/server.key": srv.KeyPEM()} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
}

// The module drills an archive on a throwaway PostgreSQL: the report's keys are the
// module's return values, and a failing check fails the task.
func TestDrillModuleOnThrowawayPostgres(t *testing.T) {
	testbed.Need(t, "/usr/lib/postgresql/15/bin/pg_dump", "/usr/lib/postgresql/15/bin/initdb")
	pg := testbed.PostgresForTest(t)
	ctx := context.Background()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	conn, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `INSERT INTO devices (org_id, name, created_at, status) SELECT '00000000-0000-0000-0000-000000000000', 'd' || i, now(), '{}' FROM generate_series(1, 7) i`)
	require.NoError(t, err)
	conn.Close(ctx)
	cmd := exec.Command("/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "admin", "-d", "flightctl")
	cmd.Env = append(os.Environ(), "PGPASSWORD=adminpass")
	dump, err := cmd.Output()
	require.NoError(t, err)
	md := archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true,
		Extra: map[string]string{archive.ExtraDumpRowsPrefix + "devices": "7", "db_name": "flightctl"}}

	bin := moduletest.Build(t, pkg)
	for _, wrongKey := range []bool{false, true} {
		pki := t.TempDir()
		writePKI(t, pki, wrongKey)
		res := archivetest.Write(t, t.TempDir(), archivetest.Content{Dump: dump, PKIDir: pki, Metadata: md})
		r := moduletest.Run(t, bin, map[string]any{"archive_dir": filepath.Dir(res.Path), "drill_server": "throwaway",
			"throwaway_dir": t.TempDir(), "state_dir": t.TempDir(), "cert_warn_days": "10"})
		assert.Equal(t, false, r.Out["changed"], "a drill changes nothing")
		assert.Equal(t, res.Path, r.Out["archive"].(map[string]any)["path"])
		assert.Equal(t, float64(7), r.Out["rows"].(map[string]any)["devices"])
		assert.Equal(t, float64(7), r.Out["devices"].(map[string]any)["devices_to_prepare"])
		assert.Greater(t, r.Out["load_seconds"], 0.0)
		assert.Contains(t, r.Out, "recovery_point_age_seconds")
		assert.NotEmpty(t, r.Out["checks"])
		assert.Contains(t, r.Out["summary"], "restore drill")
		if !wrongKey {
			require.Nil(t, r.Out["failed"], r.Out["msg"])
			assert.Equal(t, true, r.Out["passed"])
			assert.True(t, strings.HasPrefix(r.Out["msg"].(string), "restore drill "), r.Out["msg"])
		} else {
			assert.Equal(t, true, r.Out["failed"])
			assert.Equal(t, false, r.Out["passed"])
			assert.Contains(t, r.Out["msg"], "pki_ca_key_matches")
		}
	}
}

func TestDrillModuleNeedsAnArchive(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	r := moduletest.Run(t, bin, map[string]any{"drill_server": "throwaway"})
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "give path")
}
