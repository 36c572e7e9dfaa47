package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUpstreamArchiveVerifiesAndExtracts(t *testing.T) {
	dir := t.TempDir()
	p := writeArchive(t, dir, gzipTar(t, upstreamEntries(t)))
	rep, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: true, ExpectedDeploymentType: "podman", ExpectedVersion: "v1.4.0-main-35-g089368a8a"})
	require.NoError(t, err)
	assert.True(t, rep.ChecksumVerified)
	assert.False(t, rep.HasManifest)
	assert.Equal(t, Components{Database: true, PKI: true, Encryption: true, Config: true, Volumes: true}, rep.Components)
	assert.Equal(t, "podman", rep.Metadata.DeploymentType)
	assert.True(t, rep.Metadata.DatabaseIncluded)
	assert.Equal(t, 0, rep.Metadata.FormatVersion)
	assert.Len(t, rep.Entries, 13)
	assert.Contains(t, runTool(t, dir, "sha256sum", "-c", filepath.Base(p)+".sha256"), "OK")

	dest := filepath.Join(t.TempDir(), "x")
	_, err = Extract(context.Background(), p, dest, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	tree := listTree(t, dest)
	assert.Len(t, tree, 13)
	assert.Equal(t, os.FileMode(0o700)|os.ModeDir, tree["db"], "directories are created 0700")
	b, err := os.ReadFile(filepath.Join(dest, "pki/client-signer/ca.key"))
	require.NoError(t, err)
	assert.Equal(t, "-----BEGIN PRIVATE KEY-----\n", string(b))
}

func TestExpectations(t *testing.T) {
	dir := t.TempDir()
	p := writeArchive(t, dir, gzipTar(t, replaceMeta(t, upstreamEntries(t), upstreamMetadata(t, "kubernetes", true))))
	_, err := Verify(context.Background(), p, VerifyOptions{ExpectedDeploymentType: "podman"})
	require.EqualError(t, err, `archive integrity check failed: deployment type mismatch: archive was created on a "kubernetes" deployment but the current environment is "podman"; cross-deployment restore is not supported`)
	ie, ok := IsIntegrityError(err)
	require.True(t, ok)
	assert.Equal(t, KindDeploymentType, ie.Kind)
	_, err = Verify(context.Background(), p, VerifyOptions{ExpectedVersion: "v1.5.0"})
	require.ErrorContains(t, err, `version mismatch: archive was created by server version "v1.4.0-main-35-g089368a8a" but the expected version is "v1.5.0"`)
}

func replaceMeta(t testing.TB, entries []tarEntry, meta string) []tarEntry {
	var out []tarEntry
	for _, e := range entries {
		if e.hdr.Name == "metadata.json" {
			if meta == "" {
				continue
			}
			e = file("metadata.json", 0o600, meta)
		}
		out = append(out, e)
	}
	return out
}

func TestChecksumFile(t *testing.T) {
	data := gzipTar(t, upstreamEntries(t))
	cases := []struct {
		name    string
		content *string // nil: no file
		require bool
		wantErr string
	}{
		{name: "missing, required", require: true, wantErr: `cannot access checksum file "%s.sha256"`},
		{name: "missing, optional", require: false},
		{name: "malformed", content: ptr("abc  x\n"), wantErr: `checksum file "%s.sha256" is malformed: expected 64-character hex hash, got 3 characters`},
		{name: "not hex", content: ptr(strings.Repeat("z", 64) + "  x\n"), wantErr: "non-hex"},
		{name: "mismatch", content: ptr(strings.Repeat("0", 64) + "  x\n"), wantErr: `checksum mismatch for archive "%s": expected 0000000000000000000000000000000000000000000000000000000000000000, got `},
		{name: "uppercase accepted", content: ptr("UPPER")},
		{name: "empty", content: ptr(""), wantErr: "got 0 characters"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeArchive(t, dir, data)
			good, err := os.ReadFile(p + ".sha256")
			require.NoError(t, err)
			switch {
			case tc.content == nil:
				require.NoError(t, os.Remove(p+".sha256"))
			case *tc.content == "UPPER":
				require.NoError(t, os.WriteFile(p+".sha256", []byte(strings.ToUpper(string(good[:64]))+"  whatever\n"), 0o644))
			default:
				require.NoError(t, os.WriteFile(p+".sha256", []byte(*tc.content), 0o644))
			}
			rep, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: tc.require})
			dest := filepath.Join(t.TempDir(), "x")
			_, xerr := Extract(context.Background(), p, dest, VerifyOptions{RequireChecksum: tc.require})
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.NoError(t, xerr)
				assert.Equal(t, tc.content != nil, rep.ChecksumVerified)
				return
			}
			want := tc.wantErr
			if strings.Contains(want, "%s") {
				want = strings.ReplaceAll(want, "%s", p)
			}
			require.ErrorContains(t, err, want)
			require.ErrorContains(t, xerr, want)
			ie, ok := IsIntegrityError(err)
			require.True(t, ok)
			assert.Equal(t, KindChecksum, ie.Kind)
			assert.NoDirExists(t, dest, "nothing extracted before the checksum is checked")
		})
	}
}

func ptr(s string) *string { return &s }

func symlink(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: time.Unix(1, 0)}}
}

func special(name string, typ byte) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o600, ModTime: time.Unix(1, 0), Linkname: "metadata.json"}}
}

// evilCases are archives the reader must refuse, with the kind and a piece
// of the message that names the entry.
func evilCases(t testing.TB) []struct {
	name    string
	entries []tarEntry
	kind    ErrorKind
	msg     string
} {
	meta := file("metadata.json", 0o600, upstreamMetadata(t, "podman", false))
	big := file("pki/big", 0o600, "")
	big.hdr.Size = 70 << 30
	big.hdr.Format = tar.FormatGNU
	hugeCert := file("pki/huge.crt", 0o600, "")
	hugeCert.hdr.Size = 1 << 30
	longName := file("pki/"+strings.Repeat("d/", 600)+"x.crt", 0o600, "x")
	longName.hdr.Format = tar.FormatPAX
	longPart := file("pki/"+strings.Repeat("n", 300), 0o600, "x")
	longPart.hdr.Format = tar.FormatPAX
	utf := file("pki/bad\xff.crt", 0o600, "x")
	utf.hdr.Format = tar.FormatPAX
	newline := file("pki/a\nb.crt", 0o600, "x")
	bigKey := file("encryption/key", 0o600, strings.Repeat("k", 2<<20))
	bigConfig := file("config/service-config.yaml", 0o600, "")
	bigConfig.hdr.Size = 17 << 20
	return []struct {
		name    string
		entries []tarEntry
		kind    ErrorKind
		msg     string
	}{
		{"dotdot", []tarEntry{meta, file("../escape.txt", 0o600, "x")}, KindUnsafePath, `archive entry "../escape.txt" has a ".." path component: the archive is unsafe, do not restore from it`},
		{"dotdot inside", []tarEntry{meta, file("pki/../../escape.txt", 0o600, "x")}, KindUnsafePath, `"pki/../../escape.txt" has a ".." path component`},
		{"absolute", []tarEntry{meta, file("/tmp/abs.txt", 0o600, "x")}, KindUnsafePath, `archive entry "/tmp/abs.txt" is an absolute path`},
		{"symlink", []tarEntry{meta, symlink("pki", "/etc"), file("pki/x", 0o600, "x")}, KindEntryType, `archive entry "pki" is a symbolic link`},
		{"hardlink", []tarEntry{meta, special("pki/hard", tar.TypeLink)}, KindEntryType, `archive entry "pki/hard" is a hard link`},
		{"char device", []tarEntry{meta, special("dev/null", tar.TypeChar)}, KindEntryType, `archive entry "dev/null" is a character device`},
		{"block device", []tarEntry{meta, special("dev/sda", tar.TypeBlock)}, KindEntryType, `"dev/sda" is a block device`},
		{"fifo", []tarEntry{meta, special("pki/fifo", tar.TypeFifo)}, KindEntryType, `archive entry "pki/fifo" is a FIFO`},
		{"duplicate", []tarEntry{meta, file("pki/a", 0o600, "x"), file("pki/a", 0o600, "y")}, KindDuplicate, `archive entry "pki/a" appears twice`},
		{"duplicate metadata", []tarEntry{meta, meta}, KindDuplicate, `archive entry "metadata.json" appears twice`},
		{"file as dir", []tarEntry{meta, file("pki", 0o600, "x"), file("pki/a", 0o600, "y")}, KindDuplicate, `archive entry "pki/a" is inside "pki", which is a file`},
		{"dir then file", []tarEntry{meta, file("pki/a/b", 0o600, "y"), file("pki/a", 0o600, "x")}, KindDuplicate, `archive entry "pki/a" is a file but earlier entries use it as a directory`},
		{"entry too big", []tarEntry{meta, big}, KindLimit, `archive entry "pki/big" is 75161927680 bytes, past the limit`},
		{"no metadata", []tarEntry{file("db/dump.sql", 0o600, "x")}, KindMetadata, "the archive has no metadata.json"},
		{"bad metadata json", []tarEntry{file("metadata.json", 0o600, "{not json")}, KindMetadata, "metadata.json is not a JSON object"},
		{"metadata missing key", []tarEntry{file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman"}`)}, KindMetadata, `metadata.json has no "databaseIncluded" key`},
		{"metadata bad type", []tarEntry{file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"docker","databaseIncluded":false}`)}, KindMetadata, `metadata.json has deploymentType "docker"`},
		{"metadata bad time", []tarEntry{file("metadata.json", 0o600, `{"timestamp":"yesterday","version":"v1","deploymentType":"podman","databaseIncluded":false}`)}, KindMetadata, "metadata.json is malformed"},
		{"metadata db without dump", []tarEntry{file("metadata.json", 0o600, upstreamMetadata(t, "podman", true))}, KindMetadata, "says the database is included but the archive has no db/dump.sql"},
		{"future format", []tarEntry{file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":99}`)}, KindMetadata, "archive format version 99 is newer"},
		{"dot slash name", []tarEntry{meta, file("./pki/x", 0o600, "x")}, KindUnsafePath, `archive entry "./pki/x" starts with "./": flightctl-backup and upstream's flightctl-backup write names without it ("pki/x")`},
		{"overlong PAX name", []tarEntry{meta, longName}, KindUnsafePath, `has a name of 1209 bytes, past the limit of 1024`},
		{"overlong name component", []tarEntry{meta, longPart}, KindUnsafePath, `has a path component of 300 bytes, past the 255 a file name can have`},
		{"invalid UTF-8 name", []tarEntry{meta, utf}, KindUnsafePath, `archive entry "pki/bad\xff.crt" is not valid UTF-8`},
		{"newline in name", []tarEntry{meta, newline}, KindUnsafePath, `archive entry "pki/a\nb.crt" holds a control character (U+000A)`},
		{"1 GiB certificate", []tarEntry{meta, hugeCert}, KindLimit, `archive entry "pki/huge.crt" brings the PKI to more than 67108864 bytes, past its limit`},
		{"big encryption key", []tarEntry{meta, bigKey}, KindLimit, `archive entry "encryption/key" brings the encryption keys to more than 1048576 bytes`},
		{"big config", []tarEntry{meta, bigConfig}, KindLimit, `archive entry "config/service-config.yaml" brings the service configuration to more than 16777216 bytes`},
		{"dump without databaseIncluded", []tarEntry{file("db/dump.sql", 0o600, "x"), meta}, KindMetadata, "metadata.json says the database is not included (an external database) but the archive holds db/dump.sql"},
		{"manifest missing entry", []tarEntry{file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":1,"manifest":[{"path":"pki/a","type":"file","size":1,"mode":"0600","sha256":"00"}]}`)}, KindManifest, `archive entry "pki/a" is listed in the manifest but missing`},
		{"manifest unlisted entry", []tarEntry{file("pki/b", 0o600, "x"), file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":1,"manifest":[]}`)}, KindManifest, `archive entry "pki/b" is not listed in the manifest`},
		{"manifest wrong hash", []tarEntry{file("pki/a", 0o600, "x"), file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":1,"manifest":[{"path":"pki/a","type":"file","size":1,"mode":"0600","sha256":"0000000000000000000000000000000000000000000000000000000000000000"}]}`)}, KindManifest, `archive entry "pki/a" has sha256 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881 but the manifest says 0000`},
		{"manifest wrong size", []tarEntry{file("pki/a", 0o600, "x"), file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":1,"manifest":[{"path":"pki/a","type":"file","size":2,"mode":"0600","sha256":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}]}`)}, KindManifest, `archive entry "pki/a" is 1 bytes but the manifest says 2`},
		{"entry bigger than its manifest size", []tarEntry{file("pki/a", 0o600, "xx"), file("metadata.json", 0o600, `{"timestamp":"2026-01-01T00:00:00Z","version":"v1","deploymentType":"podman","databaseIncluded":false,"formatVersion":1,"manifest":[{"path":"pki/a","type":"file","size":1,"mode":"0600","sha256":"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}]}`)}, KindManifest, `archive entry "pki/a" is 2 bytes but the manifest says 1: the archive was altered, do not restore from it`},
	}
}

func TestEvilArchivesRefused(t *testing.T) {
	for _, tc := range evilCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeArchive(t, dir, gzipTar(t, tc.entries))
			_, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: true})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.msg)
			ie, ok := IsIntegrityError(err)
			require.True(t, ok, "%T %v", err, err)
			assert.Equal(t, tc.kind, ie.Kind)

			// Extract refuses too, writes nothing outside and leaves nothing inside.
			parent := t.TempDir()
			dest := filepath.Join(parent, "root")
			_, xerr := Extract(context.Background(), p, dest, VerifyOptions{RequireChecksum: true})
			require.Error(t, xerr)
			assert.Contains(t, xerr.Error(), tc.msg)
			assert.Empty(t, listTree(t, parent), "nothing left after a refused extraction")
			assert.Equal(t, []string{filepath.Base(p), filepath.Base(p) + ".sha256"}, names(listTree(t, dir)))
		})
	}
}

func TestLimits(t *testing.T) {
	dir := t.TempDir()
	entries := upstreamEntries(t)
	p := writeArchive(t, dir, gzipTar(t, entries))
	_, err := Verify(context.Background(), p, VerifyOptions{Limits: Limits{MaxEntries: 5}})
	require.ErrorContains(t, err, "is past the limit of 5 entries")
	_, err = Verify(context.Background(), p, VerifyOptions{Limits: Limits{MaxEntrySize: 100}})
	require.ErrorContains(t, err, `archive entry "metadata.json" is 150 bytes, past the limit of 100 per entry`)
	_, err = Verify(context.Background(), p, VerifyOptions{Limits: Limits{MaxTotalSize: 1100}})
	require.ErrorContains(t, err, "past the limit of 1100 bytes in total")
	ie, ok := IsIntegrityError(err)
	require.True(t, ok)
	assert.Equal(t, KindLimit, ie.Kind)
}

// A decompression bomb: a small archive whose entry inflates far past the
// limit is refused from its header, before it is inflated.
func TestDecompressionBomb(t *testing.T) {
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "db/dump.sql", Size: 200 << 20, Mode: 0o600}))
	zeros := make([]byte, 1<<20)
	for range 200 {
		_, err := tw.Write(zeros)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	p := writeArchive(t, t.TempDir(), buf.Bytes())
	parent := t.TempDir()
	_, err := Extract(context.Background(), p, filepath.Join(parent, "r"), VerifyOptions{Limits: Limits{MaxEntrySize: 10 << 20}})
	require.ErrorContains(t, err, `archive entry "db/dump.sql" is 209715200 bytes, past the limit of 10485760 per entry`)
	assert.Empty(t, listTree(t, parent))
}

func TestExtractDestination(t *testing.T) {
	p := writeArchive(t, t.TempDir(), gzipTar(t, upstreamEntries(t)))
	notEmpty := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(notEmpty, "x"), nil, 0o600))
	_, err := Extract(context.Background(), p, notEmpty, VerifyOptions{})
	require.ErrorContains(t, err, "is not empty")

	parent := t.TempDir()
	link := filepath.Join(parent, "link")
	require.NoError(t, os.Symlink(t.TempDir(), link))
	_, err = Extract(context.Background(), p, link, VerifyOptions{})
	require.ErrorContains(t, err, "is a symbolic link, not a directory")

	empty := t.TempDir()
	_, err = Extract(context.Background(), p, empty, VerifyOptions{})
	require.NoError(t, err)
	assert.Len(t, listTree(t, empty), 13)
}

// Every flipped byte of an archive is refused, by the checksum, before
// anything is written.
func TestFlippedByteRefused(t *testing.T) {
	out := t.TempDir()
	w := newTestWriter(t, out, 0)
	require.NoError(t, w.AddFile("pki/ca.crt", 0o600, time.Time{}, 4, strings.NewReader("cert")))
	_, err := w.AddStream("db/dump.sql", 0o600, time.Time{}, strings.NewReader("SELECT 1;\n"))
	require.NoError(t, err)
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	good, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	upstream := gzipTar(t, upstreamEntries(t))

	for name, data := range map[string][]byte{"ours": good, "upstream": upstream} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeArchive(t, dir, data)
			bad := bytes.Clone(data)
			structural := 0
			for i := range bad {
				bad[i] ^= 0x01
				require.NoError(t, os.WriteFile(p, bad, 0o600))
				_, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: true})
				ie, ok := IsIntegrityError(err)
				require.True(t, ok, "flip at %d: %v", i, err)
				require.Equal(t, KindChecksum, ie.Kind, "flip at %d", i)
				require.Contains(t, err.Error(), "checksum mismatch", "flip at %d", i)
				// Without the checksum file the structure checks still catch most flips.
				if _, err := Verify(context.Background(), p, VerifyOptions{ChecksumFile: p + ".absent"}); err != nil {
					structural++
				}
				bad[i] ^= 0x01
			}
			t.Logf("%s: %d bytes, every flip refused by the checksum, %d also by structure alone", name, len(data), structural)
			assert.Greater(t, structural, len(data)*8/10)
		})
	}
	dest := filepath.Join(t.TempDir(), "r")
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x80
	p := writeArchive(t, t.TempDir(), good)
	require.NoError(t, os.WriteFile(p, bad, 0o600))
	_, err = Extract(context.Background(), p, dest, VerifyOptions{RequireChecksum: true})
	require.ErrorContains(t, err, "checksum mismatch")
	assert.NoDirExists(t, dest)
}

func TestTruncatedArchiveRefused(t *testing.T) {
	data := gzipTar(t, upstreamEntries(t))
	for _, n := range []int{0, 5, 10, 100, len(data) / 2, len(data) - 9, len(data) - 1} {
		dir := t.TempDir()
		p := writeArchive(t, dir, data[:n])
		_, err := Verify(context.Background(), p, VerifyOptions{})
		require.Error(t, err, "truncated to %d", n)
		_, ok := IsIntegrityError(err)
		assert.True(t, ok, "truncated to %d: %v", n, err)
	}
}

// A stream that starts with members of ours and goes on with a plain gzip
// member (as if concatenated by another tool) is read whole.
func TestMixedGzipMembers(t *testing.T) {
	hdr, err := tarHeader("extra", '5', 0o700, fixedNow, 0, true)
	require.NoError(t, err)
	data := append(storedMember(hdr), gzipTar(t, upstreamEntries(t))...)
	p := writeArchive(t, t.TempDir(), data)
	rep, err := Verify(context.Background(), p, VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	assert.Len(t, rep.Entries, 14)
	assert.Equal(t, "extra", rep.Entries[0].Path)

	// A truncated member of ours is refused.
	p = writeArchive(t, t.TempDir(), storedMember(hdr)[:100])
	_, err = Verify(context.Background(), p, VerifyOptions{})
	ie, ok := IsIntegrityError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, KindStructure, ie.Kind)
}

// An archive that inflates a thousand times is refused by its expansion as soon as it
// passes the floor, by verify too, although every entry is within the size limits.
func TestExpansionLimit(t *testing.T) {
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(gz)
	const size = 256 << 20
	require.NoError(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "db/dump.sql", Size: size, Mode: 0o600}))
	zeros := make([]byte, 1<<20)
	for range size >> 20 {
		_, err := tw.Write(zeros)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	p := writeArchive(t, t.TempDir(), buf.Bytes())
	read := 0
	_, err := VerifyWalk(context.Background(), p, VerifyOptions{}, func(hdr *tar.Header, name string, r io.Reader) error {
		n, err := io.Copy(io.Discard, r)
		read += int(n)
		return err
	})
	require.ErrorContains(t, err, "the archive inflates to more than 200 times its compressed size")
	require.ErrorContains(t, err, "decompression bomb")
	ie, ok := IsIntegrityError(err)
	require.True(t, ok)
	require.Equal(t, KindLimit, ie.Kind)
	require.Less(t, read, size/2, "refused as soon as it shows, not at the end")

	// The limit is an option: an operator who knows the data can raise it.
	_, err = Verify(context.Background(), p, VerifyOptions{Limits: Limits{MaxExpansion: 1e6}})
	require.NotContains(t, fmt.Sprint(err), "inflates")
}
