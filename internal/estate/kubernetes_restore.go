package estate

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
)

// Application Deployments of a Helm install, in upstream's stop order (UPSTREAM §3.5): the
// release namespace's and the internal namespace's.
var (
	KubeReleaseDeployments  = []string{"flightctl-api", "flightctl-imagebuilder-api", "flightctl-alertmanager-proxy"}
	KubeInternalDeployments = []string{"flightctl-worker", "flightctl-periodic", "flightctl-imagebuilder-worker", "flightctl-alert-exporter"}
	kubeStopOrder           = []string{"flightctl-api", "flightctl-worker", "flightctl-periodic", "flightctl-imagebuilder-api", "flightctl-imagebuilder-worker", "flightctl-alert-exporter", "flightctl-alertmanager-proxy"}
)

// KubeReplicasAnnotation keeps, on a Deployment the restore scaled to zero, the replicas
// it had: the journal keeps them too, and either brings them back.
const KubeReplicasAnnotation = "flightctl.dr/replicas-before-restore"

// KubeKVService is the KV store's Service.
const KubeKVService = "flightctl-kv"

// Device preparation access on Kubernetes.
const (
	// DevprepPortForward reaches the database and the KV store through the API server's
	// pods/portforward (the default from a controller).
	DevprepPortForward = "port-forward"
	// DevprepDirect connects to the given hosts and ports (a run inside the cluster).
	DevprepDirect = "direct"
)

// KubernetesRestoreConfig is what a Kubernetes restore needs beyond the backup's
// KubernetesConfig. Zero fields take the defaults.
type KubernetesRestoreConfig struct {
	// Deployments are the application Deployments to quiesce, as "name" (placed in the
	// release or internal namespace as upstream does) or "namespace/name"; default
	// upstream's seven.
	Deployments []string
	// DBAdminUser (postgres) runs CREATE/ALTER/DROP DATABASE in the database pod (or on
	// DBHost with direct access); DBAdminPassword, when it needs one, travels on stdin.
	DBAdminUser     string
	DBAdminPassword string
	// DevprepAccess is DevprepPortForward (default) or DevprepDirect.
	DevprepAccess string
	// DevprepDBHost/DevprepDBPort and KVHost/KVPort: where device preparation connects
	// with direct access (default the Services flightctl-db and flightctl-kv of the
	// internal namespace, ports 5432 and 6379).
	DevprepDBHost string
	DevprepDBPort int
	KVHost        string
	KVPort        int
	// KVPassword: "" = Secret flightctl-kv-secret key password.
	KVPassword string
	// QuiesceTimeout bounds the wait for a Deployment's pods to go (5 minutes).
	QuiesceTimeout time.Duration
	// PollInterval is how often the pods are listed while waiting (1 s).
	PollInterval time.Duration
	// GitOpsPaused says the operator suspended the GitOps controller (Argo CD auto-sync,
	// Flux suspend) that owns the Deployments; without it such a restore is refused.
	GitOpsPaused bool
	// JournalLocation is JournalAuto (""), JournalStateDir or JournalCluster: where the
	// restore journal is kept (kubernetes_journal.go).
	JournalLocation string
	// JournalLease is how long the lock of a journal in the cluster stays valid without
	// renewal (DefaultJournalLease).
	JournalLease time.Duration
}

// KubernetesRestore is the restore target of a Helm install: Deployments scaled to zero
// and back, the database through psql in the database pod (pods/exec) or direct, PKI,
// encryption and Helm release Secrets applied into the configured namespaces only, and
// device preparation through port-forwards or direct connections.
type KubernetesRestore struct {
	Config  KubernetesConfig
	Restore KubernetesRestoreConfig
	Client  *kube.Client
	// Runner runs psql for direct database access.
	Runner runner.Runner
	// RunningVersion, when set, is the running release; else the deployed Helm chart's
	// appVersion.
	RunningVersion string
	Logger         *slog.Logger

	external bool
	// journalInCluster: the journal is the Secret KubeJournalSecret (journal).
	journalInCluster bool
	journal          *SecretJournal
	bk               *KubernetesBackup
	podMu            sync.Mutex
	dbPod            string
	dbCont           string
}

var (
	_ restore.Target      = (*KubernetesRestore)(nil)
	_ restore.ItemTarget  = (*KubernetesRestore)(nil)
	_ restore.Preflighter = (*KubernetesRestore)(nil)
)

func (k *KubernetesRestore) log() *slog.Logger {
	if k.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Logger
}

// Open validates the configuration, connects to the API server and finds out whether the
// database is built in (upstream's rule: a Helm-managed Deployment flightctl-db).
func (k *KubernetesRestore) Open(ctx context.Context) error {
	k.Config = WithKubernetesDefaults(k.Config)
	r := &k.Restore
	if r.DBAdminUser == "" {
		r.DBAdminUser = "postgres"
	}
	if r.DevprepAccess == "" {
		r.DevprepAccess = DevprepPortForward
	}
	switch r.DevprepAccess {
	case DevprepPortForward, DevprepDirect:
	default:
		return fmt.Errorf("devprep_access %q is not valid: use port-forward (through the API server) or direct (devprep_db_host and kv_host)", r.DevprepAccess)
	}
	if r.QuiesceTimeout == 0 {
		r.QuiesceTimeout = 5 * time.Minute
	}
	if r.PollInterval == 0 {
		r.PollInterval = time.Second
	}
	if strings.ContainsAny(r.DBAdminPassword, "\n\r") {
		return errors.New("db_admin_password contains a line break, which cannot be passed on stdin")
	}
	if k.Runner == nil {
		k.Runner = runner.Exec{}
	}
	k.bk = &KubernetesBackup{Config: k.Config, Client: k.Client, Runner: k.Runner, Logger: k.Logger}
	if err := k.bk.Validate(); err != nil {
		return err
	}
	cl, err := k.bk.client()
	if err != nil {
		return err
	}
	k.Client = cl
	if err := k.resolveJournal(); err != nil {
		return err
	}
	builtin, err := k.bk.databaseBuiltIn(ctx, cl)
	if err != nil {
		return fmt.Errorf("restore database: %w", unwrapBackupPrefix(err))
	}
	k.external = !builtin
	return nil
}

// unwrapBackupPrefix drops the "back up database: " the shared helpers put first.
func unwrapBackupPrefix(err error) error {
	msg := strings.TrimPrefix(err.Error(), "back up database: ")
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}

// Close releases nothing: the client holds no connection between calls.
func (k *KubernetesRestore) Close() {}

func (k *KubernetesRestore) DeploymentType() string { return string(Kubernetes) }

// ServerVersion is the deployed chart's appVersion (what the backup records).
func (k *KubernetesRestore) ServerVersion(ctx context.Context) (string, error) {
	if k.RunningVersion != "" {
		return k.RunningVersion, nil
	}
	_, rp, err := k.bk.findRelease(ctx, k.Client)
	if err != nil {
		return "", errors.New(strings.TrimPrefix(err.Error(), "back up Helm release: "))
	}
	if rp.AppVersion == "" {
		return "", fmt.Errorf("the deployed Helm release %s has no chart appVersion", rp.Name)
	}
	return rp.AppVersion, nil
}

// UnitNames are the application Deployments as "namespace/name".
func (k *KubernetesRestore) UnitNames() []string {
	names := k.Restore.Deployments
	if len(names) == 0 {
		names = kubeStopOrder
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		out = append(out, k.qualify(n))
	}
	return out
}

func (k *KubernetesRestore) qualify(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	for _, d := range KubeInternalDeployments {
		if d == name {
			return k.Config.InternalNamespace + "/" + name
		}
	}
	return k.Config.Namespace + "/" + name
}

func (k *KubernetesRestore) Units() restore.UnitManager { return &kubeWorkloads{k: k} }

// Permissions lists every API permission this restore needs.
func (k *KubernetesRestore) Permissions() []kube.Permission {
	c := k.Config
	nss := []string{c.Namespace}
	if c.InternalNamespace != c.Namespace {
		nss = append(nss, c.InternalNamespace)
	}
	var perms []kube.Permission
	for _, ns := range nss {
		for _, v := range []string{"get", "create", "update", "patch", "delete"} {
			perms = append(perms, kube.Permission{Verb: v, Resource: "secrets", Namespace: ns})
		}
		perms = append(perms,
			kube.Permission{Verb: "list", Resource: "secrets", Namespace: ns},
			kube.Permission{Verb: "get", Group: "apps", Resource: "deployments", Namespace: ns},
			kube.Permission{Verb: "patch", Group: "apps", Resource: "deployments", Namespace: ns},
			kube.Permission{Verb: "get", Group: "apps", Resource: "deployments", Subresource: "scale", Namespace: ns},
			kube.Permission{Verb: "patch", Group: "apps", Resource: "deployments", Subresource: "scale", Namespace: ns},
			kube.Permission{Verb: "list", Resource: "pods", Namespace: ns},
			kube.Permission{Verb: "list", Group: "autoscaling", Resource: "horizontalpodautoscalers", Namespace: ns},
		)
	}
	ins := c.InternalNamespace
	if c.DBAccess == DBAccessContainer {
		perms = append(perms,
			kube.Permission{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: ins},
			kube.Permission{Verb: "get", Resource: "pods", Subresource: "exec", Namespace: ins})
	}
	if k.Restore.DevprepAccess == DevprepPortForward {
		perms = append(perms,
			kube.Permission{Verb: "get", Resource: "services", Namespace: ins},
			kube.Permission{Verb: "create", Resource: "pods", Subresource: "portforward", Namespace: ins})
	}
	return append(perms, k.journalPermissions()...)
}

// Preflight checks, before anything is touched: every permission (one
// SelfSubjectAccessReview each), the tools the run needs, the application Deployments
// (missing optional ones are notes) and what would scale them back.
func (k *KubernetesRestore) Preflight(ctx context.Context) ([]string, error) {
	cl := k.Client
	missing, err := cl.CheckAccess(ctx, k.Permissions())
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, &kube.MissingPermissionsError{Missing: missing, Subject: cl.WhoAmI(ctx),
			Hint: "grant them with a Role and RoleBinding in those namespaces (collection/docs/operations.md lists the restore Role), or use a kubeconfig/context or api_key of an account that has them; nothing was stopped or changed"}
	}
	var notes []string
	if !k.external {
		if k.Config.DBAccess == DBAccessContainer {
			var out bytes.Buffer
			if err := k.podRun(ctx, runner.Cmd{Name: "sh", Args: []string{"-c", "command -v psql && command -v df"}, Stdout: &out}); err != nil {
				return nil, fmt.Errorf("the database pod lacks psql or df (needed to load the dump and to check its free space): %w; nothing was stopped or changed", err)
			}
		} else if _, err := exec.LookPath("psql"); err != nil {
			return nil, fmt.Errorf("db_access direct needs psql on this machine: %w; nothing was stopped or changed", err)
		}
	}
	present := 0
	var owners []string
	hpas := map[string][]kube.HPA{}
	for _, u := range k.UnitNames() {
		ns, name, _ := strings.Cut(u, "/")
		d, err := cl.GetDeployment(ctx, ns, name)
		if apierrors.IsNotFound(err) {
			notes = append(notes, fmt.Sprintf("Deployment %s does not exist: skipped (normal when its component is not deployed)", u))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read Deployment %s: %w", u, err)
		}
		present++
		if o := gitOpsOwner(d); o != "" {
			owners = append(owners, u+" ("+o+")")
		}
		if _, ok := hpas[ns]; !ok {
			l, err := cl.ListHPAs(ctx, ns)
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("list HorizontalPodAutoscalers in namespace %s: %w", ns, err)
			}
			hpas[ns] = l
		}
		for _, h := range hpas[ns] {
			if h.TargetKind == "Deployment" && h.TargetName == name {
				notes = append(notes, fmt.Sprintf("HorizontalPodAutoscaler %s/%s scales Deployment %s: Kubernetes does not autoscale a Deployment scaled to 0, so it stays paused while the restore runs and resumes when the replicas come back", ns, h.Name, u))
			}
		}
	}
	if present == 0 {
		return nil, fmt.Errorf("none of the application Deployments exists (%s): nothing was touched; check namespace and internal_namespace (kubectl get deployments -A | grep flightctl), or deployments for a typo", strings.Join(k.UnitNames(), ", "))
	}
	if len(owners) > 0 {
		if !k.Restore.GitOpsPaused {
			return nil, fmt.Errorf("the Deployments %s are owned by a GitOps controller, which would scale them back (or undo the restored Secrets) in the middle of the restore: suspend it first (Argo CD: disable auto-sync and self-heal of the Application; Flux: flux suspend kustomization|helmrelease), then run the restore again with gitops_paused: true, and resume it afterwards; nothing was stopped or changed",
				strings.Join(owners, ", "))
		}
		notes = append(notes, fmt.Sprintf("the Deployments %s are owned by a GitOps controller: restoring because gitops_paused is set; resume it after the restore", strings.Join(owners, ", ")))
	}
	return notes, nil
}

// gitOpsOwner names the GitOps controller whose labels or annotations a Deployment carries.
func gitOpsOwner(d *appsv1.Deployment) string {
	switch {
	case d.Annotations["argocd.argoproj.io/tracking-id"] != "", d.Labels["argocd.argoproj.io/instance"] != "":
		return "Argo CD"
	case d.Labels["kustomize.toolkit.fluxcd.io/name"] != "":
		return "Flux Kustomization " + d.Labels["kustomize.toolkit.fluxcd.io/namespace"] + "/" + d.Labels["kustomize.toolkit.fluxcd.io/name"]
	case d.Labels["helm.toolkit.fluxcd.io/name"] != "":
		return "Flux HelmRelease " + d.Labels["helm.toolkit.fluxcd.io/namespace"] + "/" + d.Labels["helm.toolkit.fluxcd.io/name"]
	}
	return ""
}

// kubeWorkloads scales the application Deployments to zero and back.
type kubeWorkloads struct{ k *KubernetesRestore }

var _ restore.ScaledUnits = (*kubeWorkloads)(nil)

func replicasOf(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

// annotatedReplicas is the replicas a restore recorded on the object, -1 when none.
func annotatedReplicas(d *appsv1.Deployment) int32 {
	v, ok := d.Annotations[KubeReplicasAnnotation]
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil || n < 0 {
		return -1
	}
	return int32(n)
}

// UnitState: a Deployment is active when it has replicas, or when an earlier restore
// scaled it to zero and recorded its replicas on it (that restore's journal may be lost).
func (w *kubeWorkloads) UnitState(ctx context.Context, unit string) (restore.UnitState, error) {
	ns, name, _ := strings.Cut(unit, "/")
	d, err := w.k.Client.GetDeployment(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		return restore.UnitState{}, nil
	}
	if err != nil {
		return restore.UnitState{}, err
	}
	n := replicasOf(d)
	if n == 0 {
		if a := annotatedReplicas(d); a > 0 {
			n = a
		}
	}
	return restore.UnitState{Exists: true, Active: n > 0, Scale: n}, nil
}

// StopUnits records each Deployment's replicas on it, scales it to zero, then waits until
// the pods of every one are gone.
func (w *kubeWorkloads) StopUnits(ctx context.Context, units []string) error {
	cl := w.k.Client
	selectors := map[string]string{}
	for _, u := range units {
		ns, name, _ := strings.Cut(u, "/")
		d, err := cl.GetDeployment(ctx, ns, name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read Deployment %s: %w", u, err)
		}
		if n := replicasOf(d); n > 0 && annotatedReplicas(d) < 0 {
			v := strconv.Itoa(int(n))
			if err := cl.AnnotateDeployment(ctx, ns, name, map[string]*string{KubeReplicasAnnotation: &v}); err != nil {
				return fmt.Errorf("record the replicas of Deployment %s: %w", u, err)
			}
		}
		if err := cl.ScaleDeployment(ctx, ns, name, 0); err != nil {
			return fmt.Errorf("scale Deployment %s to 0: %w", u, err)
		}
		w.k.log().Info("Deployment scaled to 0", "deployment", u, "replicas_before", replicasOf(d))
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			return fmt.Errorf("Deployment %s: %w", u, err)
		}
		selectors[u] = sel.String()
	}
	for _, u := range units {
		sel, ok := selectors[u]
		if !ok || sel == "" {
			continue
		}
		ns, _, _ := strings.Cut(u, "/")
		left, err := cl.WaitNoPods(ctx, ns, sel, w.k.Restore.PollInterval, w.k.Restore.QuiesceTimeout)
		if err != nil {
			return fmt.Errorf("wait for the pods of Deployment %s to stop: %w", u, err)
		}
		if len(left) > 0 {
			return fmt.Errorf("the pods of Deployment %s are still there %s after it was scaled to 0 (%s): check why they do not terminate (kubectl describe pod -n %s %s)",
				u, w.k.Restore.QuiesceTimeout, strings.Join(left, ", "), ns, left[0])
		}
		w.k.log().Info("Deployment quiesced: no pod left", "deployment", u)
	}
	return nil
}

// ManualStart is the kubectl command that scales the Deployments back by hand.
func (w *kubeWorkloads) ManualStart(scales map[string]int32) string {
	units := make([]string, 0, len(scales))
	for u := range scales {
		units = append(units, u)
	}
	sort.Strings(units)
	cmds := make([]string, 0, len(units))
	for _, u := range units {
		ns, name, _ := strings.Cut(u, "/")
		cmds = append(cmds, fmt.Sprintf("kubectl scale deployment -n %s %s --replicas=%d", ns, name, scales[u]))
	}
	return strings.Join(cmds, "; ")
}

// StartUnits brings each Deployment back to the replicas recorded on it (1 when none).
func (w *kubeWorkloads) StartUnits(ctx context.Context, units []string) error {
	return w.StartScaled(ctx, map[string]int32{})
}

// StartScaled scales each Deployment back to its recorded replicas and removes the
// record from the object.
func (w *kubeWorkloads) StartScaled(ctx context.Context, scales map[string]int32) error {
	cl := w.k.Client
	units := make([]string, 0, len(scales))
	for u := range scales {
		units = append(units, u)
	}
	sort.Strings(units)
	var errs []error
	for _, u := range units {
		ns, name, _ := strings.Cut(u, "/")
		d, err := cl.GetDeployment(ctx, ns, name)
		if apierrors.IsNotFound(err) {
			w.k.log().Warn("Deployment to scale back no longer exists", "deployment", u)
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read Deployment %s: %w", u, err))
			continue
		}
		n := scales[u]
		if n <= 0 {
			n = annotatedReplicas(d)
		}
		if n <= 0 {
			n = 1
		}
		if err := cl.ScaleDeployment(ctx, ns, name, n); err != nil {
			errs = append(errs, fmt.Errorf("scale Deployment %s back to %d: %w", u, n, err))
			continue
		}
		if annotatedReplicas(d) >= 0 {
			if err := cl.AnnotateDeployment(ctx, ns, name, map[string]*string{KubeReplicasAnnotation: nil}); err != nil {
				errs = append(errs, fmt.Errorf("remove the annotation %s from Deployment %s: %w", KubeReplicasAnnotation, u, err))
				continue
			}
		}
		w.k.log().Info("Deployment scaled back", "deployment", u, "replicas", n)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// Database is the built-in database, administered through psql in the database pod
// (pods/exec) or, with direct access, this machine's psql. It is a restore.ParallelLoader:
// the dump loads over db_load_connections sessions, each one psql (one exec stream in the
// pod, SQL on its stdin), and the database part of device preparation runs on the
// temporary database between the data and the index phase.
func (k *KubernetesRestore) Database() restore.Database {
	if k.external {
		return nil
	}
	return &restore.PsqlDatabase{DBName: k.Config.DBName, Runner: k.dbRunner(), Command: k.psqlCommand,
		FreeSpaceOf: k.freeSpace, Logger: k.Logger}
}

func (k *KubernetesRestore) dbRunner() runner.Runner {
	if k.Config.DBAccess == DBAccessDirect {
		return k.Runner
	}
	return podRunner{k: k}
}

func (k *KubernetesRestore) psqlCommand(psqlArgs, env []string) runner.Cmd {
	c := k.Config
	if k.Restore.DBAdminPassword != "" {
		env = append(env, "PGPASSWORD="+k.Restore.DBAdminPassword)
	}
	// In the database pod psql reaches the server through its local socket as the
	// superuser, as upstream does; with direct access it connects to db_host:db_port.
	args := []string{"-U", k.Restore.DBAdminUser}
	if c.DBAccess == DBAccessDirect {
		args = append([]string{"-h", c.DBHost, "-p", strconv.Itoa(c.DBPort)}, args...)
	}
	if k.Restore.DBAdminPassword == "" {
		args = append(args, "-w")
	}
	name := "psql" // in the database pod, on its PATH
	if c.DBAccess == DBAccessDirect {
		name = clientProgram("psql")
	}
	return runner.Cmd{Name: name, Args: append(args, psqlArgs...), Env: append(env, "PGCONNECT_TIMEOUT=15")}
}

func (k *KubernetesRestore) freeSpace(ctx context.Context, dir string) (int64, bool, error) {
	if k.Config.DBAccess == DBAccessDirect {
		return restore.LocalFreeSpace(dir)
	}
	var out bytes.Buffer
	if err := k.podRun(ctx, runner.Cmd{Name: "df", Args: []string{"-Pk", dir}, Stdout: &out}); err != nil {
		return 0, false, nil
	}
	return parseDF(out.String())
}

// pod returns the Ready database pod, found once and again after a failure.
func (k *KubernetesRestore) pod(ctx context.Context, refresh bool) (string, string, error) {
	k.podMu.Lock()
	defer k.podMu.Unlock()
	if k.dbPod != "" && !refresh {
		return k.dbPod, k.dbCont, nil
	}
	pod, cont, err := k.bk.findDBPod(ctx, k.Client)
	if err != nil {
		return "", "", unwrapBackupPrefix(err)
	}
	k.dbPod, k.dbCont = pod, cont
	return pod, cont, nil
}

// podRun runs c in the database pod through pods/exec. Its environment travels on stdin
// (one NAME=VALUE line each, then an empty line), never in the command.
func (k *KubernetesRestore) podRun(ctx context.Context, c runner.Cmd) error {
	for _, e := range c.Env {
		if strings.ContainsAny(e, "\n\r") {
			name, _, _ := strings.Cut(e, "=")
			return fmt.Errorf("%s contains a line break, which cannot be passed to the database pod", name)
		}
	}
	pod, cont, err := k.pod(ctx, false)
	if err != nil {
		return err
	}
	var head strings.Builder
	for _, e := range c.Env {
		head.WriteString(e + "\n")
	}
	head.WriteString("\n")
	var stdin io.Reader = strings.NewReader(head.String())
	if c.Stdin != nil {
		stdin = io.MultiReader(stdin, c.Stdin)
	}
	// As runner.Exec: the tail of stderr goes into the error (psql's own message), also
	// when the caller reads stderr itself.
	tail := &tailBuffer{max: 4096}
	var stderr io.Writer = tail
	if c.Stderr != nil {
		stderr = io.MultiWriter(c.Stderr, tail)
	}
	stdout := c.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	script := `while IFS= read -r l && [ -n "$l" ]; do export "$l"; done; exec "$@"`
	err = k.Client.Exec(ctx, kube.ExecRequest{
		Namespace: k.Config.InternalNamespace, Pod: pod, Container: cont,
		Command: append([]string{"sh", "-c", script, "sh", c.Name}, c.Args...),
		Stdin:   stdin, Stdout: stdout, Stderr: stderr, Protocol: k.Config.ExecProtocol,
	})
	if err == nil {
		return nil
	}
	where := fmt.Sprintf("%s in pod %s/%s", c.Brief(), k.Config.InternalNamespace, pod)
	if ctx.Err() != nil {
		// Cancelled (a parallel load stops its other sessions at the first error): the
		// pod is still the one to use.
		return fmt.Errorf("%s: %w", where, ctx.Err())
	}
	var ee *kube.ExitError
	if errors.As(err, &ee) {
		return &runner.ExitError{Cmd: where, ExitCode: ee.Code, Stderr: strings.TrimSpace(tail.String())}
	}
	// The pod may have been replaced: look it up again next time.
	_, _, _ = k.pod(ctx, true)
	if s := strings.TrimSpace(tail.String()); s != "" {
		return fmt.Errorf("%s: %w: %s", where, err, s)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// podRunner is the database pod as a runner.Runner: each Run is one pods/exec stream whose
// stdin is streamed as the caller writes it and whose stdout is passed on as it comes, and
// several may run at once (the sessions of a parallel load, internal/pgload, are one
// psql exec each).
type podRunner struct{ k *KubernetesRestore }

func (p podRunner) Run(ctx context.Context, c runner.Cmd) error { return p.k.podRun(ctx, c) }

// Files: a Kubernetes estate keeps its state in Secrets (Items), none in files.
func (k *KubernetesRestore) Files() []restore.FileTarget { return nil }

// Volume: none on Kubernetes.
func (k *KubernetesRestore) Volume() restore.VolumeManager { return nil }

// Items are the PKI, encryption and Helm release Secrets.
func (k *KubernetesRestore) Items() restore.ItemStore { return &kubeSecrets{k: k} }

// kubeSecrets stages and applies Secrets, always into the configured namespaces.
type kubeSecrets struct{ k *KubernetesRestore }

func (s *kubeSecrets) Components() []restore.ItemComponent {
	return []restore.ItemComponent{
		{Name: "pki", Entry: EntryPKIDir, Required: true},
		{Name: "encryption", Entry: EntryKubeEncryption},
		{Name: "config", Entry: EntryConfigDir, Required: true},
	}
}

// cleanSecret keeps what a Secret says (type, labels, annotations, data, immutable) and
// drops what belongs to a live object or another cluster.
func cleanSecret(in *corev1.Secret, ns string) *corev1.Secret {
	out := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: in.Name, Namespace: ns,
			Labels: in.Labels, Annotations: in.Annotations},
		Type: in.Type, Data: map[string][]byte{}, Immutable: in.Immutable,
	}
	for k, v := range in.Data {
		out.Data[k] = v
	}
	for k, v := range in.StringData {
		out.Data[k] = []byte(v)
	}
	delete(out.Annotations, "kubectl.kubernetes.io/last-applied-configuration")
	return out
}

func secretItem(component string, sec *corev1.Secret, warning string) (restore.Item, error) {
	js, err := json.Marshal(sec)
	if err != nil {
		return restore.Item{}, err
	}
	return restore.Item{Component: component, Kind: "Secret", Namespace: sec.Namespace, Name: sec.Name, Object: js, Warning: warning}, nil
}

func parseArchivedSecret(entry string, data []byte) (*corev1.Secret, error) {
	var sec corev1.Secret
	if err := yaml.Unmarshal(data, &sec); err != nil {
		return nil, fmt.Errorf("archive entry %s is not a Secret: %w", entry, err)
	}
	if sec.Kind != "" && sec.Kind != "Secret" {
		return nil, fmt.Errorf("archive entry %s is a %s, not a Secret: this archive cannot be restored", entry, sec.Kind)
	}
	if errs := validation.IsDNS1123Subdomain(sec.Name); len(errs) > 0 {
		return nil, fmt.Errorf("archive entry %s: Secret name %q is not valid (%s): this archive cannot be restored", entry, sec.Name, strings.Join(errs, "; "))
	}
	return &sec, nil
}

func (s *kubeSecrets) Stage(ctx context.Context, entries map[string][]byte) ([]restore.Item, error) {
	c := s.k.Config
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var items []restore.Item
	foreign := func(sec *corev1.Secret) string {
		if sec.Namespace != "" && sec.Namespace != c.Namespace {
			return fmt.Sprintf("the archive names namespace %s: applied into %s only", sec.Namespace, c.Namespace)
		}
		return ""
	}
	pki := 0
	for _, n := range names {
		data := entries[n]
		switch {
		case strings.HasPrefix(n, EntryPKIDir+"/"):
			if !strings.HasSuffix(n, ".yaml") {
				continue
			}
			sec, err := parseArchivedSecret(n, data)
			if err != nil {
				return nil, fmt.Errorf("restore PKI: %w", err)
			}
			it, err := secretItem("pki", cleanSecret(sec, c.Namespace), foreign(sec))
			if err != nil {
				return nil, err
			}
			items = append(items, it)
			pki++
		case n == EntryKubeEncryption:
			sec, err := parseArchivedSecret(n, data)
			if err != nil {
				return nil, fmt.Errorf("restore encryption key: %w", err)
			}
			if sec.Name != KubeEncryptionSecret || len(sec.Data)+len(sec.StringData) == 0 {
				return nil, fmt.Errorf("restore encryption key: %s must be the Secret %s with data (found %q with %d keys): this archive cannot be restored", n, KubeEncryptionSecret, sec.Name, len(sec.Data)+len(sec.StringData))
			}
			for _, ns := range uniq(c.Namespace, c.InternalNamespace) {
				it, err := secretItem("encryption", cleanSecret(sec, ns), foreign(sec))
				if err != nil {
					return nil, err
				}
				items = append(items, it)
			}
		case strings.HasPrefix(n, EntryConfigDir+"/helm-release-") && strings.HasSuffix(n, ".yaml"):
			it, err := s.stageRelease(ctx, n, data)
			if err != nil {
				return nil, err
			}
			items = append(items, it)
		}
	}
	if pki == 0 {
		return nil, errors.New("restore PKI: no Secret YAML under pki/ in the archive: this archive cannot restore the PKI")
	}
	return items, nil
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}

// stageRelease puts the archive's release values onto the installed release: the chart
// installed must be the one the archive was made with (name and version); its templates
// are kept, the archive's are never used.
func (s *kubeSecrets) stageRelease(ctx context.Context, entry string, data []byte) (restore.Item, error) {
	sec, err := parseArchivedSecret(entry, data)
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: %w", err)
	}
	archived, err := DecodeHelmRelease(sec.Data["release"])
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: %s: %w", entry, err)
	}
	archivedRaw, err := releaseJSON(sec.Data["release"])
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: %s: %w", entry, err)
	}
	bk := &KubernetesBackup{Config: s.k.bk.Config, Client: s.k.Client, Logger: s.k.Logger}
	if bk.Config.HelmRelease == "" {
		bk.Config.HelmRelease = archived.Name
	}
	live, rp, err := bk.findRelease(ctx, s.k.Client)
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: %s; install chart %s-%s as release %s first (helm install), then run the restore again; nothing was changed",
			strings.TrimPrefix(err.Error(), "back up Helm release: "), archived.Chart.Metadata.Name, archived.Chart.Metadata.Version, archived.Name)
	}
	liveRel, err := DecodeHelmRelease(live.Data["release"])
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: the installed release Secret %s/%s: %w", live.Namespace, live.Name, err)
	}
	am, lm := archived.Chart.Metadata, liveRel.Chart.Metadata
	if am.Name != lm.Name || am.Version != lm.Version {
		return restore.Item{}, fmt.Errorf("restore Helm release: the archive's release %s was made with chart %s-%s but chart %s-%s is installed: install chart version %s first (helm upgrade %s <chart> --version %s --reuse-values), then run the restore again; nothing was changed (templates are never taken from an archive)",
			archived.Name, am.Name, am.Version, lm.Name, lm.Version, am.Version, rp.Name, am.Version)
	}
	liveRaw, err := releaseJSON(live.Data["release"])
	if err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: the installed release Secret %s/%s: %w", live.Namespace, live.Name, err)
	}
	var lobj, aobj map[string]json.RawMessage
	if err := json.Unmarshal(liveRaw, &lobj); err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: the installed release: %w", err)
	}
	if err := json.Unmarshal(archivedRaw, &aobj); err != nil {
		return restore.Item{}, fmt.Errorf("restore Helm release: %s: %w", entry, err)
	}
	note, warning := "values unchanged", ""
	if !jsonEqual(lobj["config"], aobj["config"]) {
		note = "values replaced"
		warning = "the archive's values replace the installed release's values in its record; the running manifests are the installed chart's: run helm upgrade " + rp.Name + " <chart> --version " + lm.Version + " --reuse-values after the restore to render them with these values"
		if aobj["config"] == nil {
			delete(lobj, "config")
		} else {
			lobj["config"] = aobj["config"]
		}
	}
	js, err := json.Marshal(lobj)
	if err != nil {
		return restore.Item{}, err
	}
	enc, err := encodeRelease(js)
	if err != nil {
		return restore.Item{}, err
	}
	out := cleanSecret(live, live.Namespace)
	out.Data["release"] = enc
	it, err := secretItem("config", out, warning)
	it.Note = "the installed chart " + lm.Name + "-" + lm.Version + " with the archive's values; " + note
	return it, err
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	_ = json.Unmarshal(a, &x)
	_ = json.Unmarshal(b, &y)
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// releaseJSON is a release Secret's data.release decoded to its JSON.
func releaseJSON(data []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(string(data))
	if err != nil {
		return nil, fmt.Errorf("data.release is not base64: %w", err)
	}
	if len(raw) > 2 && raw[0] == 0x1f && raw[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(io.LimitReader(zr, 256<<20))
	}
	return raw, nil
}

// encodeRelease is Helm 3's storage encoding: base64 of gzipped JSON.
func encodeRelease(js []byte) ([]byte, error) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(js); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return []byte(base64.StdEncoding.EncodeToString(gz.Bytes())), nil
}

func (s *kubeSecrets) Current(ctx context.Context, items []restore.Item) ([]restore.Item, error) {
	out := make([]restore.Item, 0, len(items))
	for _, it := range items {
		live, err := s.k.Client.GetSecret(ctx, it.Namespace, it.Name)
		if apierrors.IsNotFound(err) {
			out = append(out, restore.Item{Component: it.Component, Kind: it.Kind, Namespace: it.Namespace, Name: it.Name, Absent: true})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read Secret %s/%s: %w", it.Namespace, it.Name, err)
		}
		saved, err := secretItem(it.Component, cleanSecret(live, it.Namespace), "")
		if err != nil {
			return nil, err
		}
		out = append(out, saved)
	}
	return out, nil
}

func (s *kubeSecrets) Apply(ctx context.Context, items []restore.Item) error {
	for _, it := range items {
		if it.Absent {
			if err := s.k.Client.DeleteSecret(ctx, it.Namespace, it.Name); err != nil {
				return fmt.Errorf("remove Secret %s/%s: %w", it.Namespace, it.Name, err)
			}
			continue
		}
		var sec corev1.Secret
		if err := json.Unmarshal(it.Object, &sec); err != nil {
			return fmt.Errorf("Secret %s/%s in the journal: %w", it.Namespace, it.Name, err)
		}
		// The namespace is the configured one, whatever the object says.
		sec.Namespace = it.Namespace
		if err := s.k.Client.PutSecret(ctx, &sec); err != nil {
			return fmt.Errorf("apply Secret %s/%s: %w", it.Namespace, it.Name, err)
		}
	}
	return nil
}

// Devices runs device preparation as the application user, through port-forwards to the
// database and KV pods or directly.
func (k *KubernetesRestore) Devices() restore.DevicePreparer { return &kubeDevices{k: k} }

type kubeDevices struct{ k *KubernetesRestore }

var _ restore.PreparedDatabaseFinisher = (*kubeDevices)(nil)

func (d *kubeDevices) credentials(ctx context.Context) (user, dbpw, kvpw string, err error) {
	c, r := d.k.Config, d.k.Restore
	ins := c.InternalNamespace
	user, dbpw, kvpw = c.DBUser, c.DBPassword, r.KVPassword
	if user == "" || dbpw == "" {
		s, err := d.k.Client.GetSecret(ctx, ins, KubeDBAppSecret)
		if err != nil {
			return "", "", "", fmt.Errorf("database credentials: read Secret %s/%s: %w: create it (keys user, userPassword) or set db_user and db_password", ins, KubeDBAppSecret, err)
		}
		if user == "" {
			user = string(s.Data["user"])
		}
		if dbpw == "" {
			dbpw = string(s.Data["userPassword"])
		}
	}
	if kvpw == "" {
		s, err := d.k.Client.GetSecret(ctx, ins, KubeKVSecret)
		if err != nil {
			return "", "", "", fmt.Errorf("KV password: read Secret %s/%s: %w: set kv_password", ins, KubeKVSecret, err)
		}
		kvpw = string(s.Data["password"])
	}
	return user, dbpw, kvpw, nil
}

// endpoints returns where device preparation connects, and what to stop afterwards.
func (d *kubeDevices) endpoints(ctx context.Context) (db, kv Endpoint, stop func(), err error) {
	c, r := d.k.Config, d.k.Restore
	ins := c.InternalNamespace
	if r.DevprepAccess == DevprepDirect {
		db = Endpoint{Host: r.DevprepDBHost, Port: r.DevprepDBPort, Source: "configured"}
		if db.Host == "" {
			db.Host = KubeDBDeployment + "." + ins + ".svc"
		}
		if db.Port == 0 {
			db.Port = 5432
		}
		kv = Endpoint{Host: r.KVHost, Port: r.KVPort, Source: "configured"}
		if kv.Host == "" {
			kv.Host = KubeKVService + "." + ins + ".svc"
		}
		if kv.Port == 0 {
			kv.Port = 6379
		}
		return db, kv, func() {}, nil
	}
	pod, _, err := d.k.pod(ctx, false)
	if err != nil {
		return db, kv, nil, err
	}
	dbAddr, stopDB, err := d.k.Client.PortForward(ctx, ins, pod, c.DBPort)
	if err != nil {
		return db, kv, nil, fmt.Errorf("reach the database for device preparation: %w; or set devprep_access: direct with devprep_db_host", err)
	}
	kvPod, kvPort, err := d.kvPod(ctx)
	if err != nil {
		stopDB()
		return db, kv, nil, err
	}
	kvAddr, stopKV, err := d.k.Client.PortForward(ctx, ins, kvPod, kvPort)
	if err != nil {
		stopDB()
		return db, kv, nil, fmt.Errorf("reach the KV store for device preparation: %w; or set devprep_access: direct with kv_host", err)
	}
	db, err = endpointOf(dbAddr, "port-forward to pod "+ins+"/"+pod)
	if err == nil {
		kv, err = endpointOf(kvAddr, "port-forward to pod "+ins+"/"+kvPod)
	}
	stop = func() { stopKV(); stopDB() }
	if err != nil {
		stop()
		return db, kv, nil, err
	}
	return db, kv, stop, nil
}

func endpointOf(addr, source string) (Endpoint, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return Endpoint{}, err
	}
	n, _ := strconv.Atoi(p)
	return Endpoint{Host: h, Port: n, Source: source}, nil
}

// kvPod is a Ready pod behind the Service flightctl-kv and the port it serves on.
func (d *kubeDevices) kvPod(ctx context.Context) (string, int, error) {
	ins := d.k.Config.InternalNamespace
	svc, err := d.k.Client.GetService(ctx, ins, KubeKVService)
	if err != nil {
		return "", 0, fmt.Errorf("reach the KV store for device preparation: read Service %s/%s: %w; or set devprep_access: direct with kv_host", ins, KubeKVService, err)
	}
	port := 6379
	if len(svc.Spec.Ports) > 0 {
		if tp := svc.Spec.Ports[0].TargetPort; tp.IntValue() > 0 {
			port = tp.IntValue()
		} else if svc.Spec.Ports[0].Port > 0 {
			port = int(svc.Spec.Ports[0].Port)
		}
	}
	sel := make([]string, 0, len(svc.Spec.Selector))
	for k, v := range svc.Spec.Selector {
		sel = append(sel, k+"="+v)
	}
	sort.Strings(sel)
	pods, err := d.k.Client.ListPods(ctx, ins, strings.Join(sel, ","))
	if err != nil {
		return "", 0, fmt.Errorf("reach the KV store for device preparation: list its pods: %w", err)
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && podReady(p) {
			return p.Name, port, nil
		}
	}
	return "", 0, fmt.Errorf("reach the KV store for device preparation: no Ready pod behind Service %s/%s: wait until it runs, or set devprep_access: direct with kv_host", ins, KubeKVService)
}

func (d *kubeDevices) connect(ctx context.Context) (*devprepConns, func(), error) {
	user, dbpw, kvpw, err := d.credentials(ctx)
	if err != nil {
		return nil, nil, err
	}
	dbAt, kvAt, stop, err := d.endpoints(ctx)
	if err != nil {
		return nil, nil, err
	}
	co := devprep.ConnOptions{DBHost: dbAt.Host, DBPort: dbAt.Port, DBName: d.k.Config.DBName, DBUser: user, DBPassword: dbpw,
		KVHost: kvAt.Host, KVPort: kvAt.Port, KVPassword: kvpw}
	db, kv, err := co.Connect(ctx)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("%w (database at %s: %s; KV store at %s: %s)", err, dbAt, dbAt.Source, kvAt, kvAt.Source)
	}
	return &devprepConns{opts: devprep.Options{DB: db, KV: kv}}, stop, nil
}

func (d *kubeDevices) Check(ctx context.Context) error {
	c, stop, err := d.connect(ctx)
	if err != nil {
		return err
	}
	c.close()
	stop()
	return nil
}

// FinishesPreparedDatabase: Prepare honours DevicePrepRequest.DatabasePrepared, so that a
// restore runs the database part of device preparation on the temporary database while
// it loads (through psql in the database pod, or this machine's psql with db_access
// direct), before any Deployment is scaled to zero; only the KV part is left for the
// time the Deployments are at zero.
func (d *kubeDevices) FinishesPreparedDatabase() bool { return true }

func (d *kubeDevices) Prepare(ctx context.Context, req restore.DevicePrepRequest) (any, bool, error) {
	c, stop, err := d.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	defer stop()
	defer c.close()
	opts := c.opts
	opts.FlushKV, opts.CreateEvent, opts.RestoreID, opts.Logger = req.FlushKV, true, req.RestoreID, d.k.Logger
	opts.Prepared, opts.Connections, opts.ServerRunning = req.DatabasePrepared, req.Connections, req.ServerRunning
	opts.Staged = req.StagedKeys
	return devprep.PlanOrRun(ctx, opts, req.DryRun)
}

var _ restore.KeyStager = (*kubeDevices)(nil)

// StageKeys: the keys go into a spare database of the KV store before the Deployments
// are scaled to zero.
func (d *kubeDevices) StageKeys(ctx context.Context, req restore.DevicePrepRequest) *devprep.StagedKeys {
	c, stop, err := d.connect(ctx)
	if err != nil {
		d.k.Logger.Info("awaiting-reconnect keys are written when the Deployments are at zero", "reason", err)
		return nil
	}
	defer stop()
	defer c.close()
	return stageKeys(ctx, c.opts, req, d.k.Logger)
}

func (d *kubeDevices) DiscardStagedKeys(ctx context.Context, staged *devprep.StagedKeys) {
	if c, stop, err := d.connect(ctx); err == nil {
		devprep.DiscardStagedKeys(ctx, c.opts.KV, staged)
		c.close()
		stop()
	}
}
