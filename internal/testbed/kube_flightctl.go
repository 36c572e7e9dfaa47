package testbed

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names of a Helm install of Flight Control, as the chart creates them (SPEC §1, §3.2).
var (
	HelmRequiredPKISecrets = []string{
		"flightctl-ca", "flightctl-client-signer-ca", "flightctl-ca-bundle", "flightctl-api-server-tls",
		"flightctl-telemetry-gateway-server-tls", "flightctl-alertmanager-proxy-server-tls",
		"flightctl-imagebuilder-api-server-tls",
	}
	HelmOptionalPKISecrets = []string{
		"flightctl-ui-server-tls", "flightctl-ui-certs", "flightctl-cli-artifacts-server-tls",
		"flightctl-alertmanager-proxy-certs",
	}
	// HelmReleaseDeployments and HelmInternalDeployments are the application Deployments.
	HelmReleaseDeployments  = []string{"flightctl-api", "flightctl-imagebuilder-api", "flightctl-alertmanager-proxy"}
	HelmInternalDeployments = []string{"flightctl-worker", "flightctl-periodic", "flightctl-imagebuilder-worker", "flightctl-alert-exporter"}
)

// HelmEstateOptions describe the Flight Control install to create in a test cluster.
type HelmEstateOptions struct {
	Namespace         string // flightctl
	InternalNamespace string // "" = Namespace
	Release           string // flightctl
	AppVersion        string // 0.10.0
	Revision          int    // 1
	// ExtraReleases are other deployed releases in Namespace (a second chart).
	ExtraReleases []string

	// OmitPKI names PKI Secrets not to create (required or optional ones).
	OmitPKI []string
	// NoEncryptionKey leaves out the Secret flightctl-encryption-key.
	NoEncryptionKey bool
	// ExternalDB leaves out the database Deployment and pod (an external database).
	ExternalDB bool
	// DBNotHelmManaged creates Deployment flightctl-db without the Helm label.
	DBNotHelmManaged bool

	// DBUser and DBPassword go into flightctl-db-app-secret; KVPassword into flightctl-kv-secret.
	DBUser, DBPassword, KVPassword string
	// DBPodEnv is the environment of the database pod's container (the exec node gives it
	// to every command exec'd there).
	DBPodEnv map[string]string
	// DBPodAnnotations are put on the database pod (e.g. the exec node's podman container).
	DBPodAnnotations map[string]string
	// NodeName binds the database pod to the exec node ("" = the cluster's node).
	NodeName string
	// KVAddr, when set, adds a Ready pod behind Service flightctl-kv whose port 6379 the
	// exec node forwards to this address (host:port of the KV store on this machine), so
	// that a port-forward through the API server reaches it.
	KVAddr string
}

// HelmEstate is what SeedHelmEstate created.
type HelmEstate struct {
	Namespace, InternalNamespace string
	Release                      string
	ReleaseSecret                string
	DBPod                        string
	PKISecrets                   []string
	// Encryption is the value of the encryption key Secret ("" when omitted).
	EncryptionKey string
}

func (o *HelmEstateOptions) defaults() {
	if o.Namespace == "" {
		o.Namespace = "flightctl"
	}
	if o.InternalNamespace == "" {
		o.InternalNamespace = o.Namespace
	}
	if o.Release == "" {
		o.Release = "flightctl"
	}
	if o.AppVersion == "" {
		o.AppVersion = "0.10.0"
	}
	if o.Revision == 0 {
		o.Revision = 1
	}
	if o.DBUser == "" {
		o.DBUser = "flightctl_app"
	}
	if o.DBPassword == "" {
		o.DBPassword = "apppass"
	}
	if o.KVPassword == "" {
		o.KVPassword = "kvpass"
	}
}

// HelmReleaseData encodes a Helm 3 release as its storage Secret holds it in data.release:
// base64 of gzipped JSON.
func HelmReleaseData(name, namespace, appVersion string, revision int) ([]byte, error) {
	rel := map[string]any{
		"name":      name,
		"namespace": namespace,
		"version":   revision,
		"info":      map[string]any{"status": "deployed", "description": "Install complete", "first_deployed": "2026-11-01T10:00:00Z", "last_deployed": "2026-11-01T10:00:00Z"},
		"chart": map[string]any{
			"metadata":  map[string]any{"name": "flightctl", "version": appVersion, "appVersion": appVersion, "apiVersion": "v2", "description": "Flight Control"},
			"templates": []map[string]any{{"name": "templates/configmap.yaml", "data": base64.StdEncoding.EncodeToString([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: flightctl-api-config\n"))}},
			"values":    map[string]any{"global": map[string]any{"baseDomain": "example.com"}},
		},
		"config":   map[string]any{"global": map[string]any{"baseDomain": "flightctl.example.com"}},
		"manifest": "---\n# Source: flightctl/templates/configmap.yaml\n",
	}
	js, err := json.Marshal(rel)
	if err != nil {
		return nil, err
	}
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

// SeedHelmEstate creates, in the test cluster, the objects a Helm install of Flight Control
// has: namespaces, the deployed release Secret, the PKI, encryption, database and KV
// Secrets, the API ConfigMap, the application Deployments, a Helm-managed Deployment
// flightctl-db with a Ready pod bound to the exec node, and the KV Service.
func (k *Kube) SeedHelmEstate(ctx context.Context, o HelmEstateOptions) (*HelmEstate, error) {
	o.defaults()
	cs := k.Clientset
	est := &HelmEstate{Namespace: o.Namespace, InternalNamespace: o.InternalNamespace, Release: o.Release}
	for _, ns := range []string{o.Namespace, o.InternalNamespace} {
		if err := k.EnsureNamespace(ctx, ns); err != nil {
			return nil, err
		}
	}
	helmLabels := func(name string) map[string]string {
		return map[string]string{"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": name, "app.kubernetes.io/instance": o.Release}
	}
	create := func(s *corev1.Secret) error {
		_, err := cs.CoreV1().Secrets(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Secret %s/%s: %w", s.Namespace, s.Name, err)
		}
		return nil
	}
	omit := map[string]bool{}
	for _, n := range o.OmitPKI {
		omit[n] = true
	}
	ca, err := NewKeyPair(&x509.Certificate{Subject: pkix.Name{CommonName: "flightctl-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}, nil)
	if err != nil {
		return nil, err
	}
	for _, name := range append(append([]string{}, HelmRequiredPKISecrets...), HelmOptionalPKISecrets...) {
		if omit[name] {
			continue
		}
		leaf, err := NewKeyPair(&x509.Certificate{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name + "." + o.Namespace + ".svc"},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
		if err != nil {
			return nil, err
		}
		s := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: helmLabels(name), Annotations: map[string]string{"meta.helm.sh/release-name": o.Release}},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": leaf.CertPEM(), "tls.key": leaf.KeyPEM(), "ca.crt": ca.CertPEM()},
		}
		if err := create(s); err != nil {
			return nil, err
		}
		est.PKISecrets = append(est.PKISecrets, name)
	}
	if !o.NoEncryptionKey {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		est.EncryptionKey = base64.StdEncoding.EncodeToString(b)
		if err := create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "flightctl-encryption-key", Namespace: o.Namespace}, Data: map[string][]byte{"key": []byte(est.EncryptionKey)}}); err != nil {
			return nil, err
		}
	}
	if err := create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "flightctl-db-app-secret", Namespace: o.InternalNamespace, Labels: helmLabels("flightctl-db")},
		Data: map[string][]byte{"user": []byte(o.DBUser), "userPassword": []byte(o.DBPassword)}}); err != nil {
		return nil, err
	}
	if err := create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "flightctl-kv-secret", Namespace: o.InternalNamespace, Labels: helmLabels("flightctl-kv")},
		Data: map[string][]byte{"password": []byte(o.KVPassword)}}); err != nil {
		return nil, err
	}
	for _, rel := range append([]string{o.Release}, o.ExtraReleases...) {
		data, err := HelmReleaseData(rel, o.Namespace, o.AppVersion, o.Revision)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("sh.helm.release.v1.%s.v%d", rel, o.Revision)
		if err := create(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: o.Namespace, Labels: map[string]string{"owner": "helm", "name": rel, "status": "deployed", "version": strconv.Itoa(o.Revision)}},
			Type:       "helm.sh/release.v1",
			Data:       map[string][]byte{"release": data},
		}); err != nil {
			return nil, err
		}
		if rel == o.Release {
			est.ReleaseSecret = name
		}
	}
	// An older, superseded revision, as Helm keeps it.
	if o.Revision > 1 {
		data, _ := HelmReleaseData(o.Release, o.Namespace, o.AppVersion, o.Revision-1)
		if err := create(&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("sh.helm.release.v1.%s.v%d", o.Release, o.Revision-1), Namespace: o.Namespace, Labels: map[string]string{"owner": "helm", "name": o.Release, "status": "superseded", "version": strconv.Itoa(o.Revision - 1)}},
			Type:       "helm.sh/release.v1", Data: map[string][]byte{"release": data},
		}); err != nil {
			return nil, err
		}
	}
	if _, err := cs.CoreV1().ConfigMaps(o.Namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "flightctl-api-config", Namespace: o.Namespace, Labels: helmLabels("flightctl-api")},
		Data:       map[string]string{"config.yaml": "database:\n  type: pgsql\n  hostname: flightctl-db." + o.InternalNamespace + ".svc\n  port: 5432\n  name: flightctl\nkv:\n  hostname: flightctl-kv." + o.InternalNamespace + ".svc\n  port: 6379\n"},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create ConfigMap flightctl-api-config: %w", err)
	}
	deploy := func(ns, name string, labels map[string]string) error {
		sel := map[string]string{"flightctl.service": name}
		for k, v := range sel {
			labels[k] = v
		}
		one := int32(1)
		_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &one,
				Selector: &metav1.LabelSelector{MatchLabels: sel},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: sel},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: "quay.io/flightctl/" + name + ":" + o.AppVersion}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Deployment %s/%s: %w", ns, name, err)
		}
		return nil
	}
	for _, d := range HelmReleaseDeployments {
		if err := deploy(o.Namespace, d, helmLabels(d)); err != nil {
			return nil, err
		}
	}
	for _, d := range HelmInternalDeployments {
		if err := deploy(o.InternalNamespace, d, helmLabels(d)); err != nil {
			return nil, err
		}
	}
	if _, err := cs.CoreV1().Services(o.InternalNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "flightctl-kv", Namespace: o.InternalNamespace, Labels: helmLabels("flightctl-kv")},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"flightctl.service": "flightctl-kv"},
			Ports: []corev1.ServicePort{{Name: "kv", Port: 6379, TargetPort: intstr.FromInt32(6379)}}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create Service flightctl-kv: %w", err)
	}
	if o.KVAddr != "" {
		if err := k.createKVPod(ctx, o.InternalNamespace, o.NodeName, o.KVAddr); err != nil {
			return nil, err
		}
	}
	if o.ExternalDB {
		return est, nil
	}
	labels := helmLabels("flightctl-db")
	if o.DBNotHelmManaged {
		labels = map[string]string{"app.kubernetes.io/name": "flightctl-db"}
	}
	if err := deploy(o.InternalNamespace, "flightctl-db", labels); err != nil {
		return nil, err
	}
	pod, err := k.CreateDBPod(ctx, o.InternalNamespace, o.NodeName, o.DBPodEnv, o.DBPodAnnotations)
	if err != nil {
		return nil, err
	}
	est.DBPod = pod
	return est, nil
}

// KVPodName is the KV store's pod that SeedHelmEstate creates with KVAddr.
const KVPodName = "flightctl-kv-0"

// createKVPod creates the KV store's pod, behind Service flightctl-kv, its port 6379
// forwarded by the exec node to addr, and waits until it is Ready.
func (k *Kube) createKVPod(ctx context.Context, ns, node, addr string) error {
	if node == "" {
		node = k.NodeName
	}
	_, err := k.Clientset.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: KVPodName, Namespace: ns, Labels: map[string]string{"flightctl.service": "flightctl-kv"},
			Annotations: map[string]string{"kubenode.flightctl.dr/forward-6379": addr}},
		Spec: corev1.PodSpec{NodeName: node, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "kv", Image: "docker.io/valkey/valkey:8"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", ns, KVPodName, err)
	}
	return k.WaitPodReady(ctx, ns, KVPodName)
}

// CreateDBPod creates a pod of the database Deployment, bound to the exec node, and waits
// until it is Ready. Commands exec'd in it run on this machine (see hack/kubenode).
func (k *Kube) CreateDBPod(ctx context.Context, ns, node string, env, annotations map[string]string) (string, error) {
	if node == "" {
		node = k.NodeName
	}
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := "flightctl-db-" + hex.EncodeToString(suffix)
	var envs []corev1.EnvVar
	for k, v := range env {
		envs = append(envs, corev1.EnvVar{Name: k, Value: v})
	}
	_, err := k.Clientset.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"flightctl.service": "flightctl-db"}, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			AutomountServiceAccountToken: new(bool),
			Containers:                   []corev1.Container{{Name: "flightctl-db", Image: "quay.io/sclorg/postgresql-16-c9s:latest", Env: envs}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create pod %s/%s: %w", ns, name, err)
	}
	return name, k.WaitPodReady(ctx, ns, name)
}
