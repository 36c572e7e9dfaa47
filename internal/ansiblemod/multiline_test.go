package ansiblemod

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

type multilineOptions struct {
	Key   string `ansible:"key,secret,multiline"`
	Lines string `ansible:"lines,multiline"`
	Label string `ansible:"label"`
}

// A private key or an allowed_signers file is lines by nature: options tagged multiline take
// line breaks (an AAP credential injects a key with them); NUL stays refused, and so do line
// breaks everywhere else.
func TestMultilineOptionsTakeLineBreaks(t *testing.T) {
	decode := func(js string) error {
		var raw map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(js), &raw))
		return Decode(raw, &multilineOptions{})
	}
	require.NoError(t, decode(`{"key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n", "lines": "a ssh-ed25519 AAAA\r\nb ssh-ed25519 BBBB\n"}`))
	err := decode(`{"key": "a\u0000b"}`)
	require.Error(t, err)
	require.Contains(t, err.Error(), "key contains a NUL byte")
	require.NotContains(t, err.Error(), "a\x00b")
	err = decode(`{"label": "a\nb"}`)
	require.Error(t, err)
	require.Contains(t, err.Error(), "label contains a newline")
}
