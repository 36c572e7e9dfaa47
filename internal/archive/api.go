// Package archive writes and reads flightctl backup archives: a gzip-compressed
// tar holding metadata.json, db/dump.sql, pki/, encryption/, config/ and
// volumes/ (SPEC §2). Archives written here are accepted by upstream's restore
// and archives written by upstream's backup are read here.
//
// Layout of the archives this package writes:
//   - USTAR entries (PAX only for names too long for USTAR), directories
//     without trailing slash, metadata.json last with upstream's four keys plus
//     formatVersion, producer, extra and a manifest (path, type, size, mode,
//     sha256 of every entry);
//   - the gzip stream is a sequence of independent members (RFC 1952 allows
//     it; every reader concatenates them), one per ~1 MiB of tar, compressed in
//     parallel. Each carries an FEXTRA subfield "FD" with the member's length
//     so Verify can inflate members in parallel too;
//   - the header of an entry of unknown size (AddStream) is alone in a stored
//     (uncompressed) member of fixed length, rewritten in place with the real
//     size when the stream ends; sizes past 8 GiB use GNU base-256.
//
// The archive is created unnamed (O_TMPFILE) and linked under its final name
// only when complete and synced, so a killed backup leaves nothing behind.
package archive

import (
	"fmt"
	"time"
)

// FormatVersion is the version of the extra metadata this package writes
// (manifest, producer, extra). Upstream archives have none (0).
const FormatVersion = 1

// Deployment types upstream writes into metadata.json.
const (
	DeploymentPodman     = "podman"
	DeploymentKubernetes = "kubernetes"
)

// Well-known entry names.
const (
	MetadataName = "metadata.json"
	DatabaseDump = "db/dump.sql"
)

// Metadata is metadata.json. The first four keys are upstream's and keep their
// meaning; the others are ignored by upstream's restore.
type Metadata struct {
	Timestamp        time.Time         `json:"timestamp"`        // RFC3339 UTC
	Version          string            `json:"version"`          // server release
	DeploymentType   string            `json:"deploymentType"`   // "podman" | "kubernetes"
	DatabaseIncluded bool              `json:"databaseIncluded"` // false: external database
	FormatVersion    int               `json:"formatVersion,omitempty"`
	Producer         string            `json:"producer,omitempty"` // e.g. "flightctl.dr 1.2.3"
	Manifest         []ManifestEntry   `json:"manifest,omitempty"`
	Extra            map[string]string `json:"extra,omitempty"` // pg_dump version, counts, ...
}

// ManifestEntry describes one entry of the archive (metadata.json excluded).
type ManifestEntry struct {
	Path   string `json:"path"`
	Type   string `json:"type"` // "file" | "dir"
	Size   int64  `json:"size"`
	Mode   string `json:"mode"` // "0600"
	SHA256 string `json:"sha256,omitempty"`
}

// Entry types in manifests and reports.
const (
	TypeFile = "file"
	TypeDir  = "dir"
)

// ArchiveName is the file name upstream uses for an archive made at t:
// flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz (UTC).
func ArchiveName(t time.Time) string {
	return fmt.Sprintf("flightctl-backup-%s.tar.gz", t.UTC().Format("20060102T150405Z"))
}

// Result is what Commit produced.
type Result struct {
	Path         string   `json:"path"`
	ChecksumPath string   `json:"checksum_path"`
	SHA256       string   `json:"sha256"`
	Size         int64    `json:"size"`
	Metadata     Metadata `json:"metadata"`
}

// Limits bound what the reader accepts, so a decompression bomb or a hostile
// archive cannot fill the disk.
type Limits struct {
	MaxEntries   int
	MaxEntrySize int64
	MaxTotalSize int64
}

// DefaultLimits are generous for a Flight Control server but finite.
func DefaultLimits() Limits {
	return Limits{
		MaxEntries:   100_000,
		MaxEntrySize: 64 << 30,
		MaxTotalSize: 256 << 30,
	}
}

// VerifyOptions configure Verify and Extract.
type VerifyOptions struct {
	// ChecksumFile defaults to <path>.sha256.
	ChecksumFile string
	// RequireChecksum fails when the checksum file is missing. When false and
	// the file is missing, the archive is still checked for structure.
	RequireChecksum bool
	// ExpectedVersion, when set, must equal metadata.version.
	ExpectedVersion string
	// ExpectedDeploymentType, when set, must equal metadata.deploymentType.
	ExpectedDeploymentType string
	// Limits; the zero value means DefaultLimits().
	Limits Limits
}

// Entry is one archive entry as read back.
type Entry struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Size   int64  `json:"size"`
	Mode   string `json:"mode"`
	SHA256 string `json:"sha256,omitempty"`
}

// Components says which parts of a server's state an archive holds.
type Components struct {
	Database   bool `json:"db"`
	PKI        bool `json:"pki"`
	Encryption bool `json:"encryption"`
	Config     bool `json:"config"`
	Volumes    bool `json:"volumes"`
}

// Report is the outcome of a successful Verify or Extract.
type Report struct {
	Path             string     `json:"path"`
	SHA256           string     `json:"sha256"`
	Size             int64      `json:"size"`
	ChecksumFile     string     `json:"checksum_file"`
	ChecksumVerified bool       `json:"checksum_verified"`
	Metadata         Metadata   `json:"metadata"`
	HasManifest      bool       `json:"has_manifest"`
	Entries          []Entry    `json:"entries"`
	Components       Components `json:"components"`
}
