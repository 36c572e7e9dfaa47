package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
)

// requireTool skips (or fails under FLIGHTCTL_DR_REQUIRE_REAL=1) when a
// command-line tool is missing.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("FLIGHTCTL_DR_REQUIRE_REAL") == "1" {
			t.Fatalf("%s is required but not installed", name)
		}
		t.Skipf("%s is not installed", name)
	}
}

func runTool(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	requireTool(t, name)
	out, err := runner.Output(context.Background(), runner.Exec{}, runner.Cmd{Name: name, Args: args, Dir: dir})
	require.NoError(t, err, "%s %v", name, args)
	return string(out)
}

// tarEntry describes one entry of a hand-built archive.
type tarEntry struct {
	hdr  tar.Header
	body []byte
}

func file(name string, mode int64, body string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: time.Unix(1763708647, 0), Format: tar.FormatUSTAR}, body: []byte(body)}
}

func dir(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: time.Unix(1763708647, 0), Format: tar.FormatUSTAR}}
}

// upstreamMetadata is metadata.json as upstream writes it: four keys,
// 2-space indent, no trailing newline.
func upstreamMetadata(t testing.TB, deploymentType string, dbIncluded bool) string {
	t.Helper()
	meta := struct {
		Timestamp        time.Time `json:"timestamp"`
		Version          string    `json:"version"`
		DeploymentType   string    `json:"deploymentType"`
		DatabaseIncluded bool      `json:"databaseIncluded"`
	}{time.Date(2026, 11, 21, 7, 4, 7, 374766760, time.UTC), "v1.4.0-main-35-g089368a8a", deploymentType, dbIncluded}
	b, err := json.MarshalIndent(meta, "", "  ")
	require.NoError(t, err)
	return string(b)
}

// gzipTar encodes entries with archive/tar and compress/gzip at the default
// level, as upstream does.
func gzipTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := e.hdr
		require.NoError(t, tw.WriteHeader(&h))
		if h.Size > int64(len(e.body)) && (h.Typeflag == tar.TypeReg) {
			// A header that claims more than we store (a bomb): the stream ends here.
			require.NoError(t, gz.Close())
			return buf.Bytes()
		}
		if len(e.body) > 0 {
			_, err := tw.Write(e.body)
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	return buf.Bytes()
}

// writeArchive puts data in dir under the upstream name with a checksum file.
func writeArchive(t testing.TB, dir string, data []byte) string {
	t.Helper()
	name := ArchiveName(time.Date(2026, 11, 21, 7, 4, 7, 0, time.UTC))
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	sum := sha256.Sum256(data)
	require.NoError(t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+name+"\n"), 0o644))
	return p
}

// upstreamEntries is the layout of an upstream Podman backup: filepath.Walk
// order, directories without trailing slash.
func upstreamEntries(t testing.TB) []tarEntry {
	return []tarEntry{
		dir("config", 0o700),
		file("config/service-config.yaml", 0o600, "db:\n  name: flightctl\n"),
		dir("db", 0o755),
		file("db/dump.sql", 0o600, "--\n-- PostgreSQL database dump\n--\nSELECT 1;\n"),
		dir("encryption", 0o700),
		file("encryption/key", 0o600, "0123456789abcdef"),
		file("metadata.json", 0o600, upstreamMetadata(t, "podman", true)),
		dir("pki", 0o700),
		file("pki/ca.crt", 0o600, "-----BEGIN CERTIFICATE-----\n"),
		dir("pki/client-signer", 0o700),
		file("pki/client-signer/ca.key", 0o600, "-----BEGIN PRIVATE KEY-----\n"),
		dir("volumes", 0o700),
		file("volumes/pam-issuer-etc.tar", 0o600, string(make([]byte, 1024))),
	}
}

// listTree returns every path under root (relative, hidden files included)
// with its mode.
func listTree(t testing.TB, root string) map[string]fs.FileMode {
	t.Helper()
	out := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = info.Mode()
		return nil
	})
	require.NoError(t, err)
	return out
}

func names(m map[string]fs.FileMode) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// readPlain reads an archive the way upstream's restore does: compress/gzip
// and archive/tar, everything into memory.
func readPlain(t testing.TB, p string) map[string][]byte {
	t.Helper()
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	gz, err := gzip.NewReader(f)
	require.NoError(t, err)
	tr := tar.NewReader(gz)
	out := map[string][]byte{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		require.Contains(t, []byte{tar.TypeReg, tar.TypeDir}, hdr.Typeflag, hdr.Name)
		require.NotContains(t, out, hdr.Name, "duplicate entry")
		out[hdr.Name] = b
	}
	return out
}
