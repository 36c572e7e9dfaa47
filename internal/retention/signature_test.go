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

// TestSignaturesGoWithTheirArchives: an archive's signature (<archive>.sig, plain or
// encrypted archive) is listed with it, kept with it and removed after it (checksum,
// archive, signature); the signature of an archive that is gone is an orphan: not an
// archive, not ignored as a foreign name, removed last.
func TestSignaturesGoWithTheirArchives(t *testing.T) {
	dir := t.TempDir()
	write := func(n string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600))
	}
	sum := strings.Repeat("ab", 32)
	a1 := name(at("2026-11-01 00:00"))
	a2 := name(at("2026-11-02 00:00")) + ".age"
	a3 := name(at("2026-11-03 00:00"))
	for _, n := range []string{a1, a2, a3} {
		write(n)
		require.NoError(t, os.WriteFile(filepath.Join(dir, n+".sha256"), []byte(sum+"  "+n+"\n"), 0o600))
	}
	write(a1 + ".sig")
	write(a2 + ".sig")
	orphan := name(at("2026-10-01 00:00")) + ".sig"
	write(orphan)
	write("notes.sig")

	list, err := ListDir(dir)
	require.NoError(t, err)
	signed := map[string]bool{}
	var names []string
	for _, a := range list {
		names = append(names, a.Name)
		signed[a.Name] = a.Signed
	}
	assert.ElementsMatch(t, []string{a1, a2, a3, orphan, "notes.sig"}, names, "a signature beside its archive is not listed on its own")
	assert.True(t, signed[a1])
	assert.True(t, signed[a2])
	assert.False(t, signed[a3])

	plan, err := Make(Policy{KeepLast: 1}, list, Options{Now: at("2026-12-01 00:00")})
	require.NoError(t, err)
	assert.Len(t, plan.Decisions, 3)
	assert.Equal(t, []string{"notes.sig"}, plan.Ignored, "a signature of a name this tool does not write is foreign")
	assert.Equal(t, []string{orphan}, plan.OrphanSignatures)
	assert.Equal(t, []string{a2 + ".sha256", a2, a2 + ".sig", a1 + ".sha256", a1, a1 + ".sig", orphan}, plan.Deletions())
	assert.Contains(t, strings.Join(plan.Lines(), "\n"), "remove "+orphan+"  (signature of an archive that is no longer there)")

	_, err = DeleteInDir(context.Background(), dir, plan.Deletions())
	require.NoError(t, err)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	assert.ElementsMatch(t, []string{a3, a3 + ".sha256", "notes.sig"}, left)

	// Names that are not this tool's are refused, signatures included.
	_, err = DeleteInDir(context.Background(), dir, []string{"notes.sig"})
	require.Error(t, err)
	assert.FileExists(t, filepath.Join(dir, "notes.sig"))

	// A lister that gives the signature as a name of its own gets the same plan.
	plan, err = Make(Policy{KeepLast: 1}, []Archive{{Name: a3}, {Name: a1}, {Name: a1 + ".sig"}}, Options{Now: at("2026-12-01 00:00")})
	require.NoError(t, err)
	assert.Empty(t, plan.OrphanSignatures)
	assert.Equal(t, []string{a1 + ".sha256", a1, a1 + ".sig"}, plan.Deletions())
}
