// Package encrypt encrypts archives with age (filippo.io/age, the age-encryption.org/v1
// format): to one or more X25519 (age1…) or hybrid post-quantum (age1pq1…) recipients, or
// to a passphrase (scrypt). The encrypted file is an ordinary age file: `age -d` turns it
// back into the archive it holds.
//
// Writer streams an age file onto an *os.File and can rewrite plaintext it has not
// encrypted yet (Hold, Patch), which the archive writer needs for the tar header of a
// stream whose size is known only at its end: no plaintext byte is ever written to disk.
// Decrypt and DecryptReaderAt read one back.
package encrypt

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"filippo.io/age"
)

// Suffix is added to the name of an encrypted archive: flightctl-backup-<time>.tar.gz.age.
const Suffix = ".age"

// Magic is how every age file begins.
const Magic = "age-encryption.org/v1\n"

// PassphraseRecipient stands for a passphrase in the lists of recipients reported and
// recorded (a passphrase has no public key).
const PassphraseRecipient = "passphrase (scrypt)"

// Recipients are the keys an archive is encrypted to.
type Recipients struct {
	list []age.Recipient
	// Public are the recipients' public keys (age1…, age1pq1…), or PassphraseRecipient.
	Public []string
	// Passphrase: the archive is encrypted to a passphrase.
	Passphrase bool
}

// Empty says there is nothing to encrypt to (the archive stays plain).
func (r *Recipients) Empty() bool { return r == nil || len(r.list) == 0 }

// ParseRecipients parses public keys, one per item or line: age1… (X25519) and age1pq1…
// (hybrid post-quantum, ML-KEM-768 + X25519). Blank lines and lines starting with # are
// skipped. Post-quantum and classic recipients cannot be mixed (the file would not be
// post-quantum safe).
func ParseRecipients(keys []string) (*Recipients, error) {
	r := &Recipients{}
	seen := map[string]bool{}
	for i, item := range keys {
		for _, line := range strings.Split(item, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			rec, pub, err := parseRecipient(line)
			if err != nil {
				return nil, fmt.Errorf("recipient %d: %w", i+1, err)
			}
			if seen[pub] {
				continue
			}
			seen[pub] = true
			r.list = append(r.list, rec)
			r.Public = append(r.Public, pub)
		}
	}
	if len(r.list) == 0 {
		return nil, errors.New("no recipients given: give age public keys (age1…, or age1pq1… for post-quantum ones), as age-keygen -y prints them")
	}
	if err := checkMix(r.list); err != nil {
		return nil, err
	}
	return r, nil
}

// ReadRecipientsFile reads public keys from a file, one per line (an age recipients
// file: what `age -R` reads).
func ReadRecipientsFile(path string) (*Recipients, error) {
	b, err := readSmall(path, 1<<20)
	if err != nil {
		return nil, fmt.Errorf("read recipients file: %w", err)
	}
	r, err := ParseRecipients([]string{string(b)})
	if err != nil {
		return nil, fmt.Errorf("recipients file %s: %w", path, err)
	}
	return r, nil
}

func parseRecipient(s string) (age.Recipient, string, error) {
	if !utf8.ValidString(s) {
		return nil, "", errors.New("not valid UTF-8")
	}
	switch {
	case strings.HasPrefix(s, "AGE-SECRET-KEY-"):
		// Never echo a private key.
		return nil, "", errors.New("this is a private key (an identity), not a public key: give its public key, which age-keygen -y prints, and keep the private key for restores")
	case strings.HasPrefix(s, "age1pq1"):
		r, err := age.ParseHybridRecipient(s)
		if err != nil {
			return nil, "", fmt.Errorf("%q is not a valid post-quantum age recipient: %v", short(s), err)
		}
		return r, r.String(), nil
	case strings.HasPrefix(s, "age1"):
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			return nil, "", fmt.Errorf("%q is not a valid age recipient: %v", short(s), err)
		}
		return r, r.String(), nil
	}
	return nil, "", fmt.Errorf("%q is not an age public key: give age1… (X25519) or age1pq1… (post-quantum) keys, as age-keygen -y prints them", short(s))
}

func short(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// checkMix refuses recipients that the age format does not allow together: post-quantum
// with classic keys (age.Encrypt refuses them too, by their labels).
func checkMix(list []age.Recipient) error {
	pq := 0
	for _, r := range list {
		if _, ok := r.(*age.HybridRecipient); ok {
			pq++
		}
	}
	if pq != 0 && pq != len(list) {
		return errors.New("post-quantum (age1pq1…) and classic (age1…) recipients cannot be mixed, or the archive would not be safe against quantum computers: give keys of one kind")
	}
	return nil
}

// NewPassphrase encrypts to a passphrase (scrypt). workFactor is scrypt's log2 N; 0 is
// age's default (18, about a second).
func NewPassphrase(passphrase string, workFactor int) (*Recipients, error) {
	if passphrase == "" {
		return nil, errors.New("the passphrase is empty")
	}
	r, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return nil, err
	}
	if workFactor != 0 {
		if workFactor < 10 || workFactor > 22 {
			return nil, fmt.Errorf("scrypt work factor %d is out of range (10-22)", workFactor)
		}
		r.SetWorkFactor(workFactor)
	}
	return &Recipients{list: []age.Recipient{r}, Public: []string{PassphraseRecipient}, Passphrase: true}, nil
}

// Identities are the private keys (or the passphrase) an archive is decrypted with.
type Identities struct {
	list []age.Identity
	// Public are the recipients the identities decrypt for (age1…, age1pq1…, or
	// PassphraseRecipient): what an operator compares with an archive's recipients.
	Public []string
}

// Empty says no identity was given.
func (i *Identities) Empty() bool { return i == nil || len(i.list) == 0 }

// ParseIdentities parses an age identity file's content: AGE-SECRET-KEY-1… (X25519) and
// AGE-SECRET-KEY-PQ-1… (post-quantum) lines, # comments and blank lines (what age-keygen
// writes). Errors never quote the content.
func ParseIdentities(content string) (*Identities, error) {
	ids, err := age.ParseIdentities(strings.NewReader(content))
	if err != nil {
		return nil, fmt.Errorf("not an age identity file (%v): give the file age-keygen wrote (AGE-SECRET-KEY-1… lines)", err)
	}
	out := &Identities{list: ids}
	for _, id := range ids {
		switch k := id.(type) {
		case *age.X25519Identity:
			out.Public = append(out.Public, k.Recipient().String())
		case *age.HybridIdentity:
			out.Public = append(out.Public, k.Recipient().String())
		}
	}
	return out, nil
}

// ReadIdentityFile reads an age identity file.
func ReadIdentityFile(path string) (*Identities, error) {
	b, err := readSmall(path, 16<<20)
	if err != nil {
		return nil, fmt.Errorf("read identity file: %w", err)
	}
	ids, err := ParseIdentities(string(b))
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	return ids, nil
}

// PassphraseIdentity decrypts an archive encrypted to a passphrase.
func PassphraseIdentity(passphrase string) (*Identities, error) {
	if passphrase == "" {
		return nil, errors.New("the passphrase is empty")
	}
	id, err := age.NewScryptIdentity(passphrase)
	if err != nil {
		return nil, err
	}
	return &Identities{list: []age.Identity{id}, Public: []string{PassphraseRecipient}}, nil
}

// Join returns the identities of both (either may be nil).
func Join(a, b *Identities) *Identities {
	switch {
	case a.Empty():
		return b
	case b.Empty():
		return a
	}
	return &Identities{list: append(append([]age.Identity(nil), a.list...), b.list...), Public: append(append([]string(nil), a.Public...), b.Public...)}
}

func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(f), limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}
