package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeOurs writes an archive with a dump of dumpSize bytes in small members,
// so the dump spans many of them.
func writeOurs(t *testing.T, blockSize, dumpSize int) *Result {
	t.Helper()
	w := newTestWriter(t, t.TempDir(), blockSize)
	require.NoError(t, w.AddDir("db", 0o755, time.Time{}))
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, bytes.NewReader(textish(7, dumpSize)))
	require.NoError(t, err)
	conf := []byte("db:\n  name: flightctl\n")
	require.NoError(t, w.AddFile("config/service-config.yaml", 0o600, time.Time{}, int64(len(conf)), bytes.NewReader(conf)))
	res, err := w.Commit(Metadata{Version: "v1.4.0", DeploymentType: DeploymentPodman, DatabaseIncluded: true,
		Extra: map[string]string{"padding": string(bytes.Repeat([]byte("x"), 3000))}})
	require.NoError(t, err)
	return res
}

func TestReadMetadataEqualsVerify(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name           string
		block, dumpLen int
	}{{"small-blocks", 4096, 900_000}, {"default-blocks", defaultBlockSize, 3_000_000}, {"tiny", 4096, 10}} {
		t.Run(c.name, func(t *testing.T) {
			res := writeOurs(t, c.block, c.dumpLen)
			md, err := ReadMetadata(ctx, res.Path)
			require.NoError(t, err)
			rep, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true})
			require.NoError(t, err)
			require.Equal(t, rep.Metadata, *md)
			require.NotEmpty(t, md.Manifest)

			sum, size, err := ChecksumOK(ctx, res.Path, VerifyOptions{})
			require.NoError(t, err)
			require.Equal(t, res.SHA256, sum)
			require.Equal(t, res.Size, size)
		})
	}
}

func TestReadMetadataUpstreamLayoutIsSentinel(t *testing.T) {
	p := writeArchive(t, t.TempDir(), gzipTar(t, upstreamEntries(t)))
	_, err := ReadMetadata(context.Background(), p)
	require.ErrorIs(t, err, ErrNoQuickMetadata)
}

func TestReadMetadataCorruptTail(t *testing.T) {
	res := writeOurs(t, 4096, 200_000)
	data, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	// Inside the last member's deflate data (past its header, before its trailer).
	data[len(data)-memberTrailer-20] ^= 0xff
	p := filepath.Join(t.TempDir(), "tail.tar.gz")
	require.NoError(t, os.WriteFile(p, data, 0o600))
	_, err = ReadMetadata(context.Background(), p)
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrNoQuickMetadata), "a damaged tail is an error, not a layout to fall back from: %v", err)

	// Truncated: the last member is cut.
	require.NoError(t, os.WriteFile(p, data[:len(data)-3], 0o600))
	_, err = ReadMetadata(context.Background(), p)
	_, isIntegrity := IsIntegrityError(err)
	require.True(t, isIntegrity, "truncation is an integrity error: %v", err)
}

// forge writes a copy of the archive with one byte flipped in the middle and a
// checksum file that matches the damaged copy.
func forge(t *testing.T, res *Result) string {
	data, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	data[len(data)/2] ^= 0xff
	p := filepath.Join(t.TempDir(), filepath.Base(res.Path))
	require.NoError(t, os.WriteFile(p, data, 0o600))
	sum := sha256.Sum256(data)
	require.NoError(t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(p)+"\n"), 0o644))
	return p
}

func TestVerifyWalk(t *testing.T) {
	ctx := context.Background()
	res := writeOurs(t, 4096, 500_000)

	t.Run("hands every entry and checks like Verify", func(t *testing.T) {
		got := map[string]int{}
		rep, err := VerifyWalk(ctx, res.Path, VerifyOptions{RequireChecksum: true}, func(hdr *tar.Header, name string, r io.Reader) error {
			if name == DatabaseDump {
				n, err := io.Copy(io.Discard, r)
				got[name] = int(n)
				return err
			}
			got[name] = -1 // left unread: the walk reads it for the checks
			return nil
		})
		require.NoError(t, err)
		want, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true})
		require.NoError(t, err)
		require.Equal(t, want, rep)
		require.Equal(t, 500_000, got[DatabaseDump])
		require.Contains(t, got, MetadataName)
	})

	t.Run("forged checksum: the damage is found", func(t *testing.T) {
		p := forge(t, res)
		_, _, err := ChecksumOK(ctx, p, VerifyOptions{})
		require.NoError(t, err, "the forged checksum matches")
		_, err = VerifyWalk(ctx, p, VerifyOptions{RequireChecksum: true}, func(hdr *tar.Header, name string, r io.Reader) error {
			_, err := io.Copy(io.Discard, r)
			return err
		})
		_, isIntegrity := IsIntegrityError(err)
		require.True(t, isIntegrity, "%v", err)
		require.Contains(t, err.Error(), "archive integrity check failed")
	})

	// fnFailsInTheDump fails fn a little way into the dump, as psql would.
	fnFailsInTheDump := func(t *testing.T) {
		t.Helper()
		boom := errors.New("psql failed")
		_, err := VerifyWalk(ctx, res.Path, VerifyOptions{RequireChecksum: true}, func(hdr *tar.Header, name string, r io.Reader) error {
			if name == DatabaseDump {
				_, _ = io.CopyN(io.Discard, r, 1000)
				return boom
			}
			return nil
		})
		require.Equal(t, boom, err)
	}
	t.Run("an error of fn is returned as it is", fnFailsInTheDump)

	t.Run("an error of fn is returned as it is when the scan stops before fn's goroutine reports it", func(t *testing.T) {
		// The interleaving a loaded machine produces now and then: fn has
		// failed and closed its end, the scan fails on its next write and
		// aborts the entry, and only then does fn's goroutine report.
		walkFnFailedHook = func(aborting <-chan struct{}) { <-aborting }
		t.Cleanup(func() { walkFnFailedHook = nil })
		fnFailsInTheDump(t)
	})

	t.Run("checksum mismatch", func(t *testing.T) {
		p := forge(t, res)
		require.NoError(t, os.WriteFile(p+".sha256", []byte(res.SHA256+"  x\n"), 0o644))
		_, _, err := ChecksumOK(ctx, p, VerifyOptions{})
		require.ErrorContains(t, err, "checksum mismatch")
	})
}
