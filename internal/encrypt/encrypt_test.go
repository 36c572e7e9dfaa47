package encrypt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
)

func x25519(t testing.TB) (*age.X25519Identity, string) {
	id, err := age.GenerateX25519Identity()
	require.NoError(t, err)
	return id, id.Recipient().String()
}

func plaintext(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
	}
	return b
}

// writeFile encrypts data to rec through Writer, holding and patching the ranges given
// (their final bytes are in data; zeros are written first), in writes of step bytes.
func writeFile(t testing.TB, rec *Recipients, data []byte, step int, patches [][2]int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "out.age")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	require.NoError(t, err)
	defer f.Close()
	w, err := NewWriter(f, rec)
	require.NoError(t, err)
	next := 0 // patches are in order
	for off := 0; off < len(data); {
		if next < len(patches) && patches[next][0] == off {
			l := patches[next][1]
			require.NoError(t, w.Hold(int64(off), int64(l)))
			_, err := w.Write(make([]byte, l))
			require.NoError(t, err)
			off += l
			next++
			continue
		}
		n := min(step, len(data)-off)
		if next < len(patches) {
			n = min(n, patches[next][0]-off)
		}
		_, err := w.Write(data[off : off+n])
		require.NoError(t, err)
		off += n
	}
	for _, pr := range patches {
		require.NoError(t, w.Patch(int64(pr[0]), data[pr[0]:pr[0]+pr[1]]))
	}
	require.NoError(t, w.Close())
	sum, err := w.Sum()
	require.NoError(t, err)
	raw, err := os.ReadFile(p)
	require.NoError(t, err)
	want := sha256.Sum256(raw)
	require.Equal(t, want[:], sum, "Sum is the sha256 of the file as written")
	require.Equal(t, int64(len(raw)), w.Size())
	return p
}

func decryptAll(t testing.TB, p string, ids ...age.Identity) []byte {
	t.Helper()
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	r, err := age.Decrypt(f, ids...)
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

func TestWriterRoundTripsThroughTheLibrary(t *testing.T) {
	id, pub := x25519(t)
	rec, err := ParseRecipients([]string{pub})
	require.NoError(t, err)
	for _, n := range []int{0, 1, ChunkSize - 1, ChunkSize, ChunkSize + 1, 3*ChunkSize + 77, 4 * ChunkSize} {
		data := plaintext(n)
		p := writeFile(t, rec, data, 10_000, nil)
		require.Equal(t, data, decryptAll(t, p, id), "size %d", n)
	}
}

func TestWriterHeldRangesArePatchedBeforeEncryption(t *testing.T) {
	id, pub := x25519(t)
	rec, err := ParseRecipients([]string{pub})
	require.NoError(t, err)
	data := plaintext(5*ChunkSize + 1234)
	// One held range inside a chunk, one across a chunk boundary, one in the last chunk.
	patches := [][2]int{{100, 549}, {2*ChunkSize - 200, 549}, {5 * ChunkSize, 549}}
	p := writeFile(t, rec, data, 7_000, patches)
	require.Equal(t, data, decryptAll(t, p, id))
	// The placeholder zeros never reached the file: the plaintext is not on disk either.
	raw, err := os.ReadFile(p)
	require.NoError(t, err)
	require.False(t, bytes.Contains(raw, data[100:649]))
}

func TestTwoRecipientsEachDecrypt(t *testing.T) {
	ops, opsPub := x25519(t)
	glass, glassPub := x25519(t)
	rec, err := ParseRecipients([]string{opsPub, "# break-glass\n" + glassPub})
	require.NoError(t, err)
	require.Equal(t, []string{opsPub, glassPub}, rec.Public)
	data := plaintext(2*ChunkSize + 5)
	p := writeFile(t, rec, data, 4096, [][2]int{{ChunkSize - 10, 549}})
	require.Equal(t, data, decryptAll(t, p, ops))
	require.Equal(t, data, decryptAll(t, p, glass))
}

func TestHybridRecipient(t *testing.T) {
	id, err := age.GenerateHybridIdentity()
	require.NoError(t, err)
	rec, err := ParseRecipients([]string{id.Recipient().String()})
	require.NoError(t, err)
	data := plaintext(ChunkSize + 3)
	p := writeFile(t, rec, data, 1000, [][2]int{{10, 549}})
	require.Equal(t, data, decryptAll(t, p, id))
	ids, err := ParseIdentities("# created by age-keygen -pq\n" + id.String() + "\n")
	require.NoError(t, err)
	require.Equal(t, []string{id.Recipient().String()}, ids.Public)

	// Mixing post-quantum and classic recipients would defeat the post-quantum one.
	_, classic := x25519(t)
	_, err = ParseRecipients([]string{id.Recipient().String(), classic})
	require.ErrorContains(t, err, "cannot be mixed")
}

func TestPassphrase(t *testing.T) {
	rec, err := NewPassphrase("correct horse battery staple", 10)
	require.NoError(t, err)
	data := plaintext(3 * ChunkSize)
	p := writeFile(t, rec, data, 60_000, nil)
	id, err := age.NewScryptIdentity("correct horse battery staple")
	require.NoError(t, err)
	require.Equal(t, data, decryptAll(t, p, id))

	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	wrong, err := PassphraseIdentity("incorrect horse")
	require.NoError(t, err)
	_, err = Decrypt(f, wrong)
	e, ok := AsError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, KindWrongIdentity, e.Kind)
	require.Contains(t, e.Detail, "a passphrase")
}

func TestDecryptRefusesWrongKeyAndDamage(t *testing.T) {
	id, pub := x25519(t)
	rec, err := ParseRecipients([]string{pub})
	require.NoError(t, err)
	data := plaintext(3*ChunkSize + 10)
	p := writeFile(t, rec, data, 9000, nil)
	raw, err := os.ReadFile(p)
	require.NoError(t, err)
	good := &Identities{list: []age.Identity{id}, Public: []string{pub}}
	other, otherPub := x25519(t)
	bad := &Identities{list: []age.Identity{other}, Public: []string{otherPub}}

	read := func(b []byte, ids *Identities) error {
		r, err := Decrypt(bytes.NewReader(b), ids)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, r)
		return err
	}
	readAt := func(b []byte, ids *Identities) error {
		ra, n, err := DecryptReaderAt(bytes.NewReader(b), int64(len(b)), ids)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, io.NewSectionReader(ra, 0, n))
		return err
	}
	require.NoError(t, read(raw, good))
	require.NoError(t, readAt(raw, good))

	for name, fn := range map[string]func([]byte, *Identities) error{"stream": read, "random access": readAt} {
		err := fn(raw, bad)
		e, ok := AsError(err)
		require.True(t, ok, "%s: %v", name, err)
		require.Equal(t, KindWrongIdentity, e.Kind, name)
		require.Contains(t, e.Detail, otherPub, name)
		require.Contains(t, e.Detail, "1 X25519 key", name)

		_, err = Decrypt(bytes.NewReader(raw), nil)
		e, ok = AsError(err)
		require.True(t, ok)
		require.Equal(t, KindNoIdentity, e.Kind)

		damaged := map[string][]byte{
			"truncated":          raw[:len(raw)-100],
			"truncated at chunk": raw[:len(raw)-(10+tagSize)],
			"extended":           append(append([]byte(nil), raw...), 0),
			"byte flipped":       flip(raw, len(raw)/2),
			"last byte flipped":  flip(raw, len(raw)-1),
		}
		for what, b := range damaged {
			err := fn(b, good)
			e, ok := AsError(err)
			require.True(t, ok, "%s %s: %v", name, what, err)
			require.Equal(t, KindPayload, e.Kind, "%s %s: %v", name, what, err)
		}
		err = fn(flip(raw, 30), good)
		require.Error(t, err, "%s: a flipped header byte is refused", name)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

func TestRecipientsRefuseAPrivateKeyWithoutEchoingIt(t *testing.T) {
	id, _ := x25519(t)
	_, err := ParseRecipients([]string{id.String()})
	require.ErrorContains(t, err, "private key")
	require.NotContains(t, err.Error(), id.String())
	_, err = ParseRecipients([]string{"ssh-ed25519 AAAA"})
	require.ErrorContains(t, err, "not an age public key")
	_, err = ParseRecipients(nil)
	require.ErrorContains(t, err, "no recipients")
	_, err = ParseIdentities("AGE-SECRET-KEY-1NOTAKEY")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "NOTAKEY")
}

// TestReferenceCLIDecrypts: the age command (the format's reference implementation)
// decrypts what Writer wrote, with the identity file age-keygen wrote.
func TestReferenceCLIDecrypts(t *testing.T) {
	for _, tool := range []string{"age", "age-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("FLIGHTCTL_DR_REQUIRE_REAL") == "1" {
				t.Fatalf("%s is not installed (apt-get install age)", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
	ctx := context.Background()
	dir := t.TempDir()
	key := filepath.Join(dir, "key.txt")
	var out bytes.Buffer
	require.NoError(t, runner.Exec{}.Run(ctx, runner.Cmd{Name: "age-keygen", Args: []string{"-o", key}, Stderr: &out}))
	content, err := os.ReadFile(key)
	require.NoError(t, err)
	ids, err := ParseIdentities(string(content))
	require.NoError(t, err)
	require.Contains(t, out.String(), ids.Public[0], "age-keygen prints the public key we derive")
	rec, err := ParseRecipients(ids.Public)
	require.NoError(t, err)
	data := plaintext(4*ChunkSize + 999)
	p := writeFile(t, rec, data, 50_000, [][2]int{{ChunkSize * 2, 549}})
	var plain bytes.Buffer
	require.NoError(t, runner.Exec{}.Run(ctx, runner.Cmd{Name: "age", Args: []string{"-d", "-i", key, p}, Stdout: &plain}))
	require.True(t, bytes.Equal(data, plain.Bytes()), "age -d gives the plaintext back")
	require.False(t, strings.Contains(string(content), "\n\n"))
}

// BenchmarkWriter is the age stage alone: plaintext (as the archive writer hands it, in
// 1 MiB gzip members) encrypted to one X25519 recipient into a file, hashed. MB/s of
// plaintext.
func BenchmarkWriter(b *testing.B) {
	_, pub := x25519(b)
	rec, err := ParseRecipients([]string{pub})
	require.NoError(b, err)
	data := plaintext(1 << 20)
	const total = 32 << 20
	dir := b.TempDir()
	b.SetBytes(total)
	for b.Loop() {
		f, err := os.CreateTemp(dir, "bench")
		require.NoError(b, err)
		w, err := NewWriter(f, rec)
		require.NoError(b, err)
		for range total / len(data) {
			_, err := w.Write(data)
			require.NoError(b, err)
		}
		require.NoError(b, w.Close())
		_, err = w.Sum()
		require.NoError(b, err)
		f.Close()
		os.Remove(f.Name())
	}
}

// BenchmarkDecrypt is the age stage of a verify: decrypting such a file in one stream.
// MB/s of plaintext.
func BenchmarkDecrypt(b *testing.B) {
	id, pub := x25519(b)
	rec, err := ParseRecipients([]string{pub})
	require.NoError(b, err)
	data := plaintext(32 << 20)
	p := writeFile(b, rec, data, 1<<20, nil)
	raw, err := os.ReadFile(p)
	require.NoError(b, err)
	ids := &Identities{list: []age.Identity{id}}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		r, err := Decrypt(bytes.NewReader(raw), ids)
		require.NoError(b, err)
		_, err = io.Copy(io.Discard, r)
		require.NoError(b, err)
	}
}
