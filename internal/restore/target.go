package restore

import (
	"context"
	"io"

	"flightctl.dr/internal/devprep"
)

// Target is the installation a restore writes to, whatever estate it is: workloads to
// quiesce and bring back (systemd units on a Podman host, Deployments on Kubernetes), a
// database to load and swap, state items to stage and swap (files, or objects such as
// Kubernetes Secrets through ItemTarget), and the endpoints device preparation reaches.
// The Podman and Kubernetes estates implement it (internal/estate); tests assemble one from
// real components. Optional abilities are further interfaces a Target may implement:
// ItemTarget, Preflighter, PasswordSyncer, Relabeler; a UnitManager may be a ScaledUnits.
type Target interface {
	// DeploymentType is "podman" or "kubernetes", compared with the archive's.
	DeploymentType() string
	// ServerVersion is the running server's release, compared with the archive's.
	ServerVersion(ctx context.Context) (string, error)
	// Units stops and starts the application workloads (systemd units, Deployments).
	Units() UnitManager
	// UnitNames are the application workloads to stop, in order. Those missing on this
	// estate are skipped.
	UnitNames() []string
	// Database administers the server's database; nil when it is external.
	Database() Database
	// Files are the files and directories replaced from the archive (none on an estate
	// whose state lives in objects: see ItemTarget).
	Files() []FileTarget
	// Volume re-imports the PAM issuer volume; nil when there is none.
	Volume() VolumeManager
	// Devices runs device preparation against the restored database and the KV store.
	Devices() DevicePreparer
}

// UnitState is what the restore needs to know about one unit.
type UnitState struct {
	Exists bool
	Active bool
	// Scale is the number of replicas a workload runs (Kubernetes Deployments; 0 for a
	// systemd unit). It is recorded in the journal before anything is stopped, and a
	// ScaledUnits manager brings the workload back to it.
	Scale int32
}

// UnitManager stops and starts workloads (systemd over D-Bus on a Podman host, Deployments
// scaled to zero and back on Kubernetes). StopUnits returns once the workloads no longer
// run (their units are inactive, their pods gone).
type UnitManager interface {
	UnitState(ctx context.Context, unit string) (UnitState, error)
	StopUnits(ctx context.Context, units []string) error
	StartUnits(ctx context.Context, units []string) error
}

// ScaledUnits is a UnitManager whose workloads come back at the scale recorded before
// the stop (the journal's scales), rather than simply started.
type ScaledUnits interface {
	StartScaled(ctx context.Context, scales map[string]int32) error
	// ManualStart is the command an operator runs to bring them back by hand.
	ManualStart(scales map[string]int32) string
}

// Preflighter is a Target with checks of its own (permissions, tools, controllers that
// would undo the quiesce), run before the plan and before anything is touched: an error
// stops the restore with nothing changed; notes are reported in the plan and as warnings.
type Preflighter interface {
	Preflight(ctx context.Context) (notes []string, err error)
}

// DatabaseInfo is what the swap keeps from the live database: owner, database-level
// grants (aclitem text, e.g. "flightctl_app=c/admin"; nil means the defaults), encoding
// and locale, and its size.
type DatabaseInfo struct {
	Owner    string   `json:"owner"`
	ACL      []string `json:"acl"`
	ACLSet   bool     `json:"acl_set"`
	Encoding string   `json:"encoding"`
	Collate  string   `json:"collate"`
	CType    string   `json:"ctype"`
	Size     int64    `json:"size"`
}

// DatabaseSurvey is what the restore's plan reads of the live database before anything
// changes.
type DatabaseSurvey struct {
	Exists bool
	// Info and Counts are set when the database exists.
	Info   DatabaseInfo
	Counts map[string]int64
	// DataDirectory is the server's data directory, for FreeSpaceAt.
	DataDirectory string
}

// Database administers databases of one PostgreSQL server as a superuser.
type Database interface {
	// Name is the live database's name.
	Name() string
	// Ping checks that the server answers with the admin credentials.
	Ping(ctx context.Context) error
	Exists(ctx context.Context, name string) (bool, error)
	Info(ctx context.Context, name string) (DatabaseInfo, error)
	// Counts returns the row count of each table in database name (-1: no such table).
	Counts(ctx context.Context, name string, tables []string) (map[string]int64, error)
	// Survey is Ping, Exists, and for a database that exists Info and Counts, in one call.
	Survey(ctx context.Context, name string, tables []string) (DatabaseSurvey, error)
	// FreeSpace is the free space of the server's data directory, when it can be known.
	FreeSpace(ctx context.Context) (free int64, known bool, err error)
	// FreeSpaceAt is FreeSpace for the data directory a Survey found.
	FreeSpaceAt(ctx context.Context, dataDir string) (free int64, known bool, err error)
	// Create makes an empty database with like's owner, encoding and locale.
	Create(ctx context.Context, name string, like DatabaseInfo) error
	// Load runs a plain-SQL dump into name, stopping at the first error.
	Load(ctx context.Context, name string, dump io.Reader) error
	// Rename renames a database after ending the other sessions connected to it.
	Rename(ctx context.Context, from, to string) error
	// Drop drops a database if it exists, after ending its sessions.
	Drop(ctx context.Context, name string) error
	// SetPrivileges gives name info's owner and database-level grants.
	SetPrivileges(ctx context.Context, name string, info DatabaseInfo) error
	// The swap of the restored database into place, in one session and one transaction.
	DatabaseSwapper
}

// FileKind says whether a FileTarget is a directory tree or a single file.
type FileKind string

const (
	KindDir  FileKind = "dir"
	KindFile FileKind = "file"
)

// FileTarget maps part of the archive to a live path.
type FileTarget struct {
	// Name is the component ("pki", "encryption", "config").
	Name string
	// Entry is the archive path: a directory ("pki") or a file ("config/service-config.yaml").
	Entry string
	Kind  FileKind
	// Path is the live directory or file.
	Path string
	// Required makes a missing entry in the archive an error; otherwise it is a warning
	// and the live copy is left alone.
	Required bool
}

// VolumeManager saves and replaces a Podman volume's content (podman volume export/import).
type VolumeManager interface {
	VolumeName() string
	VolumeExists(ctx context.Context) (bool, error)
	ExportVolume(ctx context.Context, w io.Writer) error
	// ReplaceVolume empties the volume (re-creating it) and imports the tar stream r.
	ReplaceVolume(ctx context.Context, r io.Reader) error
}

// DevicePrepRequest asks for device preparation.
type DevicePrepRequest struct {
	// RestoreID ties the preparation to this restore so that a re-run neither adds a
	// second event nor loses a key.
	RestoreID string
	FlushKV   bool
	// DryRun reports the counts and changes nothing.
	DryRun bool
	// DatabasePrepared says the database part already ran on the restored database
	// before it went live (devprep.DatabaseUpdateScript and EventScript, with these
	// counts): only the KV part is left (clear, keys, check). Sent only to a DevicePreparer that is a
	// PreparedDatabaseFinisher.
	DatabasePrepared *devprep.DatabaseCounts
	// Connections is the most database sessions the device update may split over
	// (devprep.Options.Connections: 0 picks from the CPUs and the server's free
	// connections, 1 keeps one session).
	Connections int
	// ServerRunning says application units are running while the devices are prepared
	// (device preparation alone with allow_running_units): nothing may lock devices
	// against the server's reads (devprep.Options.ServerRunning).
	ServerRunning bool
	// StagedKeys are the awaiting-reconnect keys of DatabasePrepared's devices, staged
	// before the units stopped (KeyStager): the KV part swaps them in.
	StagedKeys *devprep.StagedKeys
}

// KeyStager is a DevicePreparer that can write the awaiting-reconnect keys of a prepared
// database into a spare database of the KV store while the server still runs
// (devprep.StageKeys), so that the downtime only swaps them in.
type KeyStager interface {
	// StageKeys stages the keys of req.DatabasePrepared's devices, or gives nil when it
	// cannot (the keys are then written in the downtime, as without it).
	StageKeys(ctx context.Context, req DevicePrepRequest) *devprep.StagedKeys
	// DiscardStagedKeys empties the spare database again, when the restore stops before
	// its device preparation.
	DiscardStagedKeys(ctx context.Context, staged *devprep.StagedKeys)
}

// DevicePreparer runs device preparation (SPEC §5) through the device-preparation engine.
type DevicePreparer interface {
	// Check connects to the database as the application user and to the KV store.
	Check(ctx context.Context) error
	// Prepare returns the engine's counts (a JSON-able value) and whether anything changed.
	Prepare(ctx context.Context, req DevicePrepRequest) (counts any, changed bool, err error)
}
