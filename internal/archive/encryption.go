package archive

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"flightctl.dr/internal/encrypt"
)

// An encrypted archive is an age file holding an archive (encrypt): its checksum and its
// signature are of the age file; everything else is checked on the plaintext, decrypted
// in the same pass that hashes the file.

// identityHint says how to give an identity, in the module options' words.
const identityHint = "give the identity of one of its recipients with decryption_identity_file (or decryption_key), or decryption_passphrase for an archive encrypted to a passphrase"

// isEncrypted says whether the open archive is an age file.
func isEncrypted(f io.Reader) (bool, error) {
	ra, ok := f.(io.ReaderAt)
	if !ok {
		return false, nil
	}
	enc, err := encrypt.IsEncrypted(ra)
	if err != nil {
		return false, fmt.Errorf("read archive: %w", err)
	}
	return enc, nil
}

// encryptionError says why an encrypted archive cannot be read, and what to do.
func encryptionError(err error) error {
	e, ok := encrypt.AsError(err)
	if !ok {
		return err
	}
	var detail string
	switch e.Kind {
	case encrypt.KindNoIdentity:
		who := ""
		if len(e.Stanzas) > 0 {
			who = " to " + encrypt.DescribeStanzas(e.Stanzas)
		}
		detail = fmt.Sprintf("the archive is encrypted (age%s) and no identity was given: %s", who, identityHint)
	case encrypt.KindWrongIdentity:
		detail = e.Detail + ": give the identity of one of the recipients the archive was made for (the backup's encryption_recipients, recorded in its metadata; a break-glass key among them works too)"
	default:
		detail = e.Detail + ": the archive is damaged or was tampered with, do not restore from it"
	}
	return &IntegrityError{Kind: KindEncryption, Detail: detail, Err: e.Err}
}

// openPayload starts decrypting the age file read from r.
func openPayload(r io.Reader, ids *encrypt.Identities) (io.Reader, *EncryptionReport, error) {
	dec, err := encrypt.Decrypt(r, ids)
	if err != nil {
		return nil, nil, encryptionError(err)
	}
	return dec, &EncryptionReport{Encrypted: true}, nil
}

// stanzaReport reads the age header of f for the report.
func stanzaReport(f io.ReaderAt, size int64) (*EncryptionReport, error) {
	types, _, err := encrypt.Stanzas(io.NewSectionReader(f, 0, min(size, 1<<20)))
	if err != nil {
		return nil, encryptionError(err)
	}
	return &EncryptionReport{Encrypted: true, RecipientTypes: encrypt.DescribeStanzas(types)}, nil
}

// verifyCiphertext is Verify of an encrypted archive without an identity: the age file's
// checksum and header only.
func verifyCiphertext(ctx context.Context, f *os.File, path, want string, opts VerifyOptions) (*Report, error) {
	h := sha256.New()
	size, err := copyCtx(ctx, h, f, make([]byte, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read archive %q: %w", path, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if want != "" && got != want {
		return nil, fmt.Errorf("archive integrity check failed: %w", checksumMismatch(path, want, got, nil))
	}
	enc, err := stanzaReport(f, size)
	if err != nil {
		return nil, fmt.Errorf("archive integrity check failed: %w", err)
	}
	rep := &Report{Path: path, SHA256: got, Size: size, ChecksumFile: opts.ChecksumFile, ChecksumVerified: want != "", ArchiveEncryption: enc}
	rep.Warnings = append(rep.Warnings, fmt.Sprintf("the archive is encrypted (age, to %s) and no identity was given: only the encrypted file's checksum and header were checked, not its contents; to verify those, %s", enc.RecipientTypes, identityHint))
	return rep, nil
}

// classifyReaderAtError makes a damaged encrypted chunk, met while hopping through an
// encrypted archive, an integrity error.
func classifyReaderAtError(err error) error {
	if _, ok := encrypt.AsError(err); ok {
		return encryptionError(err)
	}
	return err
}
