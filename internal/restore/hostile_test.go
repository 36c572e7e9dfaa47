package restore_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/signature"
	"flightctl.dr/internal/testbed"
)

// rawEntry is one entry of a hand-made archive (a hostile tool's, not our writer's).
type rawEntry struct {
	hdr  tar.Header
	body []byte
}

// writeRawArchive writes entries with archive/tar and compress/gzip, as any tool could,
// with a valid .sha256 beside it: only the content is hostile.
func writeRawArchive(t *testing.T, dir string, entries []rawEntry) string {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := e.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Now()
		}
		require.NoError(t, tw.WriteHeader(&h))
		if h.Size > int64(len(e.body)) {
			// The header claims more than is stored: the stream stops here.
			require.NoError(t, gz.Close())
			return writeWithSum(t, dir, buf.Bytes())
		}
		_, err := tw.Write(e.body)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	return writeWithSum(t, dir, buf.Bytes())
}

func writeWithSum(t *testing.T, dir string, data []byte) string {
	require.NoError(t, os.MkdirAll(dir, 0o700))
	name := archive.ArchiveName(time.Now())
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	sum := sha256.Sum256(data)
	require.NoError(t, os.WriteFile(p+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+name+"\n"), 0o644))
	return p
}

func rawFile(name string, body []byte) rawEntry {
	return rawEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(body))}, body: body}
}

func rawMetadata(dbIncluded bool) rawEntry {
	return rawFile("metadata.json", fmt.Appendf(nil, `{"timestamp":%q,"version":%q,"deploymentType":"podman","databaseIncluded":%v}`,
		time.Now().UTC().Format(time.RFC3339), testVersion, dbIncluded))
}

// createDump is what an operator gets from `pg_dump --create --clean`: it drops and
// recreates the database and \connects to it.
func (e *env) createDump(ctx context.Context) []byte {
	cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pg_dump", "--create", "--clean", "--if-exists",
		"-h", "127.0.0.1", "-p", fmt.Sprint(e.pg.Port), "-U", "admin", "-d", "flightctl")
	cmd.Env = append(os.Environ(), "PGPASSWORD=adminpass")
	out, err := cmd.Output()
	require.NoError(e.t, err)
	return out
}

// TestHostileArchivesRefused runs a corpus of hostile archives, each with a valid
// checksum, through verify and restore: both refuse it with the same words, no unit is
// stopped, no database but the temporary one is touched, and nothing is written outside
// the restore's staging.
func TestHostileArchivesRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	dump := string(e.dump(ctx))
	marker := filepath.Join(t.TempDir(), "pwned")
	preamble := "SET row_security = off;\n"
	afterPreamble := func(s string) []byte {
		return []byte(strings.Replace(dump, preamble, preamble+s, 1))
	}
	withRows := metadata()
	withRows.Extra = map[string]string{archive.ExtraDumpRowsPrefix + "devices": "999"}
	external := metadata()
	external.DatabaseIncluded = false
	zeros := make([]byte, 300<<20)
	big := rawFile("pki/huge.crt", nil)
	big.hdr.Size = 1 << 30
	longName := rawFile("pki/"+strings.Repeat("d/", 600)+"x.crt", []byte("x"))
	longName.hdr.Format = tar.FormatPAX
	badUTF := rawFile("pki/bad\xff.crt", []byte("x"))
	badUTF.hdr.Format = tar.FormatPAX

	type hostileCase struct {
		name string
		path func(dir string) string
		want string
	}
	ours := func(md archive.Metadata, d []byte) func(string) string {
		return func(dir string) string { return e.writeArchive(ctx, dir, md, d) }
	}
	raw := func(entries ...rawEntry) func(string) string {
		return func(dir string) string { return writeRawArchive(t, dir, entries) }
	}
	// The manifest says the dump is a byte shorter than it is (and the checksum matches).
	shrunk := func(dir string) string {
		p := e.writeArchive(ctx, dir, metadata(), []byte(dump))
		archivetest.TamperMetadata(t, p, func(md *archive.Metadata) {
			for i := range md.Manifest {
				if md.Manifest[i].Path == archive.DatabaseDump {
					md.Manifest[i].Size--
				}
			}
		})
		return p
	}
	cases := []hostileCase{
		{"shell before the restrict line", ours(metadata(), []byte("\\! touch "+marker+"\n"+dump)), `the psql meta-command \!`},
		{"shell after the preamble", ours(metadata(), afterPreamble("\\! touch "+marker+"\n")), `the psql meta-command \!`},
		{"superuser role", ours(metadata(), afterPreamble("CREATE ROLE x SUPERUSER;\n")), "it would change a role outside the database being restored"},
		{"drop the live database", ours(metadata(), []byte(strings.Replace(dump, "SET statement_timeout = 0;\n", "DROP DATABASE flightctl WITH (FORCE);\nSET statement_timeout = 0;\n", 1))), "it would change another database outside the database being restored"},
		{"pg_dump --create", ours(metadata(), e.createDump(ctx)), "another database"},
		{"alter system", ours(metadata(), afterPreamble("ALTER SYSTEM SET archive_command = 'touch "+marker+"';\n")), "server settings"},
		{"copy to program", ours(metadata(), afterPreamble("COPY public.devices TO PROGRAM 'touch "+marker+"';\n")), "never to or from a program or a file"},
		{"server file function", ours(metadata(), afterPreamble("CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/passwd') $$;\n")), `"pg_read_file"`},
		{"set role", ours(metadata(), afterPreamble("SET ROLE flightctl_app;\n")), "change who runs the rest of the dump"},
		{"do block", ours(metadata(), afterPreamble("DO $$ BEGIN PERFORM 1; END $$;\n")), "a DO block"},
		{"connect elsewhere", ours(metadata(), afterPreamble("\\connect postgres\n")), `the psql meta-command \connect`},
		{"truncated dump", ours(metadata(), []byte(dump[:len(dump)*2/3])), "truncated"},
		{"empty dump", ours(metadata(), []byte{}), "empty or holds only comments"},
		{"comment-only dump", ours(metadata(), []byte("--\n-- PostgreSQL database dump\n--\n\n")), "empty or holds only comments"},
		{"row counts differ", ours(withRows, []byte(dump)), "devices: the dump holds 20 rows, metadata.json says 999"},
		{"dump in an external-database archive", ours(external, []byte(dump)), "metadata.json says the database is not included (an external database) but the archive holds db/dump.sql"},
		{"1 GiB certificate", raw(rawMetadata(false), big), `archive entry "pki/huge.crt" brings the PKI to more than`},
		{"decompression bomb", raw(rawFile("volumes/pam-issuer-etc.tar", zeros), rawMetadata(false)), "the archive inflates to more than 200 times its compressed size"},
		{"newline in a name", raw(rawMetadata(false), rawFile("pki/a\nb.crt", []byte("x"))), "holds a control character (U+000A)"},
		{"invalid UTF-8 name", raw(rawMetadata(false), badUTF), "is not valid UTF-8"},
		{"dot slash name", raw(rawMetadata(false), rawFile("./pki/x", []byte("x"))), `archive entry "./pki/x" starts with "./"`},
		{"overlong PAX name", raw(rawMetadata(false), longName), "past the limit of 1024"},
		{"dotdot", raw(rawMetadata(false), rawFile("../escape", []byte("x"))), `has a ".." path component`},
		{"absolute", raw(rawMetadata(false), rawFile("/etc/passwd", []byte("x"))), "is an absolute path"},
		{"entry bigger than its manifest size", shrunk, fmt.Sprintf(`archive entry "db/dump.sql" is %d bytes but the manifest says %d: the archive was altered`, len(dump), len(dump)-1)},
		{"symlink", raw(rawMetadata(false), rawEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "pki", Linkname: "/etc", Mode: 0o777}}), "is a symbolic link"},
	}
	e.damage(ctx)
	before := e.snapshot(ctx)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			p := c.path(filepath.Join(t.TempDir(), "a"))

			_, verr := archive.Verify(ctx, p, archive.VerifyOptions{RequireChecksum: true, CheckDump: true})
			require.Error(t, verr, "verify refuses it")
			require.Contains(t, verr.Error(), c.want)
			ie, ok := archive.IsIntegrityError(verr)
			require.True(t, ok, "%v", verr)

			res, stopped, err := runWatchingStop(ctx, e.options(ctx, p))
			require.Error(t, err, "restore refuses it")
			require.Contains(t, err.Error(), c.want)
			require.Contains(t, err.Error(), ie.Detail, "restore refuses with verify's words")
			require.False(t, stopped, "no unit stopped")
			require.NoFileExists(t, marker, "nothing ran on the host")
			e.assertUnchanged(ctx, before)
			if res != nil && res.RestoreID != "" {
				require.True(t, res.RolledBack)
			}
			var roles int
			conn, cerr := e.pg.SuperuserConn(ctx, "postgres")
			require.NoError(t, cerr)
			require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE rolname = 'x'`).Scan(&roles))
			conn.Close(ctx)
			require.Zero(t, roles, "no role created")
			// Nothing but the journal and its lock in the state directory.
			ents, _ := os.ReadDir(e.cfg.StateDir)
			for _, en := range ents {
				require.Contains(t, []string{restore.JournalFile, "flightctl-restore.lock"}, en.Name())
			}
		})
	}
}

// A restore onto a host that lost its database creates it with the owner and grants the
// backup recorded, not with the defaults.
func TestRestoreOntoLostDatabaseKeepsGrants(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	md := metadata()
	md.Extra = map[string]string{archive.ExtraDBOwner: "admin", archive.ExtraDBACL: `["=Tc/admin","admin=CTc/admin","flightctl_app=c/admin","flightctl_migrator=C/admin"]`}
	p := e.writeArchive(ctx, filepath.Join(t.TempDir(), "a"), md, e.dump(ctx))
	conn, err := e.pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "DROP DATABASE flightctl WITH (FORCE)")
	require.NoError(t, err)
	conn.Close(ctx)

	_, err = restore.Run(ctx, e.options(ctx, p))
	require.NoError(t, err)
	require.Equal(t, e.privBefore, e.privileges(ctx, "flightctl"))
	require.Contains(t, e.privBefore, "flightctl_migrator=C/admin")
}

// signingKey makes an ed25519 key pair with ssh-keygen and returns its signer and an
// allowed_signers set trusting it.
func signingKey(t *testing.T, name string) (*signature.Signer, *signature.Trusted) {
	t.Helper()
	testbed.Need(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), name)
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key).CombinedOutput()
	require.NoError(t, err, string(out))
	s, err := signature.LoadSigner(key, "", "")
	require.NoError(t, err)
	pub, err := os.ReadFile(key + ".pub")
	require.NoError(t, err)
	tr, err := signature.LoadTrusted("", "backup "+string(pub))
	require.NoError(t, err)
	return s, tr
}

// With trusted keys, verify and restore check the signature before anything else:
// a good one restores, a wrong key, a missing signature (unless allowed) and the
// signature of another archive are refused with the same words, before anything stops.
func TestRestoreSignatures(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	signer, trusted := signingKey(t, "site-a")
	_, other := signingKey(t, "intruder")
	signed := e.writeArchive(ctx, filepath.Join(t.TempDir(), "signed"), metadata(), e.dump(ctx))
	_, err := signer.SignFile(signed)
	require.NoError(t, err)
	unsigned := e.writeArchive(ctx, filepath.Join(t.TempDir(), "unsigned"), metadata(), e.dump(ctx))
	stolen := e.writeArchive(ctx, filepath.Join(t.TempDir(), "stolen"), metadata(), e.dump(ctx))
	sig, err := os.ReadFile(signed + signature.Suffix)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(stolen+signature.Suffix, sig, 0o644))
	e.damage(ctx)
	before := e.snapshot(ctx)

	refusals := []struct {
		name, path string
		trusted    *signature.Trusted
		allow      bool
		want       string
	}{
		{"wrong key", signed, other, false, "which is not among the trusted keys"},
		{"unsigned", unsigned, trusted, false, "the archive is not signed (no " + unsigned + ".sig) but trusted keys are configured"},
		{"signature of another archive", stolen, trusted, false, "it does not match the archive (made for another archive, or the archive changed since it was signed)"},
		{"another archive's signature is not excused by allow_unsigned", stolen, trusted, true, "it does not match the archive"},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			so := archive.SignatureOptions{Trusted: c.trusted, AllowUnsigned: c.allow}
			_, verr := archive.Verify(ctx, c.path, archive.VerifyOptions{RequireChecksum: true, Signature: so})
			require.ErrorContains(t, verr, c.want)
			ie, ok := archive.IsIntegrityError(verr)
			require.True(t, ok)
			require.Equal(t, archive.KindSignature, ie.Kind)
			opts := e.options(ctx, c.path)
			opts.Signature = so
			_, stopped, err := runWatchingStop(ctx, opts)
			require.ErrorContains(t, err, ie.Detail)
			require.False(t, stopped)
			e.assertUnchanged(ctx, before)
		})
	}

	t.Run("unsigned allowed: the plan says so", func(t *testing.T) {
		e.t = t
		opts := e.options(ctx, unsigned)
		opts.Signature = archive.SignatureOptions{Trusted: trusted, AllowUnsigned: true}
		opts.CheckMode = true
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.True(t, res.Archive.Signature.UnsignedAllowed)
		require.Contains(t, strings.Join(res.Warnings, "\n"), "accepted only because allow_unsigned is set")
		e.assertUnchanged(ctx, before)
	})

	t.Run("good signature restores", func(t *testing.T) {
		e.t = t
		opts := e.options(ctx, signed)
		opts.Signature = archive.SignatureOptions{Trusted: trusted}
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		require.True(t, res.Archive.Signature.Signed)
		require.Equal(t, signer.Fingerprint(), res.Archive.Signature.Signer.Fingerprint)
		e.assertRestored(ctx)
	})
}
