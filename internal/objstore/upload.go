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
	CRC64NVME string `json:"crc64nvme"` // the store's whole-object checksum (base64)
	Uploaded  bool   `json:"uploaded"`  // false: the store already held it, complete
	// MarkerWritten: the marker was written by this call.
	MarkerWritten bool          `json:"marker_written"`
	Resumed       bool          `json:"resumed"`
	PartSize      int64         `json:"part_size"`
	Parts         int           `json:"parts"`
	Reused        int           `json:"parts_reused"` // parts an interrupted upload had already sent
	Duration      time.Duration `json:"-"`
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
// object, then writes the marker. An archive the store already holds
// complete with the same sha256 is left as it is; one with other content is
// never overwritten.
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

	// Write-once: what the store already holds under this name decides.
	done, err := s.existing(ctx, res, name)
	if err != nil || done {
		res.Duration = elapsed()
		return res, err
	}
	if res.CRC64NVME == "" { // not uploaded yet, or not completely
		if err := s.uploadParts(ctx, f, res, opts); err != nil {
			return nil, err
		}
	}
	verifyStart := time.Now()
	if err := s.verifyObject(ctx, res.Key, res.Size, want, res.CRC64NVME); err != nil {
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
// (CRC64NVME set: the object is complete, only the marker is missing).
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
	res.CRC64NVME = info.ChecksumCRC64NVME
	if res.CRC64NVME == "" {
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
// the whole-object CRC64NVME as it goes.
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

	uploadID, have, err := s.findUpload(ctx, res.Key, partSize, size, total)
	if err != nil {
		return err
	}
	if uploadID != "" {
		res.Resumed = true
	} else {
		meta := map[string]string{
			MetaSHA256:                 res.SHA256,
			"x-amz-checksum-algorithm": minio.ChecksumCRC64NVME.String(),
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
	sha := sha256.New()
	// The whole-object CRC64NVME is combined from the parts' (as the store does), so each
	// byte is hashed once for it.
	partSums := make([]minio.ObjectPart, total)
	var (
		mu      sync.Mutex
		parts   = make([]minio.CompletePart, total)
		firstEr error
		wg      sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan []byte, s.concurrency+1)
	for i := 0; i < s.concurrency+1; i++ {
		free <- nil
	}
	fail := func(err error) {
		mu.Lock()
		if firstEr == nil {
			firstEr = err
		}
		mu.Unlock()
		cancel()
	}
	for n := 1; n <= total; n++ {
		var buf []byte
		select {
		case buf = <-free:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		want := partSize
		if n == total {
			want = size - int64(total-1)*partSize
		}
		if int64(cap(buf)) < want {
			buf = make([]byte, partSize)
		}
		buf = buf[:want]
		if _, err := io.ReadFull(f, buf); err != nil {
			fail(fmt.Errorf("read %s: %w", f.Name(), err))
			break
		}
		sha.Write(buf)
		// A part an interrupted copy sent is reused when its checksum matches; without
		// such parts the checksum is computed beside the upload, on the part's goroutine.
		crc := ""
		if p, ok := have[n]; ok {
			if crc = partCRC(buf); p.ChecksumCRC64NVME == crc && p.Size == want {
				partSums[n-1] = minio.ObjectPart{PartNumber: n, Size: want, ChecksumCRC64NVME: crc}
				parts[n-1] = minio.CompletePart{PartNumber: n, ETag: p.ETag, ChecksumCRC64NVME: crc}
				res.Reused++
				free <- buf
				continue
			}
		}
		wg.Add(1)
		go func(n int, buf []byte, crc string) {
			defer wg.Done()
			defer func() { free <- buf }()
			if crc == "" {
				crc = partCRC(buf)
			}
			mu.Lock()
			partSums[n-1] = minio.ObjectPart{PartNumber: n, Size: int64(len(buf)), ChecksumCRC64NVME: crc}
			mu.Unlock()
			h := http.Header{}
			h.Set("x-amz-checksum-crc64nvme", crc)
			h.Set("x-amz-checksum-algorithm", minio.ChecksumCRC64NVME.String())
			h.Set("x-amz-checksum-type", "FULL_OBJECT")
			p, err := s.core.PutObjectPart(ctx, s.bucket, res.Key, uploadID, n, bytes.NewReader(buf), int64(len(buf)), minio.PutObjectPartOptions{CustomHeader: h, DisableContentSha256: true})
			if err != nil {
				fail(fmt.Errorf("upload part %d of %s: %w", n, res.Key, err))
				return
			}
			if p.ChecksumCRC64NVME != "" && p.ChecksumCRC64NVME != crc {
				fail(fmt.Errorf("the store computed another checksum for part %d of %s (%s, sent %s): the transfer is damaged, copy again", n, res.Key, p.ChecksumCRC64NVME, crc))
				return
			}
			mu.Lock()
			parts[n-1] = minio.CompletePart{PartNumber: n, ETag: p.ETag, ChecksumCRC64NVME: crc}
			mu.Unlock()
			if opts.OnPart != nil {
				opts.OnPart(n, total)
			}
		}(n, buf, crc)
	}
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
	full, err := minio.ChecksumCRC64NVME.FullObjectChecksum(partSums)
	if err != nil {
		return fmt.Errorf("combine the parts' checksums of %s: %w", res.Key, err)
	}
	res.CRC64NVME = full.Encoded()
	res.PartsDuration = time.Since(partsStart)
	completeStart := time.Now()
	defer func() { res.CompleteDuration = time.Since(completeStart) }()
	copts := minio.PutObjectOptions{UserMetadata: map[string]string{
		"x-amz-checksum-crc64nvme": res.CRC64NVME,
		"x-amz-checksum-type":      "FULL_OBJECT",
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

func partCRC(buf []byte) string {
	h := minio.ChecksumCRC64NVME.Hasher()
	h.Write(buf)
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// findUpload returns an incomplete upload of key laid out as this one would
// be, and the parts it holds.
func (s *Store) findUpload(ctx context.Context, key string, partSize, size int64, total int) (string, map[int]minio.ObjectPart, error) {
	lr, err := s.core.ListMultipartUploads(ctx, s.bucket, key, "", "", "", 1000)
	if err != nil {
		return "", nil, fmt.Errorf("list incomplete uploads in bucket %s: %w", s.bucket, err)
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
				return "", nil, fmt.Errorf("list the parts of an incomplete upload of %s: %w", key, err)
			}
			for _, p := range pr.ObjectParts {
				have[p.PartNumber] = p
			}
			if !pr.IsTruncated {
				break
			}
			marker = pr.NextPartNumberMarker
		}
		ok := true
		for n, p := range have {
			if n < 1 || n > total || (n < total && p.Size != partSize) {
				ok = false
			}
		}
		if ok {
			return u.UploadID, have, nil
		}
	}
	return "", nil, nil
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
	case info.ChecksumCRC64NVME == "":
		return fmt.Errorf("verify %s in bucket %s: the store keeps no whole-object checksum for it: use a store that supports S3 additional checksums (CRC64NVME)", key, s.bucket)
	case info.ChecksumCRC64NVME != crc:
		return fmt.Errorf("verify %s in bucket %s: the store's checksum %s differs from the archive's %s: the copy is damaged; remove it and copy again", key, s.bucket, info.ChecksumCRC64NVME, crc)
	case info.UserMetadata[MetaSHA256] != sum:
		return fmt.Errorf("verify %s in bucket %s: its sha256 metadata %q is not the archive's %s", key, s.bucket, info.UserMetadata[MetaSHA256], sum)
	}
	return nil
}

func (s *Store) putMarker(ctx context.Context, key string, body []byte, opts UploadOptions) error {
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
		return fmt.Errorf("bucket %s got another marker %s meanwhile: objects are never overwritten; run the copy again to compare", s.bucket, key)
	}
	return fmt.Errorf("write the marker %s to bucket %s: %w", key, s.bucket, err)
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
