package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

// TestModuleKubernetes runs the module as Ansible does with deployment_type kubernetes
// against a real kube-apiserver and etcd, a real PostgreSQL and Redis (the exec node's
// container runtime is the one fake: exec'd commands and port-forwards reach this
// machine). No controller runs, so the Deployments have no pods: the quiesce finds none to
// wait for; the engine's tests cover pods that go (internal/estate).
func TestModuleKubernetes(t *testing.T) {
	testbed.Need(t, "pg_dump", "psql", "sha256sum", "mkfifo", "df")
	bin := moduletest.Build(t, pkg)
	k := testbed.KubeForTest(t)
	pg := testbed.PostgresForTest(t)
	kv := testbed.RedisForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const pw = "module-k8s-pw"
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: pw}))
	est, err := k.SeedHelmEstate(ctx, testbed.HelmEstateOptions{Namespace: "fc", InternalNamespace: "fc-internal", DBPassword: pw, KVPassword: kv.Password,
		DBPodEnv:         map[string]string{"PGHOST": pg.SocketDir, "PGPORT": strconv.Itoa(pg.Port)},
		DBPodAnnotations: map[string]string{"kubenode.flightctl.dr/forward-" + strconv.Itoa(pg.Port): fmt.Sprintf("127.0.0.1:%d", pg.Port)}})
	require.NoError(t, err)
	_, err = k.Clientset.CoreV1().Pods(est.InternalNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "flightctl-kv-0", Labels: map[string]string{"flightctl.service": "flightctl-kv"},
			Annotations: map[string]string{"kubenode.flightctl.dr/forward-6379": kv.Addr}},
		Spec: corev1.PodSpec{NodeName: k.NodeName, AutomountServiceAccountToken: new(bool), Containers: []corev1.Container{{Name: "kv", Image: "valkey"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, k.WaitPodReady(ctx, est.InternalNamespace, "flightctl-kv-0"))
	src, closeSource, err := estate.OpenBackupSource(ctx, estate.BackupSourceOptions{DeploymentType: "kubernetes", Kubernetes: estate.KubernetesConfig{
		Connection: kube.Config{Kubeconfig: k.Kubeconfig}, Namespace: est.Namespace, InternalNamespace: est.InternalNamespace, DBPort: pg.Port}})
	require.NoError(t, err)
	defer closeSource()
	b, err := backup.Run(ctx, src, backup.Options{OutputDir: t.TempDir()})
	require.NoError(t, err)
	require.NoError(t, k.Clientset.CoreV1().Secrets(est.Namespace).Delete(ctx, "flightctl-ca", metav1.DeleteOptions{}))

	state := filepath.Join(t.TempDir(), "state")
	args := map[string]any{
		"path": b.Archive, "deployment_type": "kubernetes", "kubeconfig": k.Kubeconfig,
		"namespace": est.Namespace, "internal_namespace": est.InternalNamespace, "db_port": pg.Port, "state_dir": state,
	}
	check := map[string]any{"_ansible_check_mode": true}
	for k, v := range args {
		check[k] = v
	}
	r := moduletest.Run(t, bin, check)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	plan := r.Out["plan"].(map[string]any)
	assert.Equal(t, []any{"config", "encryption", "pki"}, plan["objects"])
	assert.Contains(t, plan["units_to_stop"], est.Namespace+"/flightctl-api")
	_, err = k.Clientset.CoreV1().Secrets(est.Namespace).Get(ctx, "flightctl-ca", metav1.GetOptions{})
	require.Error(t, err, "check mode applies nothing")

	r = moduletest.Run(t, bin, args)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	_, err = k.Clientset.CoreV1().Secrets(est.Namespace).Get(ctx, "flightctl-ca", metav1.GetOptions{})
	require.NoError(t, err, "the deleted PKI Secret is back")
	d, err := k.Clientset.AppsV1().Deployments(est.Namespace).Get(ctx, "flightctl-api", metav1.GetOptions{})
	require.NoError(t, err)
	assert.EqualValues(t, 1, *d.Spec.Replicas, "scaled back")
	assert.NotContains(t, d.Annotations, estate.KubeReplicasAnnotation)
	assert.NotContains(t, r.Stdout+r.Stderr, pw)
	assert.NotContains(t, r.Stdout+r.Stderr, kv.Password)
}
