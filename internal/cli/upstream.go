package cli

import (
	"fmt"

	"github.com/spf13/pflag"
)

// UpstreamFlags are the flags upstream's flightctl-backup and flightctl-restore share
// (UPSTREAM §1.1, §1.2). The Kubernetes ones are accepted so that existing command lines
// keep working.
type UpstreamFlags struct {
	deploymentType *string
	dbContainer    *string
	dbName         *string
	// KVContainer is --kv-container-name; only restore uses it.
	KVContainer *string
}

// RegisterUpstreamFlags adds the shared upstream flags to fs.
func RegisterUpstreamFlags(fs *pflag.FlagSet) *UpstreamFlags {
	u := &UpstreamFlags{}
	u.deploymentType = fs.String("deployment-type", "", "deployment type: kubernetes or podman (default: auto-detect)")
	fs.String("namespace", "flightctl", "Kubernetes namespace (Kubernetes only)")
	fs.String("internal-namespace", "", "Kubernetes internal namespace (Kubernetes only)")
	u.dbContainer = fs.String("db-container-name", "flightctl-db", "database container (podman)")
	u.dbName = fs.String("db-name", "", "database name (default: db.name from service-config.yaml)")
	u.KVContainer = fs.String("kv-container-name", "flightctl-kv", "KV container (podman)")
	return u
}

// Apply sets the module options the shared flags stand for.
func (u *UpstreamFlags) Apply(opts map[string]any) error {
	opts["db_container"] = *u.dbContainer
	if t := *u.deploymentType; t != "" {
		if t != "kubernetes" && t != "podman" {
			return fmt.Errorf("invalid --deployment-type %q: must be \"kubernetes\" or \"podman\"", t)
		}
		opts["deployment_type"] = t
	}
	if *u.dbName != "" {
		opts["db_name"] = *u.dbName
	}
	return nil
}
