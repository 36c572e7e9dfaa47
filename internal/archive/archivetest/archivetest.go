// Package archivetest writes backup archives for tests with the real archive writer, laid
// out as a backup lays them out (SPEC §2).
package archivetest

import (
	"bytes"
	"context"
	"io/fs"
	"os"
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
