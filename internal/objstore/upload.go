package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"flightctl.dr/internal/retention"
)

// UploadResult is what Upload did.
type UploadResult struct {
	Key       string `json:"key"`
	MarkerKey string `json:"marker_key"`
	Size      int64  `json:"size"`
	SHA256    string `json:"sha256"`
	// Checksum is the store's whole-object checksum (base64) of ChecksumAlgorithm
	// (CRC32C or CRC64NVME); CRC64NVME repeats it when that is the algorithm.
	Checksum          string `json:"checksum"`
	ChecksumAlgorithm string `json:"checksum_algorithm"`
	CRC64NVME         string `json:"crc64nvme"`
	Uploaded          bool   `json:"uploaded"` // false: the store already held it, complete
	// MarkerWritten: the marker was written by this call.
	MarkerWritten bool `json:"marker_written"`
	// SignatureKey is where the archive's signature (<archive>.sig beside it) is
	// stored, "" when the archive is not signed; SignatureWritten: by this call.
	SignatureKey     string        `json:"signature_key"`
	SignatureWritten bool          `json:"signature_written"`
	Resumed          bool          `json:"resumed"`
	PartSize         int64         `json:"part_size"`
	Parts            int           `json:"parts"`
	Reused           int           `json:"parts_reused"` // parts an interrupted upload had already sent
	Duration         time.Duration `json:"-"`
	// Phases of Duration: sending the parts, completing the upload, checking the
	// object and writing the marker.
	PartsDuration, CompleteDuration, VerifyDuration time.Duration `json:"-"`
}

// UploadOptions tune one upload.
type UploadOptions struct {
	// OnPart is called after each part is stored (tests wait on it).
	OnPart func(part, total int)
	// Retention, when set, puts an Object Lock retention on the archive and
	// its marker (the bucket must have Object Lock enabled).
	RetainUntil time.Time
	RetainMode  minio.RetentionMode
}

// ReadChecksumFile returns the sha256 in a sha256sum-style file, checking
// that it names the archive.
func ReadChecksumFile(path, archiveName string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return parseChecksum(b, archiveName)
}

func parseChecksum(b []byte, archiveName string) (string, error) {
	fields := strings.Fields(string(b))
	if len(fields) == 0 || len(fields[0]) != 64 {
		return "", errors.New("not a sha256sum line")
	}
	sum := strings.ToLower(fields[0])
	if _, err := hex.DecodeString(sum); err != nil {
		return "", errors.New("not a sha256sum line")
	}
	if len(fields) > 1 && strings.TrimPrefix(fields[1], "*") != archiveName {
		return "", fmt.Errorf("it names %q, not %q", fields[1], archiveName)
	}
	return sum, nil
}

func markerBody(sum, name string) []byte { return []byte(sum + "  " + name + "\n") }

// MarkerSize is the size of a well-formed marker for an archive name.
func MarkerSize(name string) int64 { return int64(64 + 2 + len(name) + 1) }

// Upload copies a verified local archive (with its .sha256 beside it) to
// <prefix>/<estate>/<name>: resumes an interrupted upload of it, verifies the
// object, copies its signature (<name>.sig, when the archive is signed), then
// writes the marker, last. An archive the store already holds complete with
// the same sha256 is left as it is (its signature is added when the store
// lacks it); one with other content is never overwritten.
func (s *Store) Upload(ctx context.Context, estate, path string, opts UploadOptions) (*UploadResult, error) {
	elapsed := stopwatch()
	if err := ValidEstate(estate); err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	if !retention.IsArchiveName(name) {
		return nil, fmt.Errorf("%s is not an archive name this tool writes (flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz, or .tar.gz.age encrypted): only backup archives are copied", name)
	}
	want, err := ReadChecksumFile(path+".sha256", name)
	if err != nil {
		return nil, fmt.Errorf("checksum file of %s: %w: copy only archives whose backup completed and verified", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	res := &UploadResult{Key: s.Key(estate, name), MarkerKey: s.Key(estate, name+".sha256"), Size: st.Size(), SHA256: want}
	sig, err := readSignature(path + retention.SignatureSuffix)
	if err != nil {
		return nil, err
	}

	// Write-once: what the store already holds under this name decides.
	done, err := s.existing(ctx, res, name)
	if err != nil {
		res.Duration = elapsed()
		return res, err
	}
	if done {
		// Complete already; a signature made or copied later still travels.
		err := s.putSignature(ctx, res, estate, name, sig, opts)
		res.Duration = elapsed()
		return res, err
	}
	if res.Checksum == "" { // not uploaded yet, or not completely
		if err := s.uploadParts(ctx, f, res, opts); err != nil {
			return nil, err
		}
	}
	verifyStart := time.Now()
	if err := s.verifyObject(ctx, res.Key, res.Size, want, res.Checksum); err != nil {
		return nil, err
	}
	// The signature before the marker: an archive that looks complete carries it.
	if err := s.putSignature(ctx, res, estate, name, sig, opts); err != nil {
		return nil, err
	}
	if err := s.putMarker(ctx, res.MarkerKey, markerBody(want, name), opts); err != nil {
		return nil, err
	}
	res.MarkerWritten = true
	res.VerifyDuration = time.Since(verifyStart)
	res.Duration = elapsed()
	return res, nil
}

// existing looks at the marker and the object already stored under the
// archive's name: done when both are there and match; an error when an
// object with other content is there; otherwise what is left to do is in res
// (Checksum set: the object is complete, only the marker is missing).
func (s *Store) existing(ctx context.Context, res *UploadResult, name string) (bool, error) {
	info, err := s.client.StatObject(ctx, s.bucket, res.Key, minio.StatObjectOptions{Checksum: true})
	if err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up %s in bucket %s: %w", res.Key, s.bucket, err)
	}
	got := info.UserMetadata[MetaSHA256]
	if got != res.SHA256 || info.Size != res.Size {
		return false, fmt.Errorf("bucket %s already holds %s with other content (sha256 %q, %d bytes; this archive: %s, %d bytes): objects are never overwritten; remove or rename the stored one if it is not a backup", s.bucket, res.Key, got, info.Size, res.SHA256, res.Size)
	}
	res.setChecksum(storedChecksum(info))
	if res.Checksum == "" {
		return false, fmt.Errorf("bucket %s holds %s without a whole-object checksum: it was not written by this tool; remove it and copy again", s.bucket, res.Key)
	}
	if body, err := s.getSmall(ctx, res.MarkerKey); err == nil {
		if sum, err := parseChecksum(body, name); err == nil && sum == res.SHA256 {
			return true, nil
		}
		return false, fmt.Errorf("bucket %s holds a marker %s that does not match %s: objects are never overwritten; remove the marker and copy again", s.bucket, res.MarkerKey, res.Key)
	} else if !isNotFound(err) {
		return false, fmt.Errorf("look up %s in bucket %s: %w", res.MarkerKey, s.bucket, err)
	}
	return false, nil
}

type localPart struct {
	n    int
	buf  []byte
	crc  string
	done bool
}

// uploadParts sends the parts an interrupted upload lacks (or all of them)
// and completes the upload; it reads the archive once, hashing sha256 and
// the whole-object checksum as it goes.
func (s *Store) uploadParts(ctx context.Context, f *os.File, res *UploadResult, opts UploadOptions) error {
	size := res.Size
	partSize := s.partSize
	for size/partSize >= 10000 {
		partSize *= 2
	}
	total := int((size + partSize - 1) / partSize)
	if total == 0 {
		total = 1
	}
	res.PartSize, res.Parts = partSize, total

	uploadID, have, algo, err := s.findUpload(ctx, res.Key, partSize, size, total)
	if err != nil {
		return err
	}
	if uploadID != "" {
		res.Resumed = true
	} else {
		algo = s.checksum
		meta := map[string]string{
			MetaSHA256:                 res.SHA256,
			"x-amz-checksum-algorithm": algo.String(),
			"x-amz-checksum-type":      "FULL_OBJECT",
		}
		if s.producer != "" {
			meta[MetaProducer] = s.producer
		}
		popts := minio.PutObjectOptions{UserMetadata: meta, ContentType: "application/gzip", Mode: opts.RetainMode, RetainUntilDate: opts.RetainUntil}
		uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, res.Key, popts)
		if err != nil {
			return fmt.Errorf("start the upload of %s to bucket %s: %w", res.Key, s.bucket, err)
		}
	}

	partsStart := time.Now()
	// The archive is read once, part by part, into a small pool of buffers. Each
	// buffer goes to two readers at once: the sha256 of the whole archive (one
	// goroutine of its own, as the hash is sequential) and the part's upload (one
	// goroutine per part in flight, which also computes the part's checksum). A
	// buffer returns to the pool when both are done with it, so reading, hashing and
	// sending overlap and the reading goroutine never waits on the hash.
	// The whole-object checksum is combined from the parts' (as the store does), so
	// each byte is hashed once for it.
	partSums := make([]minio.ObjectPart, total)
	var (
		mu      sync.Mutex
		parts   = make([]minio.CompletePart, total)
		firstEr error
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nbuf := s.concurrency + 2
	free := make(chan *partBuffer, nbuf)
	for i := 0; i < nbuf; i++ {
		free <- &partBuffer{free: free}
	}
	sha := sha256.New()
	hashq := make(chan *partBuffer, nbuf)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range hashq {
			sha.Write(b.buf)
			b.release()
		}
	}()
	fail := func(err error) {
		mu.Lock()
		if firstEr == nil {
			firstEr = err
		}
		mu.Unlock()
		cancel()
	}
	for n := 1; n <= total; n++ {
		var pb *partBuffer
		select {
		case pb = <-free:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		want := partSize
		if n == total {
			want = size - int64(total-1)*partSize
		}
		if int64(cap(pb.buf)) < want {
			pb.buf = make([]byte, partSize)
		}
		pb.buf = pb.buf[:want]
		if _, err := io.ReadFull(f, pb.buf); err != nil {
			fail(fmt.Errorf("read %s: %w", f.Name(), err))
			pb.refs.Store(1)
			pb.release()
			break
		}
		pb.refs.Store(2)
		if s.hashInline {
			sha.Write(pb.buf)
			pb.release()
		} else {
			hashq <- pb
		}
		buf := pb.buf
		// A part an interrupted copy sent is reused when its checksum matches; without
		// such parts the checksum is computed beside the upload, on the part's goroutine.
		crc := ""
		if p, ok := have[n]; ok {
			if crc = partChecksum(algo, buf); partSum(algo, p) == crc && p.Size == want {
				partSums[n-1] = objectPart(algo, n, want, crc)
				parts[n-1] = completePart(algo, n, p.ETag, crc)
				res.Reused++
				pb.release()
				continue
			}
		}
		wg.Add(1)
		go func(n int, pb *partBuffer, crc string) {
			defer wg.Done()
			defer pb.release()
			buf := pb.buf
			if crc == "" {
				crc = partChecksum(algo, buf)
			}
			mu.Lock()
			partSums[n-1] = objectPart(algo, n, int64(len(buf)), crc)
			mu.Unlock()
			h := http.Header{}
			h.Set(algo.Key(), crc)
			h.Set("x-amz-checksum-algorithm", algo.String())
			h.Set("x-amz-checksum-type", "FULL_OBJECT")
			p, err := s.core.PutObjectPart(ctx, s.bucket, res.Key, uploadID, n, bytes.NewReader(buf), int64(len(buf)), minio.PutObjectPartOptions{CustomHeader: h, DisableContentSha256: true})
			if err != nil {
				fail(fmt.Errorf("upload part %d of %s: %w", n, res.Key, err))
				return
			}
			if got := partSum(algo, p); got != "" && got != crc {
				fail(fmt.Errorf("the store computed another checksum for part %d of %s (%s, sent %s): the transfer is damaged, copy again", n, res.Key, got, crc))
				return
			}
			mu.Lock()
			parts[n-1] = completePart(algo, n, p.ETag, crc)
			mu.Unlock()
			if opts.OnPart != nil {
				opts.OnPart(n, total)
			}
		}(n, pb, crc)
	}
	close(hashq)
	<-hashed
	wg.Wait()
	if firstEr != nil {
		// The parts sent so far stay in the store: the next copy resumes.
		return firstEr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if got := hex.EncodeToString(sha.Sum(nil)); got != res.SHA256 {
		_ = s.core.AbortMultipartUpload(context.WithoutCancel(ctx), s.bucket, res.Key, uploadID)
		return fmt.Errorf("archive %s does not match its checksum file (sha256 %s, file says %s): it is damaged; nothing was copied, verify it and make a new backup", f.Name(), got, res.SHA256)
	}
	full, err := algo.FullObjectChecksum(partSums)
	if err != nil {
		return fmt.Errorf("combine the parts' checksums of %s: %w", res.Key, err)
	}
	res.setChecksum(algo, full.Encoded())
	res.PartsDuration = time.Since(partsStart)
	completeStart := time.Now()
	defer func() { res.CompleteDuration = time.Since(completeStart) }()
	copts := minio.PutObjectOptions{UserMetadata: map[string]string{
		algo.Key():            res.Checksum,
		"x-amz-checksum-type": "FULL_OBJECT",
	}}
	copts.SetMatchETagExcept("*")
	if _, err := s.core.CompleteMultipartUpload(ctx, s.bucket, res.Key, uploadID, parts, copts); err != nil {
		if isPreconditionFailed(err) {
			return fmt.Errorf("bucket %s got %s from another writer meanwhile: objects are never overwritten; run the copy again to compare", s.bucket, res.Key)
		}
		return fmt.Errorf("complete the upload of %s: %w", res.Key, err)
	}
	res.Uploaded = true
	return nil
}

// partBuffer is one part's bytes, shared by the hash and the part's upload; the
// last of them to finish gives it back to the pool.
type partBuffer struct {
	buf  []byte
	refs atomic.Int32
	free chan<- *partBuffer
}

func (b *partBuffer) release() {
	if b.refs.Add(-1) == 0 {
		b.free <- b
	}
}

// Whole-object checksums the store can combine from the parts' (FULL_OBJECT).
// CRC32C is the default: measured on MinIO it costs the store about a fifth of
// the CPU of CRC64NVME for the same upload (bench/RESULTS.md); archives stored with
// CRC64NVME by earlier versions are verified and resumed with theirs.
var checksumAlgorithms = []minio.ChecksumType{minio.ChecksumCRC32C, minio.ChecksumCRC64NVME}

// DefaultChecksum is the part and whole-object checksum of new uploads.
const DefaultChecksum = minio.ChecksumCRC32C

func (r *UploadResult) setChecksum(algo minio.ChecksumType, sum string) {
	r.Checksum, r.ChecksumAlgorithm, r.CRC64NVME = sum, "", ""
	if sum == "" {
		return
	}
	r.ChecksumAlgorithm = algo.String()
	if algo == minio.ChecksumCRC64NVME {
		r.CRC64NVME = sum
	}
}

// storedChecksum is the whole-object checksum the store keeps for an object, of
// the algorithms this tool writes.
func storedChecksum(info minio.ObjectInfo) (minio.ChecksumType, string) {
	for _, a := range checksumAlgorithms {
		if v := objectSum(a, info); v != "" {
			return a, v
		}
	}
	return minio.ChecksumNone, ""
}

// checksumField is, of a minio struct's checksum fields given for each algorithm
// this tool writes, the one algo's checksum goes in (a throwaway for any other).
func checksumField(algo minio.ChecksumType, crc32c, crc64nvme *string) *string {
	switch algo {
	case minio.ChecksumCRC32C:
		return crc32c
	case minio.ChecksumCRC64NVME:
		return crc64nvme
	}
	return new(string)
}

func objectSum(algo minio.ChecksumType, info minio.ObjectInfo) string {
	return *checksumField(algo, &info.ChecksumCRC32C, &info.ChecksumCRC64NVME)
}

func partSum(algo minio.ChecksumType, p minio.ObjectPart) string {
	return *checksumField(algo, &p.ChecksumCRC32C, &p.ChecksumCRC64NVME)
}

func objectPart(algo minio.ChecksumType, n int, size int64, sum string) minio.ObjectPart {
	p := minio.ObjectPart{PartNumber: n, Size: size}
	*checksumField(algo, &p.ChecksumCRC32C, &p.ChecksumCRC64NVME) = sum
	return p
}

func completePart(algo minio.ChecksumType, n int, etag, sum string) minio.CompletePart {
	p := minio.CompletePart{PartNumber: n, ETag: etag}
	*checksumField(algo, &p.ChecksumCRC32C, &p.ChecksumCRC64NVME) = sum
	return p
}

func partChecksum(algo minio.ChecksumType, buf []byte) string {
	h := algo.Hasher()
	h.Write(buf)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// findUpload returns an incomplete upload of key laid out as this one would
// be, the parts it holds and the checksum algorithm its parts carry (an upload
// without parts is not resumed: nothing says its algorithm).
func (s *Store) findUpload(ctx context.Context, key string, partSize, size int64, total int) (string, map[int]minio.ObjectPart, minio.ChecksumType, error) {
	lr, err := s.core.ListMultipartUploads(ctx, s.bucket, key, "", "", "", 1000)
	if err != nil {
		return "", nil, 0, fmt.Errorf("list incomplete uploads in bucket %s: %w", s.bucket, err)
	}
	ups := lr.Uploads
	sort.Slice(ups, func(i, j int) bool { return ups[i].Initiated.After(ups[j].Initiated) })
	for _, u := range ups {
		if u.Key != key {
			continue
		}
		have := map[int]minio.ObjectPart{}
		marker := 0
		for {
			pr, err := s.core.ListObjectParts(ctx, s.bucket, key, u.UploadID, marker, 1000)
			if err != nil {
				if isNotFound(err) {
					break
				}
				return "", nil, 0, fmt.Errorf("list the parts of an incomplete upload of %s: %w", key, err)
			}
			for _, p := range pr.ObjectParts {
				have[p.PartNumber] = p
			}
			if !pr.IsTruncated {
				break
			}
			marker = pr.NextPartNumberMarker
		}
		algo := minio.ChecksumNone
		for _, p := range have {
			for _, a := range checksumAlgorithms {
				if partSum(a, p) != "" {
					algo = a
				}
			}
			break
		}
		ok := algo != minio.ChecksumNone
		for n, p := range have {
			if n < 1 || n > total || (n < total && p.Size != partSize) || partSum(algo, p) == "" {
				ok = false
			}
		}
		if ok {
			return u.UploadID, have, algo, nil
		}
	}
	return "", nil, minio.ChecksumNone, nil
}

// verifyObject checks the stored object: its size, the whole-object
// checksum the store computed, and the sha256 in its metadata.
func (s *Store) verifyObject(ctx context.Context, key string, size int64, sum, crc string) error {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{Checksum: true})
	if err != nil {
		return fmt.Errorf("verify %s in bucket %s: %w", key, s.bucket, err)
	}
	switch {
	case info.Size != size:
		return fmt.Errorf("verify %s in bucket %s: it holds %d bytes, the archive %d: the copy is damaged; remove it and copy again", key, s.bucket, info.Size, size)
	}
	_, stored := storedChecksum(info)
	switch {
	case stored == "":
		return fmt.Errorf("verify %s in bucket %s: the store keeps no whole-object checksum for it: use a store that supports S3 additional checksums (CRC32C or CRC64NVME)", key, s.bucket)
	case stored != crc:
		return fmt.Errorf("verify %s in bucket %s: the store's checksum %s differs from the archive's %s: the copy is damaged; remove it and copy again", key, s.bucket, stored, crc)
	case info.UserMetadata[MetaSHA256] != sum:
		return fmt.Errorf("verify %s in bucket %s: its sha256 metadata %q is not the archive's %s", key, s.bucket, info.UserMetadata[MetaSHA256], sum)
	}
	return nil
}

// maxSignatureSize bounds a signature file: an SSHSIG signature is under 2 KiB.
const maxSignatureSize = 64 << 10

// readSignature reads the signature beside a local archive (nil when there is none).
func readSignature(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("signature of the archive: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSignatureSize+1))
	if err != nil {
		return nil, fmt.Errorf("signature of the archive: %w", err)
	}
	if len(b) > maxSignatureSize || !bytes.Contains(b, []byte("-----BEGIN SSH SIGNATURE-----")) {
		return nil, fmt.Errorf("%s is not an SSH signature (ssh-keygen -Y sign writes one): remove it or sign the archive again", path)
	}
	return b, nil
}

// putSignature stores the archive's signature (when it has one) beside it, write-once:
// a stored signature with other content is never replaced.
func (s *Store) putSignature(ctx context.Context, res *UploadResult, estate, name string, sig []byte, opts UploadOptions) error {
	if sig == nil {
		return nil
	}
	key := s.Key(estate, retention.SignatureName(name))
	res.SignatureKey = key
	stored, err := s.getSmall(ctx, key)
	switch {
	case err == nil && bytes.Equal(stored, sig):
		return nil
	case err == nil:
		return fmt.Errorf("bucket %s already holds a signature %s that differs from the archive's: objects are never overwritten; remove the stored signature if it is not this archive's, and copy again", s.bucket, key)
	case !isNotFound(err):
		return fmt.Errorf("look up %s in bucket %s: %w", key, s.bucket, err)
	}
	if err := s.putSmall(ctx, key, sig, opts, "signature"); err != nil {
		return err
	}
	res.SignatureWritten = true
	return nil
}

// putSmall writes a small object once (If-None-Match), with its MD5 checked by the
// store; the same content already there is success.
func (s *Store) putSmall(ctx context.Context, key string, body []byte, opts UploadOptions, what string) error {
	popts := minio.PutObjectOptions{ContentType: "text/plain", SendContentMd5: true, Mode: opts.RetainMode, RetainUntilDate: opts.RetainUntil}
	popts.SetMatchETagExcept("*")
	_, err := s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(body), int64(len(body)), popts)
	if err == nil {
		return nil
	}
	if isPreconditionFailed(err) {
		if got, gerr := s.getSmall(ctx, key); gerr == nil && bytes.Equal(got, body) {
			return nil
		}
		return fmt.Errorf("bucket %s got another %s %s meanwhile: objects are never overwritten; run the copy again to compare", s.bucket, what, key)
	}
	return fmt.Errorf("write the %s %s to bucket %s: %w", what, key, s.bucket, err)
}

func (s *Store) putMarker(ctx context.Context, key string, body []byte, opts UploadOptions) error {
	return s.putSmall(ctx, key, body, opts, "marker")
}

func (s *Store) getSmall(ctx context.Context, key string) ([]byte, error) {
	o, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	b, err := io.ReadAll(io.LimitReader(o, 64<<10))
	if err != nil {
		return nil, err
	}
	return b, nil
}
