package restore

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sort"
	"strings"
)

// SetPasswords sets the password of each existing database user in passwords (user →
// password) and returns the users that do not exist. The statements travel on psql's
// stdin, never in argv, and carry a SCRAM-SHA-256 verifier computed here rather than the
// password, so that not even the server's statement log can show it. It is one psql
// script (one `podman exec` with container access): a DO block sets the password of each
// user that exists, then the existing users are listed.
func (d *PsqlDatabase) SetPasswords(ctx context.Context, passwords map[string]string) (missing []string, err error) {
	if len(passwords) == 0 {
		return nil, nil
	}
	users := make([]string, 0, len(passwords))
	for u := range passwords {
		users = append(users, u)
	}
	sort.Strings(users)
	lits := make([]string, len(users))
	var body strings.Builder
	body.WriteString("\nBEGIN\n")
	for i, u := range users {
		lits[i] = quoteLiteral(u)
		secret, err := scramVerifier(passwords[u])
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&body, "\tIF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN\n\t\tALTER ROLE %s WITH PASSWORD %s;\n\tEND IF;\n",
			lits[i], quoteIdent(u), quoteLiteral(secret))
	}
	body.WriteString("END\n")
	sql := "DO " + dollarQuote(body.String()) + ";\nSELECT rolname FROM pg_roles WHERE rolname IN (" + strings.Join(lits, ", ") + ") ORDER BY 1;\n"
	out, err := d.query(ctx, "postgres", sql)
	if err != nil {
		return nil, fmt.Errorf("set passwords: %w", err)
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			have[l] = true
		}
	}
	for _, u := range users {
		if !have[u] {
			missing = append(missing, u)
		}
	}
	return missing, nil
}

// scramVerifier is what PostgreSQL stores for password with SCRAM-SHA-256 (RFC 5802,
// 4096 iterations as PostgreSQL's own default). PostgreSQL normalises non-ASCII passwords
// with SASLprep first; for those the password itself is sent (still only on stdin).
func scramVerifier(password string) (string, error) {
	for _, r := range password {
		if r < 0x20 || r > 0x7e {
			return password, nil
		}
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	const iterations = 4096
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(mac(salted, "Server Key"))), nil
}
