package archive

import (
	"errors"
	"fmt"
)

// ErrorKind classifies why an archive was refused.
type ErrorKind string

const (
	KindChecksum       ErrorKind = "checksum"        // checksum file missing, malformed or not matching
	KindCompression    ErrorKind = "compression"     // gzip stream damaged or truncated
	KindStructure      ErrorKind = "structure"       // tar stream damaged or truncated
	KindUnsafePath     ErrorKind = "unsafe-path"     // absolute path, ".." component, non-canonical name
	KindEntryType      ErrorKind = "entry-type"      // symlink, hardlink, device, FIFO or other non-regular entry
	KindDuplicate      ErrorKind = "duplicate"       // the same path twice, or a file used as a directory
	KindLimit          ErrorKind = "limit"           // entry count, entry size or total size past the limits
	KindMetadata       ErrorKind = "metadata"        // metadata.json missing or malformed
	KindManifest       ErrorKind = "manifest"        // entries disagree with the manifest
	KindVersion        ErrorKind = "version"         // metadata.version differs from the expected one
	KindDeploymentType ErrorKind = "deployment-type" // metadata.deploymentType differs from the expected one
	KindDump           ErrorKind = "dump"            // db/dump.sql is not what pg_dump writes for a Flight Control database
	KindSignature      ErrorKind = "signature"       // signature missing, not valid or not from a trusted key
	KindEncryption     ErrorKind = "encryption"      // encrypted archive: no identity, a wrong one, or a damaged age file
)

// IntegrityError says why an archive cannot be trusted. Its message names the
// entry concerned and what the operator should do.
type IntegrityError struct {
	Kind   ErrorKind
	Entry  string // archive entry concerned, "" when the whole archive is
	Detail string // complete sentence(s) describing the problem and the next step
	Err    error  // underlying cause, if any
}

func (e *IntegrityError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %v", e.Detail, e.Err)
	}
	return e.Detail
}

func (e *IntegrityError) Unwrap() error { return e.Err }

// IsIntegrityError reports whether err says the archive is bad (as opposed to
// an I/O problem on this machine), and returns it.
func IsIntegrityError(err error) (*IntegrityError, bool) {
	var ie *IntegrityError
	if errors.As(err, &ie) {
		return ie, true
	}
	return nil, false
}

const doNotRestore = "the archive is unsafe, do not restore from it"

func entryError(kind ErrorKind, entry, format string, args ...any) *IntegrityError {
	return &IntegrityError{Kind: kind, Entry: entry, Detail: fmt.Sprintf(format, args...)}
}
