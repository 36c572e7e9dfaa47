package drill_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/drill"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/testbed"
)

const (
	appPassword = "app-drill-pw"
	testVersion = "v1.4.0-test"
	estateName  = "drill-estate"
	// The sandbox-like estate the fixture seeds: known rows.
	seedDevices = 25
	seedFleets  = 4
	seedERs     = 6
)

// fixture is a Flight Control-shaped host: a real PostgreSQL with the flightctl schema
// and known rows, a real Redis, a PKI made with crypto/x509, encryption keys and a
// service configuration; backups of it are made with the real backup engine.
type fixture struct {
	t      testing.TB
	pg     *testbed.Postgres
	kv     *testbed.Redis
	root   string
	pki    string
	enc    string
	config string
	out    string
	state  string
	certs  map[string]*x509.Certificate // by PKI path, as written
}

// childConfig is what a child process needs to build the same fixture's drill.
type childConfig struct {
	PGPort    int    `json:"pg_port"`
	KVHost    string `json:"kv_host"`
	KVPort    int    `json:"kv_port"`
	KVPass    string `json:"kv_pass"`
	Root      string `json:"root"`
	State     string `json:"state"`
	Archive   string `json:"archive"`
	Throwaway string `json:"throwaway,omitempty"`
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	testbed.Need(t, "pg_dump", "psql")
	pg := testbed.PostgresForTest(t)
	kv := testbed.RedisForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	root := t.TempDir()
	f := &fixture{t: t, pg: pg, kv: kv, root: root,
		pki: filepath.Join(root, "etc/flightctl/pki"), enc: filepath.Join(root, "etc/flightctl/encryption"),
		config: filepath.Join(root, "etc/flightctl/service-config.yaml"), out: filepath.Join(root, "backups"),
		state: filepath.Join(root, "state")}
	f.seed(ctx)
	f.writePKI(pkiGood)
	require.NoError(t, os.MkdirAll(f.enc, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(f.enc, "key"), []byte("c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2\n"), 0o600))
	require.NoError(t, os.WriteFile(f.config, []byte("db:\n  type: builtin\n  name: flightctl\n"), 0o640))
	require.NoError(t, kv.Client().Set(ctx, "v1/cache/live", "x", 0).Err())
	return f
}

func (f *fixture) seed(ctx context.Context) {
	conn, err := f.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(f.t, err)
	defer conn.Close(ctx)
	stmts := []string{
		fmt.Sprintf(`INSERT INTO fleets (org_id, name, labels, generation, resource_version, created_at, spec, status)
			SELECT '%s', 'fleet-' || i, '{}', 1, i, now(), '{"selector":{}}', '{}' FROM generate_series(1, %d) i`, testbed.DefaultOrgID, seedFleets),
		fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, status)
			SELECT '%s', 'device-' || lpad(i::text, 5, '0'), jsonb_build_object('n', i::text), '{}', 1, 10 + i, now(),
				'{"summary":{"status":"Online"},"lifecycle":{"status":"Enrolled"}}' FROM generate_series(1, %d) i`, testbed.DefaultOrgID, seedDevices),
		fmt.Sprintf(`INSERT INTO enrollment_requests (org_id, name, generation, resource_version, created_at, spec, status)
			SELECT '%s', 'er-' || i, 1, i, now(), '{"csr":"x"}',
				CASE WHEN i %% 2 = 0 THEN '{"approval": {"approved": true}}'::jsonb ELSE '{}'::jsonb END
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, seedERs),
	}
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		require.NoError(f.t, err)
	}
}

// PKI variants.
const (
	pkiGood = iota
	pkiCAKeyMismatch
	pkiServerExpired
)

type pair struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func (p *pair) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.der})
}
func (p *pair) keyPEM() []byte {
	b, err := x509.MarshalECPrivateKey(p.key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
}

// newPair makes a P-256 key and a certificate valid from notBefore to notAfter, signed by
// parent (self-signed when nil).
func newPair(t testing.TB, tmpl *x509.Certificate, parent *pair, notBefore, notAfter time.Time) *pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	require.NoError(t, err)
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, notBefore, notAfter
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &pair{cert: c, der: der, key: key}
}

func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
}

func serverTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{"localhost", cn}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
}

// testPKI is a quadlet install's PKI: the CA, the client-signer CA, a bundle, two server
// certificates, one client certificate.
type testPKI struct {
	ca, signer, api, gateway, client *pair
	// caKeyPEM is what ca.key holds (another key for pkiCAKeyMismatch).
	caKeyPEM []byte
}

func makePKI(t testing.TB, variant int) *testPKI {
	now := time.Now()
	p := &testPKI{}
	p.ca = newPair(t, caTemplate("flightctl-ca"), nil, now.Add(-time.Hour), now.AddDate(10, 0, 0))
	p.signer = newPair(t, caTemplate("flightctl-client-signer-ca"), p.ca, now.Add(-time.Hour), now.AddDate(5, 0, 0))
	p.api = newPair(t, serverTemplate("flightctl-api"), p.ca, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	gwFrom, gwTo := now.Add(-time.Hour), now.Add(200*24*time.Hour+time.Hour)
	if variant == pkiServerExpired {
		gwFrom, gwTo = now.AddDate(-1, 0, 0), now.Add(-48*time.Hour)
	}
	p.gateway = newPair(t, serverTemplate("flightctl-telemetry-gateway"), p.ca, gwFrom, gwTo)
	p.client = newPair(t, &x509.Certificate{Subject: pkix.Name{CommonName: "client-enrollment"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, p.signer, now.Add(-time.Hour), now.AddDate(1, 0, 0))
	p.caKeyPEM = p.ca.keyPEM()
	if variant == pkiCAKeyMismatch {
		other := newPair(t, caTemplate("flightctl-ca"), nil, now.Add(-time.Hour), now.AddDate(10, 0, 0))
		p.caKeyPEM = other.keyPEM()
	}
	return p
}

func (f *fixture) writePKI(variant int) *testPKI {
	p := makePKI(f.t, variant)
	require.NoError(f.t, os.RemoveAll(f.pki))
	files := map[string][]byte{
		"ca.crt": p.ca.certPEM(), "ca.key": p.caKeyPEM,
		"client-signer.crt": p.signer.certPEM(), "client-signer.key": p.signer.keyPEM(),
		"ca-bundle.crt":                          append(p.ca.certPEM(), p.signer.certPEM()...),
		"flightctl-api/server.crt":               p.api.certPEM(),
		"flightctl-api/server.key":               p.api.keyPEM(),
		"flightctl-telemetry-gateway/server.crt": p.gateway.certPEM(),
		"flightctl-telemetry-gateway/server.key": p.gateway.keyPEM(),
		"client-enrollment.crt":                  p.client.certPEM(),
		"client-enrollment.key":                  p.client.keyPEM(),
	}
	f.certs = map[string]*x509.Certificate{"pki/ca.crt": p.ca.cert, "pki/client-signer.crt": p.signer.cert,
		"pki/flightctl-api/server.crt": p.api.cert, "pki/flightctl-telemetry-gateway/server.crt": p.gateway.cert,
		"pki/client-enrollment.crt": p.client.cert}
	for name, b := range files {
		path := filepath.Join(f.pki, name)
		require.NoError(f.t, os.MkdirAll(filepath.Dir(path), 0o755))
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			mode = 0o600
		}
		require.NoError(f.t, os.WriteFile(path, b, mode))
	}
	return p
}

// backup runs the real backup engine against the fixture and returns the archive.
func (f *fixture) backup() string {
	f.t.Helper()
	return f.backupWith(nil)
}

// backupWith is backup with the options changed by change.
func (f *fixture) backupWith(change func(*backup.Options)) string {
	f.t.Helper()
	c := estate.DefaultPodmanConfig()
	c.PKIDir, c.EncryptionDir, c.ConfigFile, c.PAMVolume = f.pki, f.enc, f.config, ""
	c.DBAccess, c.DBHost, c.DBPort, c.DBPassword = estate.DBAccessDirect, f.pg.Host, f.pg.Port, appPassword
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, closeSource, err := estate.OpenBackupSource(ctx, estate.BackupSourceOptions{DeploymentType: "podman", Podman: c, ServerVersion: testVersion, EstateName: estateName})
	require.NoError(f.t, err)
	defer closeSource()
	opts := backup.Options{OutputDir: f.out}
	if change != nil {
		change(&opts)
	}
	res, err := backup.Run(ctx, src, opts)
	require.NoError(f.t, err)
	return res.Archive
}

func (f *fixture) child() childConfig {
	return childConfig{PGPort: f.pg.Port, KVHost: f.kv.Host, KVPort: f.kv.Port, KVPass: f.kv.Password, Root: f.root, State: f.state}
}

// estateServer is the fixture's PostgreSQL seen as the estate's own server, through the
// Podman restore target with direct access; its unit manager refuses every unit.
func estateServer(t testing.TB, c childConfig) *drill.EstateServer {
	pc := estate.DefaultPodmanConfig()
	pc.PKIDir, pc.EncryptionDir, pc.ConfigFile, pc.PAMVolume = filepath.Join(c.Root, "etc/flightctl/pki"), filepath.Join(c.Root, "etc/flightctl/encryption"),
		filepath.Join(c.Root, "etc/flightctl/service-config.yaml"), ""
	pc.DBAccess, pc.DBHost, pc.DBPort = estate.DBAccessDirect, "127.0.0.1", c.PGPort
	pc.DBAdminUser, pc.DBAdminPassword = "admin", "adminpass"
	pc.DBUser, pc.DBPassword = "flightctl_app", appPassword
	pc.KVHost, pc.KVPort, pc.KVPassword = c.KVHost, c.KVPort, c.KVPass
	target := &estate.PodmanRestore{Config: pc, RunningVersion: testVersion, UnitManager: drill.NoUnits{}, Logger: slog.New(slog.DiscardHandler)}
	require.NoError(t, target.Open(context.Background()))
	return &drill.EstateServer{Target: target}
}

// fingerprint is everything of the live server a drill must leave as it is: the
// databases (names and oids), every row of every table of the live database, the KV
// store's keys and values.
func (f *fixture) fingerprint() map[string]string {
	f.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	pc, err := f.pg.SuperuserConn(ctx, "postgres")
	require.NoError(f.t, err)
	defer pc.Close(ctx)
	rows, err := pc.Query(ctx, `SELECT datname || ':' || oid::text FROM pg_database ORDER BY 1`)
	require.NoError(f.t, err)
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(f.t, err)
	out["databases"] = strings.Join(dbs, ",")
	conn, err := f.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(f.t, err)
	defer conn.Close(ctx)
	rows, err = conn.Query(ctx, `SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`)
	require.NoError(f.t, err)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(f.t, err)
	for _, tb := range tables {
		var sum string
		require.NoError(f.t, conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*)::text || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM public.%q t`, tb)).Scan(&sum))
		out["table "+tb] = sum
	}
	kv := f.kv.Client()
	defer kv.Close()
	keys, err := kv.Keys(ctx, "*").Result()
	require.NoError(f.t, err)
	sort.Strings(keys)
	for _, k := range keys {
		v, err := kv.Get(ctx, k).Result()
		if err == redis.Nil {
			v = "<not a string>"
		} else {
			require.NoError(f.t, err)
		}
		out["kv "+k] = v
	}
	return out
}

// drillDatabases lists the databases whose name holds _drill_.
func (f *fixture) drillDatabases() []string {
	ctx := context.Background()
	pc, err := f.pg.SuperuserConn(ctx, "postgres")
	require.NoError(f.t, err)
	defer pc.Close(ctx)
	rows, err := pc.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE '%\_drill\_%' ORDER BY 1`)
	require.NoError(f.t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(f.t, err)
	return names
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func check(t testing.TB, rep *drill.Report, name string) drill.Check {
	t.Helper()
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %s in %+v", name, rep.Checks)
	return drill.Check{}
}
