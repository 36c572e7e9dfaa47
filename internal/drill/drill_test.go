package drill_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/drill"
	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/signature"
)

// assertGood checks a passing drill's report against the fixture's known rows and
// certificates.
func assertGood(t *testing.T, f *fixture, rep *drill.Report, archivePath string) {
	t.Helper()
	require.True(t, rep.Passed, rep.Summary)
	assert.Equal(t, archivePath, rep.Archive.Path)
	assert.Equal(t, testVersion, rep.Archive.Version)
	require.NotNil(t, rep.Archive.Estate)
	assert.Equal(t, estateName, rep.Archive.Estate.Name)
	assert.True(t, rep.RecoveryPointAge >= 0 && rep.RecoveryPointAge < 600, "recovery point age %v", rep.RecoveryPointAge)
	assert.Greater(t, rep.LoadSeconds, 0.0)
	assert.Equal(t, 15, rep.PostgresMajor)
	assert.Equal(t, int64(seedDevices), rep.Rows["devices"])
	assert.Equal(t, int64(seedFleets), rep.Rows["fleets"])
	assert.Equal(t, int64(seedERs), rep.Rows["enrollment_requests"])
	assert.Equal(t, int64(1), rep.Rows["organizations"])
	assert.Equal(t, int64(seedDevices), rep.RowsRecorded["devices"])
	assert.GreaterOrEqual(t, len(rep.Rows), 20, "every table of the schema counted")
	require.NotNil(t, rep.Devices)
	assert.Equal(t, seedDevices, rep.Devices.DevicesToPrepare)
	assert.Equal(t, seedERs/2, rep.Devices.EnrollmentRequestsToPrepare, "approved requests are left alone")
	assert.Equal(t, seedDevices, rep.Devices.KVKeysToWrite)
	require.NotNil(t, rep.PKI)
	require.NotNil(t, rep.PKI.CA)
	assert.Equal(t, "CN=flightctl-ca", rep.PKI.CA.Subject)
	assert.True(t, rep.PKI.CAKeyMatches)
	assert.Empty(t, rep.PKI.Problems)
	byPath := map[string]drill.Certificate{}
	for _, c := range rep.PKI.Certificates {
		byPath[c.Path] = c
	}
	for path, want := range f.certs {
		got, ok := byPath[path]
		require.True(t, ok, "certificate %s reported", path)
		assert.Equal(t, want.NotAfter.UTC(), got.NotAfter, path)
		assert.True(t, got.ChainsToCA, path)
	}
	gw := byPath["pki/flightctl-telemetry-gateway/server.crt"]
	assert.True(t, gw.Server)
	assert.Equal(t, 200, gw.DaysLeft)
	require.NotNil(t, rep.PKI.SoonestExpiry)
	assert.Equal(t, f.certs["pki/flightctl-telemetry-gateway/server.crt"].NotAfter.UTC(), *rep.PKI.SoonestExpiry)
	for _, name := range []string{drill.CheckArchive, drill.CheckLoad, drill.CheckRows, drill.CheckDevices, drill.CheckPKICAKey, drill.CheckPKIChain, drill.CheckPKIExpiry, drill.CheckScratchGone} {
		assert.True(t, check(t, rep, name).Passed, name)
	}
	assert.Contains(t, rep.Summary, "PASSED")
	assert.Contains(t, rep.Summary, "devices 25")
	assert.Empty(t, f.drillDatabases(), "no scratch database left")
	_, err := os.Stat(filepath.Join(f.state, drill.StateFile))
	assert.True(t, os.IsNotExist(err), "state file removed")
	// The report is the module's JSON.
	_, err = json.Marshal(rep)
	require.NoError(t, err)
}

// A drill of a good archive on the estate's own server: every check passes, the values
// are the fixture's, and the live server is unchanged.
func TestDrillGoodArchiveOnEstateServer(t *testing.T) {
	f := newFixture(t)
	path := f.backup()
	before := f.fingerprint()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := drill.Run(ctx, drill.Options{ArchiveDir: f.out, Server: estateServer(t, f.child()), StateDir: f.state, Logger: testLogger(t)})
	require.NoError(t, err)
	t.Log(rep.Summary)
	assertGood(t, f, rep, path)
	assert.Equal(t, drill.ServerEstate, rep.Server)
	assert.True(t, strings.HasPrefix(rep.ScratchDatabase, "flightctl_drill_"), rep.ScratchDatabase)
	assert.True(t, check(t, rep, drill.CheckFreeSpace).Passed)
	assert.Equal(t, before, f.fingerprint(), "the live database and KV store are untouched")
}

// The same archive on a throwaway PostgreSQL of the dump's major version: nothing of it is
// left afterwards.
func TestDrillGoodArchiveOnThrowawayServer(t *testing.T) {
	f := newFixture(t)
	path := f.backup()
	before := f.fingerprint()
	parent := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: &drill.Throwaway{Parent: parent, Logger: testLogger(t)}, StateDir: f.state, Logger: testLogger(t)})
	require.NoError(t, err, rep.Summary)
	t.Log(rep.Summary)
	assertGood(t, f, rep, path)
	assert.Equal(t, drill.ServerThrowaway, rep.Server)
	left, err := os.ReadDir(parent)
	require.NoError(t, err)
	assert.Empty(t, left, "the throwaway cluster is removed")
	assert.Equal(t, before, f.fingerprint(), "the live server is untouched")
}

// tamperedArchive writes an archive with the real writer holding dump in place of the
// backup's, with the backup's metadata (its recorded row counts included).
func tamperedArchive(t *testing.T, f *fixture, good string, dump []byte) string {
	t.Helper()
	ctx := context.Background()
	rep, err := archive.Verify(ctx, good, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	md := rep.Metadata
	md.Manifest = nil
	cfg, err := os.ReadFile(f.config)
	require.NoError(t, err)
	// A second later than the good one, so that it is the newest.
	md.Timestamp = md.Timestamp.Add(time.Second)
	return archivetest.Write(t, filepath.Join(f.root, "tampered"), archivetest.Content{Dump: dump, PKIDir: f.pki, EncryptionDir: f.enc, Config: cfg, Metadata: md}).Path
}

func dumpOf(t *testing.T, path string) []byte {
	t.Helper()
	dir := t.TempDir()
	_, err := archive.Extract(context.Background(), path, dir, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, archive.DatabaseDump))
	require.NoError(t, err)
	return b
}

// removeRows empties the COPY block of table.
func removeRows(t *testing.T, dump []byte, table string) []byte {
	t.Helper()
	start := bytes.Index(dump, []byte("COPY public."+table+" "))
	require.GreaterOrEqual(t, start, 0)
	nl := bytes.IndexByte(dump[start:], '\n') + start + 1
	end := bytes.Index(dump[nl:], []byte("\\.\n")) + nl
	require.Greater(t, end, nl, "the table has rows to remove")
	return append(append([]byte{}, dump[:nl]...), dump[end:]...)
}

// Drills that must fail: each says which check failed and why, drops its scratch
// database, and leaves the live server as it was.
func TestDrillFailures(t *testing.T) {
	f := newFixture(t)
	good := f.backup()
	dump := dumpOf(t, good)
	cases := []struct {
		name   string
		make   func() string
		failed string
		detail string
	}{
		{"dump missing a table's rows", func() string { return tamperedArchive(t, f, good, removeRows(t, dump, "enrollment_requests")) },
			drill.CheckLoad, "enrollment_requests: the dump holds 0 rows, metadata.json says 6"},
		{"truncated dump", func() string { return tamperedArchive(t, f, good, dump[:len(dump)*2/3]) },
			drill.CheckLoad, "database dump refused"},
		{"CA key not matching its certificate", func() string { f.writePKI(pkiCAKeyMismatch); return f.backup() },
			drill.CheckPKICAKey, "does not belong to the CA certificate pki/ca.crt"},
		{"expired server certificate", func() string { f.writePKI(pkiServerExpired); return f.backup() },
			drill.CheckPKIExpiry, "pki/flightctl-telemetry-gateway/server.crt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.make()
			before := f.fingerprint()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(t, f.child()), StateDir: f.state, Logger: testLogger(t)})
			require.Error(t, err)
			require.NotNil(t, rep)
			t.Log(rep.Summary)
			assert.False(t, rep.Passed)
			c := check(t, rep, tc.failed)
			assert.False(t, c.Passed, "%s must fail", tc.failed)
			assert.Contains(t, c.Detail, tc.detail)
			assert.Contains(t, err.Error(), tc.failed)
			assert.Contains(t, rep.Summary, "FAIL")
			assert.Empty(t, f.drillDatabases(), "no scratch database left")
			assert.Equal(t, before, f.fingerprint(), "the live server is untouched")
		})
	}
}

// The PKI check on its own: a chain that does not lead to the CA is a failure; a
// certificate is reported with its expiry.
func TestPKIServerCertificateOfAnotherCA(t *testing.T) {
	f := &fixture{t: t, pki: filepath.Join(t.TempDir(), "pki")}
	p := f.writePKI(pkiGood)
	other := makePKI(t, pkiGood)
	require.NoError(t, os.WriteFile(filepath.Join(f.pki, "flightctl-api/server.crt"), other.api.certPEM(), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(f.pki, "flightctl-api/server.key"), other.api.keyPEM(), 0o600))
	rep := drill.CheckPKIDir(t, f.pki, time.Now())
	require.NotNil(t, rep.CA)
	assert.Equal(t, p.ca.cert.NotAfter.UTC(), rep.CA.NotAfter)
	require.Len(t, rep.Problems, 1, rep.Problems)
	assert.Contains(t, rep.Problems[0], "pki/flightctl-api/server.crt")
	assert.Contains(t, rep.Problems[0], "does not chain to the CA")
}

// writeKubePKI lays out pki/ as a Kubernetes backup writes it: one Secret per file,
// rendered by the backup's own CleanSecretYAML. The CA is the flightctl-ca Secret.
func writeKubePKI(t *testing.T, dir string, p *testPKI) {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o700))
	secrets := map[string]map[string][]byte{
		"flightctl-ca":                           {"tls.crt": p.ca.certPEM(), "tls.key": p.caKeyPEM, "ca.crt": p.ca.certPEM()},
		"flightctl-client-signer-ca":             {"tls.crt": p.signer.certPEM(), "tls.key": p.signer.keyPEM(), "ca.crt": p.ca.certPEM()},
		"flightctl-ca-bundle":                    {"ca-bundle.crt": append(p.ca.certPEM(), p.signer.certPEM()...)},
		"flightctl-api-server-tls":               {"tls.crt": p.api.certPEM(), "tls.key": p.api.keyPEM(), "ca.crt": p.ca.certPEM()},
		"flightctl-telemetry-gateway-server-tls": {"tls.crt": p.gateway.certPEM(), "tls.key": p.gateway.keyPEM(), "ca.crt": p.ca.certPEM()},
	}
	for name, data := range secrets {
		y, err := estate.CleanSecretYAML(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "flightctl"}, Type: corev1.SecretTypeTLS, Data: data})
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name+".yaml"), y, 0o600))
	}
}

// A Kubernetes archive: its PKI Secrets are parsed and the CA checked the same way, on a
// throwaway PostgreSQL; a CA key that does not match fails it.
func TestDrillKubernetesArchive(t *testing.T) {
	f := newFixture(t)
	good := f.backup()
	dump := dumpOf(t, good)
	rep0, err := archive.Verify(context.Background(), good, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		variant int
		pass    bool
	}{{"good", pkiGood, true}, {"CA key mismatch", pkiCAKeyMismatch, false}} {
		t.Run(tc.name, func(t *testing.T) {
			p := makePKI(t, tc.variant)
			pkiDir := filepath.Join(t.TempDir(), "pki")
			writeKubePKI(t, pkiDir, p)
			md := archive.Metadata{Version: testVersion, DeploymentType: archive.DeploymentKubernetes, DatabaseIncluded: true,
				Extra: map[string]string{"pg_dump_version": rep0.Metadata.Extra["pg_dump_version"], "db_name": "flightctl"}}
			path := archivetest.Write(t, filepath.Join(t.TempDir(), "k8s"), archivetest.Content{Dump: dump, PKIDir: pkiDir, Metadata: md}).Path
			parent := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: &drill.Throwaway{Parent: parent}, StateDir: f.state, Logger: testLogger(t)})
			t.Log(rep.Summary)
			assert.Equal(t, archive.DeploymentKubernetes, rep.Archive.DeploymentType)
			require.NotNil(t, rep.PKI)
			require.NotNil(t, rep.PKI.CA)
			assert.Equal(t, "pki/flightctl-ca.yaml#tls.crt", rep.PKI.CA.Path)
			assert.Equal(t, p.ca.cert.NotAfter.UTC(), rep.PKI.CA.NotAfter)
			if tc.pass {
				require.NoError(t, err)
				assert.True(t, rep.Passed)
				assert.Equal(t, int64(seedDevices), rep.Rows["devices"])
				assert.Equal(t, seedDevices, rep.Devices.DevicesToPrepare)
				assert.Contains(t, check(t, rep, drill.CheckPKIChain).Detail, "2 server certificates chain to the CA")
				assert.Contains(t, check(t, rep, drill.CheckRows).Detail, "records no row counts")
			} else {
				require.Error(t, err)
				c := check(t, rep, drill.CheckPKICAKey)
				assert.False(t, c.Passed)
				assert.Contains(t, c.Detail, "pki/flightctl-ca.yaml#tls.key does not belong to the CA certificate")
			}
			left, err := os.ReadDir(parent)
			require.NoError(t, err)
			assert.Empty(t, left)
		})
	}
}

// With trusted keys, a signed archive passes and says who signed it; an unsigned one fails
// before anything is loaded.
func TestDrillChecksTheSignature(t *testing.T) {
	f := newFixture(t)
	unsigned := f.backup()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	block, err := ssh.MarshalPrivateKey(priv, "drill-test")
	require.NoError(t, err)
	signer, err := signature.LoadSigner("", string(pem.EncodeToMemory(block)), "")
	require.NoError(t, err)
	sigPath, err := signer.SignFile(unsigned)
	require.NoError(t, err)
	trusted, err := signature.LoadTrusted("", "backup@test "+signer.PublicKey())
	require.NoError(t, err)

	ctx := context.Background()
	rep, err := drill.Run(ctx, drill.Options{ArchivePath: unsigned, Server: estateServer(t, f.child()), StateDir: f.state,
		Signature: archive.SignatureOptions{Trusted: trusted}, Logger: testLogger(t)})
	require.NoError(t, err)
	assert.Contains(t, check(t, rep, drill.CheckArchive).Detail, "signed by the trusted key "+signer.Fingerprint())

	require.NoError(t, os.Remove(sigPath))
	rep, err = drill.Run(ctx, drill.Options{ArchivePath: unsigned, Server: estateServer(t, f.child()), StateDir: f.state,
		Signature: archive.SignatureOptions{Trusted: trusted}, Logger: testLogger(t)})
	require.Error(t, err)
	c := check(t, rep, drill.CheckArchive)
	assert.False(t, c.Passed)
	assert.Contains(t, c.Detail, "not signed")
	assert.Empty(t, rep.ScratchDatabase, "nothing was loaded")
	assert.Empty(t, f.drillDatabases())
}

// An archive encrypted with age is drilled with the identity; without it the drill fails
// at the archive check, before anything is loaded.
func TestDrillEncryptedArchive(t *testing.T) {
	f := newFixture(t)
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	rec, err := encrypt.ParseRecipients([]string{id.Recipient().String()})
	require.NoError(t, err)
	path := f.backupWith(func(o *backup.Options) { o.Encryption = rec })
	require.True(t, strings.HasSuffix(path, ".age"), path)
	ids, err := encrypt.ParseIdentities(id.String())
	require.NoError(t, err)
	ctx := context.Background()

	rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(t, f.child()), StateDir: f.state, Logger: testLogger(t)})
	require.Error(t, err)
	assert.False(t, check(t, rep, drill.CheckArchive).Passed)
	assert.Empty(t, rep.ScratchDatabase)

	rep, err = drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(t, f.child()), StateDir: f.state, Decryption: ids, Logger: testLogger(t)})
	require.NoError(t, err, rep.Summary)
	assert.Equal(t, int64(seedDevices), rep.Rows["devices"])
	assert.True(t, rep.PKI.CAKeyMatches)
	assert.Empty(t, f.drillDatabases())
}
