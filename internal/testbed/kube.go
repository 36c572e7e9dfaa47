package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"flightctl.dr/internal/kube"
)

// KubeVersion is the API server the test cluster runs (built by scripts/k8s-testbed.sh).
const KubeVersion = "v1.37.0"

// KubeBinDirEnv names a folder holding kube-apiserver, kubenode and etcd, instead of the
// cache that scripts/k8s-testbed.sh fills.
const KubeBinDirEnv = "FLIGHTCTL_DR_K8S_BIN"

// KubeBinDir finds the test cluster's programs: $FLIGHTCTL_DR_K8S_BIN, else the cache of
// scripts/k8s-testbed.sh ($FLIGHTCTL_DR_K8S_CACHE, else $FLIGHTCTL_DR_CACHE or
// ~/.cache/flightctl-dr, then k8s-<version>/bin). etcd may also come from PATH.
func KubeBinDir() (string, error) {
	dir := os.Getenv(KubeBinDirEnv)
	if dir == "" {
		cache := os.Getenv("FLIGHTCTL_DR_K8S_CACHE")
		if cache == "" {
			base := os.Getenv("FLIGHTCTL_DR_CACHE")
			if base == "" {
				home, err := os.UserHomeDir()
				if err != nil {
					return "", fmt.Errorf("test cluster: %w", err)
				}
				base = filepath.Join(home, ".cache", "flightctl-dr")
			}
			cache = filepath.Join(base, "k8s-"+KubeVersion)
		}
		dir = filepath.Join(cache, "bin")
	}
	for _, prog := range []string{"kube-apiserver", "kubenode"} {
		if st, err := os.Stat(filepath.Join(dir, prog)); err != nil || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("test cluster: %s is not built in %s: run scripts/k8s-testbed.sh (about 5 minutes the first time) or set %s", prog, dir, KubeBinDirEnv)
		}
	}
	if _, err := etcdBinary(dir); err != nil {
		return "", err
	}
	return dir, nil
}

func etcdBinary(dir string) (string, error) {
	if st, err := os.Stat(filepath.Join(dir, "etcd")); err == nil && st.Mode()&0o111 != 0 {
		return filepath.Join(dir, "etcd"), nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	return "", errors.New("test cluster: etcd is not installed: install the Debian package etcd-server (scripts/install-deps.sh)")
}

// KubeOptions say where to start a test cluster.
type KubeOptions struct {
	// Dir holds etcd's data, the PKI, the kubeconfigs, the logs and the PID files. Empty: a
	// new temporary directory, removed by Stop.
	Dir string
	// NodeName is the exec node's name (default flightctl-dr-node).
	NodeName string
	// Podman is the podman program the node uses for Pods that name a podman container.
	Podman string
	Logger *slog.Logger
}

// Kube is a running test cluster: etcd, a real kube-apiserver on loopback with RBAC, and
// an exec node (hack/kubenode: virtual-kubelet whose container runtime is a test fake
// running exec'd commands as local processes).
type Kube struct {
	Dir        string
	Host       string // https://127.0.0.1:PORT
	CAFile     string
	Kubeconfig string // cluster administrator (system:masters)
	NodeName   string
	// Client is the project's client (as the backup uses it); Clientset client-go's full
	// clientset, for setting the cluster up.
	Client    *kube.Client
	Clientset kubernetes.Interface

	pki       *kubePKI
	procs     []*bgProc // in start order
	removeDir bool
	logger    *slog.Logger
	stopped   bool
}

// StartKube starts etcd, the API server and the exec node and waits until the node is Ready.
func StartKube(ctx context.Context, opts KubeOptions) (*Kube, error) {
	bin, err := KubeBinDir()
	if err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir, remove, err := workDir(opts.Dir, "flightctl-dr-kube-")
	if err != nil {
		return nil, fmt.Errorf("start test cluster: %w", err)
	}
	k := &Kube{Dir: dir, removeDir: remove, logger: logger, NodeName: opts.NodeName}
	if k.NodeName == "" {
		k.NodeName = "flightctl-dr-node"
	}
	if err := k.start(ctx, bin, opts); err != nil {
		k.Stop()
		return nil, fmt.Errorf("start test cluster: %w", err)
	}
	logger.Info("test cluster started", "host", k.Host, "dir", dir)
	return k, nil
}

func (k *Kube) start(ctx context.Context, bin string, opts KubeOptions) error {
	started := time.Now()
	pki, err := writeKubePKI(filepath.Join(k.Dir, "pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	k.pki, k.CAFile = pki, pki.CAFile

	etcd, err := etcdBinary(bin)
	if err != nil {
		return err
	}
	var etcdURL string
	err = k.startProc(ctx, "etcd", etcd, 30*time.Second, func(port int) ([]string, error) {
		peer, err := FreePort()
		if err != nil {
			return nil, err
		}
		etcdURL = fmt.Sprintf("http://127.0.0.1:%d", port)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		return []string{
			"--name", "default", "--data-dir", filepath.Join(k.Dir, "etcd"),
			"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "default=" + peerURL, "--log-level", "warn",
		}, nil
	}, func(ctx context.Context) (bool, error) {
		return httpOK(ctx, &http.Client{Timeout: time.Second}, etcdURL+"/health")
	})
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	err = k.startProc(ctx, "kube-apiserver", filepath.Join(bin, "kube-apiserver"), 90*time.Second, func(port int) ([]string, error) {
		k.Host = fmt.Sprintf("https://127.0.0.1:%d", port)
		if err := k.connect(); err != nil {
			return nil, err
		}
		return []string{
			"--etcd-servers", etcdURL,
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port", strconv.Itoa(port),
			"--tls-cert-file", pki.APIServerCert, "--tls-private-key-file", pki.APIServerKey,
			"--client-ca-file", pki.CAFile,
			"--service-account-key-file", pki.ServiceAccountKey, "--service-account-signing-key-file", pki.ServiceAccountKey,
			"--service-account-issuer=https://kubernetes.default.svc",
			"--service-cluster-ip-range=10.0.0.0/24", "--authorization-mode=RBAC", "--endpoint-reconciler-type=none",
			"--kubelet-client-certificate", pki.KubeletClientCert, "--kubelet-client-key", pki.KubeletKey,
			"--kubelet-certificate-authority", pki.CAFile, "--kubelet-preferred-address-types=InternalIP",
			"--disable-admission-plugins=ServiceAccount",
			"--profiling=false", "--enable-priority-and-fairness=false",
		}, nil
	}, k.apiReady)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}

	err = k.startProc(ctx, "kubenode", filepath.Join(bin, "kubenode"), 60*time.Second, func(port int) ([]string, error) {
		args := []string{
			"--kubeconfig", k.Kubeconfig, "--name", k.NodeName, "--listen", fmt.Sprintf("127.0.0.1:%d", port),
			"--tls-cert", pki.NodeCert, "--tls-key", pki.NodeKey, "--client-ca", pki.CAFile,
		}
		if opts.Podman != "" {
			args = append(args, "--podman", opts.Podman)
		}
		return args, nil
	}, k.nodeReady)
	if err != nil {
		return fmt.Errorf("exec node: %w", err)
	}
	k.logger.Debug("test cluster ready", "took", time.Since(started))
	return nil
}

// startProc starts one program of the cluster on a free loopback port (args builds its
// command line for that port) and waits up to limit until ready says it serves. A program
// that exits or does not get ready is stopped and the next port tried; one that gets ready
// is kept for Stop.
func (k *Kube) startProc(ctx context.Context, name, path string, limit time.Duration, args func(port int) ([]string, error), ready func(context.Context) (bool, error)) error {
	return startOnPort(0, k.logger, name, func(port int) error {
		argv, err := args(port)
		if err != nil {
			return err
		}
		p, err := startBg(k.Dir, name, path, argv, nil)
		if err != nil {
			return err
		}
		if err := p.waitReady(ctx, limit, ready); err != nil {
			p.stop()
			return err
		}
		k.procs = append(k.procs, p)
		return nil
	})
}

// connect writes the administrator's kubeconfig for k.Host and builds the clients on it.
func (k *Kube) connect() error {
	if err := k.writeAdminKubeconfig(); err != nil {
		return err
	}
	c, err := kube.New(kube.Config{Kubeconfig: k.Kubeconfig})
	if err != nil {
		return err
	}
	k.Client = c
	rc, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		return err
	}
	k.Clientset, err = kubernetes.NewForConfig(rc)
	return err
}

// apiReady says whether the API server answers /readyz with ok.
func (k *Kube) apiReady(ctx context.Context) (bool, error) {
	body, err := k.Clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(body)) == "ok", nil
}

// nodeReady says whether the exec node reports the Ready condition.
func (k *Kube) nodeReady(ctx context.Context) (bool, error) {
	n, err := k.Clientset.CoreV1().Nodes().Get(ctx, k.NodeName, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
			return true, nil
		}
	}
	return false, nil
}

// httpOK says whether a GET of url answers 200.
func httpOK(ctx context.Context, client *http.Client, url string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

func (k *Kube) writeAdminKubeconfig() error {
	k.Kubeconfig = filepath.Join(k.Dir, "admin.kubeconfig")
	return k.writeKubeconfig(k.Kubeconfig, "admin", "", "client-certificate: "+k.pki.AdminCert, "client-key: "+k.pki.AdminKey)
}

// writeKubeconfig writes a kubeconfig of the test cluster for user, authenticating with
// the user fields auth ("token: ...", or the client certificate and key), in namespace ns
// ("" for none).
func (k *Kube) writeKubeconfig(path, user, ns string, auth ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\nclusters:\n- name: flightctl-dr-test\n  cluster:\n    server: %s\n    certificate-authority: %s\n", k.Host, k.CAFile)
	fmt.Fprintf(&b, "users:\n- name: %s\n  user:\n", user)
	for _, f := range auth {
		fmt.Fprintf(&b, "    %s\n", f)
	}
	fmt.Fprintf(&b, "contexts:\n- name: %s\n  context:\n    cluster: flightctl-dr-test\n    user: %s\n", user, user)
	if ns != "" {
		fmt.Fprintf(&b, "    namespace: %s\n", ns)
	}
	fmt.Fprintf(&b, "current-context: %s\n", user)
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// TokenKubeconfig creates (if needed) the service account ns/name, asks the API server
// for a token of it, and writes a kubeconfig that authenticates with that token. RBAC for
// the account is the caller's business: a fresh account may do nothing.
func (k *Kube) TokenKubeconfig(ctx context.Context, ns, name string) (path, token string, err error) {
	cs := k.Clientset
	if err := k.EnsureNamespace(ctx, ns); err != nil {
		return "", "", err
	}
	_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", "", fmt.Errorf("create service account %s/%s: %w", ns, name, err)
	}
	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("token for service account %s/%s: %w", ns, name, err)
	}
	token = tr.Status.Token
	path = filepath.Join(k.Dir, "sa-"+ns+"-"+name+".kubeconfig")
	err = k.writeKubeconfig(path, name, ns, "token: "+token)
	return path, token, err
}

// EnsureNamespace creates ns when it does not exist.
func (k *Kube) EnsureNamespace(ctx context.Context, ns string) error {
	_, err := k.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}

// WaitPodReady waits until the Pod ns/name reports the Ready condition.
func (k *Kube) WaitPodReady(ctx context.Context, ns, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	w, err := k.Clientset.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		return fmt.Errorf("watch pod %s/%s: %w", ns, name, err)
	}
	defer w.Stop()
	if p, err := k.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && PodReady(p) {
		return nil
	}
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			break
		}
		if p, ok := ev.Object.(*corev1.Pod); ok && PodReady(p) {
			return nil
		}
	}
	return fmt.Errorf("pod %s/%s did not become Ready: %v", ns, name, ctx.Err())
}

// PodReady says whether p reports the Ready condition True.
func PodReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitReady polls ready every 50 ms until it says so, the process exits (its log's last
// lines say why) or limit passes (with ready's last error).
func (p *bgProc) waitReady(ctx context.Context, limit time.Duration, ready func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		ok, err := ready(ctx)
		if ok {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited during start: %s", p.name, lastLines(p.logFile, 20))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within %s (%v): %s", p.name, limit, err, lastLines(p.logFile, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the node, the API server and etcd (in that order) by the PIDs that started
// them, and removes the directory when StartKube made it.
func (k *Kube) Stop() error {
	if k == nil || k.stopped {
		return nil
	}
	k.stopped = true
	for i := len(k.procs) - 1; i >= 0; i-- {
		k.procs[i].stop()
	}
	if k.removeDir {
		_ = os.RemoveAll(k.Dir)
	}
	return nil
}

// ForgetProcesses leaves the processes running when Stop is called (the sandbox keeps them
// after `up` returns; `down` stops them with StopKubeDir).
func (k *Kube) ForgetProcesses() { k.procs, k.removeDir = nil, false }

// StopKubeDir stops the processes of a test cluster started in dir by another process,
// through their PID files.
func StopKubeDir(dir string) {
	for _, name := range []string{"kubenode", "kube-apiserver", "etcd"} {
		KillByPIDFile(filepath.Join(dir, name+".pid"), name)
	}
}

// KubeForTest starts a test cluster for t, or skips t (fails it under
// FLIGHTCTL_DR_REQUIRE_REAL=1) when the cluster's programs are not built.
func KubeForTest(t testing.TB) *Kube {
	t.Helper()
	if _, err := KubeBinDir(); err != nil {
		Unavailable(t, err.Error())
	}
	return startForTest(t, 3*time.Minute, func(ctx context.Context) (*Kube, error) {
		return StartKube(ctx, KubeOptions{Dir: t.TempDir()})
	})
}

// bgProc is a long-running program of the testbed, in its own process group.
type bgProc struct {
	name    string
	cmd     *exec.Cmd
	pid     int
	exited  chan struct{}
	logFile string
	pidFile string
}

func startBg(dir, name, path string, args, env []string) (*bgProc, error) {
	logFile := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &bgProc{name: name, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{}), logFile: logFile, pidFile: filepath.Join(dir, name+".pid")}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	_ = os.WriteFile(p.pidFile, []byte(strconv.Itoa(p.pid)+"\n"), 0o600)
	return p, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s.
func (p *bgProc) stop() {
	select {
	case <-p.exited:
	default:
		_ = syscall.Kill(-p.pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	_ = os.Remove(p.pidFile)
}
