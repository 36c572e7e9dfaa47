package retention

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEncryptedArchivesAreArchives: flightctl-backup-<time>.tar.gz.age is one of this
// tool's archives: listed with its checksum, counted by the policy (a verified encrypted
// archive is the newest verified one), pruned checksum first; names around it are not.
func TestEncryptedArchivesAreArchives(t *testing.T) {
	for _, n := range []string{"flightctl-backup-20261101T000000Z.tar.gz.age"} {
		ts, ok := ParseName(n)
		require.True(t, ok, n)
		assert.Equal(t, at("2026-11-01 00:00"), ts)
	}
	for _, n := range []string{"flightctl-backup-20261101T000000Z.tar.gz.age.partial", "flightctl-backup-20261101T000000Z.age", "flightctl-backup-20261101T000000Z.tar.gz.gpg", "flightctl-backup-20261101T000000Z.tar.gz.age.age"} {
		assert.False(t, IsArchiveName(n), n)
	}

	dir := t.TempDir()
	write := func(n, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte(content), 0o600))
	}
	sum := strings.Repeat("cd", 32)
	plain := name(at("2026-11-01 00:00"))
	enc1 := name(at("2026-11-02 00:00")) + ".age"
	enc2 := name(at("2026-11-03 00:00")) + ".age"
	for _, n := range []string{plain, enc1, enc2} {
		write(n, "x")
		write(n+".sha256", sum+"  "+n+"\n")
	}

	list, err := ListDir(dir)
	require.NoError(t, err)
	plan, err := Make(Policy{KeepLast: 1}, list, Options{Now: at("2026-12-01 00:00")})
	require.NoError(t, err)
	assert.Empty(t, plan.Ignored)
	assert.Equal(t, enc2, plan.NewestVerified, "a verified encrypted archive counts as good")
	assert.Equal(t, []string{enc1 + ".sha256", enc1, plain + ".sha256", plain}, plan.Deletions())
	_, err = DeleteInDir(context.Background(), dir, plan.Deletions())
	require.NoError(t, err)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	assert.Equal(t, []string{enc2, enc2 + ".sha256"}, left)
}
