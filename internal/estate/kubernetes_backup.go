package estate

import (
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
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"flightctl.dr/internal/backup/source"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
)

// Names of a Helm install of Flight Control (SPEC §1, §3.2; UPSTREAM §2.4).
const (
	KubeDefaultNamespace  = "flightctl"
	KubeDBDeployment      = "flightctl-db"
	KubeDBPodLabel        = "flightctl.service=flightctl-db"
	KubeDBAppSecret       = "flightctl-db-app-secret"
	KubeKVSecret          = "flightctl-kv-secret"
	KubeEncryptionSecret  = "flightctl-encryption-key"
	KubeHelmManagedLabel  = "app.kubernetes.io/managed-by"
	KubeHelmReleaseLabels = "owner=helm,status=deployed"
	// EntryKubeEncryption is the encryption Secret's place in the archive.
	EntryKubeEncryption = "encryption/" + KubeEncryptionSecret + ".yaml"
)

// KubeRequiredPKISecrets and KubeOptionalPKISecrets are the PKI Secrets of a Helm install.
var (
	KubeRequiredPKISecrets = []string{
		"flightctl-ca", "flightctl-client-signer-ca", "flightctl-ca-bundle", "flightctl-api-server-tls",
		"flightctl-telemetry-gateway-server-tls", "flightctl-alertmanager-proxy-server-tls",
		"flightctl-imagebuilder-api-server-tls",
	}
	KubeOptionalPKISecrets = []string{
		"flightctl-ui-server-tls", "flightctl-ui-certs", "flightctl-cli-artifacts-server-tls",
		"flightctl-alertmanager-proxy-certs",
	}
)

// KubeNoDBDeploymentLog is upstream's log line when the database is external.
const KubeNoDBDeploymentLog = "No flightctl-db Deployment found - assuming external database"

// DumpCompleteLine is the comment pg_dump writes when a plain dump is complete.
const DumpCompleteLine = "-- PostgreSQL database dump complete"

// KubernetesConfig locates the state of a Helm install. Zero fields take upstream's values.
type KubernetesConfig struct {
	Connection kube.Config
	// Namespace is the release namespace (flightctl); InternalNamespace holds the database
	// and the internal services ("" = Namespace).
	Namespace         string
	InternalNamespace string
	// HelmRelease names the release when several are deployed in Namespace.
	HelmRelease string

	// DBAccess is DBAccessContainer (pg_dump through pods/exec in the Ready database pod,
	// the default) or DBAccessDirect (this machine's pg_dump against DBHost:DBPort, for a
	// run inside the cluster).
	DBAccess DBAccess
	// DBHost and DBPort: as seen from inside the database pod (127.0.0.1:5432), or for
	// direct access the database Service (flightctl-db.<internal namespace>.svc:5432).
	DBHost string
	DBPort int
	DBName string // flightctl
	// DBUser and DBPassword: "" = the Secret flightctl-db-app-secret (keys user, userPassword).
	DBUser     string
	DBPassword string
	// DBContainer is the container of the database pod to exec into ("" = its default).
	DBContainer string
	// ExecProtocol: kube.ProtocolAuto (WebSocket, falling back to SPDY), websocket or spdy.
	ExecProtocol string
}

// KubernetesBackup gathers the state of a Helm install through the Kubernetes API.
type KubernetesBackup struct {
	Config KubernetesConfig
	// Client is built from Config.Connection when nil.
	Client *kube.Client
	// Runner runs pg_dump and psql for direct database access.
	Runner runner.Runner
	Logger *slog.Logger

	mu      sync.Mutex
	state   *kubeState
	stateOK bool
}

// kubeState is what Plan read, reused by WriteBackup so that both see the same objects.
type kubeState struct {
	pki        []*corev1.Secret
	encryption *corev1.Secret
	release    *corev1.Secret
	relName    string
	dbPod      string
	dbCont     string
	dbUser     string
	dbPassword string
}

// KubeReleasePlan is the Helm release a backup would capture.
type KubeReleasePlan = source.ReleasePlan

// Type is Kubernetes.
func (b *KubernetesBackup) Type() Type { return Kubernetes }

func (b *KubernetesBackup) log() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

// WithKubernetesDefaults fills empty fields with upstream's values.
func WithKubernetesDefaults(c KubernetesConfig) KubernetesConfig {
	if c.Namespace == "" {
		c.Namespace = KubeDefaultNamespace
	}
	if c.InternalNamespace == "" {
		c.InternalNamespace = c.Namespace
	}
	if c.DBAccess == "" {
		c.DBAccess = DBAccessContainer
	}
	if c.DBHost == "" {
		if c.DBAccess == DBAccessDirect {
			c.DBHost = KubeDBDeployment + "." + c.InternalNamespace + ".svc"
		} else {
			c.DBHost = "127.0.0.1"
		}
	}
	if c.DBPort == 0 {
		c.DBPort = 5432
	}
	if c.DBName == "" {
		c.DBName = defaultDBName
	}
	if c.ExecProtocol == "" {
		c.ExecProtocol = kube.ProtocolAuto
	}
	return c
}

// Validate checks the configuration before anything runs.
func (b *KubernetesBackup) Validate() error {
	b.Config = WithKubernetesDefaults(b.Config)
	c := b.Config
	switch c.DBAccess {
	case DBAccessContainer, DBAccessDirect:
	default:
		return fmt.Errorf("db_access %q is not valid on Kubernetes: use container (pg_dump through pods/exec in the database pod) or direct (this machine's pg_dump against the database Service)", c.DBAccess)
	}
	switch c.ExecProtocol {
	case kube.ProtocolAuto, kube.ProtocolWebSocket, kube.ProtocolSPDY:
	default:
		return fmt.Errorf("exec_protocol %q is not valid: use auto, websocket or spdy", c.ExecProtocol)
	}
	if c.DBPort <= 0 || c.DBPort > 65535 {
		return fmt.Errorf("db_port %d is not a TCP port", c.DBPort)
	}
	if strings.ContainsAny(c.DBPassword, "\n\r") {
		return errors.New("db_password contains a line break, which cannot be passed on stdin: use a password without one")
	}
	if c.DBAccess == DBAccessDirect && b.Runner == nil {
		return errors.New("kubernetes backup: no command runner for direct database access")
	}
	return nil
}

func (b *KubernetesBackup) client() (*kube.Client, error) {
	if b.Client != nil {
		return b.Client, nil
	}
	c, err := kube.New(b.Config.Connection)
	if err != nil {
		return nil, err
	}
	b.Client = c
	return c, nil
}

// Permissions lists every API permission a backup with this configuration needs.
func (b *KubernetesBackup) Permissions() []kube.Permission {
	c := WithKubernetesDefaults(b.Config)
	ns, ins := c.Namespace, c.InternalNamespace
	perms := []kube.Permission{
		{Verb: "get", Resource: "secrets", Namespace: ns},
		{Verb: "list", Resource: "secrets", Namespace: ns},
		{Verb: "get", Group: "apps", Resource: "deployments", Namespace: ins},
	}
	if ins != ns {
		perms = append(perms, kube.Permission{Verb: "get", Resource: "secrets", Namespace: ins})
	}
	if c.DBAccess == DBAccessContainer {
		perms = append(perms,
			kube.Permission{Verb: "list", Resource: "pods", Namespace: ins},
			kube.Permission{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: ins},
			kube.Permission{Verb: "get", Resource: "pods", Subresource: "exec", Namespace: ins},
		)
	}
	return perms
}

// Plan checks every precondition (permissions first, then the Helm release, the PKI
// Secrets, the database deployment, credentials and pod, and a query through the same
// path the dump takes) and reports what would be captured. It writes nothing.
func (b *KubernetesBackup) Plan(ctx context.Context) (*BackupPlan, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	c := b.Config
	cl, err := b.client()
	if err != nil {
		return nil, err
	}
	plan := &BackupPlan{DeploymentType: Kubernetes, Warnings: []string{}}
	b.log().Info("Kubernetes API: " + cl.REST.Host + " (" + cl.Source + ")")

	missing, err := cl.CheckAccess(ctx, b.Permissions())
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		for _, p := range missing {
			plan.MissingPermissions = append(plan.MissingPermissions, p.String())
		}
		return plan, &kube.MissingPermissionsError{
			Missing: missing,
			Subject: cl.WhoAmI(ctx),
			Hint:    "grant them with a Role and RoleBinding in those namespaces (collection/docs/operations.md lists a minimal Role), or use a kubeconfig/context or api_key of an account that has them; nothing was written",
		}
	}

	if w := b.unfinishedRestore(ctx, cl); w != "" {
		plan.Warnings = append(plan.Warnings, w)
	}

	st := &kubeState{}
	// The release first: its chart gives the server version.
	rel, relPlan, err := b.findRelease(ctx, cl)
	if err != nil {
		return nil, err
	}
	st.release, st.relName = rel, relPlan.Name
	plan.Release = relPlan
	plan.ServerVersion = relPlan.AppVersion
	relSize := secretSize(rel)
	plan.Sources = append(plan.Sources, PlannedSource{Component: ComponentConfig, Source: "Secret " + c.Namespace + "/" + rel.Name, ArchivePath: kubeReleaseEntry(relPlan.Name), Present: true, Required: true, Files: 1, Size: relSize})

	pki := PlannedSource{Component: ComponentPKI, Source: "Secrets in namespace " + c.Namespace, ArchivePath: EntryPKIDir + "/", Required: true}
	for _, name := range KubeRequiredPKISecrets {
		s, err := cl.GetSecret(ctx, c.Namespace, name)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("back up PKI: required PKI Secret %s not found in namespace %s: check namespace (the release namespace), or restore the Secret from the chart's certificate issuer first; nothing was written", name, c.Namespace)
		}
		if err != nil {
			return nil, fmt.Errorf("back up PKI: read Secret %s/%s: %w", c.Namespace, name, err)
		}
		st.pki = append(st.pki, s)
	}
	for _, name := range KubeOptionalPKISecrets {
		s, err := cl.GetSecret(ctx, c.Namespace, name)
		if apierrors.IsNotFound(err) {
			plan.Warnings = append(plan.Warnings, fmt.Sprintf("optional PKI Secret %s not found in namespace %s: skipped (normal when its component is not deployed)", name, c.Namespace))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("back up PKI: read Secret %s/%s: %w", c.Namespace, name, err)
		}
		st.pki = append(st.pki, s)
	}
	for _, s := range st.pki {
		pki.Files++
		pki.Size += secretSize(s)
	}
	pki.Present = true

	enc := PlannedSource{Component: ComponentEncryption, Source: "Secret " + c.Namespace + "/" + KubeEncryptionSecret, ArchivePath: EntryKubeEncryption}
	s, err := cl.GetSecret(ctx, c.Namespace, KubeEncryptionSecret)
	switch {
	case apierrors.IsNotFound(err):
		plan.Warnings = append(plan.Warnings, fmt.Sprintf("Encryption key Secret %s not found in namespace %s — skipping. If this deployment uses data-at-rest encryption, encrypted database fields will be unrecoverable from this backup.", KubeEncryptionSecret, c.Namespace))
	case err != nil:
		return nil, fmt.Errorf("back up encryption keys: read Secret %s/%s: %w", c.Namespace, KubeEncryptionSecret, err)
	default:
		st.encryption = s
		enc.Present, enc.Files, enc.Size = true, 1, secretSize(s)
	}
	plan.Sources = append(plan.Sources, pki, enc)

	builtin, err := b.databaseBuiltIn(ctx, cl)
	if err != nil {
		return nil, err
	}
	if builtin {
		db, err := b.planDatabase(ctx, cl, st)
		if err != nil {
			return nil, err
		}
		plan.DatabaseIncluded = true
		plan.Database = db
		plan.EstimatedSize += db.Size
	} else {
		plan.Warnings = append(plan.Warnings, KubeExternalDatabaseGuidance)
	}
	for _, s := range plan.Sources {
		plan.EstimatedSize += s.Size
	}
	b.mu.Lock()
	b.state, b.stateOK = st, true
	b.mu.Unlock()
	return plan, nil
}

// unfinishedRestore is the warning for a restore journal in the release namespace that
// is still running: a restore in the cluster that was killed, or that runs now, with
// Deployments scaled to zero. A host's journal is in its state directory, which every
// module checks; this one only a module with a Kubernetes connection can read. "" when
// there is none, or when it cannot be read (the backup does not depend on it).
func (b *KubernetesBackup) unfinishedRestore(ctx context.Context, cl *kube.Client) string {
	ns := b.Config.Namespace // defaulted by Validate
	j, err := ReadKubeJournal(ctx, cl, ns)
	if err != nil {
		b.log().Debug("restore journal in the cluster not read", "err", err)
		return ""
	}
	return restore.UnfinishedWarning(j, "Secret "+ns+"/"+KubeJournalSecret)
}

// KubeExternalDatabaseGuidance tells the operator what the archive of an external database lacks.
const KubeExternalDatabaseGuidance = "the database is external (no Helm-managed Deployment flightctl-db): this archive holds no database dump; back the database up with your database administrator's tools (pg_dump or a managed-service snapshot) at the same time as this backup, and keep both together"

func kubeReleaseEntry(release string) string {
	return EntryConfigDir + "/helm-release-" + release + ".yaml"
}

// findRelease returns the storage Secret of the deployed Helm release.
func (b *KubernetesBackup) findRelease(ctx context.Context, cl *kube.Client) (*corev1.Secret, *KubeReleasePlan, error) {
	c := b.Config
	sel := KubeHelmReleaseLabels
	if c.HelmRelease != "" {
		sel += ",name=" + c.HelmRelease
	}
	list, err := cl.ListSecrets(ctx, c.Namespace, sel)
	if err != nil {
		return nil, nil, fmt.Errorf("back up Helm release: list Secrets %s in namespace %s: %w", sel, c.Namespace, err)
	}
	items := list.Items
	switch {
	case len(items) == 0 && c.HelmRelease != "":
		return nil, nil, fmt.Errorf("back up Helm release: no deployed Helm release %s in namespace %s (no Secret labelled %s): check helm_release and namespace (helm list -n %s)", c.HelmRelease, c.Namespace, sel, c.Namespace)
	case len(items) == 0:
		return nil, nil, fmt.Errorf("back up Helm release: no deployed Helm release in namespace %s (no Secret labelled %s): set namespace to the namespace Flight Control was installed in (helm list -A)", c.Namespace, sel)
	case len(items) > 1:
		names := map[string]bool{}
		for _, s := range items {
			names[s.Labels["name"]] = true
		}
		var list []string
		for n := range names {
			list = append(list, n)
		}
		sort.Strings(list)
		if len(list) > 1 {
			return nil, nil, fmt.Errorf("back up Helm release: %d deployed Helm releases in namespace %s (%s): set helm_release to the Flight Control release to back up", len(list), c.Namespace, strings.Join(list, ", "))
		}
		// One release with several deployed revisions: the highest one.
		sort.Slice(items, func(i, j int) bool { return atoi(items[i].Labels["version"]) > atoi(items[j].Labels["version"]) })
	}
	s := items[0].DeepCopy()
	rp := &KubeReleasePlan{Name: s.Labels["name"], Namespace: c.Namespace, Secret: s.Name, Revision: atoi(s.Labels["version"])}
	if rel, err := DecodeHelmRelease(s.Data["release"]); err == nil {
		if rel.Name != "" {
			rp.Name = rel.Name
		}
		if rel.Namespace != "" {
			rp.Namespace = rel.Namespace
		}
		if rel.Version != 0 {
			rp.Revision = rel.Version
		}
		rp.Chart = rel.Chart.Metadata.Name + "-" + rel.Chart.Metadata.Version
		rp.AppVersion = rel.Chart.Metadata.AppVersion
	} else {
		b.log().Warn("Helm release Secret could not be decoded", "secret", s.Name, "err", err)
	}
	if rp.Name == "" {
		return nil, nil, fmt.Errorf("back up Helm release: Secret %s/%s has no release name (label name): it is not a Helm 3 release Secret", c.Namespace, s.Name)
	}
	return s, rp, nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// HelmRelease is the part of a Helm 3 release object the backup reads.
type HelmRelease struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Version   int    `json:"version"`
	Info      struct {
		Status string `json:"status"`
	} `json:"info"`
	Chart struct {
		Metadata struct {
			Name       string `json:"name"`
			Version    string `json:"version"`
			AppVersion string `json:"appVersion"`
		} `json:"metadata"`
	} `json:"chart"`
}

// DecodeHelmRelease decodes a release Secret's data.release: base64 of gzipped JSON (or
// of plain JSON, which Helm also reads).
func DecodeHelmRelease(data []byte) (*HelmRelease, error) {
	if len(data) == 0 {
		return nil, errors.New("no data.release")
	}
	raw, err := base64.StdEncoding.DecodeString(string(data))
	if err != nil {
		return nil, fmt.Errorf("data.release is not base64: %w", err)
	}
	if len(raw) > 2 && raw[0] == 0x1f && raw[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		raw, err = io.ReadAll(io.LimitReader(zr, 256<<20))
		if err != nil {
			return nil, err
		}
	}
	var rel HelmRelease
	if err := json.Unmarshal(raw, &rel); err != nil {
		return nil, fmt.Errorf("data.release is not a Helm release: %w", err)
	}
	return &rel, nil
}

// databaseBuiltIn is upstream's rule: built in only when Deployment flightctl-db exists in
// the internal namespace and is Helm-managed.
func (b *KubernetesBackup) databaseBuiltIn(ctx context.Context, cl *kube.Client) (bool, error) {
	ns := b.Config.InternalNamespace
	d, err := cl.GetDeployment(ctx, ns, KubeDBDeployment)
	if apierrors.IsNotFound(err) {
		b.log().Info(KubeNoDBDeploymentLog)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("back up database: read Deployment %s/%s: %w", ns, KubeDBDeployment, err)
	}
	if !helmManaged(d) {
		b.log().Info(fmt.Sprintf("Deployment %s/%s is not Helm-managed (%s=%q) - assuming external database", ns, KubeDBDeployment, KubeHelmManagedLabel, d.Labels[KubeHelmManagedLabel]))
		return false, nil
	}
	return true, nil
}

func helmManaged(d *appsv1.Deployment) bool { return d.Labels[KubeHelmManagedLabel] == "Helm" }

func (b *KubernetesBackup) planDatabase(ctx context.Context, cl *kube.Client, st *kubeState) (*DatabasePlan, error) {
	c := b.Config
	ns := c.InternalNamespace
	db := &DatabasePlan{Access: c.DBAccess, Host: c.DBHost, Port: c.DBPort, Name: c.DBName}
	st.dbUser, st.dbPassword = c.DBUser, c.DBPassword
	db.PasswordSource = "option db_password"
	if st.dbUser == "" || st.dbPassword == "" {
		s, err := cl.GetSecret(ctx, ns, KubeDBAppSecret)
		if err != nil {
			return nil, fmt.Errorf("back up database: database credentials: read Secret %s/%s: %w: create it (keys user, userPassword) or set db_user and db_password", ns, KubeDBAppSecret, err)
		}
		if st.dbUser == "" {
			st.dbUser = string(s.Data["user"])
		}
		if st.dbPassword == "" {
			st.dbPassword = string(s.Data["userPassword"])
			db.PasswordSource = "Secret " + ns + "/" + KubeDBAppSecret
		}
		if st.dbUser == "" {
			return nil, fmt.Errorf("back up database: Secret %s/%s has no key user: add it or set db_user", ns, KubeDBAppSecret)
		}
	}
	if strings.ContainsAny(st.dbPassword, "\n\r") {
		return nil, fmt.Errorf("back up database: the password in Secret %s/%s contains a line break, which cannot be passed on stdin", ns, KubeDBAppSecret)
	}
	db.User = st.dbUser

	if c.DBAccess == DBAccessContainer {
		pod, cont, err := b.findDBPod(ctx, cl)
		if err != nil {
			return nil, err
		}
		st.dbPod, st.dbCont = pod, cont
		db.Container = "pod " + ns + "/" + pod
		if cont != "" {
			db.Container += " container " + cont
		}
	}
	var out bytes.Buffer
	script := "pg_dump --version && PGCONNECT_TIMEOUT=15 psql -X -w -A -t -q -v ON_ERROR_STOP=1 " + b.connShell(st.dbUser) +
		" -c " + shellQuote("select pg_database_size(current_database()), current_setting('server_version')")
	if err := b.runSQL(ctx, cl, st, script, &out); err != nil {
		return nil, fmt.Errorf("back up database: cannot query the database %s: %w; check that the database runs and that the credentials in Secret %s/%s (or db_user/db_password) are right", b.where(st), err, ns, KubeDBAppSecret)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) < 2 {
		return nil, fmt.Errorf("back up database: unexpected answer %q to the size query %s", strings.TrimSpace(out.String()), b.where(st))
	}
	db.PgDumpVersion = versionRE.FindString(lines[0])
	fields := strings.Split(strings.TrimSpace(lines[len(lines)-1]), "|")
	if len(fields) != 2 {
		return nil, fmt.Errorf("back up database: unexpected answer %q to the size query %s", lines[len(lines)-1], b.where(st))
	}
	size, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("back up database: unexpected size %q %s", fields[0], b.where(st))
	}
	db.Size, db.ServerVersion = size, fields[1]
	return db, nil
}

// findDBPod picks a Running, Ready, not terminating pod of the database.
func (b *KubernetesBackup) findDBPod(ctx context.Context, cl *kube.Client) (string, string, error) {
	ns := b.Config.InternalNamespace
	pods, err := cl.ListPods(ctx, ns, KubeDBPodLabel)
	if err != nil {
		return "", "", fmt.Errorf("back up database: list pods %s in namespace %s: %w", KubeDBPodLabel, ns, err)
	}
	var notReady []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && podReady(p) {
			return p.Name, b.dbContainer(p), nil
		}
		notReady = append(notReady, p.Name+" ("+string(p.Status.Phase)+")")
	}
	msg := fmt.Sprintf("back up database: database pod not found in namespace %s with label %s (builtin database configured but pod unavailable - incomplete backup would result)", ns, KubeDBPodLabel)
	if len(notReady) > 0 {
		msg += ": no pod is Ready: " + strings.Join(notReady, ", ")
	}
	return "", "", errors.New(msg + "; wait until the database pod is Ready and run the backup again")
}

func podReady(p *corev1.Pod) bool {
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

func (b *KubernetesBackup) dbContainer(p *corev1.Pod) string {
	if b.Config.DBContainer != "" {
		return b.Config.DBContainer
	}
	if len(p.Spec.Containers) <= 1 {
		return ""
	}
	if d := p.Annotations["kubectl.kubernetes.io/default-container"]; d != "" {
		return d
	}
	for _, c := range p.Spec.Containers {
		if c.Name == KubeDBDeployment || c.Name == "postgresql" || c.Name == "postgres" {
			return c.Name
		}
	}
	return p.Spec.Containers[0].Name
}

func (b *KubernetesBackup) where(st *kubeState) string {
	c := b.Config
	if c.DBAccess == DBAccessContainer {
		return fmt.Sprintf("(database %s as %s in pod %s/%s)", c.DBName, st.dbUser, c.InternalNamespace, st.dbPod)
	}
	return fmt.Sprintf("(database %s as %s on %s:%d)", c.DBName, st.dbUser, c.DBHost, c.DBPort)
}

// connShell is the libpq connection flags for sh, user and database quoted as upstream.
func (b *KubernetesBackup) connShell(user string) string {
	c := b.Config
	return fmt.Sprintf("-h %s -p %d -U %s -d %s", shellWord(c.DBHost), c.DBPort, shellQuote(user), shellQuote(c.DBName))
}

// runSQL runs a short script: in the pod through exec (password on stdin), or locally.
func (b *KubernetesBackup) runSQL(ctx context.Context, cl *kube.Client, st *kubeState, script string, out io.Writer) error {
	if b.Config.DBAccess == DBAccessDirect {
		return b.Runner.Run(ctx, runner.Cmd{Name: "sh", Args: []string{"-c", script}, Env: []string{"PGPASSWORD=" + st.dbPassword}, Stdout: out})
	}
	tail := &tailBuffer{max: 4096}
	err := cl.Exec(ctx, kube.ExecRequest{
		Namespace: b.Config.InternalNamespace, Pod: st.dbPod, Container: st.dbCont,
		Command: []string{"sh", "-c", "IFS= read -r PGPASSWORD; export PGPASSWORD; " + script},
		Stdin:   strings.NewReader(st.dbPassword + "\n"), Stdout: out, Stderr: tail, Protocol: b.Config.ExecProtocol,
	})
	if err != nil && tail.String() != "" {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(tail.String()))
	}
	return err
}

// WriteBackup streams the state into sink following plan (from Plan of the same value).
func (b *KubernetesBackup) WriteBackup(ctx context.Context, sink BackupSink, plan *BackupPlan) (*BackupOutcome, error) {
	b.mu.Lock()
	st, ok := b.state, b.stateOK
	b.mu.Unlock()
	if plan == nil || !ok {
		return nil, errors.New("kubernetes backup: no plan: call Plan first")
	}
	c := b.Config
	log := b.log()
	out := &BackupOutcome{Warnings: []string{}, Extra: map[string]string{}}
	now := time.Now()

	if plan.DatabaseIncluded {
		cl, err := b.client()
		if err != nil {
			return nil, err
		}
		if err := sink.AddDir(EntryDBDir, 0o755, now); err != nil {
			return nil, fmt.Errorf("back up database: %w", err)
		}
		log.Info("Dumping database " + b.where(st))
		// The dump's sha256, computed once as it arrives: checked against the pod's and
		// recorded in the manifest.
		h := sha256.New()
		stream := startStream(ctx, func(ctx context.Context, w io.Writer) error { return b.dump(ctx, cl, st, w, h) })
		n, err := sink.AddStream(EntryDBDump, 0o600, now, hashedStream{stream, h})
		cmdErr := stream.CommandErr()
		closeErr := stream.Close()
		switch {
		case err != nil && cmdErr != nil:
			return nil, cmdErr
		case err != nil:
			return nil, fmt.Errorf("back up database: %w", err)
		case closeErr != nil:
			return nil, closeErr
		}
		out.DatabaseIncluded = true
		out.Components = append(out.Components, CapturedComponent{Component: ComponentDatabase, ArchivePath: EntryDBDump, Source: plan.Database.Container + " " + b.where(st), Files: 1, Bytes: n})
		out.Extra["pg_dump_version"] = plan.Database.PgDumpVersion
		out.Extra["db_server_version"] = plan.Database.ServerVersion
		out.Extra["db_name"] = c.DBName
		log.Info(fmt.Sprintf("Database backup completed. Dump file size: %d bytes", n))
	} else {
		log.Info(ExternalDatabaseLog)
		out.Warnings = append(out.Warnings, KubeExternalDatabaseGuidance)
	}

	if err := sink.AddDir(EntryPKIDir, 0o700, now); err != nil {
		return nil, fmt.Errorf("back up PKI: %w", err)
	}
	var pkiBytes int64
	for _, s := range st.pki {
		n, err := addSecret(sink, EntryPKIDir+"/"+s.Name+".yaml", s, now)
		if err != nil {
			return nil, fmt.Errorf("back up PKI: %w", err)
		}
		pkiBytes += n
	}
	out.Components = append(out.Components, CapturedComponent{Component: ComponentPKI, ArchivePath: EntryPKIDir + "/", Source: "Secrets in namespace " + c.Namespace, Files: len(st.pki), Bytes: pkiBytes})
	log.Info(fmt.Sprintf("PKI backup completed. Backed up %d Secrets from namespace %s", len(st.pki), c.Namespace))

	if st.encryption != nil {
		if err := sink.AddDir(EntryEncryptDir, 0o700, now); err != nil {
			return nil, fmt.Errorf("back up encryption keys: %w", err)
		}
		n, err := addSecret(sink, EntryKubeEncryption, st.encryption, now)
		if err != nil {
			return nil, fmt.Errorf("back up encryption keys: %w", err)
		}
		out.Components = append(out.Components, CapturedComponent{Component: ComponentEncryption, ArchivePath: EntryKubeEncryption, Source: "Secret " + c.Namespace + "/" + KubeEncryptionSecret, Files: 1, Bytes: n})
	} else {
		out.Warnings = append(out.Warnings, fmt.Sprintf("Encryption key Secret %s not found in namespace %s — skipping. If this deployment uses data-at-rest encryption, encrypted database fields will be unrecoverable from this backup.", KubeEncryptionSecret, c.Namespace))
	}

	if err := sink.AddDir(EntryConfigDir, 0o700, now); err != nil {
		return nil, fmt.Errorf("back up Helm release: %w", err)
	}
	entry := kubeReleaseEntry(st.relName)
	n, err := addSecret(sink, entry, st.release, now)
	if err != nil {
		return nil, fmt.Errorf("back up Helm release: %w", err)
	}
	out.Components = append(out.Components, CapturedComponent{Component: ComponentConfig, ArchivePath: entry, Source: "Secret " + c.Namespace + "/" + st.release.Name, Files: 1, Bytes: n})
	out.Extra["helm_release"] = st.relName
	if plan.Release != nil {
		out.Extra["helm_release_revision"] = strconv.Itoa(plan.Release.Revision)
		out.Extra["helm_chart"] = plan.Release.Chart
	}
	log.Info("Helm release backed up: " + st.relName)
	return out, nil
}

// CleanSecretYAML renders a Secret for the archive as upstream's restore reads it
// (sigs.k8s.io/yaml of a v1 Secret), without the fields that belong to the live object:
// uid, resourceVersion, managedFields, ownerReferences, creationTimestamp, generation.
func CleanSecretYAML(s *corev1.Secret) ([]byte, error) {
	c := s.DeepCopy()
	c.APIVersion, c.Kind = "v1", "Secret"
	c.UID, c.ResourceVersion, c.Generation, c.SelfLink = "", "", 0, ""
	c.ManagedFields, c.OwnerReferences = nil, nil
	c.CreationTimestamp = metav1.Time{}
	js, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return yaml.Marshal(m)
}

func addSecret(sink BackupSink, entry string, s *corev1.Secret, mtime time.Time) (int64, error) {
	y, err := CleanSecretYAML(s)
	if err != nil {
		return 0, fmt.Errorf("render Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	if err := sink.AddFile(entry, 0o600, mtime, int64(len(y)), bytes.NewReader(y)); err != nil {
		return 0, err
	}
	return int64(len(y)), nil
}

func secretSize(s *corev1.Secret) int64 {
	var n int64 = 512
	for k, v := range s.Data {
		n += int64(len(k) + base64.StdEncoding.EncodedLen(len(v)) + 8)
	}
	return n
}

// dumpTrailerRE is the line the dump script writes last on stderr.
var dumpTrailerRE = regexp.MustCompile(`flightctl-dr-dump rc=(\d+) tee=(\d+) bytes=(\d+) sha256=([0-9a-f]{64})`)

// DumpScript is the shell run in the database pod. pg_dump's output goes to stdout
// through tee, which also feeds a sha256 and wc -c; once everything has ended, one line
// on stderr reports pg_dump's exit status, tee's, the byte count and the sha256 computed in
// the pod. The password arrives on stdin (one line), never in the command.
//
// What it costs beside pg_dump, on the database's host: the sha256 is OpenSSL's when the
// pod has a working openssl (with the CPU's SHA extensions about a fifth of the CPU of
// coreutils' sha256sum, the fallback); and where GNU dd is there, the stream leaves the
// pod in 32 KiB writes rather than tee's 8 KiB ones, so that the kubelet, the API server
// and the client each handle a quarter of the frames.
func DumpScript(conn string) string {
	return `IFS= read -r PGPASSWORD; export PGPASSWORD
d=$(mktemp -d) || exit 70
trap 'rm -rf "$d"' EXIT
mkfifo "$d/h" "$d/c" || exit 70
s=sha256sum
[ "$(printf abc | openssl dgst -sha256 -r 2>/dev/null)" = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad *stdin" ] && s='openssl dgst -sha256 -r'
$s <"$d/h" >"$d/hs" &
wc -c <"$d/c" >"$d/cs" &
if [ "$(printf x | dd bs=32k iflag=fullblock status=none 2>/dev/null)" = x ]; then
{ pg_dump --clean --if-exists ` + conn + `; echo $? >"$d/rc"; } | { tee "$d/h" "$d/c"; echo $? >"$d/t"; } | dd bs=32k iflag=fullblock status=none
o=$?
t=$(cat "$d/t" 2>/dev/null || echo 71)
[ "$t" != 0 ] || t=$o
else
{ pg_dump --clean --if-exists ` + conn + `; echo $? >"$d/rc"; } | tee "$d/h" "$d/c"
t=$?
fi
wait
rc=$(cat "$d/rc" 2>/dev/null || echo 71)
printf '\nflightctl-dr-dump rc=%s tee=%s bytes=%s sha256=%s\n' "$rc" "$t" "$(tr -d ' \n' <"$d/cs")" "$(cut -d' ' -f1 <"$d/hs")" >&2
[ "$rc" = 0 ] || exit "$rc"
exit "$t"`
}

// dump streams the database dump into w and returns nil only for a complete dump.
func (b *KubernetesBackup) dump(ctx context.Context, cl *kube.Client, st *kubeState, w io.Writer, h hashWriter) error {
	v := &dumpVerifier{w: w, h: h}
	if b.Config.DBAccess == DBAccessDirect {
		err := b.Runner.Run(ctx, runner.Cmd{
			Name: clientProgram("pg_dump"), Args: []string{"--clean", "--if-exists", "--no-password", "-h", b.Config.DBHost, "-p", strconv.Itoa(b.Config.DBPort), "-U", st.dbUser, "-d", b.Config.DBName},
			Env: []string{"PGPASSWORD=" + st.dbPassword, "PGCONNECT_TIMEOUT=15"}, Stdout: v,
		})
		if err != nil {
			return fmt.Errorf("back up database: pg_dump failed %s after %d bytes: %w", b.where(st), v.n, err)
		}
		return v.checkComplete(b.where(st))
	}
	stderr := &tailBuffer{max: 16 << 10}
	err := cl.Exec(ctx, kube.ExecRequest{
		Namespace: b.Config.InternalNamespace, Pod: st.dbPod, Container: st.dbCont,
		Command: []string{"sh", "-c", DumpScript(b.connShell(st.dbUser))},
		Stdin:   strings.NewReader(st.dbPassword + "\n"), Stdout: v, Stderr: stderr, Protocol: b.Config.ExecProtocol,
	})
	msg := strings.TrimSpace(dumpTrailerRE.ReplaceAllString(stderr.String(), ""))
	if err != nil {
		var ee *kube.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("back up database: pg_dump failed %s: exit status %d after %d bytes: %s; check that the database runs and that the credentials are right", b.where(st), ee.Code, v.n, lastLines(msg, 5))
		}
		return fmt.Errorf("back up database: the dump stream from %s broke after %d bytes: %w; nothing was written, run the backup again", b.where(st), v.n, err)
	}
	m := dumpTrailerRE.FindAllStringSubmatch(stderr.String(), -1)
	if len(m) == 0 {
		return fmt.Errorf("back up database: the dump from %s is refused: the pod did not report its byte count and sha256 (the exec stream ended early after %d bytes, although the remote status was 0); nothing was written, run the backup again", b.where(st), v.n)
	}
	t := m[len(m)-1]
	if t[1] != "0" || t[2] != "0" {
		return fmt.Errorf("back up database: pg_dump failed %s (status %s, tee %s): %s", b.where(st), t[1], t[2], lastLines(msg, 5))
	}
	sum := hex.EncodeToString(v.h.Sum(nil))
	if want, _ := strconv.ParseInt(t[3], 10, 64); want != v.n || t[4] != sum {
		return fmt.Errorf("back up database: the dump from %s is refused: the pod sent %s bytes (sha256 %s) but %d bytes (sha256 %s) arrived: the exec stream was cut; nothing was written, run the backup again", b.where(st), t[3], t[4], v.n, sum)
	}
	return v.checkComplete(b.where(st))
}

// hashedStream is the dump's stream with the sha256 its producer computed of everything
// it wrote (archive.StreamDigester): the stream returns io.EOF only once the producer has
// ended, so the hash then covers every byte read.
type hashedStream struct {
	*cmdStream
	h hashWriter
}

func (s hashedStream) StreamSHA256() []byte { return s.h.Sum(nil) }

// dumpVerifier passes the dump through, counting, hashing and keeping its tail.
type dumpVerifier struct {
	w    io.Writer
	h    hashWriter
	n    int64
	tail []byte
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

const dumpTailKeep = 512

func (v *dumpVerifier) Write(p []byte) (int, error) {
	n, err := v.w.Write(p)
	if n > 0 {
		v.h.Write(p[:n])
		v.n += int64(n)
		if n >= dumpTailKeep {
			v.tail = append(v.tail[:0], p[n-dumpTailKeep:n]...)
		} else {
			v.tail = append(v.tail, p[:n]...)
			if len(v.tail) > dumpTailKeep {
				v.tail = append([]byte{}, v.tail[len(v.tail)-dumpTailKeep:]...)
			}
		}
	}
	return n, err
}

// checkComplete accepts a dump whose last comment line is pg_dump's completion line
// (only blank lines, "--" lines and pg_dump's \unrestrict line may follow it).
func (v *dumpVerifier) checkComplete(where string) error {
	if DumpComplete(v.tail) {
		return nil
	}
	last := strings.TrimSpace(string(v.tail))
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	if len(last) > 80 {
		last = last[:80] + "..."
	}
	return fmt.Errorf("back up database: the dump from %s is refused: it does not end with pg_dump's %q line (last line %q, %d bytes): it is truncated; nothing was written, run the backup again", where, DumpCompleteLine, last, v.n)
}

// DumpComplete says whether tail, the end of a plain pg_dump, holds the completion line
// as its last meaningful line.
func DumpComplete(tail []byte) bool {
	lines := strings.Split(string(tail), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		switch {
		case l == "" || l == "--" || strings.HasPrefix(l, `\unrestrict `):
			continue
		case l == DumpCompleteLine:
			return true
		default:
			return false
		}
	}
	return false
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte{}, t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
