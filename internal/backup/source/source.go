// Package source is what the backup engine (internal/backup) needs from an estate: the
// Source it reads and the plain types a Source speaks in (the plan, the sink it writes
// into, what it captured). The estates (internal/estate) implement Source; the engine
// never imports them, and one function there (estate.OpenBackupSource) picks and builds the
// Source the options name. It is a package of its own so that the estates depend on it
// and not on the engine.
package source

import (
	"context"
	"io"
	"io/fs"
	"time"

	"flightctl.dr/internal/archive"
)

// Type is the kind of installation, as recorded in metadata.json ("podman",
// "kubernetes").
type Type string

// DBAccess says how the database is reached ("container": through the database container
// or pod; "direct": this machine's tools against its host and port).
type DBAccess string

// Component names reported by backups.
const (
	ComponentDatabase   = "db"
	ComponentPKI        = "pki"
	ComponentEncryption = "encryption"
	ComponentConfig     = "config"
	ComponentVolumes    = "volumes"
)

// Source is an installation a backup reads from.
type Source interface {
	// DeploymentType resolves which estate this is (the requested kind, or one detected
	// from the host) and returns its kind, recorded in metadata.json. The engine asks it
	// first, once the backup has announced itself; the first answer stands.
	DeploymentType(ctx context.Context) (Type, error)
	// ServerVersion is the server release recorded in metadata.json: the one the options
	// give, else discovered from the estate. The engine asks for it beside Plan; "" takes
	// the plan's (Plan.ServerVersion).
	ServerVersion(ctx context.Context) (string, error)
	// Plan checks every precondition and reports what would be captured; it writes nothing.
	Plan(ctx context.Context) (*Plan, error)
	// WriteBackup streams the sources into sink following plan.
	WriteBackup(ctx context.Context, sink Sink, plan *Plan) (*Outcome, error)
	// Identity is the estate the archive records (metadata.json estate), with warnings
	// about the parts that could not be read: an identity never fails a backup.
	Identity() (*archive.Estate, []string)
	// Close stops what Plan left running for WriteBackup (a dump started early) when
	// WriteBackup does not take it. It may be called more than once.
	Close() error
}

// EarlyReader is a Source that can start reading before Plan's checks are done (a Podman
// host starts its database dump beside them). A backup asks for it before Plan; a
// check-mode plan does not, and then nothing is read.
type EarlyReader interface {
	ReadEarly()
}

// Sink receives a backup's entries; *archive.Writer implements it.
type Sink interface {
	AddDir(name string, mode fs.FileMode, mtime time.Time) error
	AddFile(name string, mode fs.FileMode, mtime time.Time, size int64, r io.Reader) error
	AddStream(name string, mode fs.FileMode, mtime time.Time, r io.Reader) (int64, error)
	AddTree(prefix, srcDir string) (int, error)
}

// Plan is what a backup would capture, established without writing anything.
type Plan struct {
	DeploymentType   Type            `json:"deployment_type"`
	DatabaseIncluded bool            `json:"database_included"`
	Database         *DatabasePlan   `json:"database,omitempty"`
	Sources          []PlannedSource `json:"sources"`
	// EstimatedSize bounds the archive from above: database size on disk plus file sizes,
	// before compression.
	EstimatedSize int64    `json:"estimated_size"`
	Warnings      []string `json:"warnings"`
	// Kubernetes only: the Helm release captured, the server version its chart gives
	// (appVersion), and the API permissions found missing by the preflight.
	Release            *ReleasePlan `json:"helm_release,omitempty"`
	ServerVersion      string       `json:"server_version,omitempty"`
	MissingPermissions []string     `json:"missing_permissions,omitempty"`
}

// DatabasePlan describes the database dump of a backup.
type DatabasePlan struct {
	Access         DBAccess `json:"access"`
	Container      string   `json:"container,omitempty"`
	Host           string   `json:"host"`
	Port           int      `json:"port"`
	Name           string   `json:"name"`
	User           string   `json:"user"`
	PasswordSource string   `json:"password_source"`
	// Size is pg_database_size: the database on disk, an upper bound of the dump.
	Size          int64            `json:"size"`
	ServerVersion string           `json:"server_version"`
	PgDumpVersion string           `json:"pg_dump_version"`
	Counts        map[string]int64 `json:"counts,omitempty"`
	// Owner and ACL are the database's owner and database-level grants (aclitem text;
	// ACL nil: the defaults), recorded so that a restore onto a host that lost the
	// database creates it with them.
	Owner string   `json:"owner,omitempty"`
	ACL   []string `json:"acl,omitempty"`
}

// PlannedSource is one file tree, file, volume or object a backup would capture.
type PlannedSource struct {
	Component   string `json:"component"`
	Source      string `json:"source"`
	ArchivePath string `json:"archive_path"`
	Present     bool   `json:"present"`
	Required    bool   `json:"required"`
	Files       int    `json:"files"`
	Size        int64  `json:"size"`
}

// ReleasePlan is the Helm release a Kubernetes backup would capture.
type ReleasePlan struct {
	Name       string `json:"name"`
	Namespace  string `json:"namespace"`
	Revision   int    `json:"revision"`
	Chart      string `json:"chart"`
	AppVersion string `json:"app_version"`
	Secret     string `json:"secret"`
}

// CapturedComponent is one part of the server's state written into the archive.
type CapturedComponent struct {
	Component   string `json:"component"`
	ArchivePath string `json:"archive_path"`
	Source      string `json:"source"`
	Files       int    `json:"files"`
	Bytes       int64  `json:"bytes"`
}

// Outcome is what WriteBackup put into the sink.
type Outcome struct {
	DatabaseIncluded bool                `json:"database_included"`
	Components       []CapturedComponent `json:"components"`
	Warnings         []string            `json:"warnings"`
	// Extra goes into metadata.json's extra map (pg_dump version, row counts, ...).
	Extra map[string]string `json:"extra"`
}
