package encrypt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
)

// ErrorKind says why an age file could not be decrypted.
type ErrorKind string

const (
	// KindNoIdentity: the file is encrypted and no identity was given.
	KindNoIdentity ErrorKind = "no-identity"
	// KindWrongIdentity: none of the identities is one of the file's recipients.
	KindWrongIdentity ErrorKind = "wrong-identity"
	// KindHeader: the age header is malformed or its MAC does not match.
	KindHeader ErrorKind = "header"
	// KindPayload: the payload is truncated, extended or altered.
	KindPayload ErrorKind = "payload"
)

// Error is a refusal to decrypt; Detail is a sentence for the operator, without the next
// step (the caller knows the words of its interface).
type Error struct {
	Kind   ErrorKind
	Detail string
	// Stanzas are the types of the header's recipient stanzas (X25519, mlkem768x25519,
	// scrypt), when the header could be read.
	Stanzas []string
	Err     error
}

func (e *Error) Error() string { return e.Detail }
func (e *Error) Unwrap() error { return e.Err }

// AsError returns err's *Error, if it has one.
func AsError(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// IsEncrypted says whether r begins as an age file does.
func IsEncrypted(r io.ReaderAt) (bool, error) {
	b := make([]byte, len(Magic))
	n, err := r.ReadAt(b, 0)
	if n == len(b) {
		return string(b) == Magic, nil
	}
	if errors.Is(err, io.EOF) {
		return false, nil
	}
	return false, err
}

// Stanzas returns the types of the recipient stanzas in an age header (which, unlike the
// recipients' keys, the file shows), and the header's length.
func Stanzas(r io.Reader) ([]string, int64, error) {
	hdr, err := age.ExtractHeader(r)
	if err != nil {
		return nil, 0, &Error{Kind: KindHeader, Detail: fmt.Sprintf("the age header is malformed (%v)", err), Err: err}
	}
	var types []string
	sc := bufio.NewScanner(bytes.NewReader(hdr))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "-> "); ok {
			t, _, _ := strings.Cut(rest, " ")
			types = append(types, t)
		}
	}
	return types, int64(len(hdr)), nil
}

// DescribeStanzas says whom a file is encrypted to, from its stanza types: "2 X25519 keys".
func DescribeStanzas(types []string) string {
	counts := map[string]int{}
	var order []string
	for _, t := range types {
		if counts[t] == 0 {
			order = append(order, t)
		}
		counts[t]++
	}
	var parts []string
	for _, t := range order {
		n := counts[t]
		switch t {
		case "scrypt":
			parts = append(parts, "a passphrase")
		case "X25519":
			parts = append(parts, plural(n, "X25519 key (age1…)", "X25519 keys (age1…)"))
		case "mlkem768x25519":
			parts = append(parts, plural(n, "post-quantum key (age1pq1…)", "post-quantum keys (age1pq1…)"))
		default:
			parts = append(parts, plural(n, t+" recipient", t+" recipients"))
		}
	}
	if len(parts) == 0 {
		return "no recipient"
	}
	return strings.Join(parts, " and ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Decrypt reads an age file from r with ids. Errors, at once or from the returned
// reader, are *Error.
func Decrypt(r io.Reader, ids *Identities) (io.Reader, error) {
	if ids.Empty() {
		return nil, &Error{Kind: KindNoIdentity, Detail: "the archive is encrypted (age) and no identity was given"}
	}
	// The header is read once, for both the stanza types and the decryption.
	var head bytes.Buffer
	types, _, serr := Stanzas(io.TeeReader(&limitedOnce{r: r, n: 1 << 20}, &head))
	if serr != nil {
		return nil, serr
	}
	src := io.MultiReader(bytes.NewReader(head.Bytes()), r)
	dr, err := age.Decrypt(src, ids.list...)
	if err != nil {
		return nil, classify(err, types, ids)
	}
	return &payloadReader{r: dr}, nil
}

// limitedOnce reads at most n bytes in all, then reports EOF: a header longer than that is
// not an archive's.
type limitedOnce struct {
	r io.Reader
	n int64
}

func (l *limitedOnce) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	// One byte at a time past what the header needs would be slow; the header parser
	// reads through a bufio.Reader, so what it over-reads is kept in head and replayed.
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// DecryptReaderAt gives random access to the plaintext of the age file in r (size bytes):
// the final chunk is read and authenticated first, so a truncated file is refused at once.
func DecryptReaderAt(r io.ReaderAt, size int64, ids *Identities) (io.ReaderAt, int64, error) {
	if ids.Empty() {
		return nil, 0, &Error{Kind: KindNoIdentity, Detail: "the archive is encrypted (age) and no identity was given"}
	}
	types, _, serr := Stanzas(io.NewSectionReader(r, 0, min(size, 1<<20)))
	if serr != nil {
		return nil, 0, serr
	}
	ra, n, err := age.DecryptReaderAt(r, size, ids.list...)
	if err != nil {
		e := classify(err, types, ids)
		if e.Kind == KindHeader {
			// Past a header that parses, DecryptReaderAt fails on the payload's size or
			// its final chunk.
			e = &Error{Kind: KindPayload, Detail: fmt.Sprintf("the encrypted archive is truncated, extended or altered (%v)", err), Stanzas: types, Err: err}
		}
		return nil, 0, e
	}
	return &payloadReaderAt{r: ra}, n, nil
}

func classify(err error, types []string, ids *Identities) *Error {
	var nomatch *age.NoIdentityMatchError
	if errors.As(err, &nomatch) {
		keys := strings.Join(ids.Public, ", ")
		if keys == "" {
			keys = "none with a known public key"
		}
		return &Error{Kind: KindWrongIdentity, Stanzas: types, Err: err,
			Detail: fmt.Sprintf("no identity given can decrypt the archive: it is encrypted to %s, and the identities given are for %s", DescribeStanzas(types), keys)}
	}
	return &Error{Kind: KindHeader, Stanzas: types, Err: err, Detail: fmt.Sprintf("the age header cannot be decrypted (%v)", err)}
}

// payloadReader turns the library's payload errors into *Error.
type payloadReader struct{ r io.Reader }

func (p *payloadReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err != nil && err != io.EOF {
		err = payloadError(err)
	}
	return n, err
}

type payloadReaderAt struct{ r io.ReaderAt }

func (p *payloadReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := p.r.ReadAt(b, off)
	if err != nil && err != io.EOF {
		err = payloadError(err)
	}
	return n, err
}

func payloadError(err error) error {
	if _, ok := AsError(err); ok {
		return err
	}
	what := "altered"
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF):
		what = "truncated"
	case strings.Contains(err.Error(), "trailing data"):
		what = "extended (data after its end)"
	}
	return &Error{Kind: KindPayload, Detail: fmt.Sprintf("the encrypted archive is %s: %v", what, err), Err: err}
}
