package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

// kubeBed is one test cluster (real etcd and kube-apiserver; the exec node's container
// runtime is a test fake that runs exec'd commands as local processes) and one real
// PostgreSQL that the database pod's commands reach on loopback.
type kubeBed struct {
	k  *testbed.Kube
	pg *testbed.Postgres
}

func newKubeBed(t *testing.T) *kubeBed {
	t.Helper()
	testbed.Need(t, "pg_dump", "psql", "sha256sum", "mkfifo", "tee")
	k := testbed.KubeForTest(t)
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	seedRows(t, pg, "flightctl", 40, 5, 7)
	return &kubeBed{k: k, pg: pg}
}

// seed creates a Helm estate in namespaces named after the subtest.
func (b *kubeBed) seed(t *testing.T, o testbed.HelmEstateOptions) *testbed.HelmEstate {
	t.Helper()
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 40 {
		name = name[len(name)-40:]
	}
	name = strings.Trim(name, "-")
	if o.Namespace == "" {
		o.Namespace = "fc-" + name
	}
	if o.InternalNamespace == "" {
		o.InternalNamespace = o.Namespace + "-int"
	}
	o.DBPassword = appPassword
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	est, err := b.k.SeedHelmEstate(ctx, o)
	require.NoError(t, err)
	return est
}

func (b *kubeBed) options(t *testing.T, est *testbed.HelmEstate) testOptions {
	return testOptions{
		DeploymentType: "kubernetes",
		Kubernetes: estate.KubernetesConfig{
			Connection:        kube.Config{Kubeconfig: b.k.Kubeconfig},
			Namespace:         est.Namespace,
			InternalNamespace: est.InternalNamespace,
			DBPort:            b.pg.Port,
		},
		OutputDir: filepath.Join(t.TempDir(), "out"),
	}
}

// readTarGz reads every regular file of an archive as upstream's restore does (Go's
// compress/gzip and archive/tar), checking that entries are relative directories and files.
func readTarGz(t *testing.T, path string) (map[string][]byte, []string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.False(t, strings.HasPrefix(h.Name, "/") || strings.HasPrefix(h.Name, "./") || strings.Contains(h.Name, ".."), "entry %q", h.Name)
		names = append(names, strings.TrimSuffix(h.Name, "/"))
		switch h.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			require.NoError(t, err)
			files[h.Name] = b
		default:
			t.Fatalf("entry %s has type %c: only directories and regular files are allowed", h.Name, h.Typeflag)
		}
	}
	sort.Strings(names)
	return files, names
}

// checkUpstreamAccepts applies the rules of upstream's flightctl-restore to a Kubernetes
// archive (SPEC §2, UPSTREAM §3.1-3.5): the .sha256 beside it, metadata.json's four keys,
// every pki/*.yaml a Secret, the encryption Secret named flightctl-encryption-key with
// data, the first config/*.yaml with data.release a Helm 3 release (base64 of gzipped JSON).
func checkUpstreamAccepts(t *testing.T, archivePath string, files map[string][]byte) {
	t.Helper()
	sumFile, err := os.ReadFile(archivePath + ".sha256")
	require.NoError(t, err)
	fields := strings.Fields(string(sumFile))
	require.NotEmpty(t, fields)
	raw, err := os.ReadFile(archivePath)
	require.NoError(t, err)
	digest := sha256.Sum256(raw)
	require.Equal(t, hex.EncodeToString(digest[:]), fields[0], "upstream compares the lowercase digest")

	var meta struct {
		Timestamp        time.Time `json:"timestamp"`
		Version          string    `json:"version"`
		DeploymentType   string    `json:"deploymentType"`
		DatabaseIncluded bool      `json:"databaseIncluded"`
	}
	require.NoError(t, json.Unmarshal(files["metadata.json"], &meta))
	require.Equal(t, "kubernetes", meta.DeploymentType)
	require.False(t, meta.Timestamp.IsZero())

	pki := 0
	for name, b := range files {
		if !strings.HasPrefix(name, "pki/") {
			continue
		}
		require.True(t, strings.HasSuffix(name, ".yaml"), name)
		var s corev1.Secret
		require.NoError(t, yaml.Unmarshal(b, &s), name)
		require.Equal(t, strings.TrimSuffix(strings.TrimPrefix(name, "pki/"), ".yaml"), s.Name)
		require.NotEmpty(t, s.Data, name)
		pki++
	}
	require.Positive(t, pki, "upstream refuses an archive with no PKI YAML")
	if b, ok := files[estate.EntryKubeEncryption]; ok {
		var s corev1.Secret
		require.NoError(t, yaml.Unmarshal(b, &s))
		require.Equal(t, "flightctl-encryption-key", s.Name)
		require.NotEmpty(t, s.Data)
	}
	var release []byte
	for name, b := range files {
		if strings.HasPrefix(name, "config/") && strings.HasSuffix(name, ".yaml") {
			var s corev1.Secret
			require.NoError(t, yaml.Unmarshal(b, &s), name)
			if len(s.Data["release"]) > 0 {
				release = s.Data["release"]
			}
		}
	}
	require.NotNil(t, release, "no config/*.yaml with data.release")
	gz, err := base64.StdEncoding.DecodeString(string(release))
	require.NoError(t, err)
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	require.NoError(t, err)
	js, err := io.ReadAll(zr)
	require.NoError(t, err)
	var rel struct {
		Name  string `json:"name"`
		Chart struct {
			Metadata  map[string]any   `json:"metadata"`
			Templates []map[string]any `json:"templates"`
		} `json:"chart"`
		Config map[string]any `json:"config"`
	}
	require.NoError(t, json.Unmarshal(js, &rel))
	require.NotEmpty(t, rel.Name)
	require.NotEmpty(t, rel.Chart.Metadata["name"])
	if meta.DatabaseIncluded {
		require.Contains(t, files, "db/dump.sql")
	} else {
		require.NotContains(t, files, "db/dump.sql")
	}
}

// TestKubernetesBackup runs the Kubernetes backup against a real kube-apiserver and etcd,
// with pods/exec going through the API server to the exec node (virtual-kubelet; its
// container runtime is a test fake running the command as a local process), and a real
// PostgreSQL.
func TestKubernetesBackup(t *testing.T) {
	b := newKubeBed(t)

	t.Run("round trip", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{AppVersion: "0.10.2", Revision: 3})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		opts := b.options(t, est)
		res, err := runBackup(ctx, opts)
		require.NoError(t, err)

		files, names := readTarGz(t, res.Archive)
		want := []string{"config", "config/helm-release-flightctl.yaml", "db", "db/dump.sql", "encryption", "encryption/flightctl-encryption-key.yaml", "metadata.json", "pki"}
		for _, s := range append(append([]string{}, testbed.HelmRequiredPKISecrets...), testbed.HelmOptionalPKISecrets...) {
			want = append(want, "pki/"+s+".yaml")
		}
		sort.Strings(want)
		assert.Equal(t, want, names)
		checkUpstreamAccepts(t, res.Archive, files)

		// Server version from the release's chart appVersion; upstream's four keys.
		var meta map[string]any
		require.NoError(t, json.Unmarshal(files["metadata.json"], &meta))
		assert.Equal(t, "0.10.2", meta["version"])
		assert.Equal(t, true, meta["databaseIncluded"])
		assert.Equal(t, "kubernetes", meta["deploymentType"])

		// Secret YAML in upstream's layout, without the live object's fields.
		for name, y := range files {
			if !strings.HasSuffix(name, ".yaml") {
				continue
			}
			for _, field := range []string{"uid:", "resourceVersion:", "managedFields:", "ownerReferences:", "creationTimestamp:"} {
				assert.NotContains(t, string(y), field, "%s must not keep %s", name, field)
			}
			var s corev1.Secret
			require.NoError(t, yaml.Unmarshal(y, &s))
			assert.Equal(t, "Secret", s.Kind)
		}
		var enc corev1.Secret
		require.NoError(t, yaml.Unmarshal(files[estate.EntryKubeEncryption], &enc))
		assert.Equal(t, est.EncryptionKey, string(enc.Data["key"]))
		var rel corev1.Secret
		require.NoError(t, yaml.Unmarshal(files["config/helm-release-flightctl.yaml"], &rel))
		assert.Equal(t, "sh.helm.release.v1.flightctl.v3", rel.Name, "the deployed revision, not the superseded one")

		// The dump went through pods/exec and reloads into PostgreSQL with the same rows.
		dump := files["db/dump.sql"]
		assert.True(t, estate.DumpComplete(dump[len(dump)-200:]))
		assert.NotContains(t, string(dump), appPassword)
		conn, err := b.pg.SuperuserConn(ctx, "postgres")
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "CREATE DATABASE k8s_restored OWNER admin")
		require.NoError(t, err)
		conn.Close(ctx)
		require.NoError(t, b.pg.Psql(ctx, "k8s_restored", bytes.NewReader(dump)))
		assert.Equal(t, tableCounts(t, b.pg, "flightctl"), tableCounts(t, b.pg, "k8s_restored"))
		assert.Equal(t, sampleRows(t, b.pg, "flightctl"), sampleRows(t, b.pg, "k8s_restored"))
		assert.Equal(t, int64(40), tableCounts(t, b.pg, "k8s_restored")["devices"])

		var captured []string
		for _, c := range res.Captured {
			captured = append(captured, c.Component)
		}
		assert.Equal(t, []string{"db", "pki", "encryption", "config"}, captured)
		assert.Empty(t, res.Warnings)
	})

	t.Run("spdy and websocket", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{})
		for _, proto := range []string{kube.ProtocolSPDY, kube.ProtocolWebSocket} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			opts := b.options(t, est)
			opts.Kubernetes.ExecProtocol = proto
			res, err := runBackup(ctx, opts)
			cancel()
			require.NoError(t, err, proto)
			files, _ := readTarGz(t, res.Archive)
			assert.True(t, estate.DumpComplete(files["db/dump.sql"]), proto)
		}
	})

	for name, o := range map[string]testbed.HelmEstateOptions{
		"external database":         {ExternalDB: true},
		"database not Helm-managed": {DBNotHelmManaged: true},
	} {
		t.Run(name, func(t *testing.T) {
			est := b.seed(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := runBackup(ctx, b.options(t, est))
			require.NoError(t, err)
			files, names := readTarGz(t, res.Archive)
			assert.NotContains(t, names, "db")
			checkUpstreamAccepts(t, res.Archive, files)
			var meta map[string]any
			require.NoError(t, json.Unmarshal(files["metadata.json"], &meta))
			assert.Equal(t, false, meta["databaseIncluded"])
			assert.False(t, res.Components.Database)
			assert.Contains(t, strings.Join(res.Warnings, "\n"), "the database is external")
		})
	}

	t.Run("optional PKI Secret missing", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{OmitPKI: []string{"flightctl-ui-certs"}, NoEncryptionKey: true})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := runBackup(ctx, b.options(t, est))
		require.NoError(t, err)
		_, names := readTarGz(t, res.Archive)
		assert.NotContains(t, names, "pki/flightctl-ui-certs.yaml")
		assert.Contains(t, names, "pki/flightctl-ui-server-tls.yaml")
		assert.NotContains(t, names, "encryption")
		w := strings.Join(res.Warnings, "\n")
		assert.Contains(t, w, "optional PKI Secret flightctl-ui-certs not found in namespace "+est.Namespace)
		assert.Contains(t, w, "Encryption key Secret flightctl-encryption-key not found")
	})

	t.Run("required PKI Secret missing", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{OmitPKI: []string{"flightctl-ca-bundle"}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		opts := b.options(t, est)
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "required PKI Secret flightctl-ca-bundle not found in namespace "+est.Namespace)
		assert.Empty(t, dirEntries(t, opts.OutputDir), "nothing written")
	})

	t.Run("missing permissions", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cfg, _, err := b.k.TokenKubeconfig(ctx, est.Namespace, "backup-reader")
		require.NoError(t, err)
		// A Role that reads Secrets and Deployments but may neither list pods nor exec.
		b.grant(t, est.Namespace, "backup-reader", est.Namespace, []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list"}},
		})
		b.grant(t, est.Namespace, "backup-reader", est.InternalNamespace, []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get"}},
		})
		opts := b.options(t, est)
		opts.Kubernetes.Connection = kube.Config{Kubeconfig: cfg}
		_, err = runBackup(ctx, opts)
		require.Error(t, err)
		var mp *kube.MissingPermissionsError
		require.ErrorAs(t, err, &mp)
		msg := err.Error()
		assert.Contains(t, msg, "system:serviceaccount:"+est.Namespace+":backup-reader")
		assert.Contains(t, msg, "list pods in namespace "+est.InternalNamespace)
		assert.Contains(t, msg, "create pods/exec in namespace "+est.InternalNamespace)
		assert.Contains(t, msg, "get pods/exec in namespace "+est.InternalNamespace)
		assert.NotContains(t, msg, "get secrets")
		assert.Len(t, mp.Missing, 3)
		assert.Empty(t, dirEntries(t, opts.OutputDir), "nothing written")

		// Check mode reports the same, writing nothing.
		_, err = planBackup(ctx, opts)
		require.ErrorAs(t, err, &mp)
		assert.Len(t, mp.Missing, 3)

		// With the missing rules granted, the same account backs up.
		b.grant(t, est.Namespace, "backup-reader", est.InternalNamespace, []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
		})
		res, err := runBackup(ctx, opts)
		require.NoError(t, err)
		assert.True(t, res.Components.Database)
	})

	t.Run("exec stream cut mid-dump", func(t *testing.T) {
		// The exec node stops forwarding stdout after 20000 bytes and still reports exit
		// status 0, as a truncating kubectl exec does.
		est := b.seed(t, testbed.HelmEstateOptions{DBPodAnnotations: map[string]string{"kubenode.flightctl.dr/cut-stdout-after": "20000"}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		opts := b.options(t, est)
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "is refused")
		assert.Contains(t, err.Error(), "20000 bytes")
		assert.Empty(t, dirEntries(t, opts.OutputDir), "no archive, no checksum, no temporary file")
	})

	t.Run("two releases without helm_release", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{ExtraReleases: []string{"other-app"}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		opts := b.options(t, est)
		_, err := runBackup(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "2 deployed Helm releases in namespace "+est.Namespace+" (flightctl, other-app): set helm_release")
		assert.Empty(t, dirEntries(t, opts.OutputDir))

		opts.Kubernetes.HelmRelease = "flightctl"
		res, err := runBackup(ctx, opts)
		require.NoError(t, err)
		_, names := readTarGz(t, res.Archive)
		assert.Contains(t, names, "config/helm-release-flightctl.yaml")
	})

	// A restore in the cluster keeps its journal in a Secret of the release namespace,
	// which the state-directory check of every module cannot see: the backup reads it.
	t.Run("unfinished restore in the cluster", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cl, err := kube.New(kube.Config{Kubeconfig: b.k.Kubeconfig})
		require.NoError(t, err)
		journal := &estate.SecretJournal{Client: cl, Namespace: est.Namespace}
		_, err = journal.Load(ctx)
		require.NoError(t, err)
		j := &restore.Journal{FormatVersion: 1, ID: "0badc0de", ArchivePath: "/backups/a.tar.gz", DeploymentType: "kubernetes",
			State: restore.StateRunning, Started: time.Now().UTC(), Done: []string{}, ActiveUnits: []string{est.Namespace + "/flightctl-api"}}
		require.NoError(t, journal.Save(ctx, j))

		p, err := planBackup(ctx, b.options(t, est))
		require.NoError(t, err)
		w := strings.Join(p.Warnings, "\n")
		assert.Contains(t, w, "an unfinished restore left Deployments scaled to zero; run the restore again or roll it back: restore 0badc0de of /backups/a.tar.gz")
		assert.Contains(t, w, "scaled to zero "+est.Namespace+"/flightctl-api (")
		assert.Contains(t, w, "journal in Secret "+est.Namespace+"/"+estate.KubeJournalSecret)
		res, err := runBackup(ctx, b.options(t, est))
		require.NoError(t, err)
		assert.Contains(t, strings.Join(res.Warnings, "\n"), "an unfinished restore left Deployments scaled to zero")

		// Finished, it is not mentioned.
		j.State = restore.StateDone
		require.NoError(t, journal.Save(ctx, j))
		res, err = runBackup(ctx, b.options(t, est))
		require.NoError(t, err)
		assert.NotContains(t, strings.Join(res.Warnings, "\n"), "unfinished restore")
	})

	t.Run("check mode", func(t *testing.T) {
		est := b.seed(t, testbed.HelmEstateOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		opts := b.options(t, est)
		p, err := planBackup(ctx, opts)
		require.NoError(t, err)
		assert.True(t, p.Estate.DatabaseIncluded)
		assert.Positive(t, p.Estate.Database.Size)
		assert.Equal(t, "0.10.0", p.ServerVersion)
		assert.Equal(t, "flightctl", p.Estate.Release.Name)
		assert.Greater(t, p.Estate.EstimatedSize, p.Estate.Database.Size)
		assert.Empty(t, dirEntries(t, opts.OutputDir))
		_, err = os.Stat(opts.OutputDir)
		assert.True(t, os.IsNotExist(err), "check mode creates no directory")
	})
}

// grant binds a Role with rules in ns to the service account saNS/sa.
func (b *kubeBed) grant(t *testing.T, saNS, sa, ns string, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	cs := b.k.Clientset
	name := "grant-" + sa + "-" + time.Now().Format("150405.000000")
	name = strings.ReplaceAll(name, ".", "-")
	_, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Rules: rules}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: saNS}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}
