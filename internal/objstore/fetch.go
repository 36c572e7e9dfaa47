package objstore

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/minio/minio-go/v7"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/retention"
)

// Check is the verification of a stored archive without downloading it: the
// marker's sha256 equals the object's sha256 metadata, and the store holds a
// whole-object checksum for it (checked by the store when it was written).
func (s *Store) Check(ctx context.Context, estate, name string) (sum string, err error) {
	body, err := s.getSmall(ctx, s.Key(estate, name+".sha256"))
	if err != nil {
		return "", fmt.Errorf("read marker of %s: %w", name, err)
	}
	sum, err = parseChecksum(body, name)
	if err != nil {
		return "", fmt.Errorf("marker of %s: %w", name, err)
	}
	info, err := s.client.StatObject(ctx, s.bucket, s.Key(estate, name), minio.StatObjectOptions{Checksum: true})
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", name, err)
	}
	if info.UserMetadata[MetaSHA256] != sum {
		return "", fmt.Errorf("%s: its sha256 metadata %q differs from its marker %s", name, info.UserMetadata[MetaSHA256], sum)
	}
	if _, stored := storedChecksum(info); stored == "" {
		return "", fmt.Errorf("%s has no whole-object checksum in the store", name)
	}
	return sum, nil
}

// Newest returns the newest archive of the estate that checks out (see
// Check), and the sha256 its marker holds.
func (s *Store) Newest(ctx context.Context, estate string) (name, sum string, err error) {
	list, err := s.List(ctx, estate)
	if err != nil {
		return "", "", err
	}
	return s.NewestOf(ctx, estate, list)
}

// NewestOf is Newest over a listing already made by List.
func (s *Store) NewestOf(ctx context.Context, estate string, list []retention.Archive) (name, sum string, err error) {
	var firstErr error
	plan, err := retention.Make(retention.Policy{KeepLast: 1}, list, retention.Options{Verify: func(a retention.Archive) error {
		v, err := s.Check(ctx, estate, a.Name)
		if err == nil {
			sum = v
		} else if firstErr == nil {
			firstErr = err
		}
		return err
	}})
	if err != nil {
		return "", "", err
	}
	if plan.NewestVerified == "" {
		msg := fmt.Sprintf("bucket %s holds no complete archive for estate %s under %q", s.bucket, estate, s.estatePrefix(estate))
		if firstErr != nil {
			msg += fmt.Sprintf(" (the newest one fails its check: %v)", firstErr)
		}
		return "", "", errors.New(msg + ": make a backup with the copy to the bucket enabled, or name the archive to restore")
	}
	return plan.NewestVerified, sum, nil
}

// FetchResult is what Fetch did.
type FetchResult struct {
	Path   string
	SHA256 string
	// Downloaded is false when an identical copy was already in the directory.
	Downloaded bool
	// SignatureFile is the archive's signature beside it (<path>.sig), "" when the
	// bucket holds none for it.
	SignatureFile string
}

// HasSignature says whether the bucket holds a signature for the archive.
func (s *Store) HasSignature(ctx context.Context, estate, name string) (bool, error) {
	_, err := s.client.StatObject(ctx, s.bucket, s.Key(estate, retention.SignatureName(name)), minio.StatObjectOptions{})
	switch {
	case err == nil:
		return true, nil
	case isNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("look up the signature of %s: %w", name, err)
}

// Download fetches an archive with its marker (and its signature) into dir; see Fetch.
func (s *Store) Download(ctx context.Context, estate, name, dir string) (path string, downloaded bool, err error) {
	r, err := s.Fetch(ctx, estate, name, dir)
	if err != nil {
		return "", false, err
	}
	return r.Path, r.Downloaded, nil
}

// Fetch fetches an archive, its marker and its signature (when the bucket
// holds one) into dir, hashing the archive as it writes, and names the file
// only when its sha256 matches the marker; the signature is in place before
// the archive is named, so that a restore with trusted keys checks it. An
// archive already in dir with the same checksum is reused (and given the
// bucket's signature if it lacks one); a different one, or a different
// signature, is never overwritten.
func (s *Store) Fetch(ctx context.Context, estate, name, dir string) (*FetchResult, error) {
	if err := ValidEstate(estate); err != nil {
		return nil, err
	}
	if !retention.IsArchiveName(name) {
		return nil, fmt.Errorf("%s is not an archive name this tool writes (flightctl-backup-YYYYMMDDTHHMMSSZ.tar.gz, or .tar.gz.age encrypted)", name)
	}
	sum, err := s.Check(ctx, estate, name)
	if err != nil {
		return nil, fmt.Errorf("archive %s in bucket %s is not a complete backup: %w", name, s.bucket, err)
	}
	path := filepath.Join(dir, name)
	res := &FetchResult{Path: path, SHA256: sum}
	sig, err := s.getSmall(ctx, s.Key(estate, retention.SignatureName(name)))
	switch {
	case isNotFound(err):
		sig = nil
	case err != nil:
		return nil, fmt.Errorf("download the signature of %s: %w", name, err)
	case len(sig) > maxSignatureSize:
		return nil, fmt.Errorf("the signature of %s in bucket %s is larger than a signature can be: it is not one; remove it", name, s.bucket)
	}
	if local, err := ReadChecksumFile(path+".sha256", name); err == nil {
		if _, err := os.Stat(path); err == nil {
			if local != sum {
				return nil, fmt.Errorf("%s already exists with another checksum than the bucket's copy: it is never overwritten; move it away and fetch again", path)
			}
			if err := placeSignature(res, sig); err != nil {
				return nil, err
			}
			return res, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(dir, "."+name+".*.partial")
	if err != nil {
		return nil, err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return nil, err
	}
	o, err := s.client.GetObject(ctx, s.bucket, s.Key(estate, name), minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", name, err)
	}
	defer o.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(tmp, h), o, make([]byte, 4<<20)); err != nil {
		return nil, fmt.Errorf("download %s: %w", name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return nil, fmt.Errorf("downloaded %s does not match its marker (sha256 %s, marker %s): the stored copy is damaged; restore another archive", name, got, sum)
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := writeNew(path+".sha256", markerBody(sum, name), 0o644); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := placeSignature(res, sig); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("name the downloaded archive %s: %w", path, err)
	}
	res.Downloaded = true
	return res, nil
}

// placeSignature writes the bucket's signature beside the local archive, once: a
// signature already there with the same content is kept, one with other content is
// refused.
func placeSignature(res *FetchResult, sig []byte) error {
	if sig == nil {
		return nil
	}
	file := res.Path + retention.SignatureSuffix
	err := writeNew(file, sig, 0o644)
	if errors.Is(err, os.ErrExist) {
		local, rerr := os.ReadFile(file)
		if rerr == nil && bytes.Equal(local, sig) {
			err = nil
		} else {
			err = fmt.Errorf("%s already exists and differs from the signature in the bucket: it is never overwritten; move it away and fetch again", file)
		}
	}
	if err != nil {
		return err
	}
	res.SignatureFile = file
	return nil
}

func writeNew(path string, body []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(body); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Delete removes archives of the estate as retention listed them
// (Plan.Deletions: each marker before its archive, the signature after it).
// Only this tool's names are removed. In a versioned or
// Object Lock bucket a delete leaves a delete marker and the locked
// versions stay until their retention ends.
func (s *Store) Delete(ctx context.Context, estate string, names []string) ([]string, error) {
	if err := ValidEstate(estate); err != nil {
		return nil, err
	}
	var done []string
	for _, n := range names {
		if !retention.IsCompanionName(n) {
			return done, fmt.Errorf("%s is not an archive this tool writes: not removed", n)
		}
		if err := s.client.RemoveObject(ctx, s.bucket, s.Key(estate, n), minio.RemoveObjectOptions{}); err != nil && !isNotFound(err) {
			return done, fmt.Errorf("remove %s from bucket %s: %w", s.Key(estate, n), s.bucket, err)
		}
		done = append(done, n)
	}
	return done, nil
}

// Tail reading: the archive's metadata.json is in its last gzip members.

const tailStart = 1 << 20

// ReadMetadata reads metadata.json of a stored archive from its tail with
// ranged reads, without downloading the rest. It returns
// archive.ErrNoQuickMetadata for archives not laid out as this tool writes
// them (upstream's), and for encrypted ones (.tar.gz.age, read with their identity after
// the download): those must be downloaded to be read.
func (s *Store) ReadMetadata(ctx context.Context, estate, name string) (*archive.Metadata, int64, error) {
	if strings.HasSuffix(name, archive.EncryptedSuffix) {
		return nil, 0, archive.ErrNoQuickMetadata
	}
	key := s.Key(estate, name)
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("look up %s: %w", key, err)
	}
	size := info.Size
	var read int64
	for want := int64(tailStart); ; want *= 4 {
		off := size - want
		if off < 0 {
			off = 0
		}
		opts := minio.GetObjectOptions{}
		if err := opts.SetRange(off, size-1); err != nil {
			return nil, read, err
		}
		o, err := s.client.GetObject(ctx, s.bucket, key, opts)
		if err != nil {
			return nil, read, fmt.Errorf("read the end of %s: %w", key, err)
		}
		tail, err := io.ReadAll(io.LimitReader(o, want+1))
		o.Close()
		if err != nil {
			return nil, read, fmt.Errorf("read the end of %s: %w", key, err)
		}
		read += int64(len(tail))
		md, err := metadataFromTail(tail, off == 0)
		if err == nil {
			return md, read, nil
		}
		if !errors.Is(err, errNeedMore) || off == 0 || want > 64<<20 {
			if errors.Is(err, errNeedMore) {
				err = archive.ErrNoQuickMetadata
			}
			return nil, read, err
		}
	}
}

var errNeedMore = errors.New("metadata not in this tail")

// Member header as the archive writer lays it out: gzip magic, CM 8, FLG
// FEXTRA, MTIME 0, XFL, OS 255, XLEN 12, subfield "FD" of 8 bytes holding
// the member's length.
const memberHeaderLen = 10 + 2 + 4 + 8

func memberAt(b []byte, p int) (int, bool) {
	if p+memberHeaderLen > len(b) {
		return 0, false
	}
	h := b[p:]
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 || h[3] != 4 || h[4]|h[5]|h[6]|h[7] != 0 || h[9] != 0xff ||
		h[10] != 12 || h[11] != 0 || h[12] != 'F' || h[13] != 'D' || h[14] != 8 || h[15] != 0 {
		return 0, false
	}
	n := binary.LittleEndian.Uint64(h[16:24])
	if n < memberHeaderLen || n > uint64(len(b)-p) {
		return 0, false
	}
	return int(n), true
}

// metadataFromTail finds the chain of whole members that ends exactly at the
// end of tail, inflates it and reads metadata.json from it (the last entry,
// followed by the end-of-archive marker).
func metadataFromTail(tail []byte, whole bool) (*archive.Metadata, error) {
	// chain[p]: a member starts at p and the members from p reach the end.
	end := len(tail)
	reach := make(map[int]bool)
	start := -1
	for p := end - memberHeaderLen; p >= 0; p-- {
		if tail[p] != 0x1f {
			continue
		}
		n, ok := memberAt(tail, p)
		if !ok || (p+n != end && !reach[p+n]) {
			continue
		}
		reach[p] = true
		start = p
	}
	if start < 0 {
		if whole {
			return nil, archive.ErrNoQuickMetadata
		}
		return nil, errNeedMore
	}
	zr, err := gzip.NewReader(bytes.NewReader(tail[start:]))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(zr, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("the end of the archive is damaged (%v): do not restore from it", err)
	}
	needle := []byte(archive.MetadataName + "\x00")
	for i := bytes.LastIndex(raw, needle); i >= 0; i = bytes.LastIndex(raw[:i], needle) {
		tr := tar.NewReader(bytes.NewReader(raw[i:]))
		hdr, err := tr.Next()
		if err != nil || hdr.Name != archive.MetadataName || hdr.Typeflag != tar.TypeReg {
			continue
		}
		body, err := io.ReadAll(tr)
		if err != nil || int64(len(body)) != hdr.Size {
			continue
		}
		if _, err := tr.Next(); err != io.EOF {
			continue
		}
		var md archive.Metadata
		if err := json.Unmarshal(body, &md); err != nil {
			return nil, fmt.Errorf("metadata.json is not valid JSON (%v): do not restore from this archive", err)
		}
		return &md, nil
	}
	if whole || start == 0 {
		if whole {
			return nil, archive.ErrNoQuickMetadata
		}
		return nil, errNeedMore
	}
	return nil, errNeedMore
}
