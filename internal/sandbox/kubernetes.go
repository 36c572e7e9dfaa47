package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

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
	for _, sub := range []string{"kube", "pg", "kv"} {
		p := filepath.Join(opts.Dir, sub)
		if _, err := os.Stat(p); err == nil {
			return nil, fmt.Errorf("sandbox: %s already exists: use an empty directory or run sandbox down --dir %s", p, opts.Dir)
		}
	}
	if _, err := testbed.KubeBinDir(); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	start := time.Now()
	st = &State{
		Dir:           opts.Dir,
		Created:       time.Now().UTC(),
		ServerVersion: opts.Version,
		VersionSource: "the Helm release's chart appVersion",
		LogDir:        filepath.Join(opts.Dir, "logs"),
		DB: DBState{
			Access: "container", Host: "127.0.0.1", Name: "flightctl", User: "flightctl_app", Password: testbed.RandomPassword(),
			AdminUser: "admin", AdminPassword: testbed.RandomPassword(), MigratorPassword: testbed.RandomPassword(),
		},
		KV:         KVState{Host: "127.0.0.1", Password: testbed.RandomPassword()},
		Kubernetes: &KubeState{Dir: filepath.Join(opts.Dir, "kube"), Namespace: KubeNamespace, InternalNamespace: KubeInternalNamespace, Release: KubeRelease},
	}
	defer func() {
		if err != nil {
			_ = st.save()
			log.Error("sandbox up failed; stopping what was started", "err", err)
			if derr := Down(context.Background(), opts.Dir, log); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if err := os.MkdirAll(st.LogDir, 0o755); err != nil {
		return st, err
	}

	pg, err := testbed.StartPostgres(ctx, testbed.PostgresOptions{Dir: filepath.Join(opts.Dir, "pg"), Logger: log})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	st.DB.Port, st.DB.SocketDir, st.DB.DataDir = pg.Port, pg.SocketDir, pg.DataDir
	if err := pg.CreateFlightctlDB(ctx, st.DB.Name, testbed.FlightctlPasswords{Admin: st.DB.AdminPassword, Migrator: st.DB.MigratorPassword, App: st.DB.Password}); err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	conn, err := pg.SuperuserConn(ctx, st.DB.Name)
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	st.Seed, err = seedDatabase(ctx, conn, opts.Devices)
	conn.Close(context.Background())
	if err != nil {
		return st, fmt.Errorf("sandbox: seed database: %w", err)
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
	})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	ks.ReleaseSecret, ks.DBPod = est.ReleaseSecret, est.DBPod
	if err := st.save(); err != nil {
		return st, err
	}
	if err := writeEnvFile(st); err != nil {
		return st, err
	}
	if err := writeInventory(st); err != nil {
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

// kubeVars are the inventory variables of the Kubernetes form.
func (s *State) kubeVars(v map[string]any) {
	k := s.Kubernetes
	v["flightctl_dr_deployment_type"] = "kubernetes"
	v["flightctl_dr_kubeconfig"] = k.Kubeconfig
	v["flightctl_dr_namespace"] = k.Namespace
	v["flightctl_dr_internal_namespace"] = k.InternalNamespace
	v["flightctl_dr_helm_release"] = k.Release
	v["flightctl_dr_pam_volume"] = ""
	for _, n := range []string{"flightctl_dr_pki_dir", "flightctl_dr_encryption_dir", "flightctl_dr_config_file", "flightctl_dr_systemd_scope", "flightctl_dr_systemd_bus_address", "flightctl_dr_xdg_runtime_dir", "flightctl_dr_units", "flightctl_dr_app_units"} {
		delete(v, n)
	}
}
