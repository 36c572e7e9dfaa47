package ansiblemod

import (
	"encoding/json"
	"io"
	"sort"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Masker hides secret values in everything a module returns or logs.
type Masker struct {
	mu      sync.Mutex
	secrets []string
}

// Add registers secret values; empty strings are ignored.
func (m *Masker) Add(values ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range values {
		if v == "" {
			continue
		}
		dup := false
		for _, s := range m.secrets {
			if s == v {
				dup = true
			}
		}
		if !dup {
			m.secrets = append(m.secrets, v)
		}
	}
	// Longest first, so a secret that contains another is masked whole.
	sort.Slice(m.secrets, func(i, j int) bool { return len(m.secrets[i]) > len(m.secrets[j]) })
}

// AddFromRaw registers the raw values given for secret options of opts, before they are
// decoded, so that a decoding error that quotes a value cannot reveal it.
func (m *Masker) AddFromRaw(raw map[string]json.RawMessage, opts any) {
	specs, err := Specs(opts)
	if err != nil {
		return
	}
	for _, s := range specs {
		if !s.Secret {
			continue
		}
		for _, name := range append([]string{s.Name}, s.Aliases...) {
			var v any
			if json.Unmarshal(raw[name], &v) == nil {
				if str, err := toString(v); err == nil {
					m.Add(str)
				}
			}
		}
	}
}

// wholeWordBelow is the length under which a secret is masked only where it stands as a
// value of its own, not inside a longer word: a short password such as "yp" must not turn
// "type" into "t********pe". Longer secrets are masked wherever they appear, since text
// holding one is the secret, whatever surrounds it.
const wholeWordBelow = 8

// Mask replaces every secret in s: short ones where they stand alone (not preceded or
// followed by a letter or digit), longer ones wherever they appear.
func (m *Masker) Mask(s string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, secret := range m.secrets {
		if len(secret) >= wholeWordBelow {
			s = strings.ReplaceAll(s, secret, maskedText)
			continue
		}
		s = replaceWhole(s, secret)
	}
	return s
}

// replaceWhole masks the occurrences of secret in s that are not part of a longer word: a
// letter or digit right before or after the occurrence (when the secret itself starts or
// ends with one) means unrelated text that happens to contain it.
func replaceWhole(s, secret string) string {
	if !strings.Contains(s, secret) {
		return s
	}
	first, _ := utf8.DecodeRuneInString(secret)
	last, _ := utf8.DecodeLastRuneInString(secret)
	var b strings.Builder
	rest := s
	for {
		i := strings.Index(rest, secret)
		if i < 0 {
			b.WriteString(rest)
			return b.String()
		}
		before, _ := utf8.DecodeLastRuneInString(rest[:i])
		after, _ := utf8.DecodeRuneInString(rest[i+len(secret):])
		inWord := (i > 0 && isWordRune(first) && isWordRune(before)) ||
			(i+len(secret) < len(rest) && isWordRune(last) && isWordRune(after))
		b.WriteString(rest[:i])
		if inWord {
			b.WriteString(secret)
		} else {
			b.WriteString(maskedText)
		}
		rest = rest[i+len(secret):]
	}
}

func isWordRune(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }

// MaskOutput returns out with every string (keys and values, at any depth) masked. The
// result is plain JSON values (maps, slices, strings, float64, bool), whatever structs the
// module returned, so the CLI and Ansible see the same object.
func (m *Masker) MaskOutput(out Output) Output {
	// A JSON round trip turns structs from the module into maps we can walk.
	b, err := json.Marshal(out)
	if err != nil {
		return Output{"failed": true, "msg": m.Mask("encode module result: " + err.Error())}
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		return Output{"failed": true, "msg": "decode module result: " + err.Error()}
	}
	return Output(m.walk(generic).(map[string]any))
}

func (m *Masker) walk(v any) any {
	switch x := v.(type) {
	case string:
		return m.Mask(x)
	case []any:
		for i := range x {
			x[i] = m.walk(x[i])
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			out[m.Mask(k)] = m.walk(val)
		}
		return out
	}
	return v
}

// Writer returns a writer that masks secrets in what passes through to w. Each Write is
// masked on its own: slog handlers write one record per call.
func (m *Masker) Writer(w io.Writer) io.Writer { return &maskWriter{m: m, w: w} }

type maskWriter struct {
	m *Masker
	w io.Writer
}

func (mw *maskWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(mw.w, mw.m.Mask(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}
