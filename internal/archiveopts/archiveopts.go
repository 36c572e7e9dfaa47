// Package archiveopts holds the module options that say what an archive must be to be
// accepted: whose signature it carries and how large it may grow. flightctl_archive_verify
// and flightctl_restore embed them, so that whatever restore refuses, verify refuses with
// the same options and the same words.
package archiveopts

import (
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/signature"
)

// Acceptance is embedded in a module's options; the sidecar docs document each option.
type Acceptance struct {
	TrustedKeysPath   string `ansible:"trusted_keys_path,abspath" help:"an allowed_signers file (or .pub lines) of the keys backups are signed with; with it the signature is checked before anything else and an unsigned or wrongly signed archive is refused"`
	TrustedKeys       string `ansible:"trusted_keys,multiline" help:"trusted public keys given inline, one per line, in the same format"`
	AllowUnsigned     bool   `ansible:"allow_unsigned" default:"false" help:"with trusted keys, accept an archive that has no signature (an upstream archive), with a warning"`
	SignatureFile     string `ansible:"signature_file,abspath" help:"the signature (default: <path>.sig)"`
	MaxExpansion      int    `ansible:"max_expansion" default:"200" min:"1" help:"how many times its compressed size the archive may inflate to (past the first 64 MiB)"`
	MaxPKISize        int64  `ansible:"max_pki_size" default:"67108864" min:"1" help:"bytes the files under pki/ may hold in all"`
	MaxEncryptionSize int64  `ansible:"max_encryption_size" default:"1048576" min:"1" help:"bytes the files under encryption/ may hold in all"`
	MaxConfigSize     int64  `ansible:"max_config_size" default:"16777216" min:"1" help:"bytes the files under config/ may hold in all"`
	MaxVolumeSize     int64  `ansible:"max_volume_size" default:"1073741824" min:"1" help:"bytes the PAM issuer volume archive may hold"`
	MaxTotalSize      int64  `ansible:"max_total_size" default:"274877906944" min:"1" help:"bytes the archive may inflate to in all (256 GiB; above it, also the limit per entry): the ceiling under the budgets a restore derives from the free space"`
}

// Limits are the archive limits the options set.
func (a *Acceptance) Limits() archive.Limits {
	l := archive.DefaultLimits()
	l.MaxExpansion = float64(a.MaxExpansion)
	l.MaxPKISize, l.MaxEncryptionSize, l.MaxConfigSize, l.MaxVolumeSize = a.MaxPKISize, a.MaxEncryptionSize, a.MaxConfigSize, a.MaxVolumeSize
	if a.MaxTotalSize > 0 {
		// Raising the ceiling raises the per-entry limit with it: the dump, one entry,
		// is nearly all of a large server's archive.
		if a.MaxTotalSize > l.MaxTotalSize {
			l.MaxEntrySize = a.MaxTotalSize
		}
		l.MaxTotalSize = a.MaxTotalSize
	}
	return l
}

// Signature loads the trusted keys and says how the signature is checked.
func (a *Acceptance) Signature() (archive.SignatureOptions, error) {
	trusted, err := signature.LoadTrusted(a.TrustedKeysPath, a.TrustedKeys)
	if err != nil {
		return archive.SignatureOptions{}, err
	}
	return archive.SignatureOptions{Trusted: trusted, File: a.SignatureFile, AllowUnsigned: a.AllowUnsigned}, nil
}
