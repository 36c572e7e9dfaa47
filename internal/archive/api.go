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
	"strings"
	"time"

	"flightctl.dr/internal/encrypt"
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
	// Estate says which installation the archive was made on; nil in upstream's archives
	// and in archives made before estates were recorded.
	Estate *Estate `json:"estate,omitempty"`
	// ArchiveEncryption says whom the archive file holding this metadata was encrypted
	// to; nil for a plain archive. (Not the data-at-rest key of encryption/.)
	ArchiveEncryption *ArchiveEncryption `json:"archiveEncryption,omitempty"`
}

// ArchiveEncryption records the recipients an encrypted archive was made for, so that a
// restore plan can say which key it needs.
type ArchiveEncryption struct {
	// Format is "age" (age-encryption.org/v1).
	Format string `json:"format"`
	// Recipients are the public keys (age1…, age1pq1…), or "passphrase (scrypt)".
	Recipients []string `json:"recipients"`
}

// Estate identifies the installation an archive was made on: the name the operator gives
// it (the inventory's, by default the host's) and what the server says about itself.
type Estate struct {
	Name string `json:"name"`
	// APIEndpoint is service.baseUrl of the service configuration, when it has one.
	APIEndpoint string `json:"apiEndpoint,omitempty"`
	// CAFingerprint is "sha256:<hex>" of the first certificate of the PKI's ca.crt (DER).
	CAFingerprint string `json:"caFingerprint,omitempty"`
}

// ManifestEntry describes one entry of the archive (metadata.json excluded).
type ManifestEntry struct {
	Path   string `json:"path"`
	Type   string `json:"type"` // "file" | "dir"
	Size   int64  `json:"size"`
	Mode   string `json:"mode"` // "0600"
	SHA256 string `json:"sha256,omitempty"`
}

// Keys of Metadata.Extra that a restore reads.
const (
	// ExtraDumpRowsPrefix + table: the rows the dump's COPY block of that table holds,
	// counted from the dump itself as it was written.
	ExtraDumpRowsPrefix = "dump_rows_"
	// ExtraCountPrefix + table: rows counted by a query before the dump (not the dump's
	// snapshot: a hint, not a check).
	ExtraCountPrefix = "count_"
	// ExtraDBOwner is the live database's owner at backup.
	ExtraDBOwner = "db_owner"
	// ExtraDBACL is its database-level ACL, a JSON array of aclitem text; absent: the
	// defaults.
	ExtraDBACL = "db_acl"
)

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

// EncryptedSuffix ends the name of an encrypted archive:
// flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz.age, its checksum file <that>.sha256.
const EncryptedSuffix = ".age"

// EncryptedArchiveName is the name of an encrypted archive made at t.
func EncryptedArchiveName(t time.Time) string { return ArchiveName(t) + EncryptedSuffix }

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
	// MaxExpansion bounds how many bytes of tar the archive may inflate to per
	// compressed byte read, once past ExpansionFloor: SQL and PEM compress 3 to 20
	// times, a decompression bomb a thousand times.
	MaxExpansion float64
	// Per-component totals: the files under pki/, encryption/, config/ and volumes/.
	MaxPKISize        int64
	MaxEncryptionSize int64
	MaxConfigSize     int64
	MaxVolumeSize     int64
	// Budgets bound the entries by where they go, below MaxTotalSize (the ceiling): a
	// restore derives them, before it reads the archive, from the free space where the
	// entries are written. An entry that brings a budget past its bytes is refused from
	// its header, before its content is read.
	Budgets []Budget
}

// Budget is what some of an archive's entries may inflate to in all, and why.
type Budget struct {
	// What names the entries bounded: "the database dump", "the files staged in /etc/flightctl".
	What string
	// Bytes is the bound.
	Bytes int64
	// From says where the bound comes from: "the free space of the file system holding /etc/flightctl".
	From string
	// Advice says what to do when an archive is past it.
	Advice string
	// Holds says whether an entry (its cleaned name) draws on the budget.
	Holds func(name string) bool
}

// ExpansionFloor is how much tar an archive may inflate to before MaxExpansion applies.
const ExpansionFloor = 64 << 20

// DefaultLimits are generous for a Flight Control server but finite.
func DefaultLimits() Limits {
	return Limits{
		MaxEntries:        100_000,
		MaxEntrySize:      64 << 30,
		MaxTotalSize:      256 << 30,
		MaxExpansion:      200,
		MaxPKISize:        64 << 20,
		MaxEncryptionSize: 1 << 20,
		MaxConfigSize:     16 << 20,
		MaxVolumeSize:     1 << 30,
	}
}

// componentLimit returns the limit on the component an entry belongs to.
func (l Limits) componentLimit(name string) (string, int64) {
	top, _, nested := strings.Cut(name, "/")
	if !nested {
		return "", 0
	}
	switch top {
	case "pki":
		return "the PKI", l.MaxPKISize
	case "encryption":
		return "the encryption keys", l.MaxEncryptionSize
	case "config":
		return "the service configuration", l.MaxConfigSize
	case "volumes":
		return "the PAM issuer volume", l.MaxVolumeSize
	}
	return "", 0
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
	// Limits; zero fields mean DefaultLimits()'.
	Limits Limits
	// ExpectedSHA256, when set, is the digest the archive must have, in place of the
	// checksum file (a restore's second read of an archive it verified).
	ExpectedSHA256 string
	// Manifest, when set, is the manifest read from the archive's tail before the walk:
	// an entry it does not list, or lists with another size, is refused from its header.
	// When not set, Verify, VerifyWalk and Extract read it from the tail themselves when
	// the archive's layout allows it (see scanner.expectEarly).
	Manifest []ManifestEntry
	// Signature: the archive's signature is checked first when trusted keys are given.
	Signature SignatureOptions
	// CheckDump runs db/dump.sql through the dump checker a restore loads it through
	// (internal/pgdump), so that verify refuses what restore would; a restore that loads
	// the dump checks it itself as it loads it.
	CheckDump bool
	// Decryption are the identities an encrypted (age) archive is read with; the checksum
	// and the signature are of the encrypted file. Without them an encrypted archive is
	// refused, unless CiphertextOnly.
	Decryption *encrypt.Identities
	// CiphertextOnly lets Verify pass an encrypted archive given no Decryption on its
	// checksum, signature and age header alone; the report says its contents were not
	// checked. Nothing else accepts an archive that way.
	CiphertextOnly bool
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
	// Warnings are doubts that do not refuse the archive.
	Warnings []string `json:"warnings,omitempty"`
	// Signature is what the signature check found (Verify only).
	Signature *SignatureReport `json:"signature,omitempty"`
	// ArchiveEncryption is set for an encrypted archive.
	ArchiveEncryption *EncryptionReport `json:"archive_encryption,omitempty"`
}

// EncryptionReport says what reading an encrypted archive found.
type EncryptionReport struct {
	Encrypted bool `json:"encrypted"`
	// RecipientTypes describes the age header's recipient stanzas ("2 X25519 keys (age1…)"):
	// the file does not show the keys, metadata.json (inside) records them.
	RecipientTypes string `json:"recipient_types"`
	// ContentsVerified: decrypted and verified in full; false when no identity was given
	// and only the encrypted file's checksum was checked.
	ContentsVerified bool `json:"contents_verified"`
}
