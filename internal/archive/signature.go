package archive

import (
	"errors"
	"fmt"
	"os"

	"flightctl.dr/internal/signature"
)

// SignatureOptions say whether and how an archive's signature is checked.
type SignatureOptions struct {
	// Trusted are the keys whose signatures are accepted; nil: signatures are not checked.
	Trusted *signature.Trusted
	// File is the signature; default <archive>.sig.
	File string
	// AllowUnsigned accepts an archive without a signature (upstream's are never signed)
	// although trusted keys are configured; the report says so. A signature that is there
	// but wrong is refused all the same.
	AllowUnsigned bool
}

// SignatureReport says what the signature check found.
type SignatureReport struct {
	// Checked is false when no trusted keys were configured.
	Checked bool   `json:"checked"`
	Signed  bool   `json:"signed"`
	File    string `json:"file"`
	// UnsignedAllowed: unsigned, accepted because the operator allows unsigned archives.
	UnsignedAllowed bool              `json:"unsigned_allowed,omitempty"`
	Signer          *signature.Result `json:"signer,omitempty"`
}

// CheckSignature checks the archive's signature against the trusted keys: the first
// check of verify and restore when trusted keys are configured. It returns warnings for
// the operator (an unsigned archive accepted, a signature left unchecked).
func CheckSignature(path string, o SignatureOptions) (*SignatureReport, []string, error) {
	file := o.File
	if file == "" {
		file = path + signature.Suffix
	}
	rep := &SignatureReport{File: file}
	if o.Trusted != nil {
		// A missing archive is reported as such, not as a missing signature.
		f, _, err := openArchive(path)
		if err != nil {
			return nil, nil, err
		}
		f.Close()
	}
	if o.Trusted == nil {
		if _, err := os.Stat(file); err == nil {
			return rep, []string{fmt.Sprintf("the archive is signed (%s) but no trusted keys are configured, so the signature was not checked: set trusted_keys_path to check who wrote it", file)}, nil
		}
		return rep, nil, nil
	}
	rep.Checked = true
	res, err := signature.VerifyFile(path, file, o.Trusted)
	switch {
	case errors.Is(err, signature.ErrUnsigned) && o.AllowUnsigned:
		rep.UnsignedAllowed = true
		return rep, []string{fmt.Sprintf("the archive is not signed (no %s): accepted only because allow_unsigned is set; its origin is not proven", file)}, nil
	case errors.Is(err, signature.ErrUnsigned):
		return nil, nil, fmt.Errorf("archive integrity check failed: %w", &IntegrityError{Kind: KindSignature, Entry: "", Detail: fmt.Sprintf("the archive is not signed (no %s) but trusted keys are configured: only archives signed by a trusted key are accepted; use a signed archive, or set allow_unsigned to accept an unsigned one (an upstream archive) knowingly", file)})
	case err != nil:
		return nil, nil, fmt.Errorf("archive integrity check failed: %w", &IntegrityError{Kind: KindSignature, Detail: fmt.Sprintf("signature check failed: %v: the archive was not written by a trusted backup or was changed since, do not restore from it", err)})
	}
	rep.Signed, rep.Signer = true, res
	return rep, nil, nil
}
