package wrap

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPrefixOnce(t *testing.T) {
	inner := errors.New("checksum mismatch")
	once := Prefix("archive integrity check failed", inner)
	require.EqualError(t, once, "archive integrity check failed: checksum mismatch")
	twice := Prefix("archive integrity check failed", once)
	require.EqualError(t, twice, "archive integrity check failed: checksum mismatch")
	require.ErrorIs(t, twice, inner)
	require.EqualError(t, Prefix("stop units", errors.New("stop units failed (a: timeout)")), "stop units failed (a: timeout)")
	require.EqualError(t, Prefix("restore", fs.ErrNotExist), "restore: file does not exist")
	require.NoError(t, Prefix("x", nil))
}
