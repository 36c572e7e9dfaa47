package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"flightctl.dr/internal/testbed"
)

// Namespaces of the Kubernetes form of the sandbox.
const (
	KubeNamespace         = "flightctl"
	KubeInternalNamespace = "flightctl-internal"
	KubeRelease           = "flightctl"
)

// KubeState locates the test cluster of the Kubernetes form.
type KubeState struct {
	Dir               string `json:"dir"`
	Host              string `json:"host"`
	Kubeconfig        string `json:"kubeconfig"`
	CAFile            string `json:"ca_file"`
	NodeName          string `json:"node_name"`
	Namespace         string `json:"namespace"`
	InternalNamespace string `json:"internal_namespace"`
	Release           string `json:"helm_release"`
	ReleaseSecret     string `json:"release_secret"`
	DBPod             string `json:"db_pod"`
	RedisPIDFile      string `json:"redis_pid_file"`
}

// UpKubernetes starts the Kubernetes form of the sandbox: a test cluster (etcd, a real
// kube-apiserver, the exec node), a real PostgreSQL and Redis on loopback with the seeded
// rows and keys, and in the cluster the objects of a Helm install of Flight Control
// (namespaces flightctl and flightctl-internal, the deployed release Secret, the PKI,
// encryption, database and KV Secrets, the application Deployments, a Helm-managed
// flightctl-db Deployment whose Ready pod execs into the sandbox's PostgreSQL, and the KV
// Service). It writes sandbox.json, sandbox.env and inventory.yml as Up does.
func UpKubernetes(ctx context.Context, opts Options) (st *State, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if _, err := testbed.KubeBinDir(); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := prepareDir(opts.Dir, "kube", "pg", "kv"); err != nil {
		return nil, err
	}
	start := time.Now()
	st = newState(opts)
	st.VersionSource = "the Helm release's chart appVersion"
	st.DB.Access = "container"
	st.Kubernetes = &KubeState{Dir: filepath.Join(opts.Dir, "kube"), Namespace: KubeNamespace, InternalNamespace: KubeInternalNamespace, Release: KubeRelease}
	defer stopOnFailure(st, log, &err)
	if err := os.MkdirAll(st.LogDir, 0o755); err != nil {
		return st, err
	}

	pg, err := testbed.StartPostgres(ctx, testbed.PostgresOptions{Dir: filepath.Join(opts.Dir, "pg"), Logger: log})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	st.DB.Port, st.DB.SocketDir, st.DB.DataDir = pg.Port, pg.SocketDir, pg.DataDir
	if err := st.createAndSeedDB(ctx, pg, opts.Devices); err != nil {
		return st, err
	}

	kvDir := filepath.Join(opts.Dir, "kv")
	rd, err := testbed.StartRedis(ctx, testbed.RedisOptions{Dir: kvDir, Password: st.KV.Password, Logger: log})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	st.KV.Port = rd.Port
	st.Kubernetes.RedisPIDFile = filepath.Join(kvDir, "redis.pid")
	if st.Seed.KVKeys, err = seedKV(ctx, rd.Client()); err != nil {
		return st, fmt.Errorf("sandbox: seed KV: %w", err)
	}
	_ = st.save()

	k, err := testbed.StartKube(ctx, testbed.KubeOptions{Dir: st.Kubernetes.Dir, Logger: log})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	// From here on the cluster outlives this process; Down stops it by its PID files.
	k.ForgetProcesses()
	ks := st.Kubernetes
	ks.Host, ks.Kubeconfig, ks.CAFile, ks.NodeName = k.Host, k.Kubeconfig, k.CAFile, k.NodeName
	_ = st.save()
	est, err := k.SeedHelmEstate(ctx, testbed.HelmEstateOptions{
		Namespace: ks.Namespace, InternalNamespace: ks.InternalNamespace, Release: ks.Release, AppVersion: opts.Version,
		DBUser: st.DB.User, DBPassword: st.DB.Password, KVPassword: st.KV.Password,
		// psql in the database pod reaches the server through its socket, as in the real
		// pod; a port-forward to the pod's port 5432 (the chart's) and to the KV pod's 6379
		// reach them on loopback.
		DBPodEnv:         map[string]string{"PGHOST": pg.SocketDir, "PGPORT": strconv.Itoa(pg.Port)},
		DBPodAnnotations: map[string]string{"kubenode.flightctl.dr/forward-5432": "127.0.0.1:" + strconv.Itoa(pg.Port)},
		KVAddr:           "127.0.0.1:" + strconv.Itoa(rd.Port),
	})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	ks.ReleaseSecret, ks.DBPod = est.ReleaseSecret, est.DBPod
	if err := st.record(); err != nil {
		return st, err
	}
	log.Info("sandbox up (kubernetes)", "dir", st.Dir, "took", time.Since(start).Round(time.Millisecond), "api", ks.Host)
	return st, nil
}

// downKubernetes stops what UpKubernetes started, by PID files.
func downKubernetes(st *State) {
	if st.Kubernetes == nil {
		return
	}
	if st.Kubernetes.Dir != "" {
		testbed.StopKubeDir(st.Kubernetes.Dir)
	}
	if st.Kubernetes.RedisPIDFile != "" {
		testbed.KillByPIDFile(st.Kubernetes.RedisPIDFile, "redis-server")
	}
}

// KubeReport is what Status found in the test cluster of the Kubernetes form.
type KubeReport struct {
	APIServer      string `json:"api_server"`
	APIReady       bool   `json:"api_ready"`
	APIError       string `json:"api_error,omitempty"`
	NodeReady      bool   `json:"node_ready"`
	DBPod          string `json:"db_pod,omitempty"`
	DBPodReady     bool   `json:"db_pod_ready"`
	ReleaseSecrets int    `json:"deployed_releases"`
	// Deployments are the application and database Deployments by namespace/name, with
	// their spec replicas ("absent" when missing).
	Deployments map[string]string `json:"deployments"`
}

// kubeStatus asks the test cluster of the Kubernetes form: the API server's readiness, the
// exec node, the database pod, the deployed release and the Deployments of the install.
func kubeStatus(ctx context.Context, st *State) (r *KubeReport, ok bool) {
	ks := st.Kubernetes
	r = &KubeReport{APIServer: ks.Host, DBPod: ks.DBPod, Deployments: map[string]string{}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rc, err := clientcmd.BuildConfigFromFlags("", ks.Kubeconfig)
	if err == nil {
		rc.Timeout = 5 * time.Second
	}
	var cs kubernetes.Interface
	if err == nil {
		cs, err = kubernetes.NewForConfig(rc)
	}
	if err == nil {
		var body []byte
		body, err = cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && strings.TrimSpace(string(body)) != "ok" {
			err = fmt.Errorf("readyz: %s", strings.TrimSpace(string(body)))
		}
	}
	if err != nil {
		r.APIError = err.Error()
		return r, false
	}
	r.APIReady = true
	if n, err := cs.CoreV1().Nodes().Get(ctx, ks.NodeName, metav1.GetOptions{}); err == nil {
		for _, c := range n.Status.Conditions {
			r.NodeReady = r.NodeReady || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
		}
	}
	if ks.DBPod != "" {
		if p, err := cs.CoreV1().Pods(ks.InternalNamespace).Get(ctx, ks.DBPod, metav1.GetOptions{}); err == nil {
			r.DBPodReady = testbed.PodReady(p)
		}
	}
	if l, err := cs.CoreV1().Secrets(ks.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,status=deployed,name=" + ks.Release}); err == nil {
		r.ReleaseSecrets = len(l.Items)
	}
	allThere := true
	check := func(ns string, names []string) {
		for _, name := range names {
			d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case err != nil:
				r.Deployments[ns+"/"+name] = "absent"
				allThere = false
			case d.Spec.Replicas == nil:
				r.Deployments[ns+"/"+name] = "1"
			default:
				r.Deployments[ns+"/"+name] = strconv.Itoa(int(*d.Spec.Replicas))
			}
		}
	}
	check(ks.Namespace, testbed.HelmReleaseDeployments)
	check(ks.InternalNamespace, append(append([]string{}, testbed.HelmInternalDeployments...), "flightctl-db"))
	return r, r.NodeReady && r.DBPodReady && r.ReleaseSecrets == 1 && allThere
}

// kubeVars are the inventory variables of the Kubernetes form.
func (s *State) kubeVars(v map[string]any) {
	k := s.Kubernetes
	v["flightctl_dr_deployment_type"] = "kubernetes"
	v["flightctl_dr_kubeconfig"] = k.Kubeconfig
	v["flightctl_dr_namespace"] = k.Namespace
	v["flightctl_dr_internal_namespace"] = k.InternalNamespace
	v["flightctl_dr_helm_release"] = k.Release
	v["flightctl_dr_pam_volume"] = ""
	for _, n := range []string{"flightctl_dr_pki_dir", "flightctl_dr_encryption_dir", "flightctl_dr_config_file", "flightctl_dr_systemd_scope", "flightctl_dr_systemd_bus_address", "sandbox_xdg_runtime_dir", "sandbox_units", "flightctl_dr_app_units"} {
		delete(v, n)
	}
}
