package archiveopts

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ssh"

	"flightctl.dr/internal/ansiblemod"
)

// trusted_keys holds allowed_signers lines, one per key: as the roles and an AAP credential
// give them, several lines with their line breaks. They were refused as "a newline".
func TestTrustedKeysTakeSeveralLines(t *testing.T) {
	var lines []string
	for _, who := range []string{"backup@site-a", "backup@site-b"} {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		sp, err := ssh.NewPublicKey(pub)
		require.NoError(t, err)
		lines = append(lines, who+" "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))))
	}
	raw := map[string]json.RawMessage{}
	b, err := json.Marshal(strings.Join(lines, "\n") + "\n")
	require.NoError(t, err)
	raw["trusted_keys"] = b
	var a Acceptance
	require.NoError(t, ansiblemod.Decode(raw, &a))
	sig, err := a.Signature()
	require.NoError(t, err)
	require.NotNil(t, sig.Trusted, "the keys are loaded")
}
