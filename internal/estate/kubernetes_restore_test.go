package estate_test

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
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/yaml"

	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

// The Kubernetes restore runs against a real kube-apiserver and etcd, a real PostgreSQL
// and Redis. Two parts are fakes because nothing here can run them:
//   - the exec node's container runtime (hack/kubenode): an exec'd command runs as a local
//     process with the pod's environment, a port-forward connects to a local address;
//   - fakeReplicaSets, the stand-in for kube-controller-manager (which does not run here):
//     it makes each application Deployment's pods follow its replicas, asynchronously,
//     as the ReplicaSet controller would.

const kubeAppPassword = "k8s-app-Pässword"

type kubeRestoreBed struct {
	k  *testbed.Kube
	pg *testbed.Postgres
	kv *testbed.Redis
}

func newKubeRestoreBed(t *testing.T) *kubeRestoreBed {
	t.Helper()
	testbed.Need(t, "pg_dump", "psql", "sha256sum", "mkfifo", "tee", "df")
	return &kubeRestoreBed{k: testbed.KubeForTest(t), pg: testbed.PostgresForTest(t), kv: testbed.RedisForTest(t)}
}

// kubeCase is one Helm estate of the bed: its namespaces, database and fake controller.
type kubeCase struct {
	t     *testing.T
	b     *kubeRestoreBed
	est   *testbed.HelmEstate
	db    string
	rs    *fakeReplicaSets
	state string
}

var caseSeq int

func (b *kubeRestoreBed) newCase(t *testing.T, o testbed.HelmEstateOptions) *kubeCase {
	t.Helper()
	caseSeq++
	ctx := context.Background()
	db := fmt.Sprintf("fc_restore_%d", caseSeq)
	require.NoError(t, b.pg.CreateFlightctlDB(ctx, db, testbed.FlightctlPasswords{App: kubeAppPassword}))
	seedDevices(t, b.pg, db, 12, 4)
	if o.Namespace == "" {
		o.Namespace = fmt.Sprintf("fc-r%d", caseSeq)
	}
	o.InternalNamespace = o.Namespace + "-int"
	o.DBPassword, o.KVPassword = kubeAppPassword, b.kv.Password
	// psql in the database pod reaches the server as postgres through its socket, as in
	// the real pod; a port-forward to the pod's database port reaches it on loopback.
	env := map[string]string{"PGHOST": b.pg.SocketDir, "PGPORT": strconv.Itoa(b.pg.Port)}
	for k, v := range o.DBPodEnv {
		env[k] = v
	}
	o.DBPodEnv = env
	o.DBPodAnnotations = map[string]string{"kubenode.flightctl.dr/forward-" + strconv.Itoa(b.pg.Port): fmt.Sprintf("127.0.0.1:%d", b.pg.Port)}
	// The KV store's pod, behind Service flightctl-kv.
	o.KVAddr = b.kv.Addr
	est, err := b.k.SeedHelmEstate(ctx, o)
	require.NoError(t, err)
	c := &kubeCase{t: t, b: b, est: est, db: db, state: t.TempDir()}
	c.rs = startFakeReplicaSets(t, b.k, est.Namespace, est.InternalNamespace)
	c.setReplicas("flightctl-api", 2)
	c.rs.waitPods(t, est.Namespace, "flightctl-api", 2)
	c.rs.waitPods(t, est.InternalNamespace, "flightctl-worker", 1)
	return c
}

func (c *kubeCase) config() estate.KubernetesConfig {
	return estate.KubernetesConfig{
		Connection: kube.Config{Kubeconfig: c.b.k.Kubeconfig},
		Namespace:  c.est.Namespace, InternalNamespace: c.est.InternalNamespace,
		DBPort: c.b.pg.Port, DBName: c.db,
	}
}

func (c *kubeCase) target(t *testing.T, kubeconfig string) *estate.KubernetesRestore {
	t.Helper()
	cfg := c.config()
	if kubeconfig != "" {
		cfg.Connection.Kubeconfig = kubeconfig
	}
	k := &estate.KubernetesRestore{Config: cfg, Restore: estate.KubernetesRestoreConfig{PollInterval: 20 * time.Millisecond, QuiesceTimeout: time.Minute},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	require.NoError(t, k.Open(context.Background()))
	return k
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (c *kubeCase) options(t *testing.T, archive string) restore.Options {
	return restore.Options{ArchivePath: archive, Target: c.target(t, ""), StateDir: c.state, FlushKV: true}
}

// backup makes an archive of the estate with the real backup engine.
func (c *kubeCase) backup(t *testing.T) string {
	t.Helper()
	src, closeSource, err := estate.OpenBackupSource(context.Background(), estate.BackupSourceOptions{DeploymentType: "kubernetes", Kubernetes: c.config()})
	require.NoError(t, err)
	defer closeSource()
	res, err := backup.Run(context.Background(), src, backup.Options{OutputDir: filepath.Join(t.TempDir(), "out")})
	require.NoError(t, err)
	return res.Archive
}

func (c *kubeCase) setReplicas(name string, n int32) {
	ctx := context.Background()
	ns := c.nsOf(name)
	d, err := c.b.k.Clientset.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	require.NoError(c.t, err)
	d.Spec.Replicas = &n
	_, err = c.b.k.Clientset.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{})
	require.NoError(c.t, err)
}

func (c *kubeCase) nsOf(name string) string {
	for _, d := range testbed.HelmInternalDeployments {
		if d == name {
			return c.est.InternalNamespace
		}
	}
	return c.est.Namespace
}

// replicas reads every application Deployment's replicas and restore annotation.
func (c *kubeCase) replicas() map[string]string {
	out := map[string]string{}
	for _, name := range append(append([]string{}, testbed.HelmReleaseDeployments...), testbed.HelmInternalDeployments...) {
		d, err := c.b.k.Clientset.AppsV1().Deployments(c.nsOf(name)).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		require.NoError(c.t, err)
		v := strconv.Itoa(int(*d.Spec.Replicas))
		if a, ok := d.Annotations[estate.KubeReplicasAnnotation]; ok {
			v += " (annotated " + a + ")"
		}
		out[name] = v
	}
	return out
}

func wantReplicas() map[string]string {
	out := map[string]string{}
	for _, name := range append(append([]string{}, testbed.HelmReleaseDeployments...), testbed.HelmInternalDeployments...) {
		out[name] = "1"
	}
	out["flightctl-api"] = "2"
	return out
}

func (c *kubeCase) secret(ns, name string) *corev1.Secret {
	s, err := c.b.k.Clientset.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	require.NoError(c.t, err)
	return s
}

// release decodes the deployed release record (base64 of gzipped JSON).
func (c *kubeCase) release(t *testing.T) map[string]any {
	t.Helper()
	s := c.secret(c.est.Namespace, c.est.ReleaseSecret)
	raw, err := base64.StdEncoding.DecodeString(string(s.Data["release"]))
	require.NoError(t, err)
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	require.NoError(t, err)
	js, err := io.ReadAll(zr)
	require.NoError(t, err)
	var rel map[string]any
	require.NoError(t, json.Unmarshal(js, &rel))
	return rel
}

func (c *kubeCase) editRelease(t *testing.T, edit func(map[string]any)) {
	t.Helper()
	rel := c.release(t)
	edit(rel)
	js, err := json.Marshal(rel)
	require.NoError(t, err)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(js)
	require.NoError(t, zw.Close())
	s := c.secret(c.est.Namespace, c.est.ReleaseSecret)
	s.Data["release"] = []byte(base64.StdEncoding.EncodeToString(gz.Bytes()))
	_, err = c.b.k.Clientset.CoreV1().Secrets(c.est.Namespace).Update(context.Background(), s, metav1.UpdateOptions{})
	require.NoError(t, err)
}

func (c *kubeCase) deviceCount() int64 {
	ctx := context.Background()
	conn, err := c.b.pg.SuperuserConn(ctx, c.db)
	require.NoError(c.t, err)
	defer conn.Close(ctx)
	var n int64
	require.NoError(c.t, conn.QueryRow(ctx, "SELECT count(*) FROM devices").Scan(&n))
	return n
}

// disaster loses the database's devices, a PKI Secret and the KV store, and changes the
// encryption key.
func (c *kubeCase) disaster() {
	ctx := context.Background()
	conn, err := c.b.pg.SuperuserConn(ctx, c.db)
	require.NoError(c.t, err)
	_, err = conn.Exec(ctx, "DELETE FROM devices")
	require.NoError(c.t, err)
	conn.Close(ctx)
	if err := c.b.k.Clientset.CoreV1().Secrets(c.est.Namespace).Delete(ctx, "flightctl-ca", metav1.DeleteOptions{}); !apierrors.IsNotFound(err) {
		require.NoError(c.t, err)
	}
	s := c.secret(c.est.Namespace, estate.KubeEncryptionSecret)
	s.Data["key"] = []byte("changed-after-the-backup")
	_, err = c.b.k.Clientset.CoreV1().Secrets(c.est.Namespace).Update(ctx, s, metav1.UpdateOptions{})
	require.NoError(c.t, err)
	require.NoError(c.t, c.b.kv.Client().FlushAll(ctx).Err())
}

func (c *kubeCase) assertRestored(t *testing.T) {
	t.Helper()
	assert.EqualValues(t, 12, c.deviceCount(), "devices back")
	ca := c.secret(c.est.Namespace, "flightctl-ca")
	require.NotNil(t, ca, "the deleted PKI Secret is back")
	assert.NotEmpty(t, ca.Data["tls.crt"])
	assert.Equal(t, c.est.EncryptionKey, string(c.secret(c.est.Namespace, estate.KubeEncryptionSecret).Data["key"]))
	assert.Equal(t, c.est.EncryptionKey, string(c.secret(c.est.InternalNamespace, estate.KubeEncryptionSecret).Data["key"]), "the key is in the internal namespace too")
	assert.Equal(t, wantReplicas(), c.replicas(), "replicas back, no annotation left")
	c.rs.waitPods(t, c.est.Namespace, "flightctl-api", 2)
	keys, err := c.b.kv.Client().Keys(context.Background(), "v1/*/awaiting-reconnect").Result()
	require.NoError(t, err)
	assert.Contains(t, keys, devprep.KeyFor(testbed.DefaultOrgID, "device-00001"))
}

func TestKubernetesRestore(t *testing.T) {
	b := newKubeRestoreBed(t)
	ctx := context.Background()

	t.Run("round_trip", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		c.disaster()
		// The release's values changed after the backup (helm upgrade --set ...).
		c.editRelease(t, func(rel map[string]any) {
			rel["config"] = map[string]any{"global": map[string]any{"baseDomain": "changed.example.com"}}
		})
		var podsAtStop int = -1
		opts := c.options(t, archive)
		opts.Checkpoint = func(name string) error {
			if name == restore.StepStopUnits {
				podsAtStop = c.rs.appPods(t)
			}
			return nil
		}
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.True(t, res.Changed)
		assert.Equal(t, 0, podsAtStop, "every application pod was gone when the quiesce returned")
		assert.Equal(t, []string{restore.StepLoadDatabase, restore.StepSyncPasswords, restore.StepStopUnits, restore.StepSwapDatabase,
			restore.StepSwapFiles, restore.StepVolume, restore.StepRelabel, restore.StepDevicePrep, restore.StepStartUnits, restore.StepFinalize}, res.Steps)
		c.assertRestored(t)
		assert.True(t, res.DevicePrep.(*devprep.Result).KeysStaged, "the keys were staged before the scale-down and swapped in at zero")
		j, err := restore.ReadJournal(c.state)
		require.NoError(t, err)
		assert.Equal(t, restore.StateDone, j.State)
		assert.Equal(t, int32(2), j.Scales[c.est.Namespace+"/flightctl-api"], "the replicas were recorded in the journal")
		assert.Contains(t, res.Message, "pki, encryption and config")
		rel := c.release(t)
		assert.Equal(t, map[string]any{"global": map[string]any{"baseDomain": "flightctl.example.com"}}, rel["config"], "the archive's values are on the release record")
		assert.Equal(t, "0.10.0", rel["chart"].(map[string]any)["metadata"].(map[string]any)["version"], "the installed chart is kept")
		assert.Contains(t, strings.Join(res.Warnings, "\n"), "the archive's values replace the installed release's values")

		// Run again: nothing to do while the estate holds what the restore put there; a
		// PKI Secret deleted since is drift, and the restore runs again.
		res, err = restore.Run(ctx, c.options(t, archive))
		require.NoError(t, err)
		assert.False(t, res.Changed, res.Message)
		require.NoError(t, b.k.Clientset.CoreV1().Secrets(c.est.Namespace).Delete(ctx, "flightctl-api-server-tls", metav1.DeleteOptions{}))
		res, err = restore.Run(ctx, c.options(t, archive))
		require.NoError(t, err)
		assert.True(t, res.Changed)
		assert.Contains(t, res.Drift, "Secret "+c.est.Namespace+"/flightctl-api-server-tls is missing")
		assert.NotNil(t, c.secret(c.est.Namespace, "flightctl-api-server-tls"))
		assert.Equal(t, wantReplicas(), c.replicas())
	})

	t.Run("waits_for_pods_gone", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		release := c.rs.holdDeletes()
		stopped := make(chan struct{})
		opts := c.options(t, archive)
		opts.Checkpoint = func(name string) error {
			if name == restore.StepStopUnits {
				close(stopped)
			}
			return nil
		}
		done := make(chan error, 1)
		go func() { _, err := restore.Run(ctx, opts); done <- err }()
		// The Deployments reach 0 while their pods are still there: the quiesce must wait.
		c.rs.waitScaledToZero(t, c.est.Namespace, "flightctl-api")
		select {
		case <-stopped:
			t.Fatal("stop_units finished while the application pods still ran")
		case err := <-done:
			t.Fatalf("the restore ended while the application pods still ran: %v", err)
		default:
		}
		require.Positive(t, c.rs.appPods(t))
		release()
		require.NoError(t, <-done)
		c.assertRestored(t)
	})

	t.Run("upstream_archive_foreign_namespace", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		ours := c.backup(t)
		other := "victim-" + strconv.Itoa(caseSeq)
		require.NoError(t, b.k.EnsureNamespace(ctx, other))
		archive := upstreamArchive(t, ours, func(name string, data []byte) []byte {
			if name != "pki/flightctl-ca.yaml" {
				return data
			}
			var s map[string]any
			require.NoError(t, yaml.Unmarshal(data, &s))
			s["metadata"].(map[string]any)["namespace"] = other
			s["metadata"].(map[string]any)["ownerReferences"] = []any{map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}}
			s["metadata"].(map[string]any)["resourceVersion"] = "12345"
			out, err := yaml.Marshal(s)
			require.NoError(t, err)
			return out
		})
		c.disaster()
		res, err := restore.Run(ctx, c.options(t, archive))
		require.NoError(t, err)
		c.assertRestored(t)
		ca := c.secret(c.est.Namespace, "flightctl-ca")
		assert.Empty(t, ca.OwnerReferences, "no ownerReferences from the archive")
		assert.Nil(t, c.secret(other, "flightctl-ca"), "nothing written into the namespace the archive names")
		assert.Contains(t, strings.Join(res.Warnings, "\n"), "the archive names namespace "+other+": applied into "+c.est.Namespace+" only")
	})

	t.Run("missing_optional_deployment", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		for _, d := range []string{"flightctl-imagebuilder-api", "flightctl-imagebuilder-worker"} {
			require.NoError(t, b.k.Clientset.AppsV1().Deployments(c.nsOf(d)).Delete(ctx, d, metav1.DeleteOptions{}))
		}
		c.disaster()
		res, err := restore.Run(ctx, c.options(t, archive))
		require.NoError(t, err)
		assert.Contains(t, strings.Join(res.Warnings, "\n"), "Deployment "+c.est.Namespace+"/flightctl-imagebuilder-api does not exist: skipped")
		assert.EqualValues(t, 12, c.deviceCount())
		want := wantReplicas()
		delete(want, "flightctl-imagebuilder-api")
		delete(want, "flightctl-imagebuilder-worker")
		assert.Equal(t, want, c.replicas())
	})

	t.Run("missing_permissions", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		// An account that may do what a backup does, not what a restore needs.
		kc := c.limitedAccount(t)
		before := c.replicas()
		opts := c.options(t, archive)
		opts.Target = c.target(t, kc)
		_, err := restore.Run(ctx, opts)
		var mp *kube.MissingPermissionsError
		require.ErrorAs(t, err, &mp)
		assert.Contains(t, err.Error(), "patch deployments.apps/scale in namespace "+c.est.Namespace)
		assert.Contains(t, err.Error(), "create secrets in namespace "+c.est.Namespace)
		assert.Contains(t, err.Error(), "nothing was stopped or changed")
		assert.Equal(t, before, c.replicas(), "nothing scaled")
		j, err := restore.ReadJournal(c.state)
		require.NoError(t, err)
		assert.Nil(t, j, "no journal: nothing started")
	})

	t.Run("gitops_owner_refused_autoscaler_reported", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		min := int32(2)
		_, err := b.k.Clientset.AutoscalingV2().HorizontalPodAutoscalers(c.est.Namespace).Create(ctx, &autoscalingv2.HorizontalPodAutoscaler{
			ObjectMeta: metav1.ObjectMeta{Name: "api"},
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: &min, MaxReplicas: 4,
				ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "flightctl-api"}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		d, err := b.k.Clientset.AppsV1().Deployments(c.est.InternalNamespace).Get(ctx, "flightctl-worker", metav1.GetOptions{})
		require.NoError(t, err)
		d.Labels["argocd.argoproj.io/instance"] = "flightctl"
		_, err = b.k.Clientset.AppsV1().Deployments(c.est.InternalNamespace).Update(ctx, d, metav1.UpdateOptions{})
		require.NoError(t, err)
		before := c.replicas()
		_, err = restore.Run(ctx, c.options(t, archive))
		require.Error(t, err)
		assert.Contains(t, err.Error(), c.est.InternalNamespace+"/flightctl-worker (Argo CD)")
		assert.Contains(t, err.Error(), "gitops_paused: true")
		assert.Equal(t, before, c.replicas(), "nothing scaled")

		opts := c.options(t, archive)
		opts.Target.(*estate.KubernetesRestore).Restore.GitOpsPaused = true
		opts.CheckMode = true
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		notes := strings.Join(res.Plan.EstateChecks, "\n")
		assert.Contains(t, notes, "HorizontalPodAutoscaler "+c.est.Namespace+"/api scales Deployment "+c.est.Namespace+"/flightctl-api")
		assert.Contains(t, notes, "restoring because gitops_paused is set")
		assert.Equal(t, before, c.replicas(), "check mode scales nothing")
	})

	t.Run("documented_role_suffices", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		c.disaster()
		// The Role collection/docs/operations.md gives for a restore, and nothing more.
		rules := []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "create", "update", "patch", "delete"}},
			{APIGroups: []string{"apps"}, Resources: []string{"deployments", "deployments/scale"}, Verbs: []string{"get", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
			{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: []string{"list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
			{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"pods/portforward"}, Verbs: []string{"create"}},
		}
		opts := c.options(t, archive)
		opts.Target = c.target(t, c.account(t, "restorer", rules))
		_, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		c.assertRestored(t)
	})

	t.Run("chart_version_mismatch_refused", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		// The installed chart moves on to another version after the backup.
		rel := c.secret(c.est.Namespace, c.est.ReleaseSecret)
		data, err := testbed.HelmReleaseData(c.est.Release, c.est.Namespace, "0.11.0", 1)
		require.NoError(t, err)
		rel.Data["release"] = data
		_, err = b.k.Clientset.CoreV1().Secrets(c.est.Namespace).Update(ctx, rel, metav1.UpdateOptions{})
		require.NoError(t, err)
		opts := c.options(t, archive)
		opts.AllowVersionMismatch = true
		before := c.replicas()
		_, err = restore.Run(ctx, opts)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "made with chart flightctl-0.10.0 but chart flightctl-0.11.0 is installed")
		assert.Equal(t, before, c.replicas(), "nothing scaled")
		assert.EqualValues(t, 12, c.deviceCount())
	})

	t.Run("failure_at_each_step_puts_replicas_back", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		for _, point := range kubeFailPoints {
			t.Run(point, func(t *testing.T) {
				c.disaster()
				caBefore := c.secret(c.est.Namespace, "flightctl-api-server-tls")
				opts := c.options(t, archive)
				opts.Checkpoint = func(name string) error {
					if name == point {
						return errors.New("injected failure")
					}
					return nil
				}
				res, err := restore.Run(ctx, opts)
				require.ErrorContains(t, err, "injected failure")
				require.True(t, res.RolledBack, "rolled back: %v", err)
				assert.Equal(t, wantReplicas(), c.replicas(), "replicas put back after a failure at %s", point)
				assert.EqualValues(t, 0, c.deviceCount(), "the database the restore found is back")
				assert.Nil(t, c.secret(c.est.Namespace, "flightctl-ca"), "a Secret that did not exist before is removed again")
				assert.Equal(t, caBefore.Data, c.secret(c.est.Namespace, "flightctl-api-server-tls").Data)
				require.NoError(t, os.Remove(filepath.Join(c.state, restore.JournalFile)))
			})
		}
	})

	t.Run("sigkill_at_each_step_then_rerun", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		for _, point := range kubeKillPoints {
			t.Run(point, func(t *testing.T) {
				c.disaster()
				c.runKilledChild(t, archive, point)
				j, err := restore.ReadJournal(c.state)
				require.NoError(t, err)
				require.Equal(t, restore.StateRunning, j.State)
				res, err := restore.Run(ctx, c.options(t, archive))
				require.NoError(t, err)
				assert.Equal(t, j.ID, res.RestoreID, "the re-run finishes the killed one")
				c.assertRestored(t)
				require.NoError(t, os.Remove(filepath.Join(c.state, restore.JournalFile)))
			})
		}
	})
}

// Checkpoints of a Kubernetes restore, in order, with a change between each.
var kubeFailPoints = []string{
	"load_database:created", restore.StepLoadDatabase, "stop_units:recorded", restore.StepStopUnits,
	"swap_database:live_renamed", restore.StepSwapDatabase, restore.StepApplyItems + ":recorded", restore.StepApplyItems,
	restore.StepSwapFiles, restore.StepDevicePrep,
}

var kubeKillPoints = append(append([]string{}, kubeFailPoints...), restore.StepStartUnits)

const kubeChildEnv = "FLIGHTCTL_DR_KUBE_RESTORE_CHILD"

type kubeChild struct {
	Archive, StateDir, KillAt, Kubeconfig, Namespace, DB string
	DBPort                                               int
	// Journal is the journal location; LeaseMS the lock's lease of a journal in the cluster.
	Journal string
	LeaseMS int
}

// TestKubernetesRestoreChild is the child of the SIGKILL test: a restore that kills itself
// with SIGKILL at the checkpoint it is given. It does nothing when run normally.
func TestKubernetesRestoreChild(t *testing.T) {
	raw := os.Getenv(kubeChildEnv)
	if raw == "" {
		t.Skip("only runs as the child of the SIGKILL test")
	}
	var c kubeChild
	require.NoError(t, json.Unmarshal([]byte(raw), &c))
	k := &estate.KubernetesRestore{Config: estate.KubernetesConfig{Connection: kube.Config{Kubeconfig: c.Kubeconfig},
		Namespace: c.Namespace, InternalNamespace: c.Namespace + "-int", DBPort: c.DBPort, DBName: c.DB},
		Restore: estate.KubernetesRestoreConfig{PollInterval: 20 * time.Millisecond, JournalLocation: c.Journal, JournalLease: time.Duration(c.LeaseMS) * time.Millisecond}}
	require.NoError(t, k.Open(context.Background()))
	_, err := restore.Run(context.Background(), restore.Options{ArchivePath: c.Archive, Target: k, StateDir: c.StateDir, FlushKV: true,
		Checkpoint: func(name string) error {
			if name == c.KillAt {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
			return nil
		}})
	t.Fatalf("the child should have been killed at %s; restore returned %v", c.KillAt, err)
}

func (c *kubeCase) runKilledChild(t *testing.T, archive, point string) {
	t.Helper()
	c.runKilledChildWith(t, kubeChild{Archive: archive, KillAt: point})
}

// runKilledChildWith runs the SIGKILL child on this case with ch's archive, kill point
// and journal.
func (c *kubeCase) runKilledChildWith(t *testing.T, ch kubeChild) {
	t.Helper()
	point := ch.KillAt
	ch.StateDir, ch.Kubeconfig, ch.Namespace, ch.DB, ch.DBPort = c.state, c.b.k.Kubeconfig, c.est.Namespace, c.db, c.b.pg.Port
	raw, err := json.Marshal(ch)
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^TestKubernetesRestoreChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), kubeChildEnv+"="+string(raw))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "child output:\n%s", out)
	ws := ee.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "child must die by SIGKILL at %s; output:\n%s", point, out)
}

// limitedAccount is a service account with the backup's permissions only.
func (c *kubeCase) limitedAccount(t *testing.T) string {
	return c.account(t, "backup-only", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"secrets", "pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
	})
}

// account is a service account given rules by a Role in both namespaces; it returns a
// kubeconfig authenticating with its token.
func (c *kubeCase) account(t *testing.T, name string, rules []rbacv1.PolicyRule) string {
	ctx := context.Background()
	cs := c.b.k.Clientset
	for _, ns := range []string{c.est.Namespace, c.est.InternalNamespace} {
		_, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{})
		require.NoError(t, err)
		_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: c.est.Namespace}}}, metav1.CreateOptions{})
		require.NoError(t, err)
	}
	path, _, err := c.b.k.TokenKubeconfig(ctx, c.est.Namespace, name)
	require.NoError(t, err)
	return path
}

// upstreamArchive rewrites one of our archives in upstream's layout (SPEC §2): the four
// metadata keys and no manifest, every entry passed through edit, a .sha256 beside it.
func upstreamArchive(t *testing.T, ours string, edit func(name string, data []byte) []byte) string {
	t.Helper()
	f, err := os.Open(ours)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	tr := tar.NewReader(zr)
	dir := t.TempDir()
	path := filepath.Join(dir, "flightctl-backup-20261130T120000Z.tar.gz")
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	zw := gzip.NewWriter(out)
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if h.Typeflag == tar.TypeDir {
			require.NoError(t, tw.WriteHeader(&tar.Header{Name: h.Name, Typeflag: tar.TypeDir, Mode: 0o700, ModTime: h.ModTime}))
			continue
		}
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		if h.Name == "metadata.json" {
			var md map[string]any
			require.NoError(t, json.Unmarshal(data, &md))
			data, err = json.MarshalIndent(map[string]any{"timestamp": md["timestamp"], "version": md["version"], "deploymentType": md["deploymentType"], "databaseIncluded": md["databaseIncluded"]}, "", "  ")
			require.NoError(t, err)
		} else {
			data = edit(h.Name, data)
		}
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: h.Name, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(data)), ModTime: h.ModTime}))
		_, err = tw.Write(data)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	require.NoError(t, out.Close())
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(raw)
	require.NoError(t, os.WriteFile(path+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(path)+"\n"), 0o600))
	return path
}

func seedDevices(t *testing.T, pg *testbed.Postgres, db string, devices, ers int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, s := range []string{
		fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, status)
			SELECT '%s', 'device-' || lpad(i::text, 5, '0'), '{}'::jsonb, '{}'::jsonb, 1, 10 + i, now(),
				jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'))
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices),
		fmt.Sprintf(`INSERT INTO enrollment_requests (org_id, name, generation, resource_version, created_at, spec, status)
			SELECT '%s', 'er-' || i, 1, i, now(), jsonb_build_object('csr', 'x'), '{}'::jsonb
			FROM generate_series(1, %d) i`, testbed.DefaultOrgID, ers),
	} {
		_, err := conn.Exec(ctx, s)
		require.NoError(t, err)
	}
}

// fakeReplicaSets is the test's stand-in for kube-controller-manager's ReplicaSet
// controller, which does not run in the test cluster: it watches the application
// Deployments of two namespaces and, asynchronously, creates or deletes pods (bound to the
// exec node) so that each Deployment has as many as its replicas. holdDeletes makes it
// keep the pods of a scaled-down Deployment until released, so that a test can see
// whether the restore waits for them.
type fakeReplicaSets struct {
	k      *testbed.Kube
	nss    []string
	mu     sync.Mutex
	hold   chan struct{}
	wakes  map[string]chan struct{}
	cancel context.CancelFunc
	done   sync.WaitGroup
	logf   func(string, ...any)
}

func startFakeReplicaSets(t *testing.T, k *testbed.Kube, nss ...string) *fakeReplicaSets {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeReplicaSets{k: k, nss: nss, cancel: cancel, wakes: map[string]chan struct{}{}, logf: t.Logf}
	for _, ns := range nss {
		f.wakes[ns] = make(chan struct{}, 1)
		f.done.Add(1)
		go f.loop(ctx, ns)
	}
	t.Cleanup(func() { cancel(); f.done.Wait() })
	return f
}

// loop lists and watches the Deployments of ns as a reflector does: after a watch error
// (a fresh API server's watch cache may lag behind a list) it lists again.
func (f *fakeReplicaSets) loop(ctx context.Context, ns string) {
	defer f.done.Done()
	cs := f.k.Clientset
	for ctx.Err() == nil {
		l, err := cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			retryPause(ctx)
			continue
		}
		for i := range l.Items {
			if l.Items[i].Name != "flightctl-db" {
				f.reconcile(ctx, &l.Items[i])
			}
		}
		w, err := cs.AppsV1().Deployments(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: l.ResourceVersion})
		if err != nil {
			retryPause(ctx)
			continue
		}
		f.consume(ctx, ns, w)
		w.Stop()
	}
}

func (f *fakeReplicaSets) consume(ctx context.Context, ns string, w watch.Interface) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			if !ok || ev.Type == watch.Error {
				retryPause(ctx)
				return
			}
			if d, ok := ev.Object.(*appsv1.Deployment); ok && d.Name != "flightctl-db" && ev.Type != watch.Deleted {
				f.reconcile(ctx, d)
			}
		case <-f.wakes[ns]:
			return // list again
		}
	}
}

// retryPause spaces out retries after an API error; it never stands in for a state.
func retryPause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(50 * time.Millisecond):
	}
}

func (f *fakeReplicaSets) reconcile(ctx context.Context, d *appsv1.Deployment) {
	cs := f.k.Clientset
	sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels).String()
	pods, err := cs.CoreV1().Pods(d.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return
	}
	want := int(*d.Spec.Replicas)
	have := len(pods.Items)
	for i := have; i < want; i++ {
		_, err := cs.CoreV1().Pods(d.Namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Labels: d.Spec.Template.Labels},
			Spec: corev1.PodSpec{NodeName: f.k.NodeName, AutomountServiceAccountToken: new(bool),
				Containers: d.Spec.Template.Spec.Containers},
		}, metav1.CreateOptions{})
		if err != nil && ctx.Err() == nil {
			f.logf("fake ReplicaSet controller: create a pod of %s/%s: %v", d.Namespace, d.Name, err)
		}
	}
	if have > want {
		f.mu.Lock()
		hold := f.hold
		f.mu.Unlock()
		if hold != nil {
			return // deleted when released (wake)
		}
		sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
		zero := int64(0)
		for _, p := range pods.Items[want:] {
			_ = cs.CoreV1().Pods(d.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
	}
}

// holdDeletes keeps pods of scaled-down Deployments until release is called.
func (f *fakeReplicaSets) holdDeletes() (release func()) {
	f.mu.Lock()
	f.hold = make(chan struct{})
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		f.hold = nil
		f.mu.Unlock()
		for _, w := range f.wakes {
			select {
			case w <- struct{}{}:
			default:
			}
		}
	}
}

// appPods counts the application pods of both namespaces.
func (f *fakeReplicaSets) appPods(t *testing.T) int {
	n := 0
	for _, ns := range f.nss {
		l, err := f.k.Clientset.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		require.NoError(t, err)
		for _, p := range l.Items {
			if s := p.Labels["flightctl.service"]; s != "flightctl-db" && s != "flightctl-kv" {
				n++
			}
		}
	}
	return n
}

// waitPods waits (on a watch) until Deployment ns/name has n pods.
func (f *fakeReplicaSets) waitPods(t *testing.T, ns, name string, n int) {
	t.Helper()
	sel := "flightctl.service=" + name
	have := -1
	waitUntil(t, fmt.Sprintf("%d pods of %s/%s", n, ns, name), func(ctx context.Context) (string, bool, error) {
		l, err := f.k.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return "", false, err
		}
		have = len(l.Items)
		return l.ResourceVersion, have == n, nil
	}, func(ctx context.Context, rv string) (watch.Interface, error) {
		return f.k.Clientset.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: rv})
	})
}

// waitScaledToZero waits (on a watch) until Deployment ns/name has 0 replicas.
func (f *fakeReplicaSets) waitScaledToZero(t *testing.T, ns, name string) {
	t.Helper()
	field := "metadata.name=" + name
	waitUntil(t, "Deployment "+ns+"/"+name+" scaled to 0", func(ctx context.Context) (string, bool, error) {
		l, err := f.k.Clientset.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{FieldSelector: field})
		if err != nil || len(l.Items) != 1 {
			return "", false, err
		}
		return l.ResourceVersion, *l.Items[0].Spec.Replicas == 0, nil
	}, func(ctx context.Context, rv string) (watch.Interface, error) {
		return f.k.Clientset.AppsV1().Deployments(ns).Watch(ctx, metav1.ListOptions{FieldSelector: field, ResourceVersion: rv})
	})
}

// waitUntil checks a state, and each time it does not hold waits for the next change
// (a watch from the list's resource version) before checking again, for at most a minute.
func waitUntil(t *testing.T, what string, check func(context.Context) (string, bool, error), watchFrom func(context.Context, string) (watch.Interface, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		rv, ok, err := check(ctx)
		if ok {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("waiting for %s: %v (last error %v)", what, ctx.Err(), err)
		}
		if err != nil {
			retryPause(ctx)
			continue
		}
		w, err := watchFrom(ctx, rv)
		if err != nil {
			retryPause(ctx)
			continue
		}
		select {
		case ev, open := <-w.ResultChan():
			if !open || ev.Type == watch.Error {
				retryPause(ctx)
			}
		case <-ctx.Done():
		}
		w.Stop()
	}
}
