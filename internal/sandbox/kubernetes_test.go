package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"flightctl.dr/internal/backup"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/sandbox"
	"flightctl.dr/internal/testbed"
)

// TestSandboxKubernetesForm starts the Kubernetes form (a real kube-apiserver and etcd, the
// exec node whose container runtime is a test fake running commands on this machine, a real
// PostgreSQL and Redis), backs it up with the inventory's variables as the backup role
// passes them, and stops it.
func TestSandboxKubernetesForm(t *testing.T) {
	testbed.Need(t, filepath.Join(testbed.PostgresBinDir, "postgres"), "pg_dump", "psql", "redis-server", "sha256sum", "mkfifo")
	if _, err := testbed.KubeBinDir(); err != nil {
		testbed.Unavailable(t, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	st, err := sandbox.UpKubernetes(ctx, sandbox.Options{Dir: dir, Devices: 12})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir, nil) })
	require.NotNil(t, st.Kubernetes)

	// The inventory carries what the playbooks need, as the Podman form's does.
	b, err := os.ReadFile(filepath.Join(dir, sandbox.InventoryFile))
	require.NoError(t, err)
	var inv map[string]map[string]map[string]map[string]map[string]map[string]any
	require.NoError(t, yaml.Unmarshal(b, &inv))
	host := inv["all"]["children"]["flightctl_servers"]["hosts"]["sandbox"]
	assert.Equal(t, "kubernetes", host["flightctl_dr_deployment_type"])
	assert.Equal(t, "flightctl", host["flightctl_dr_namespace"])
	assert.Equal(t, "flightctl-internal", host["flightctl_dr_internal_namespace"])
	kubeconfig := host["flightctl_dr_kubeconfig"].(string)
	assert.FileExists(t, kubeconfig)

	// The cluster holds the Helm install.
	k, err := kube.New(kube.Config{Kubeconfig: kubeconfig})
	require.NoError(t, err)
	d, err := k.GetDeployment(ctx, "flightctl-internal", "flightctl-db")
	require.NoError(t, err)
	assert.Equal(t, "Helm", d.Labels["app.kubernetes.io/managed-by"])
	rel, err := k.ListSecrets(ctx, "flightctl", "owner=helm,status=deployed")
	require.NoError(t, err)
	require.Len(t, rel.Items, 1)
	pods, err := k.ListPods(ctx, "flightctl-internal", "flightctl.service=flightctl-db")
	require.NoError(t, err)
	require.Len(t, pods.Items, 1)
	assert.True(t, testbed.PodReady(&pods.Items[0]))

	// A backup with the inventory's values.
	port, _ := strconv.Atoi(strings.TrimSpace(toString(host["flightctl_dr_db_port"])))
	src, closeSource, err := estate.OpenBackupSource(ctx, estate.BackupSourceOptions{
		DeploymentType: "kubernetes",
		Kubernetes: estate.KubernetesConfig{
			Connection: kube.Config{Kubeconfig: kubeconfig},
			Namespace:  "flightctl", InternalNamespace: "flightctl-internal", DBPort: port,
		},
	})
	require.NoError(t, err)
	defer closeSource()
	res, err := backup.Run(ctx, src, backup.Options{OutputDir: filepath.Join(dir, "backups")})
	require.NoError(t, err)
	assert.True(t, res.Components.Database)
	assert.Equal(t, sandbox.DefaultVersion, res.Metadata.Version)

	// status speaks of the cluster: API server, exec node, database pod, release, Deployments.
	r, err := sandbox.Status(ctx, dir)
	require.NoError(t, err)
	require.NotNil(t, r.Kubernetes)
	assert.True(t, r.Up, "%+v %+v", r, r.Kubernetes)
	assert.True(t, r.Kubernetes.APIReady)
	assert.True(t, r.Kubernetes.NodeReady)
	assert.True(t, r.Kubernetes.DBPodReady)
	assert.Equal(t, 1, r.Kubernetes.ReleaseSecrets)
	assert.Equal(t, "1", r.Kubernetes.Deployments["flightctl-internal/flightctl-db"])
	assert.True(t, r.DBReachable)
	assert.True(t, r.KVReachable)
	assert.Positive(t, r.KVKeys)
	// A Deployment gone: not up, and named.
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	admin, err := kubernetes.NewForConfig(rc)
	require.NoError(t, err)
	require.NoError(t, admin.AppsV1().Deployments("flightctl-internal").Delete(ctx, "flightctl-worker", metav1.DeleteOptions{}))
	r, err = sandbox.Status(ctx, dir)
	require.NoError(t, err)
	assert.False(t, r.Up)
	assert.Equal(t, "absent", r.Kubernetes.Deployments["flightctl-internal/flightctl-worker"])

	// Down stops every process by its PID file.
	var pids []int
	for _, name := range []string{"etcd", "kube-apiserver", "kubenode"} {
		b, err := os.ReadFile(filepath.Join(st.Kubernetes.Dir, name+".pid"))
		require.NoError(t, err)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		require.NoError(t, err)
		pids = append(pids, pid)
	}
	require.NoError(t, sandbox.Down(ctx, dir, nil))
	for _, pid := range pids {
		assert.False(t, alive(pid), "pid %d still running", pid)
	}
	assert.False(t, portOpen(st.DB.Port))
	assert.False(t, portOpen(st.KV.Port))
	r, err = sandbox.Status(ctx, dir)
	require.NoError(t, err)
	assert.False(t, r.Up)
	assert.False(t, r.Kubernetes.APIReady)
	assert.NotEmpty(t, r.Kubernetes.APIError)
}

func toString(v any) string {
	switch x := v.(type) {
	case int:
		return strconv.Itoa(x)
	case string:
		return x
	}
	return ""
}
