package archive_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
)

func dumpBudget(bytes int64) archive.Budget {
	return archive.Budget{What: "the database dump", Bytes: bytes, From: "the free space in the database server's data directory",
		Advice: "free space there, then run the restore again", Holds: func(name string) bool { return name == archive.DatabaseDump }}
}

// An entry past a budget is refused from its header, before its content is read: the
// archive below stops right after the dump's header, yet the refusal is the budget's, not
// the truncation's. The manifest check (CheckMetadata, before the walk) refuses it in the
// same words.
func TestBudgetRefusedFromHeader(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: archive.DatabaseDump, Size: 4 << 20, Mode: 0o600, ModTime: time.Now()}))
	require.NoError(t, gz.Close())
	dir := t.TempDir()
	p := filepath.Join(dir, archive.ArchiveName(time.Now()))
	require.NoError(t, os.WriteFile(p, buf.Bytes(), 0o600))
	sum := sha256.Sum256(buf.Bytes())
	require.NoError(t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(p)+"\n"), 0o644))

	limits := archive.Limits{Budgets: []archive.Budget{dumpBudget(1 << 20)}}
	_, err := archive.Verify(context.Background(), p, archive.VerifyOptions{RequireChecksum: true, Limits: limits})
	want := `archive entry "db/dump.sql" brings the database dump to more than 1048576 bytes, past the budget of the free space in the database server's data directory: free space there, then run the restore again`
	require.ErrorContains(t, err, want)
	ie, ok := archive.IsIntegrityError(err)
	require.True(t, ok)
	require.Equal(t, archive.KindLimit, ie.Kind)

	// Without the budget the same archive is refused as truncated: the budget came first.
	_, err = archive.Verify(context.Background(), p, archive.VerifyOptions{RequireChecksum: true})
	require.ErrorContains(t, err, "truncated")

	md := &archive.Metadata{DatabaseIncluded: true, Manifest: []archive.ManifestEntry{
		{Path: "db", Type: archive.TypeDir}, {Path: archive.DatabaseDump, Type: archive.TypeFile, Size: 4 << 20}}}
	err = archive.CheckMetadata(md, limits)
	require.ErrorContains(t, err, ie.Detail, "the manifest is refused in the walk's words")

	// A budget is the sum of the entries it holds; the others draw on the ceiling only.
	two := archive.Budget{What: "the staged files", Bytes: 10, From: "the free space of /x", Advice: "free space there",
		Holds: func(name string) bool { return strings.HasPrefix(name, "pki/") }}
	md = &archive.Metadata{Manifest: []archive.ManifestEntry{
		{Path: "pki/a", Type: archive.TypeFile, Size: 6}, {Path: "config/c", Type: archive.TypeFile, Size: 100}, {Path: "pki/b", Type: archive.TypeFile, Size: 5}}}
	err = archive.CheckMetadata(md, archive.Limits{Budgets: []archive.Budget{two}})
	require.ErrorContains(t, err, `archive entry "pki/b" brings the staged files to more than 10 bytes, past the budget of the free space of /x`)
}

// An entry larger than its manifest entry says is refused from its header, by Verify as by
// a restore's walk and in the same words, before its content is read: the manifest is read
// from the archive's tail first. The dump below would otherwise be refused for its content.
func TestEntryBiggerThanManifestRefusedFromHeader(t *testing.T) {
	ctx := context.Background()
	dump := "\\! touch /tmp/never\n" + archivetest.Dump
	res := archivetest.Write(t, t.TempDir(), archivetest.Content{Dump: []byte(dump), Metadata: archive.Metadata{Version: "v1", DeploymentType: "podman", DatabaseIncluded: true}})
	archivetest.TamperMetadata(t, res.Path, func(md *archive.Metadata) {
		for i := range md.Manifest {
			if md.Manifest[i].Path == archive.DatabaseDump {
				md.Manifest[i].Size = 100
			}
		}
	})
	want := fmt.Sprintf(`archive entry "db/dump.sql" is %d bytes but the manifest says 100: the archive was altered, do not restore from it`, len(dump))

	_, err := archive.Verify(ctx, res.Path, archive.VerifyOptions{RequireChecksum: true, CheckDump: true})
	require.ErrorContains(t, err, want)
	ie, ok := archive.IsIntegrityError(err)
	require.True(t, ok)
	require.Equal(t, archive.KindManifest, ie.Kind)

	walked := false
	_, err = archive.VerifyWalk(ctx, res.Path, archive.VerifyOptions{RequireChecksum: true}, func(hdr *tar.Header, name string, r io.Reader) error {
		walked = walked || name == archive.DatabaseDump
		return nil
	})
	require.ErrorContains(t, err, ie.Detail)
	require.False(t, walked, "the dump's content never reached the caller")

	_, err = archive.Extract(ctx, res.Path, filepath.Join(t.TempDir(), "x"), archive.VerifyOptions{RequireChecksum: true})
	require.ErrorContains(t, err, ie.Detail)
}
