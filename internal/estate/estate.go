// Package estate describes the installation a Flight Control server runs on (a Podman /
// systemd host, later Kubernetes) behind one interface: backup asks it for sources, restore
// asks it for targets. Everything a backup or restore needs to know about paths, containers,
// credentials and units lives in the estate's configuration, with upstream's defaults.
package estate

import (
	"fmt"

	"flightctl.dr/internal/backup/source"
)

// Type is the kind of installation, as recorded in metadata.json (the type the backup
// engine records, internal/backup/source).
type Type = source.Type

const (
	Podman     Type = "podman"
	Kubernetes Type = "kubernetes"
)

// ParseType accepts "podman" or "kubernetes" exactly, as upstream does.
func ParseType(s string) (Type, error) {
	switch Type(s) {
	case Podman, Kubernetes:
		return Type(s), nil
	}
	return "", fmt.Errorf("invalid deployment type %q: must be \"kubernetes\" or \"podman\"", s)
}

// ApplicationUnits are the units a restore stops and starts again on a Podman host, in
// upstream's order (SPEC §1). The database and KV units are never among them. Some are
// optional: a host may lack the imagebuilder or alert units.
var ApplicationUnits = []string{
	"flightctl-api.service",
	"flightctl-worker.service",
	"flightctl-periodic.service",
	"flightctl-imagebuilder-api.service",
	"flightctl-imagebuilder-worker.service",
	"flightctl-alert-exporter.service",
	"flightctl-alertmanager-proxy.service",
	"flightctl-gateway.service",
}

// DBAccess says how the database is reached on a Podman host (the type a backup plan
// records, internal/backup/source).
type DBAccess = source.DBAccess

const (
	// DBAccessContainer runs pg_dump / psql inside the database container (upstream's way).
	DBAccessContainer DBAccess = "container"
	// DBAccessDirect runs the local pg_dump / psql against DBHost:DBPort.
	DBAccessDirect DBAccess = "direct"
)

// PodmanConfig locates the state of a quadlet install. Every field defaults to upstream's
// value and can be overridden, so that a relocated install or a test can point elsewhere.
type PodmanConfig struct {
	PKIDir        string // /etc/flightctl/pki
	EncryptionDir string // /etc/flightctl/encryption
	ConfigFile    string // /etc/flightctl/service-config.yaml
	PAMVolume     string // flightctl-pam-issuer-etc; "" disables it

	DBAccess    DBAccess
	DBContainer string // flightctl-db
	KVContainer string // flightctl-kv
	DBHost      string // direct access only
	DBPort      int
	DBName      string // "" = db.name from the service config, else flightctl
	DBUser      string // flightctl_app
	DBPassword  string // "" = the Podman secret flightctl-postgresql-user-password
	// DBAdminUser runs CREATE/ALTER/DROP DATABASE on restore; in a container it is the
	// local postgres superuser reached through the unix socket.
	DBAdminUser     string
	DBAdminPassword string

	KVHost     string
	KVPort     int
	KVPassword string // "" = the Podman secret flightctl-kv-password

	// SystemdScope is "system" (default) or "user" (rootless installs, tests).
	SystemdScope string
	// SystemdBusAddress overrides the D-Bus address (DBUS_SESSION_BUS_ADDRESS form).
	SystemdBusAddress string
	Units             []string

	// DBPasswordSecret names the Podman secret read when DBPassword is empty; "" is
	// SecretDBUserPassword.
	DBPasswordSecret string
	// KVPasswordSecret names the Podman secret read when KVPassword is empty; "" is
	// SecretKVPassword.
	KVPasswordSecret string
	// DBAdminPasswordSecret names the Podman secret holding the admin user's password,
	// set on that user after a database swap; "" is SecretDBMasterPassword.
	DBAdminPasswordSecret string
	// APIContainer is the container whose image tag gives the server version; "" is
	// flightctl-api.
	APIContainer string
}

// DefaultPodmanConfig returns upstream's paths and names.
func DefaultPodmanConfig() PodmanConfig {
	return PodmanConfig{
		PKIDir:        "/etc/flightctl/pki",
		EncryptionDir: "/etc/flightctl/encryption",
		ConfigFile:    "/etc/flightctl/service-config.yaml",
		PAMVolume:     "flightctl-pam-issuer-etc",
		DBAccess:      DBAccessContainer,
		DBContainer:   "flightctl-db",
		KVContainer:   "flightctl-kv",
		DBHost:        "127.0.0.1",
		DBPort:        5432,
		DBUser:        "flightctl_app",
		DBAdminUser:   "postgres",
		KVHost:        "127.0.0.1",
		KVPort:        6379,
		SystemdScope:  "system",
		Units:         append([]string(nil), ApplicationUnits...),
	}
}

// Podman secrets holding the credentials on a quadlet install.
const (
	SecretDBUserPassword   = "flightctl-postgresql-user-password"
	SecretDBMasterPassword = "flightctl-postgresql-master-password"
	SecretKVPassword       = "flightctl-kv-password"
)
