// Package kube is the project's access to a Kubernetes API server (client-go): a client
// built the way kubernetes.core users expect (kubeconfig and context, or host, api_key,
// ca_cert and validate_certs, or the K8S_AUTH_* environment, or the in-cluster service
// account), a preflight of the permissions a run needs (SelfSubjectAccessReview), and
// pods/exec streaming (WebSocket, falling back to SPDY).
package kube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Environment variables of kubernetes.core, read when the matching option is not given.
const (
	EnvKubeconfig    = "K8S_AUTH_KUBECONFIG"
	EnvContext       = "K8S_AUTH_CONTEXT"
	EnvHost          = "K8S_AUTH_HOST"
	EnvAPIKey        = "K8S_AUTH_API_KEY"
	EnvCACert        = "K8S_AUTH_SSL_CA_CERT"
	EnvValidateCerts = "K8S_AUTH_VERIFY_SSL"
)

// Config says how to reach the API server. Empty fields fall back on the K8S_AUTH_*
// environment, then on $KUBECONFIG / ~/.kube/config, then on the in-cluster service account.
type Config struct {
	Kubeconfig string // path of a kubeconfig file
	Context    string // context in it ("" = its current context)
	Host       string // API server URL, e.g. https://api.example.com:6443
	APIKey     string // bearer token
	CACert     string // path of the CA bundle that signed the API server's certificate
	// ValidateCerts nil = true (or K8S_AUTH_VERIFY_SSL).
	ValidateCerts *bool
	// InCluster forces the in-cluster service account (a run inside a CronJob).
	InCluster bool

	// Getenv and HomeDir replace the process's (tests).
	Getenv  func(string) string
	HomeDir func() (string, error)
}

func (c Config) getenv(k string) string {
	if c.Getenv != nil {
		return c.Getenv(k)
	}
	return os.Getenv(k)
}

// Client is a connection to one API server. It speaks only the few API groups a backup
// reads (core, apps, authorization, authentication) through one REST client: client-go's
// generated clientset would link every API group into the modules (about 35 MB).
type Client struct {
	REST *rest.Config
	// Source says where the connection came from (for logs and plans; never a secret).
	Source string

	rc *rest.RESTClient
}

// New builds a client from cfg. It does not contact the server.
func New(cfg Config) (*Client, error) {
	rc, source, err := cfg.RESTConfig()
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "flightctl.dr"
	if rc.QPS == 0 {
		rc.QPS, rc.Burst = 50, 100
	}
	c := rest.CopyConfig(rc)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.NegotiatedSerializer = codecs().WithoutConversion()
	client, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client (%s): %w", source, err)
	}
	return &Client{REST: rc, Source: source, rc: client}, nil
}

// codecs decode the few types the client reads; built on first use, so that programs that
// link this package but never call it carry no scheme.
func codecs() serializer.CodecFactory {
	codecsOnce.Do(func() {
		s := runtime.NewScheme()
		for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, authzv1.AddToScheme, authnv1.AddToScheme} {
			if err := add(s); err != nil {
				panic(err)
			}
		}
		codecFactory = serializer.NewCodecFactory(s)
		paramCodec = runtime.NewParameterCodec(s)
	})
	return codecFactory
}

func parameterCodec() runtime.ParameterCodec {
	codecs()
	return paramCodec
}

var (
	codecsOnce   sync.Once
	codecFactory serializer.CodecFactory
	paramCodec   runtime.ParameterCodec
)

// RESTConfig resolves cfg, with the environment, into a client-go configuration and a
// description of its source.
func (c Config) RESTConfig() (*rest.Config, string, error) {
	kubeconfig := firstNonEmpty(c.Kubeconfig, c.getenv(EnvKubeconfig))
	kctx := firstNonEmpty(c.Context, c.getenv(EnvContext))
	host := firstNonEmpty(c.Host, c.getenv(EnvHost))
	apiKey := firstNonEmpty(c.APIKey, c.getenv(EnvAPIKey))
	caCert := firstNonEmpty(c.CACert, c.getenv(EnvCACert))
	validate := true
	if c.ValidateCerts != nil {
		validate = *c.ValidateCerts
	} else if v := c.getenv(EnvValidateCerts); v != "" {
		b, err := parseBool(v)
		if err != nil {
			return nil, "", fmt.Errorf("%s=%q is not a boolean: use true or false", EnvValidateCerts, v)
		}
		validate = b
	}
	if kubeconfig != "" {
		if p, err := expandHome(kubeconfig, c.HomeDir); err == nil {
			kubeconfig = p
		}
	}

	var rc *rest.Config
	var source string
	switch {
	case c.InCluster:
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("in-cluster service account: %w: run inside a pod with a service account, or give kubeconfig or host", err)
		}
		rc, source = cfg, "in-cluster service account"
	case kubeconfig != "" || kctx != "":
		cfg, src, err := c.fromKubeconfig(kubeconfig, kctx)
		if err != nil {
			return nil, "", err
		}
		rc, source = cfg, src
	case host != "":
		rc, source = &rest.Config{}, "host "+host
	case c.getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("in-cluster service account: %w: give kubeconfig or host", err)
		}
		rc, source = cfg, "in-cluster service account"
	default:
		cfg, src, err := c.fromKubeconfig("", "")
		if err != nil {
			return nil, "", err
		}
		rc, source = cfg, src
	}
	// Explicit connection options override what the kubeconfig says, as in kubernetes.core.
	if host != "" {
		rc.Host = host
	}
	if apiKey != "" {
		rc.BearerToken, rc.BearerTokenFile = apiKey, ""
		rc.Username, rc.Password = "", ""
		rc.CertFile, rc.KeyFile, rc.CertData, rc.KeyData = "", "", nil, nil
		rc.ExecProvider, rc.AuthProvider = nil, nil
	}
	if caCert != "" {
		rc.CAFile, rc.CAData = caCert, nil
	}
	if !validate {
		rc.Insecure = true
		rc.CAFile, rc.CAData = "", nil
	}
	if rc.Host == "" {
		return nil, "", errors.New("no Kubernetes API server: give kubeconfig (and context) or host with api_key, or set K8S_AUTH_KUBECONFIG")
	}
	return rc, source, nil
}

func (c Config) fromKubeconfig(path, kctx string) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	} else if env := c.getenv("KUBECONFIG"); env != "" {
		rules.Precedence = filepath.SplitList(env)
	} else if c.HomeDir != nil {
		if h, err := c.HomeDir(); err == nil {
			rules.Precedence = []string{filepath.Join(h, ".kube", "config")}
		}
	}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: kctx}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	rc, err := cc.ClientConfig()
	if err != nil {
		where := path
		if where == "" {
			where = strings.Join(rules.Precedence, ":")
		}
		if clientcmd.IsEmptyConfig(err) {
			return nil, "", fmt.Errorf("no kubeconfig found (%s): give kubeconfig, host and api_key, or run inside the cluster", where)
		}
		return nil, "", fmt.Errorf("kubeconfig %s: %w: check kubeconfig and context", where, err)
	}
	src := "kubeconfig"
	if path != "" {
		src += " " + path
	}
	if kctx != "" {
		src += " context " + kctx
	}
	return rc, src, nil
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if strings.TrimSpace(s) != "" {
			return strings.TrimSpace(s)
		}
	}
	return ""
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "yes", "on", "y":
		return true, nil
	case "no", "off", "n":
		return false, nil
	}
	return strconv.ParseBool(strings.TrimSpace(s))
}

func expandHome(p string, home func() (string, error)) (string, error) {
	if p != "~" && !strings.HasPrefix(p, "~/") {
		return p, nil
	}
	if home == nil {
		home = os.UserHomeDir
	}
	h, err := home()
	if err != nil {
		return p, err
	}
	return filepath.Join(h, strings.TrimPrefix(p, "~")), nil
}
