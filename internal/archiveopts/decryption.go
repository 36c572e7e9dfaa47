package archiveopts

import (
	"errors"
	"fmt"
	"os"

	"flightctl.dr/internal/encrypt"
)

// Environment variables that carry an age identity or passphrase when no option does (an
// AAP credential, or `environment:` on the task): never argv.
const (
	EnvAgeIdentity   = "FLIGHTCTL_DR_AGE_IDENTITY"
	EnvAgePassphrase = "FLIGHTCTL_DR_AGE_PASSPHRASE"
)

// Decryption is embedded in the options of the modules that read archives: how an
// encrypted (age) archive is decrypted.
type Decryption struct {
	DecryptionIdentityFile string `ansible:"decryption_identity_file,abspath" help:"an age identity file on the host (what age-keygen wrote: AGE-SECRET-KEY-1… lines) that decrypts an encrypted archive (.tar.gz.age)"`
	DecryptionKey          string `ansible:"decryption_key,secret,multiline" env:"FLIGHTCTL_DR_AGE_IDENTITY" help:"the identity itself (the content of such a file), instead of decryption_identity_file"`
	DecryptionPassphrase   string `ansible:"decryption_passphrase,secret" env:"FLIGHTCTL_DR_AGE_PASSPHRASE" help:"the passphrase of an archive encrypted to a passphrase"`
}

// Identities loads what the options give; with none of them, the environment variables
// are read (getenv nil: the process's). nil: no identity (a plain archive needs none).
func (d *Decryption) Identities(getenv func(string) string) (*encrypt.Identities, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	key, pass := d.DecryptionKey, d.DecryptionPassphrase
	if d.DecryptionIdentityFile == "" && key == "" && pass == "" {
		key, pass = getenv(EnvAgeIdentity), getenv(EnvAgePassphrase)
	}
	var ids *encrypt.Identities
	if d.DecryptionIdentityFile != "" {
		fromFile, err := encrypt.ReadIdentityFile(d.DecryptionIdentityFile)
		if err != nil {
			return nil, fmt.Errorf("decryption_identity_file: %w", err)
		}
		ids = fromFile
	}
	if key != "" {
		k, err := encrypt.ParseIdentities(key)
		if err != nil {
			return nil, fmt.Errorf("decryption_key: %w", err)
		}
		ids = encrypt.Join(ids, k)
	}
	if pass != "" {
		p, err := encrypt.PassphraseIdentity(pass)
		if err != nil {
			return nil, fmt.Errorf("decryption_passphrase: %w", err)
		}
		ids = encrypt.Join(ids, p)
	}
	return ids, nil
}

// Encryption is embedded in the options of the module that writes archives: whom a new
// archive is encrypted to.
type Encryption struct {
	EncryptionRecipients     []string `ansible:"encryption_recipients" help:"age public keys (age1…, or age1pq1… post-quantum ones) the archive is encrypted to, for example an operations key and an offline break-glass key; the archive becomes flightctl-backup-<time>.tar.gz.age"`
	EncryptionRecipientsFile string   `ansible:"encryption_recipients_file,abspath" help:"a file on the host with such public keys, one per line (what age -R reads)"`
	EncryptionPassphrase     string   `ansible:"encryption_passphrase,secret" env:"FLIGHTCTL_DR_AGE_PASSPHRASE" help:"encrypt to this passphrase (scrypt) instead of public keys, for small sites"`
}

// Recipients loads what the options give; nil: the archive is not encrypted.
func (e *Encryption) Recipients() (*encrypt.Recipients, error) {
	keys := append([]string(nil), e.EncryptionRecipients...)
	if e.EncryptionRecipientsFile != "" {
		b, err := os.ReadFile(e.EncryptionRecipientsFile)
		if err != nil {
			return nil, fmt.Errorf("encryption_recipients_file: %w", err)
		}
		keys = append(keys, string(b))
	}
	if e.EncryptionPassphrase != "" {
		if len(keys) > 0 {
			return nil, errors.New("encryption_passphrase and encryption_recipients exclude each other (age does not let a passphrase be one recipient among others): give one of them")
		}
		r, err := encrypt.NewPassphrase(e.EncryptionPassphrase, 0)
		if err != nil {
			return nil, fmt.Errorf("encryption_passphrase: %w", err)
		}
		return r, nil
	}
	if len(keys) == 0 {
		return nil, nil
	}
	r, err := encrypt.ParseRecipients(keys)
	if err != nil {
		return nil, fmt.Errorf("encryption_recipients: %w", err)
	}
	return r, nil
}
