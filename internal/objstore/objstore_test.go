package objstore

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/testbed"
)

const estate = "server-a"

func newStore(t testing.TB, m *testbed.MinIO, bucket string, lock bool, partSize int64) *Store {
	t.Helper()
	s, err := Open(Config{Endpoint: m.URL, Bucket: bucket, Prefix: "dr/backups", AccessKey: m.AccessKey, SecretKey: m.SecretKey, PartSize: partSize, Producer: "flightctl.dr test"})
	require.NoError(t, err)
	require.NoError(t, s.EnsureBucket(context.Background(), "", lock))
	return s
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// writeArchive makes a real archive holding an incompressible dump of dumpSize bytes.
func writeArchive(t testing.TB, dir string, when time.Time, dumpSize int) *archive.Result {
	t.Helper()
	return archivetest.Write(t, dir, archivetest.Content{
		Dump:     randomBytes(t, dumpSize),
		Config:   []byte("db:\n  name: flightctl\n"),
		Metadata: archive.Metadata{Timestamp: when.UTC(), Version: "1.0.0", DeploymentType: archive.DeploymentPodman, DatabaseIncluded: true},
	})
}

func TestUploadVerifyDownload(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "plain", false, 5<<20)
	ctx := context.Background()
	dir := t.TempDir()
	a := writeArchive(t, dir, time.Now(), 12<<20)

	res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	assert.True(t, res.Uploaded)
	assert.Equal(t, "dr/backups/server-a/"+filepath.Base(a.Path), res.Key)
	assert.Equal(t, a.SHA256, res.SHA256)
	assert.GreaterOrEqual(t, res.Parts, 3)

	// The store computed a whole-object checksum; the sha256 is in the metadata.
	info, err := s.Client().StatObject(ctx, "plain", res.Key, minio.StatObjectOptions{Checksum: true})
	require.NoError(t, err)
	assert.Equal(t, "CRC32C", res.ChecksumAlgorithm)
	assert.Equal(t, res.Checksum, info.ChecksumCRC32C)
	assert.Equal(t, "FULL_OBJECT", info.ChecksumMode)
	assert.Equal(t, a.SHA256, info.UserMetadata[MetaSHA256])
	marker, err := s.getSmall(ctx, res.MarkerKey)
	require.NoError(t, err)
	local, err := os.ReadFile(a.ChecksumPath)
	require.NoError(t, err)
	assert.Equal(t, string(local), string(marker), "the marker is the archive's .sha256 as sha256sum writes it")

	// Copying again changes nothing.
	again, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	assert.False(t, again.Uploaded)

	// Listed as a good archive; newest; downloads and verifies with the real reader.
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, retention.Good, list[0].Status)
	name, sum, err := s.Newest(ctx, estate)
	require.NoError(t, err)
	assert.Equal(t, filepath.Base(a.Path), name)
	assert.Equal(t, a.SHA256, sum)

	md, read, err := s.ReadMetadata(ctx, estate, name)
	require.NoError(t, err)
	assert.Equal(t, "1.0.0", md.Version)
	assert.NotEmpty(t, md.Manifest)
	assert.Less(t, read, a.Size/4, "the metadata is read from the tail, not the whole archive")

	out := t.TempDir()
	path, fetched, err := s.Download(ctx, estate, name, out)
	require.NoError(t, err)
	assert.True(t, fetched)
	rep, err := archive.Verify(ctx, path, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
	assert.Equal(t, a.SHA256, rep.SHA256)
	_, fetched, err = s.Download(ctx, estate, name, out)
	require.NoError(t, err)
	assert.False(t, fetched, "an identical local copy is reused")
}

// Write-once: an archive of the same name with other content is refused,
// and so is a stored object of that name that is not ours.
func TestNeverOverwrites(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "once", false, 5<<20)
	ctx := context.Background()
	when := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	a := writeArchive(t, t.TempDir(), when, 1<<20)
	_, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	b := writeArchive(t, t.TempDir(), when, 1<<20)
	require.Equal(t, filepath.Base(a.Path), filepath.Base(b.Path))
	_, err = s.Upload(ctx, estate, b.Path, UploadOptions{})
	require.ErrorContains(t, err, "never overwritten")
	sum, err := s.Check(ctx, estate, filepath.Base(a.Path))
	require.NoError(t, err)
	assert.Equal(t, a.SHA256, sum, "the first copy is intact")

	// The conditional write itself refuses, whatever Upload checked before.
	popts := minio.PutObjectOptions{}
	popts.SetMatchETagExcept("*")
	_, err = s.Client().PutObject(ctx, "once", s.Key(estate, filepath.Base(a.Path)+".sha256"), strings.NewReader("x"), 1, popts)
	require.Error(t, err)
	assert.True(t, isPreconditionFailed(err), "%v", err)

	// An archive without checksum file is never copied.
	c := writeArchive(t, t.TempDir(), when.Add(time.Hour), 1<<10)
	require.NoError(t, os.Remove(c.ChecksumPath))
	_, err = s.Upload(ctx, estate, c.Path, UploadOptions{})
	require.ErrorContains(t, err, "checksum file")
}

// An upload killed in the middle (SIGKILL, as a power cut would) leaves its
// parts in the store; the next copy sends only the missing ones.
func TestUploadKilledAndResumed(t *testing.T) {
	if os.Getenv("OBJSTORE_CHILD_ARCHIVE") != "" {
		return
	}
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "resume", false, 5<<20)
	ctx := context.Background()
	a := writeArchive(t, t.TempDir(), time.Now(), 40<<20)

	cmd := exec.Command(os.Args[0], "-test.run=^TestUploadChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OBJSTORE_CHILD_ARCHIVE="+a.Path, "OBJSTORE_CHILD_URL="+m.URL,
		"AWS_ACCESS_KEY_ID="+m.AccessKey, "AWS_SECRET_ACCESS_KEY="+m.SecretKey)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	parts := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "part ") {
			parts++
			if parts == 3 {
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				break
			}
		}
	}
	_ = cmd.Wait()
	require.Equal(t, 3, parts, "the child reported three stored parts before it was killed")

	// Killed: no object, no marker, so nothing listed as a backup.
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	assert.Empty(t, list)

	res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	assert.True(t, res.Resumed)
	assert.GreaterOrEqual(t, res.Reused, 3)
	assert.Less(t, res.Reused, res.Parts)
	_, err = s.Check(ctx, estate, filepath.Base(a.Path))
	require.NoError(t, err)
	path, _, err := s.Download(ctx, estate, filepath.Base(a.Path), t.TempDir())
	require.NoError(t, err)
	_, err = archive.Verify(ctx, path, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)
}

// TestUploadChild is the process TestUploadKilledAndResumed kills.
func TestUploadChild(t *testing.T) {
	path := os.Getenv("OBJSTORE_CHILD_ARCHIVE")
	if path == "" {
		t.Skip("run by TestUploadKilledAndResumed")
	}
	s, err := Open(Config{Endpoint: os.Getenv("OBJSTORE_CHILD_URL"), Bucket: "resume", Prefix: "dr/backups", PartSize: 5 << 20, Concurrency: 1})
	require.NoError(t, err)
	require.Equal(t, "environment", s.CredentialSource)
	_, err = s.Upload(context.Background(), estate, path, UploadOptions{OnPart: func(n, total int) {
		fmt.Printf("part %d/%d\n", n, total)
		if n >= 3 {
			select {} // wait to be killed
		}
	}})
	t.Fatalf("the upload was meant to be killed: %v", err)
}

// A bucket with Object Lock: uploads work, with a retention; a prune
// removes the archives from the listing while the locked versions stay.
func TestObjectLockBucket(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "locked", true, 5<<20)
	ctx := context.Background()
	until := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	var names []string
	for i := 0; i < 3; i++ {
		a := writeArchive(t, t.TempDir(), time.Date(2026, 11, 28+i, 0, 0, 0, 0, time.UTC), 6<<20)
		_, err := s.Upload(ctx, estate, a.Path, UploadOptions{RetainUntil: until, RetainMode: minio.Governance})
		require.NoError(t, err)
		names = append(names, filepath.Base(a.Path))
	}
	mode, retain, err := s.Client().GetObjectRetention(ctx, "locked", s.Key(estate, names[0]), "")
	require.NoError(t, err)
	assert.Equal(t, minio.Governance, *mode)
	assert.True(t, retain.Equal(until), "%v", retain)

	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	plan, err := retention.Make(retention.Policy{KeepLast: 1}, list, retention.Options{Verify: func(a retention.Archive) error { _, err := s.Check(ctx, estate, a.Name); return err }})
	require.NoError(t, err)
	_, err = s.Delete(ctx, estate, plan.Deletions())
	require.NoError(t, err)
	list, err = s.List(ctx, estate)
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, names[2], list[0].Name)
	// The locked versions of a pruned archive and its marker are still there,
	// hidden behind delete markers.
	versions := map[string]int{}
	markers := map[string]int{}
	for o := range s.Client().ListObjects(ctx, "locked", minio.ListObjectsOptions{Prefix: s.Key(estate, names[0]), WithVersions: true}) {
		require.NoError(t, o.Err)
		if o.IsDeleteMarker {
			markers[o.Key]++
		} else {
			versions[o.Key]++
		}
	}
	key := s.Key(estate, names[0])
	assert.Equal(t, map[string]int{key: 1, key + ".sha256": 1}, versions)
	assert.Equal(t, map[string]int{key: 1, key + ".sha256": 1}, markers)
	// Deleting the locked version itself is refused.
	err = s.Client().RemoveObject(ctx, "locked", key, minio.RemoveObjectOptions{VersionID: versionOf(t, s, key)})
	require.Error(t, err)
}

// Retention in the bucket: a mix of good archives, one without marker, one
// with a damaged marker, and a foreign object; pruning deletes markers first.
func TestPruneInBucket(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "prune", false, 5<<20)
	ctx := context.Background()
	days := []int{1, 2, 3, 10, 20}
	var names []string
	for _, d := range days {
		a := writeArchive(t, t.TempDir(), time.Date(2026, 11, d, 3, 0, 0, 0, time.UTC), 1<<10)
		_, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
		require.NoError(t, err)
		names = append(names, filepath.Base(a.Path))
	}
	// The newest archive lost its marker (an interrupted copy long ago); a
	// foreign object and another estate's archive sit beside.
	_, err := s.Client().PutObject(ctx, "prune", s.Key(estate, "notes.txt"), strings.NewReader("keep me"), 7, minio.PutObjectOptions{})
	require.NoError(t, err)
	_, err = s.Delete(ctx, estate, []string{names[4] + ".sha256"})
	require.NoError(t, err)
	other := writeArchive(t, t.TempDir(), time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC), 1<<10)
	_, err = s.Upload(ctx, "server-b", other.Path, UploadOptions{})
	require.NoError(t, err)

	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	plan, err := retention.Make(retention.Policy{KeepLast: 2}, list, retention.Options{Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Verify: func(a retention.Archive) error { _, err := s.Check(ctx, estate, a.Name); return err }})
	require.NoError(t, err)
	assert.Equal(t, names[3], plan.NewestVerified)
	assert.Equal(t, []string{"notes.txt"}, plan.Ignored)
	removed, err := s.Delete(ctx, estate, plan.Deletions())
	require.NoError(t, err)
	assert.Equal(t, []string{names[4], names[1] + ".sha256", names[1], names[0] + ".sha256", names[0]}, removed)

	list, err = s.List(ctx, estate)
	require.NoError(t, err)
	var left []string
	for _, a := range list {
		left = append(left, a.Name)
	}
	assert.ElementsMatch(t, []string{names[2], names[3], "notes.txt"}, left)
	otherList, err := s.List(ctx, "server-b")
	require.NoError(t, err)
	assert.Len(t, otherList, 1, "another estate's archives are never touched")
}

func TestCredentialSources(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("HOME", t.TempDir())
	_, err := Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b"})
	require.ErrorContains(t, err, "no object store credentials")

	file := filepath.Join(t.TempDir(), "cloud")
	require.NoError(t, os.WriteFile(file, []byte("[default]\naws_access_key_id=AKFILE\naws_secret_access_key=SECRETFILE\n[other]\naws_access_key_id=AKOTHER\naws_secret_access_key=S2\n"), 0o600))
	s, err := Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b", CredentialsFile: file})
	require.NoError(t, err)
	assert.Equal(t, "file "+file, s.CredentialSource)
	_, err = Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b", CredentialsFile: file, Profile: "missing"})
	require.ErrorContains(t, err, `no usable profile "missing"`)
	assert.NotContains(t, fmt.Sprint(err), "SECRETFILE")

	t.Setenv("AWS_ACCESS_KEY_ID", "AKENV")
	_, err = Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b"})
	require.ErrorContains(t, err, "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "SECRETENV")
	s, err = Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b", CredentialsFile: file})
	require.NoError(t, err)
	assert.Equal(t, "environment", s.CredentialSource)
	s, err = Open(Config{Endpoint: "http://127.0.0.1:1", Bucket: "b", AccessKey: "a", SecretKey: "b"})
	require.NoError(t, err)
	assert.Equal(t, "options", s.CredentialSource)

	_, err = Open(Config{Endpoint: "http://127.0.0.1:1/bucket", Bucket: "b", AccessKey: "a", SecretKey: "b"})
	require.ErrorContains(t, err, "has a path")
	require.Error(t, ValidEstate("../x"))
	require.Error(t, ValidEstate(""))
}

func versionOf(t *testing.T, s *Store, key string) string {
	for o := range s.Client().ListObjects(context.Background(), s.Bucket(), minio.ListObjectsOptions{Prefix: key, WithVersions: true}) {
		require.NoError(t, o.Err)
		if o.Key == key && !o.IsDeleteMarker {
			return o.VersionID
		}
	}
	t.Fatalf("no version of %s", key)
	return ""
}

// A stored copy damaged after the upload is refused at download, and a
// verification catches an object whose store checksum is not the archive's.
func TestDamagedCopyRefused(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "damaged", false, 5<<20)
	ctx := context.Background()
	a := writeArchive(t, t.TempDir(), time.Now(), 1<<20)
	res, err := s.Upload(ctx, estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	body := randomBytes(t, int(a.Size))
	raw, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), TrailingHeaders: true})
	require.NoError(t, err)
	_, err = raw.PutObject(ctx, "damaged", res.Key, strings.NewReader(string(body)), a.Size, minio.PutObjectOptions{
		UserMetadata: map[string]string{MetaSHA256: a.SHA256}, Checksum: minio.ChecksumCRC64NVME,
	})
	require.NoError(t, err)
	dir := t.TempDir()
	_, _, err = s.Download(ctx, estate, filepath.Base(a.Path), dir)
	require.ErrorContains(t, err, "does not match its marker")
	entries, _ := os.ReadDir(dir)
	assert.Empty(t, entries, "nothing named, nothing left behind")
	err = s.verifyObject(ctx, res.Key, a.Size, a.SHA256, res.Checksum)
	require.ErrorContains(t, err, "differs from the archive's")
}

// An upload interrupted while parts carried CRC64NVME (as earlier versions sent them)
// is resumed with CRC64NVME, the algorithm its parts carry; new uploads use CRC32C.
func TestResumeKeepsPartChecksum(t *testing.T) {
	m := testbed.MinIOForTest(t)
	old, err := Open(Config{Endpoint: m.URL, Bucket: "algo", Prefix: "dr", AccessKey: m.AccessKey, SecretKey: m.SecretKey, PartSize: 5 << 20, Concurrency: 1, ChecksumAlgorithm: "crc64nvme"})
	require.NoError(t, err)
	require.NoError(t, old.EnsureBucket(context.Background(), "", false))
	a := writeArchive(t, t.TempDir(), time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC), 16<<20)
	ctx, cancel := context.WithCancel(context.Background())
	// Parts are in flight several at a time and finish in any order: the upload is
	// interrupted once two of them are stored, whichever they are.
	var stored atomic.Int32
	_, err = old.Upload(ctx, estate, a.Path, UploadOptions{OnPart: func(n, total int) {
		if stored.Add(1) == 2 {
			cancel()
		}
	}})
	require.Error(t, err, "the upload was interrupted")

	s := newStore(t, m, "algo", false, 5<<20)
	s.prefix = "dr"
	res, err := s.Upload(context.Background(), estate, a.Path, UploadOptions{})
	require.NoError(t, err)
	assert.True(t, res.Resumed)
	assert.GreaterOrEqual(t, res.Reused, 2)
	assert.Equal(t, "CRC64NVME", res.ChecksumAlgorithm)
	assert.Equal(t, res.Checksum, res.CRC64NVME)
	_, err = s.Check(context.Background(), estate, filepath.Base(a.Path))
	require.NoError(t, err)

	b := writeArchive(t, t.TempDir(), time.Date(2026, 11, 30, 5, 0, 0, 0, time.UTC), 6<<20)
	res, err = s.Upload(context.Background(), estate, b.Path, UploadOptions{})
	require.NoError(t, err)
	assert.False(t, res.Resumed)
	assert.Equal(t, "CRC32C", res.ChecksumAlgorithm)
	assert.Empty(t, res.CRC64NVME)
	list, err := s.List(context.Background(), estate)
	require.NoError(t, err)
	require.Len(t, list, 2)
	path, _, err := s.Download(context.Background(), estate, filepath.Base(a.Path), t.TempDir())
	require.NoError(t, err)
	_, err = archive.Verify(context.Background(), path, archive.VerifyOptions{RequireChecksum: true})
	require.NoError(t, err)

	_, err = Open(Config{Endpoint: m.URL, Bucket: "algo", AccessKey: "a", SecretKey: "b", ChecksumAlgorithm: "md5"})
	require.ErrorContains(t, err, "give crc32c or crc64nvme")
}
