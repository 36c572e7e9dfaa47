package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"filippo.io/age"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"flightctl.dr/internal/encrypt"
)

var encryptedNameRE = regexp.MustCompile(`^flightctl-backup-\d{8}T\d{6}Z\.tar\.gz\.age$`)

type testKey struct {
	ids *encrypt.Identities
	pub string
}

func newKey(t testing.TB) testKey {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	ids, err := encrypt.ParseIdentities(id.String())
	require.NoError(t, err)
	return testKey{ids: ids, pub: id.Recipient().String()}
}

func recipients(t testing.TB, keys ...testKey) *encrypt.Recipients {
	t.Helper()
	var pubs []string
	for _, k := range keys {
		pubs = append(pubs, k.pub)
	}
	r, err := encrypt.ParseRecipients(pubs)
	require.NoError(t, err)
	return r
}

// secretPKI is a PKI tree whose key is high-entropy binary: deflate stores it as it is,
// so a plain archive holds it verbatim and any plaintext leak shows it.
func secretPKI(t testing.TB) (string, []byte) {
	t.Helper()
	src := t.TempDir()
	secret := make([]byte, 8192)
	_, err := rand.Read(secret)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(src, "ca.key"), secret, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(src, "ca.crt"), []byte("-----BEGIN CERTIFICATE-----\n"), 0o644))
	return src, secret
}

// sqlDump is a plain-SQL dump as pg_dump writes it, about n bytes: one table whose COPY
// block holds rows of SQL-like text.
func sqlDump(seed uint64, n int) []byte {
	var b bytes.Buffer
	b.WriteString("--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n\n" +
		"--\n-- Name: t; Type: TABLE; Schema: public; Owner: admin\n--\n\nCREATE TABLE public.t (\n    a text\n);\n\n" +
		"--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: admin\n--\n\nCOPY public.t (a) FROM stdin;\n")
	text := textish(seed, n)
	for len(text) > 0 {
		l := min(len(text), 120)
		b.WriteString(strings.NewReplacer("\n", " ", "\t", " ", "\\", " ").Replace(string(text[:l])) + "\n")
		text = text[l:]
	}
	b.WriteString("\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n")
	return b.Bytes()
}

// writeArchiveTo writes an archive like a backup: a dump stream (its header rewritten
// in place at the end), a PKI tree and the service config.
func writeArchiveTo(t testing.TB, dir string, rec *encrypt.Recipients, blockSize int, pki string, dump []byte) *Result {
	t.Helper()
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, Now: func() time.Time { return fixedNow }, Concurrency: 2, blockSize: blockSize, Encryption: rec})
	require.NoError(t, err)
	defer w.Abort()
	require.NoError(t, w.AddDir("db", 0o755, time.Time{}))
	_, err = w.AddStream(DatabaseDump, 0o600, time.Time{}, bytes.NewReader(dump))
	require.NoError(t, err)
	if pki != "" {
		_, err = w.AddTree("pki", pki)
		require.NoError(t, err)
	}
	conf := []byte("db:\n  name: flightctl\n")
	require.NoError(t, w.AddFile("config/service-config.yaml", 0o600, time.Time{}, int64(len(conf)), bytes.NewReader(conf)))
	res, err := w.Commit(Metadata{Version: "v1.4.0", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	require.NoError(t, err)
	return res
}

// decryptFile decrypts an age file with the library, as `age -d` does.
func decryptFile(t testing.TB, p string, ids *encrypt.Identities, out string) {
	t.Helper()
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	r, err := encrypt.Decrypt(f, ids)
	require.NoError(t, err)
	o, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	defer o.Close()
	_, err = io.Copy(o, r)
	require.NoError(t, err)
}

func TestEncryptedRoundTrip(t *testing.T) {
	ctx := context.Background()
	ops, glass := newKey(t), newKey(t)
	pki, _ := secretPKI(t)
	dump := sqlDump(3, 700_000)
	for _, c := range []struct {
		name  string
		block int
		keys  []testKey
	}{{"one recipient", defaultBlockSize, []testKey{ops}}, {"two recipients, small blocks", 4096, []testKey{ops, glass}}} {
		t.Run(c.name, func(t *testing.T) {
			res := writeArchiveTo(t, t.TempDir(), recipients(t, c.keys...), c.block, pki, dump)
			require.Regexp(t, encryptedNameRE, filepath.Base(res.Path))
			require.Equal(t, res.Path+".sha256", res.ChecksumPath)
			st, err := os.Stat(res.Path)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
			require.Equal(t, res.Size, st.Size())
			// The checksum is of the encrypted file, in sha256sum's format.
			out := runTool(t, filepath.Dir(res.Path), "sha256sum", "-c", filepath.Base(res.ChecksumPath))
			require.Contains(t, out, ": OK")
			raw, err := os.ReadFile(res.Path)
			require.NoError(t, err)
			require.True(t, bytes.HasPrefix(raw, []byte(encrypt.Magic)))
			require.Equal(t, res.Metadata.ArchiveEncryption, &ArchiveEncryption{Format: "age", Recipients: recipients(t, c.keys...).Public})

			for i, k := range c.keys {
				rep, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, CheckDump: true, Decryption: k.ids})
				require.NoError(t, err, "key %d", i)
				require.True(t, rep.ChecksumVerified)
				require.Equal(t, res.SHA256, rep.SHA256)
				require.Equal(t, res.Metadata, rep.Metadata)
				require.True(t, rep.ArchiveEncryption.ContentsVerified)
				require.Equal(t, map[int]string{1: "1 X25519 key (age1…)", 2: "2 X25519 keys (age1…)"}[len(c.keys)], rep.ArchiveEncryption.RecipientTypes)
				require.True(t, rep.Components.Database && rep.Components.PKI && rep.Components.Config)

				md, err := ReadMetadataWith(ctx, res.Path, k.ids)
				require.NoError(t, err)
				require.Equal(t, rep.Metadata, *md)

				got := map[string][]byte{}
				wrep, err := VerifyWalk(ctx, res.Path, VerifyOptions{RequireChecksum: true, Decryption: k.ids, Manifest: md.Manifest}, func(hdr *tar.Header, name string, r io.Reader) error {
					b, err := io.ReadAll(r)
					got[name] = b
					return err
				})
				require.NoError(t, err)
				require.Equal(t, rep.Entries, wrep.Entries)
				require.Equal(t, dump, got[DatabaseDump])

				dest := filepath.Join(t.TempDir(), "x")
				_, err = Extract(ctx, res.Path, dest, VerifyOptions{RequireChecksum: true, Decryption: k.ids})
				require.NoError(t, err)
				b, err := os.ReadFile(filepath.Join(dest, "db", "dump.sql"))
				require.NoError(t, err)
				require.Equal(t, dump, b)
			}
		})
	}
}

func TestEncryptedWithPassphraseAndHybrid(t *testing.T) {
	ctx := context.Background()
	pass, err := encrypt.NewPassphrase("a long passphrase for a small site", 10)
	require.NoError(t, err)
	passID, err := encrypt.PassphraseIdentity("a long passphrase for a small site")
	require.NoError(t, err)
	pq, err := age.GenerateHybridIdentity()
	require.NoError(t, err)
	pqRec, err := encrypt.ParseRecipients([]string{pq.Recipient().String()})
	require.NoError(t, err)
	pqID, err := encrypt.ParseIdentities(pq.String())
	require.NoError(t, err)
	for _, c := range []struct {
		name  string
		rec   *encrypt.Recipients
		ids   *encrypt.Identities
		types string
	}{{"passphrase", pass, passID, "a passphrase"}, {"hybrid", pqRec, pqID, "1 post-quantum key (age1pq1…)"}} {
		t.Run(c.name, func(t *testing.T) {
			res := writeArchiveTo(t, t.TempDir(), c.rec, 4096, "", sqlDump(9, 200_000))
			rep, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, CheckDump: true, Decryption: c.ids})
			require.NoError(t, err)
			require.Equal(t, c.types, rep.ArchiveEncryption.RecipientTypes)
			require.Equal(t, c.rec.Public, rep.Metadata.ArchiveEncryption.Recipients)
			other := newKey(t)
			_, err = Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, Decryption: other.ids})
			ie, ok := IsIntegrityError(err)
			require.True(t, ok, "%v", err)
			require.Equal(t, KindEncryption, ie.Kind)
			require.Contains(t, err.Error(), c.types)
		})
	}
}

func TestEncryptedVerifyWithoutKeyChecksOnlyTheFile(t *testing.T) {
	ctx := context.Background()
	k := newKey(t)
	res := writeArchiveTo(t, t.TempDir(), recipients(t, k, newKey(t)), 4096, "", textish(1, 50_000))
	_, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true})
	ie, ok := IsIntegrityError(err)
	require.True(t, ok, "without CiphertextOnly an encrypted archive without a key is refused: %v", err)
	require.Equal(t, KindEncryption, ie.Kind)
	require.Contains(t, err.Error(), "decryption_identity_file")
	rep, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, CiphertextOnly: true})
	require.NoError(t, err)
	require.True(t, rep.ChecksumVerified)
	require.Equal(t, res.SHA256, rep.SHA256)
	require.False(t, rep.ArchiveEncryption.ContentsVerified)
	require.Equal(t, "2 X25519 keys (age1…)", rep.ArchiveEncryption.RecipientTypes)
	require.Len(t, rep.Warnings, 1)
	require.Contains(t, rep.Warnings[0], "decryption_identity_file")

	// Without the key a damaged file is still found.
	raw, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(res.Path, flipAt(raw, len(raw)/2), 0o600))
	_, err = Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, CiphertextOnly: true})
	ie, ok = IsIntegrityError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, KindChecksum, ie.Kind)

	// Every read that needs the contents refuses without a key, and says which option.
	require.NoError(t, os.WriteFile(res.Path, raw, 0o600))
	_, err = VerifyWalk(ctx, res.Path, VerifyOptions{RequireChecksum: true}, func(*tar.Header, string, io.Reader) error { return nil })
	ie, ok = IsIntegrityError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, KindEncryption, ie.Kind)
	require.Contains(t, err.Error(), "decryption_identity_file")
	_, err = ReadMetadataWith(ctx, res.Path, nil)
	require.ErrorContains(t, err, "decryption_identity_file")
	_, err = Extract(ctx, res.Path, filepath.Join(t.TempDir(), "x"), VerifyOptions{RequireChecksum: true})
	require.ErrorContains(t, err, "decryption_identity_file")
}

func flipAt(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x01
	return c
}

// TestEncryptedDamageRefused: a wrong key, a truncated, an extended or a byte-flipped
// encrypted archive is refused by every read, with the checksum file as written (the
// checksum catches it) and with one recomputed for the damaged file (age's
// authentication catches it).
func TestEncryptedDamageRefused(t *testing.T) {
	ctx := context.Background()
	k := newKey(t)
	res := writeArchiveTo(t, t.TempDir(), recipients(t, k), 4096, "", textish(5, 400_000))
	raw, err := os.ReadFile(res.Path)
	require.NoError(t, err)
	hdrLen := bytes.Index(raw, []byte("\n---")) + 60
	cases := map[string][]byte{
		"truncated":                raw[:len(raw)-1000],
		"truncated to a chunk":     raw[:hdrLen+16+encryptChunk+16],
		"extended":                 append(append([]byte(nil), raw...), make([]byte, 512)...),
		"byte flipped":             flipAt(raw, len(raw)/2),
		"byte flipped in the tail": flipAt(raw, len(raw)-5),
		"header flipped":           flipAt(raw, 40),
	}
	for name, b := range cases {
		for _, rehash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/rehashed=%v", name, rehash), func(t *testing.T) {
				dir := t.TempDir()
				p := filepath.Join(dir, filepath.Base(res.Path))
				require.NoError(t, os.WriteFile(p, b, 0o600))
				sum := res.SHA256
				if rehash {
					s := sha256.Sum256(b)
					sum = hex.EncodeToString(s[:])
				}
				require.NoError(t, os.WriteFile(p+".sha256", []byte(sum+"  "+filepath.Base(p)+"\n"), 0o644))
				opts := VerifyOptions{RequireChecksum: true, Decryption: k.ids}
				_, err := Verify(ctx, p, opts)
				ie, ok := IsIntegrityError(err)
				require.True(t, ok, "Verify: %v", err)
				if !rehash {
					require.Equal(t, KindChecksum, ie.Kind, "%v", err)
				}
				_, err = VerifyWalk(ctx, p, opts, func(*tar.Header, string, io.Reader) error { return nil })
				_, ok = IsIntegrityError(err)
				require.True(t, ok, "VerifyWalk: %v", err)
				_, err = Extract(ctx, p, filepath.Join(dir, "x"), opts)
				_, ok = IsIntegrityError(err)
				require.True(t, ok, "Extract: %v", err)
				require.NoDirExists(t, filepath.Join(dir, "x"))
			})
		}
	}
	t.Run("wrong key", func(t *testing.T) {
		other := newKey(t)
		for name, fn := range map[string]func() error{
			"Verify": func() error {
				_, err := Verify(ctx, res.Path, VerifyOptions{RequireChecksum: true, Decryption: other.ids})
				return err
			},
			"ReadMetadataWith": func() error { _, err := ReadMetadataWith(ctx, res.Path, other.ids); return err },
			"VerifyWalk": func() error {
				_, err := VerifyWalk(ctx, res.Path, VerifyOptions{RequireChecksum: true, Decryption: other.ids}, func(*tar.Header, string, io.Reader) error {
					return fmt.Errorf("no entry may be handed over")
				})
				return err
			},
		} {
			err := fn()
			ie, ok := IsIntegrityError(err)
			require.True(t, ok, "%s: %v", name, err)
			require.Equal(t, KindEncryption, ie.Kind, name)
			require.Contains(t, err.Error(), other.pub, name)
			require.Contains(t, err.Error(), "encryption_recipients", name)
		}
	})
}

const encryptChunk = encrypt.ChunkSize

// TestDecryptedArchiveIsAnUpstreamArchive: after age -d (here the library), the file is
// an upstream archive: read by compress/gzip and archive/tar as upstream's restore reads
// it, verified by our reader, with the checksum upstream's restore wants computable.
func TestDecryptedArchiveIsAnUpstreamArchive(t *testing.T) {
	ctx := context.Background()
	k := newKey(t)
	pki, secret := secretPKI(t)
	dump := sqlDump(11, 300_000)
	res := writeArchiveTo(t, t.TempDir(), recipients(t, k), 4096, pki, dump)
	dir := t.TempDir()
	plain := filepath.Join(dir, strings.TrimSuffix(filepath.Base(res.Path), EncryptedSuffix))
	require.Regexp(t, upstreamNameRE, filepath.Base(plain))
	decryptFile(t, res.Path, k.ids, plain)
	// sha256sum > .sha256, as operations.md says.
	out := runTool(t, dir, "sha256sum", filepath.Base(plain))
	require.NoError(t, os.WriteFile(plain+".sha256", []byte(out), 0o644))
	require.Contains(t, runTool(t, dir, "sha256sum", "-c", filepath.Base(plain)+".sha256"), ": OK")

	entries := readPlain(t, plain)
	require.Equal(t, dump, entries[DatabaseDump])
	require.Equal(t, secret, entries["pki/ca.key"])
	require.Contains(t, string(entries[MetadataName]), `"archiveEncryption"`)
	rep, err := Verify(ctx, plain, VerifyOptions{RequireChecksum: true, CheckDump: true})
	require.NoError(t, err)
	require.Nil(t, rep.ArchiveEncryption)
	require.Equal(t, res.Metadata, rep.Metadata)
	md, err := ReadMetadata(ctx, plain)
	require.NoError(t, err)
	require.Equal(t, res.Metadata, *md)
}

// watcher reads every file that appears or changes in its directories while a backup
// runs (inotify), and records any that holds one of the secrets.
type watcher struct {
	fd      int
	stopR   int
	stopW   int
	dirs    map[int]string
	secrets [][]byte
	mu      sync.Mutex
	seen    map[string]bool
	leaks   []string
	done    chan struct{}
}

func watch(t *testing.T, secrets [][]byte, dirs ...string) *watcher {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	require.NoError(t, err)
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
	w := &watcher{fd: fd, stopR: p[0], stopW: p[1], dirs: map[int]string{}, secrets: secrets, seen: map[string]bool{}, done: make(chan struct{})}
	for _, d := range dirs {
		wd, err := unix.InotifyAddWatch(fd, d, unix.IN_CREATE|unix.IN_MODIFY|unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO)
		require.NoError(t, err)
		w.dirs[wd] = d
	}
	go w.loop()
	return w
}

func (w *watcher) loop() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}, {Fd: int32(w.stopR), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			return
		}
		stopping := fds[1].Revents != 0
		for {
			n, err := unix.Read(w.fd, buf)
			if err != nil || n <= 0 {
				break
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := ""
				if ev.Len > 0 {
					raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
					name = strings.TrimRight(string(raw), "\x00")
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if name != "" {
					w.check(filepath.Join(w.dirs[int(ev.Wd)], name))
				}
			}
		}
		if stopping {
			return
		}
	}
}

func (w *watcher) check(p string) {
	b, err := os.ReadFile(p)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen[filepath.Base(p)] = true
	if err != nil {
		return // gone already (renamed or removed)
	}
	for _, s := range w.secrets {
		if bytes.Contains(b, s) {
			w.leaks = append(w.leaks, p)
		}
	}
}

// stop ends the watch, after the events queued so far, and returns what it saw.
func (w *watcher) stop() (seen map[string]bool, leaks []string) {
	_, _ = unix.Write(w.stopW, []byte{1})
	<-w.done
	unix.Close(w.fd)
	unix.Close(w.stopR)
	unix.Close(w.stopW)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen, w.leaks
}

// TestNoPlaintextOnDisk: while an encrypted archive is written, no file in the output
// directory or TMPDIR ever holds a plaintext byte of it: the watcher reads every file as
// it appears and changes (the hidden-name fallback is forced, so the file being written
// is visible too), and the secrets it looks for are a PKI key and the dump's tar header,
// which sits uncompressed in its own gzip member.
// The same run without encryption shows them, so the watch can see a leak.
func TestNoPlaintextOnDisk(t *testing.T) {
	forceNamedTemp = true
	t.Cleanup(func() { forceNamedTemp = false })
	pki, secret := secretPKI(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	secrets := [][]byte{secret[:4096], []byte(DatabaseDump + "\x00")}
	dump := textish(2, 2_000_000)

	run := func(rec *encrypt.Recipients) (string, map[string]bool, []string) {
		out := t.TempDir()
		w := watch(t, secrets, out, tmp)
		res := writeArchiveTo(t, out, rec, 64<<10, pki, dump)
		seen, leaks := w.stop()
		return res.Path, seen, leaks
	}
	plainPath, _, leaks := run(nil)
	require.NotEmpty(t, leaks, "the watch sees the plaintext of a plain archive")
	raw, err := os.ReadFile(plainPath)
	require.NoError(t, err)
	require.True(t, bytes.Contains(raw, secrets[1]), "the dump's tar header is stored uncompressed in a plain archive")

	k := newKey(t)
	path, seen, leaks := run(recipients(t, k))
	require.Empty(t, leaks, "no file ever held plaintext")
	var partial bool
	for name := range seen {
		switch {
		case strings.HasSuffix(name, ".partial") && strings.HasPrefix(name, ".flightctl-backup-"):
			partial = partial || !strings.Contains(name, ".sha256.")
		case name == filepath.Base(path), name == filepath.Base(path)+".sha256":
		case strings.HasPrefix(name, "."+filepath.Base(path)+".sha256."):
		case regexp.MustCompile(`^#\d+$`).MatchString(name):
			// An unnamed file (O_TMPFILE), as inotify names it: it has no name to open.
		default:
			t.Errorf("unexpected file %s", name)
		}
	}
	require.True(t, partial, "the file being written was watched: %v", seen)
	require.NotEmpty(t, seen)
	entries, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing is left in TMPDIR")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	for _, s := range secrets {
		require.False(t, bytes.Contains(b, s))
	}
}
