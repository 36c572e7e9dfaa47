// Package kubeopts holds the module options that reach a Kubernetes API server and name a
// Helm install of Flight Control, embedded by flightctl_backup and flightctl_restore so
// that both take the same connection in the same words (kubernetes.core's names).
package kubeopts

import (
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
)

// Connection is embedded in a module's options; the sidecar docs document each option.
type Connection struct {
	Namespace         string `ansible:"namespace" default:"flightctl" help:"Kubernetes: the Helm release namespace (PKI, encryption and release Secrets)"`
	InternalNamespace string `ansible:"internal_namespace" help:"Kubernetes: the namespace of the database and the internal services (default: namespace)"`
	HelmRelease       string `ansible:"helm_release" help:"Kubernetes: the Helm release to back up when several are deployed in namespace"`
	Kubeconfig        string `ansible:"kubeconfig" help:"Kubernetes: path of a kubeconfig (default: K8S_AUTH_KUBECONFIG, KUBECONFIG, ~/.kube/config, else the in-cluster service account)"`
	Context           string `ansible:"context" help:"Kubernetes: the kubeconfig context (default: K8S_AUTH_CONTEXT, else the current context)"`
	Host              string `ansible:"host" help:"Kubernetes: the API server URL (default: K8S_AUTH_HOST)"`
	APIKey            string `ansible:"api_key,secret" help:"Kubernetes: a bearer token (default: K8S_AUTH_API_KEY)"`
	CACert            string `ansible:"ca_cert" aliases:"ssl_ca_cert" help:"Kubernetes: the CA bundle that signed the API server's certificate (default: K8S_AUTH_SSL_CA_CERT)"`
	ValidateCerts     bool   `ansible:"validate_certs" aliases:"verify_ssl" default:"true" help:"Kubernetes: verify the API server's certificate (false: also when K8S_AUTH_VERIFY_SSL=false)"`
	ExecProtocol      string `ansible:"exec_protocol" default:"auto" choices:"auto,websocket,spdy" help:"Kubernetes: the pods/exec transport; auto tries WebSocket, then SPDY"`
}

// KubeConfig is how these options reach the API server.
func (c *Connection) KubeConfig() kube.Config {
	k := kube.Config{Kubeconfig: c.Kubeconfig, Context: c.Context, Host: c.Host, APIKey: c.APIKey, CACert: c.CACert}
	if !c.ValidateCerts {
		f := false
		k.ValidateCerts = &f
	}
	return k
}

// Database is a module's database options as they apply to a Helm install.
type Database struct {
	Access, Host string
	Port         int
	Name         string
	// User and Password replace the Secret flightctl-db-app-secret when Password is given.
	User, Password string
}

// Install maps these options and db onto a Helm install. The database options keep
// their meaning inside the database pod; an empty db.Host with direct access means the
// Service flightctl-db.<internal_namespace>.svc.
func (c *Connection) Install(db Database) estate.KubernetesConfig {
	k := estate.KubernetesConfig{
		Connection: c.KubeConfig(),
		Namespace:  c.Namespace, InternalNamespace: c.InternalNamespace, HelmRelease: c.HelmRelease,
		DBAccess: estate.DBAccess(db.Access), DBHost: db.Host, DBPort: db.Port, DBName: db.Name,
		ExecProtocol: c.ExecProtocol,
	}
	if db.Password != "" {
		k.DBUser, k.DBPassword = db.User, db.Password
	}
	return k
}
