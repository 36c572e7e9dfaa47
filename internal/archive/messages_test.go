package archive

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// Verifying an archive that does not exist used to complain about its missing .sha256.
func TestMissingArchiveIsReportedAsTheArchive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flightctl-backup-20260101T000000Z.tar.gz")
	for name, check := range map[string]func() error{
		"Verify": func() error {
			_, err := Verify(context.Background(), path, VerifyOptions{RequireChecksum: true})
			return err
		},
		"ChecksumOK": func() error {
			_, _, err := ChecksumOK(context.Background(), path, VerifyOptions{RequireChecksum: true})
			return err
		},
	} {
		err := check()
		require.Error(t, err, name)
		require.True(t, errors.Is(err, fs.ErrNotExist), "%s: %v", name, err)
		require.NotContains(t, err.Error(), ".sha256", name)
		require.Contains(t, err.Error(), path, name)
	}
}
