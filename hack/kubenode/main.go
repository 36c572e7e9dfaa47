// Command kubenode is the exec node of the Kubernetes test cluster: a virtual-kubelet node
// that a real kube-apiserver forwards pods/exec (and logs) to. Its container runtime is a
// test fake: a Pod bound to this node is reported Running and Ready at once, and a command
// exec'd into one of its containers runs as a local process on this machine with the
// container's literal environment, or, when the Pod carries the annotation
// kubenode.flightctl.dr/podman-container, through `podman exec -i` in that container.
// Everything between the client and the process (client-go's executor, the API server's
// upgrade and proxying, the kubelet streaming protocol) is the real code.
//
// A port-forward to a Pod connects to the local address its annotation
// kubenode.flightctl.dr/forward-<port> names.
//
// Fault injection for tests: the annotation kubenode.flightctl.dr/cut-stdout-after=N makes
// an exec stop forwarding stdout after N bytes and still report exit status 0, as a
// truncating exec does.
//
// It lives in a module of its own because virtual-kubelet pins its own k8s.io versions.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilsexec "k8s.io/utils/exec"
)

// Annotations a Pod may carry for this node.
const (
	AnnotationPodmanContainer = "kubenode.flightctl.dr/podman-container"
	AnnotationCutStdoutAfter  = "kubenode.flightctl.dr/cut-stdout-after"
	// AnnotationForwardPrefix + "<port>" = "host:port": where a port-forward to that port
	// of the Pod connects.
	AnnotationForwardPrefix = "kubenode.flightctl.dr/forward-"
)

func main() {
	var (
		kubeconfig = flag.String("kubeconfig", "", "kubeconfig of the API server (the node registers itself with it)")
		name       = flag.String("name", "flightctl-dr-node", "node name")
		listen     = flag.String("listen", "127.0.0.1:0", "address of the kubelet API (host:port)")
		certFile   = flag.String("tls-cert", "", "serving certificate of the kubelet API")
		keyFile    = flag.String("tls-key", "", "serving key of the kubelet API")
		clientCA   = flag.String("client-ca", "", "CA that signed the API server's kubelet client certificate")
		podman     = flag.String("podman", "podman", "podman program for Pods annotated "+AnnotationPodmanContainer)
	)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if err := run(*kubeconfig, *name, *listen, *certFile, *keyFile, *clientCA, *podman); err != nil {
		log.Fatalf("kubenode: %v", err)
	}
}

func run(kubeconfig, name, listen, certFile, keyFile, clientCA, podman string) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	port, _ := strconv.Atoi(portStr)
	if port == 0 {
		return errors.New("listen: give an explicit port")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	prov := &provider{pods: map[string]*corev1.Pod{}, podman: podman, hostIP: host}
	mux := http.NewServeMux()
	n, err := nodeutil.NewNode(name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		pc.Node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: host}, {Type: corev1.NodeHostName, Address: name}}
		pc.Node.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(port)
		pc.Node.Status.Capacity = corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("8"),
			corev1.ResourceMemory: resource.MustParse("16Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
		pc.Node.Status.Allocatable = pc.Node.Status.Capacity
		pc.Node.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.37.0-kubenode", OperatingSystem: "linux", Architecture: "amd64"}
		return prov, nil, nil
	},
		nodeutil.WithClient(client),
		func(c *nodeutil.NodeConfig) error {
			c.HTTPListenAddr = listen
			c.Handler = mux
			c.NumWorkers = 2
			c.StreamIdleTimeout = 30 * time.Minute
			c.StreamCreationTimeout = 30 * time.Second
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(nodeutil.WithKeyPairFromPath(certFile, keyFile), nodeutil.WithCAFromPath(clientCA)),
	)
	if err != nil {
		return err
	}
	go func() {
		if err := n.WaitReady(ctx, 0); err == nil {
			log.Printf("kubenode: node %s ready, kubelet API on %s", name, listen)
		}
	}()
	err = n.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// provider is the fake container runtime: Pods are bookkeeping, exec runs real processes.
type provider struct {
	mu     sync.Mutex
	pods   map[string]*corev1.Pod
	notify func(*corev1.Pod)
	podman string
	hostIP string
}

func key(ns, name string) string { return ns + "/" + name }

func (p *provider) running(pod *corev1.Pod) *corev1.Pod {
	pod = pod.DeepCopy()
	now := metav1.Now()
	start := now
	if pod.Status.StartTime != nil {
		start = *pod.Status.StartTime
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.HostIP = p.hostIP
	pod.Status.PodIP = p.hostIP
	pod.Status.PodIPs = []corev1.PodIP{{IP: p.hostIP}}
	pod.Status.StartTime = &start
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: ptr(true),
			ContainerID: "kubenode://" + pod.Namespace + "/" + pod.Name + "/" + c.Name,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: start}},
		})
	}
	return pod
}

func ptr[T any](v T) *T { return &v }

func (p *provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	r := p.running(pod)
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = r
	cb := p.notify
	p.mu.Unlock()
	if cb != nil {
		cb(r.DeepCopy())
	}
	return nil
}

func (p *provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	return p.CreatePod(ctx, pod)
}

func (p *provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	cur, ok := p.pods[key(pod.Namespace, pod.Name)]
	delete(p.pods, key(pod.Namespace, pod.Name))
	cb := p.notify
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFound("pod not found")
	}
	done := cur.DeepCopy()
	now := metav1.Now()
	done.Status.Phase = corev1.PodSucceeded
	for i := range done.Status.ContainerStatuses {
		done.Status.ContainerStatuses[i].Ready = false
		done.Status.ContainerStatuses[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", FinishedAt: now}}
	}
	if cb != nil {
		cb(done)
	}
	return nil
}

func (p *provider) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[key(ns, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s not found", ns, name)
	}
	return pod.DeepCopy(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		out = append(out, pod.DeepCopy())
	}
	return out, nil
}

func (p *provider) NotifyPods(ctx context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

func (p *provider) GetContainerLogs(ctx context.Context, ns, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	return io.NopCloser(&emptyReader{}), nil
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, io.EOF }

// RunInContainer runs cmd as a local process (or in a podman container), in its own
// process group so that a cancelled exec stops every child.
func (p *provider) RunInContainer(ctx context.Context, ns, podName, containerName string, cmd []string, attach api.AttachIO) error {
	pod, err := p.GetPod(ctx, ns, podName)
	if err != nil {
		return err
	}
	if len(cmd) == 0 {
		return errdefs.InvalidInput("no command")
	}
	var env []string
	for _, c := range pod.Spec.Containers {
		if containerName == "" || c.Name == containerName {
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					env = append(env, e.Name+"="+e.Value)
				}
			}
			break
		}
	}
	argv := cmd
	if ctr := pod.Annotations[AnnotationPodmanContainer]; ctr != "" {
		argv = []string{p.podman, "exec", "-i"}
		for _, e := range env {
			argv = append(argv, "--env", e)
		}
		argv = append(append(argv, ctr), cmd...)
		env = nil
	}
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = append(os.Environ(), env...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.WaitDelay = 5 * time.Second

	var stdout io.Writer = io.Discard
	if w := attach.Stdout(); w != nil {
		stdout = w
	}
	cut := int64(-1)
	if s := pod.Annotations[AnnotationCutStdoutAfter]; s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			cut = n
		}
	}
	if cut >= 0 {
		stdout = &cutWriter{w: stdout, left: cut}
	}
	c.Stdout = stdout
	if w := attach.Stderr(); w != nil {
		c.Stderr = w
	}
	if r := attach.Stdin(); r != nil {
		c.Stdin = r
	}
	if err := c.Start(); err != nil {
		return utilsexec.CodeExitError{Err: err, Code: 127}
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err = c.Wait()
	close(done)
	if cw, ok := stdout.(*cutWriter); ok && cw.cut {
		// The injected truncation: the remote side reports success.
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if code < 0 {
			code = 128 + int(syscall.SIGKILL)
		}
		return utilsexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

// cutWriter forwards the first left bytes and then swallows the rest.
type cutWriter struct {
	w    io.Writer
	left int64
	cut  bool
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.left <= 0 {
		c.cut = true
		return len(b), nil
	}
	n := int64(len(b))
	if n > c.left {
		c.cut = true
		if _, err := c.w.Write(b[:c.left]); err != nil {
			return 0, err
		}
		c.left = 0
		return len(b), nil
	}
	c.left -= n
	return c.w.Write(b)
}

func (p *provider) AttachToContainer(ctx context.Context, ns, podName, containerName string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by this node")
}

func (p *provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{}, nil
}

func (p *provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

// PortForward connects the stream to the address the Pod's annotation
// kubenode.flightctl.dr/forward-<port> names (host:port on this machine): the fake's
// stand-in for the container's listening port.
func (p *provider) PortForward(ctx context.Context, ns, podName string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	pod, err := p.GetPod(ctx, ns, podName)
	if err != nil {
		return err
	}
	target := pod.Annotations[AnnotationForwardPrefix+strconv.Itoa(int(port))]
	if target == "" {
		return errdefs.InvalidInputf("pod %s/%s forwards no port %d (annotation %s%d)", ns, podName, port, AnnotationForwardPrefix, port)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); _ = conn.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
