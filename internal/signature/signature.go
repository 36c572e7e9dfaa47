// Package signature signs backup archives and checks their signatures in OpenSSH's
// SSHSIG format, so that the signature beside an archive (<archive>.sig) is also checked
// by an ordinary tool:
//
//	ssh-keygen -Y sign -f key -n flightctl-backup archive.tar.gz      (writes archive.tar.gz.sig)
//	ssh-keygen -Y verify -f allowed_signers -I backup -n flightctl-backup -s archive.tar.gz.sig < archive.tar.gz
//
// A checksum proves that an archive is intact; a signature proves who wrote it. Trusted
// keys come in an allowed_signers file (one "principals [options] key" line per key,
// ssh-keygen's format) or as plain public keys (authorized_keys lines); an
// allowed_signers line with a namespaces="..." option is trusted only for those.
package signature

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Namespace is the SSHSIG namespace of backup archive signatures.
const Namespace = "flightctl-backup"

// Suffix is appended to an archive's path to name its signature.
const Suffix = ".sig"

const (
	magic      = "SSHSIG"
	sigVersion = 1
	armorBegin = "-----BEGIN SSH SIGNATURE-----"
	armorEnd   = "-----END SSH SIGNATURE-----"
)

// ErrUnsigned says there is no signature beside the archive.
var ErrUnsigned = errors.New("the archive is not signed")

// Signer signs archives with an OpenSSH private key.
type Signer struct{ s ssh.Signer }

// ParseSigner reads an OpenSSH (or PEM) private key; passphrase may be empty.
func ParseSigner(key, passphrase []byte) (*Signer, error) {
	var s ssh.Signer
	var err error
	if len(passphrase) > 0 {
		s, err = ssh.ParsePrivateKeyWithPassphrase(key, passphrase)
	} else {
		s, err = ssh.ParsePrivateKey(key)
	}
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, errors.New("the signing key is protected by a passphrase: give it too")
	}
	if err != nil {
		return nil, fmt.Errorf("read the signing key (an OpenSSH private key, as ssh-keygen -t ed25519 makes): %w", err)
	}
	return &Signer{s: s}, nil
}

// PublicKey is the signer's public key in authorized_keys form.
func (s *Signer) PublicKey() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.s.PublicKey())))
}

// Fingerprint is the signer's key fingerprint (SHA256:...), as ssh-keygen -l shows it.
func (s *Signer) Fingerprint() string { return ssh.FingerprintSHA256(s.s.PublicKey()) }

func appendString(b, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// signedData is what SSHSIG signs: the namespace, the hash algorithm and the message's
// digest.
func signedData(namespace, hashAlg string, digest []byte) []byte {
	b := []byte(magic)
	b = appendString(b, []byte(namespace))
	b = appendString(b, nil) // reserved
	b = appendString(b, []byte(hashAlg))
	return appendString(b, digest)
}

// signHash is the message digest signed. SSHSIG allows sha256 and sha512 and
// ssh-keygen verifies both; SHA-256 runs on the CPU's SHA instructions, about three times
// faster than SHA-512 on the archives' sizes.
const signHash = "sha256"

// Sign returns the armored SSHSIG signature of what r holds.
func (s *Signer) Sign(r io.Reader) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, fmt.Errorf("sign archive: %w", err)
	}
	data := signedData(Namespace, signHash, h.Sum(nil))
	var sig *ssh.Signature
	var err error
	if as, ok := s.s.(ssh.AlgorithmSigner); ok && s.s.PublicKey().Type() == ssh.KeyAlgoRSA {
		sig, err = as.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA512)
	} else {
		sig, err = s.s.Sign(rand.Reader, data)
	}
	if err != nil {
		return nil, fmt.Errorf("sign archive: %w", err)
	}
	blob := []byte(magic)
	blob = binary.BigEndian.AppendUint32(blob, sigVersion)
	blob = appendString(blob, s.s.PublicKey().Marshal())
	blob = appendString(blob, []byte(Namespace))
	blob = appendString(blob, nil)
	blob = appendString(blob, []byte(signHash))
	blob = appendString(blob, ssh.Marshal(sig))
	return armor(blob), nil
}

func armor(blob []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(blob)
	var b bytes.Buffer
	b.WriteString(armorBegin + "\n")
	for len(enc) > 70 {
		b.WriteString(enc[:70] + "\n")
		enc = enc[70:]
	}
	b.WriteString(enc + "\n" + armorEnd + "\n")
	return b.Bytes()
}

// SignFile signs the file at path and writes the signature to path+Suffix (through a
// temporary file, synced, then renamed: a crash leaves no half signature).
func (s *Signer) SignFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("sign archive: %w", err)
	}
	sig, err := s.Sign(f)
	f.Close()
	if err != nil {
		return "", err
	}
	out := path + Suffix
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(out)+".*")
	if err != nil {
		return "", fmt.Errorf("write signature: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(sig); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write signature %s: %w", out, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write signature %s: %w", out, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("write signature %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write signature %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("write signature %s: %w", out, err)
	}
	return out, nil
}

// Trusted is a set of public keys whose signatures are accepted.
type Trusted struct {
	keys []trustedKey
}

type trustedKey struct {
	key        ssh.PublicKey
	principal  string
	namespaces []string // empty: any
}

// Len is the number of trusted keys.
func (t *Trusted) Len() int {
	if t == nil {
		return 0
	}
	return len(t.keys)
}

// ParseTrusted reads trusted keys: allowed_signers lines ("principals [options] key
// [comment]") or authorized_keys lines ("key [comment]"); blank lines and # comments are
// skipped. where names the source in errors.
func ParseTrusted(data []byte, where string) (*Trusted, error) {
	t := &Trusted{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := parseTrustedLine(line)
		if err != nil {
			return nil, fmt.Errorf("trusted keys %s, line %d: %w", where, n, err)
		}
		t.keys = append(t.keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read trusted keys %s: %w", where, err)
	}
	if len(t.keys) == 0 {
		return nil, fmt.Errorf("trusted keys %s hold no key: give one public key per line (ssh-keygen's allowed_signers format, or the .pub file's line)", where)
	}
	return t, nil
}

func parseTrustedLine(line string) (trustedKey, error) {
	// A plain public key (authorized_keys syntax, options allowed).
	if pk, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
		return trustedKey{key: pk, principal: comment, namespaces: namespaces(opts)}, nil
	}
	// allowed_signers: the first field is the principals.
	principals, rest, ok := strings.Cut(line, " ")
	if !ok {
		return trustedKey{}, errors.New("not a public key: expected \"principals [options] ssh-ed25519 AAAA...\" or \"ssh-ed25519 AAAA...\"")
	}
	pk, _, opts, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(rest)))
	if err != nil {
		return trustedKey{}, fmt.Errorf("not a public key: %w", err)
	}
	for _, o := range opts {
		if strings.EqualFold(o, "cert-authority") {
			return trustedKey{}, errors.New("cert-authority keys are not supported: list the signing keys themselves")
		}
	}
	return trustedKey{key: pk, principal: principals, namespaces: namespaces(opts)}, nil
}

func namespaces(opts []string) []string {
	for _, o := range opts {
		if v, ok := strings.CutPrefix(strings.ToLower(o), "namespaces="); ok {
			return strings.Split(strings.Trim(v, `"`), ",")
		}
	}
	return nil
}

func (k trustedKey) allows(ns string) bool {
	if len(k.namespaces) == 0 {
		return true
	}
	for _, n := range k.namespaces {
		if n == ns {
			return true
		}
	}
	return false
}

// Result says who signed an archive.
type Result struct {
	SignatureFile string `json:"signature_file"`
	Fingerprint   string `json:"key_fingerprint"`
	Principal     string `json:"principal,omitempty"`
	KeyType       string `json:"key_type"`
}

// VerifyFile checks that sigPath holds a valid SSHSIG signature of the file at path, in
// Namespace, by one of the trusted keys. A missing signature is ErrUnsigned.
func VerifyFile(path, sigPath string, trusted *Trusted) (*Result, error) {
	raw, err := os.ReadFile(sigPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s not found", ErrUnsigned, sigPath)
	}
	if err != nil {
		return nil, fmt.Errorf("read signature: %w", err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open archive: %w", err)
	}
	defer f.Close()
	res, err := Verify(f, raw, trusted)
	if err != nil {
		return nil, fmt.Errorf("signature %s: %w", sigPath, err)
	}
	res.SignatureFile = sigPath
	return res, nil
}

// Verify checks an armored SSHSIG signature of what r holds.
func Verify(r io.Reader, armored []byte, trusted *Trusted) (*Result, error) {
	blob, err := dearmor(armored)
	if err != nil {
		return nil, err
	}
	s, err := parseBlob(blob)
	if err != nil {
		return nil, err
	}
	if s.namespace != Namespace {
		return nil, fmt.Errorf("it is made for %q, not for backup archives (%q)", s.namespace, Namespace)
	}
	var k *trustedKey
	for i := range trusted.keys {
		if bytes.Equal(trusted.keys[i].key.Marshal(), s.key.Marshal()) && trusted.keys[i].allows(Namespace) {
			k = &trusted.keys[i]
			break
		}
	}
	if k == nil {
		return nil, fmt.Errorf("it is made with key %s, which is not among the trusted keys: the archive was not written by a trusted backup", ssh.FingerprintSHA256(s.key))
	}
	var h hash.Hash
	switch s.hashAlg {
	case "sha512":
		h = sha512.New()
	case "sha256":
		h = sha256.New()
	default:
		return nil, fmt.Errorf("it uses hash %q; SSHSIG allows sha256 and sha512", s.hashAlg)
	}
	if _, err := io.Copy(h, r); err != nil {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	if err := s.key.Verify(signedData(s.namespace, s.hashAlg, h.Sum(nil)), s.sig); err != nil {
		return nil, fmt.Errorf("it does not match the archive (made for another archive, or the archive changed since it was signed): %w", err)
	}
	return &Result{Fingerprint: ssh.FingerprintSHA256(s.key), Principal: k.principal, KeyType: s.key.Type()}, nil
}

func dearmor(b []byte) ([]byte, error) {
	s := strings.TrimSpace(string(b))
	body, ok := strings.CutPrefix(s, armorBegin)
	if !ok {
		return nil, errors.New("it is not an SSH signature (no " + armorBegin + " line)")
	}
	body, ok = strings.CutSuffix(body, armorEnd)
	if !ok {
		return nil, errors.New("it is not an SSH signature (no " + armorEnd + " line)")
	}
	blob, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		return nil, fmt.Errorf("it is not an SSH signature: %w", err)
	}
	return blob, nil
}

type sshsig struct {
	key       ssh.PublicKey
	namespace string
	hashAlg   string
	sig       *ssh.Signature
}

func readString(b []byte) ([]byte, []byte, bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(len(b)-4) < uint64(n) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

func parseBlob(b []byte) (*sshsig, error) {
	bad := errors.New("it is not a valid SSH signature")
	if !bytes.HasPrefix(b, []byte(magic)) || len(b) < len(magic)+4 {
		return nil, bad
	}
	b = b[len(magic):]
	if v := binary.BigEndian.Uint32(b); v != sigVersion {
		return nil, fmt.Errorf("SSH signature version %d is not supported", v)
	}
	b = b[4:]
	var fields [5][]byte
	for i := range fields {
		var ok bool
		if fields[i], b, ok = readString(b); !ok {
			return nil, bad
		}
	}
	pk, err := ssh.ParsePublicKey(fields[0])
	if err != nil {
		return nil, fmt.Errorf("it holds an unreadable key: %w", err)
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(fields[4], &sig); err != nil {
		return nil, bad
	}
	return &sshsig{key: pk, namespace: string(fields[1]), hashAlg: string(fields[3]), sig: &sig}, nil
}

// LoadTrusted reads the trusted keys from a file (allowed_signers or .pub lines) and/or
// inline lines; nil when neither is given (signatures are then not checked).
func LoadTrusted(path, inline string) (*Trusted, error) {
	var data []byte
	where := "trusted_keys"
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read trusted keys: %w", err)
		}
		data = append(data, raw...)
		data = append(data, '\n')
		where = path
	}
	if strings.TrimSpace(inline) != "" {
		data = append(data, inline...)
		if path != "" {
			where = path + " and trusted_keys"
		}
	}
	if path == "" && strings.TrimSpace(inline) == "" {
		return nil, nil
	}
	return ParseTrusted(data, where)
}

// LoadSigner reads the signing key from a file or from its content (an AAP credential
// or the environment); nil when neither is given.
func LoadSigner(path string, content, passphrase string) (*Signer, error) {
	key := []byte(content)
	if path != "" {
		if content != "" {
			return nil, errors.New("the signing key is given twice (a file and its content): give one")
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read the signing key: %w", err)
		}
		key = raw
	}
	if len(key) == 0 {
		return nil, nil
	}
	return ParseSigner(key, []byte(passphrase))
}
