// Package archivetest writes backup archives for tests with the real archive writer, laid
// out as a backup lays them out (SPEC §2).
package archivetest

import (
	"archive/tar"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/encrypt"
)

// Dump is the smallest db/dump.sql a restore accepts: pg_dump's preamble, one table with
// one row, and its completion line.
const Dump = `--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: t; Type: TABLE; Schema: public; Owner: admin
--

CREATE TABLE public.t (
    a integer
);

--
-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: admin
--

COPY public.t (a) FROM stdin;
1
\.

--
-- PostgreSQL database dump complete
--

`

// Content is what a test archive holds; empty parts are left out.
type Content struct {
	Dump          []byte // db/dump.sql
	PKIDir        string // a tree copied to pki/
	EncryptionDir string // a tree copied to encryption/
	Config        []byte // config/service-config.yaml
	ConfigMode    fs.FileMode
	Volume        []byte // volumes/pam-issuer-etc.tar
	// Metadata is written as given; a zero Timestamp becomes now.
	Metadata archive.Metadata
	// Encryption, when set, encrypts the archive (flightctl-backup-<time>.tar.gz.age).
	Encryption *encrypt.Recipients
}

// Write commits an archive with content into dir (created if missing) and returns it.
func Write(t testing.TB, dir string, c Content) *archive.Result {
	t.Helper()
	ctx := context.Background()
	require.NoError(t, os.MkdirAll(dir, 0o700))
	w, err := archive.NewWriter(ctx, archive.WriterOptions{Dir: dir, Encryption: c.Encryption})
	require.NoError(t, err)
	now := time.Now()
	if c.Dump != nil {
		require.NoError(t, w.AddDir("db", 0o755, now))
		_, err = w.AddStream(archive.DatabaseDump, 0o600, now, bytes.NewReader(c.Dump))
		require.NoError(t, err)
	}
	for prefix, src := range map[string]string{"pki": c.PKIDir, "encryption": c.EncryptionDir} {
		if src != "" {
			_, err = w.AddTree(prefix, src)
			require.NoError(t, err)
		}
	}
	if c.Config != nil {
		mode := c.ConfigMode
		if mode == 0 {
			mode = 0o600
		}
		require.NoError(t, w.AddDir("config", 0o700, now))
		require.NoError(t, w.AddFile("config/service-config.yaml", mode, now, int64(len(c.Config)), bytes.NewReader(c.Config)))
	}
	if c.Volume != nil {
		require.NoError(t, w.AddDir("volumes", 0o700, now))
		require.NoError(t, w.AddFile("volumes/pam-issuer-etc.tar", 0o600, now, int64(len(c.Volume)), bytes.NewReader(c.Volume)))
	}
	md := c.Metadata
	if md.Timestamp.IsZero() {
		md.Timestamp = now.UTC()
	}
	res, err := w.Commit(md)
	require.NoError(t, err)
	return res
}

// Tamper rewrites the (plain) archive at path as someone with write access to the backup
// storage could: every entry passes through edit, which may change the header and returns
// the new content (nil: unchanged; the header's size follows it). The tar is then laid out
// again in the writer's gzip members (each carrying its length, so the tail of the archive
// can still be read on its own) and the checksum file rewritten to match.
func Tamper(t testing.TB, path string, edit func(hdr *tar.Header, body []byte) []byte) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	require.NoError(t, err)
	var out bytes.Buffer
	tr, tw := tar.NewReader(zr), tar.NewWriter(&out)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		body, err := io.ReadAll(tr)
		require.NoError(t, err)
		if nb := edit(hdr, body); nb != nil {
			body = nb
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(body))
		}
		require.NoError(t, tw.WriteHeader(hdr))
		_, err = tw.Write(body)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	packed := members(t, out.Bytes())
	require.NoError(t, os.WriteFile(path, packed, 0o600))
	sum := sha256.Sum256(packed)
	require.NoError(t, os.WriteFile(path+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+filepath.Base(path)+"\n"), 0o644))
}

// TamperMetadata rewrites metadata.json of the archive at path with edit (see Tamper).
func TamperMetadata(t testing.TB, path string, edit func(md *archive.Metadata)) {
	t.Helper()
	Tamper(t, path, func(hdr *tar.Header, body []byte) []byte {
		if hdr.Name != archive.MetadataName {
			return nil
		}
		var md archive.Metadata
		require.NoError(t, json.Unmarshal(body, &md))
		edit(&md)
		b, err := json.MarshalIndent(md, "", "  ")
		require.NoError(t, err)
		return b
	})
}

// members lays a tar stream out as the archive writer does: one gzip member per MiB, each
// with the FEXTRA subfield "FD" holding the member's length.
func members(t testing.TB, tarStream []byte) []byte {
	var out bytes.Buffer
	for len(tarStream) > 0 {
		block := tarStream[:min(len(tarStream), 1<<20)]
		tarStream = tarStream[len(block):]
		var deflated bytes.Buffer
		fw, err := flate.NewWriter(&deflated, flate.DefaultCompression)
		require.NoError(t, err)
		_, err = fw.Write(block)
		require.NoError(t, err)
		require.NoError(t, fw.Close())
		const headerLen, trailerLen = 10 + 2 + 4 + 8, 8
		m := []byte{0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff, 12, 0, 'F', 'D', 8, 0}
		m = binary.LittleEndian.AppendUint64(m, uint64(headerLen+deflated.Len()+trailerLen))
		m = append(m, deflated.Bytes()...)
		m = binary.LittleEndian.AppendUint32(m, crc32.ChecksumIEEE(block))
		m = binary.LittleEndian.AppendUint32(m, uint32(len(block)))
		out.Write(m)
	}
	return out.Bytes()
}
