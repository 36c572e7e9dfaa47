package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Extract verifies the archive and writes its entries under destRoot, which
// must be missing (it is created 0700) or an empty directory. The checksum is
// checked before anything is written; entries are then checked as they are
// written (see Verify), and the manifest at the end. Directories are created
// 0700, files keep their permission bits without setuid, setgid and sticky.
// Nothing is ever written outside destRoot, and on failure everything Extract
// wrote is removed.
func Extract(ctx context.Context, archivePath, destRoot string, opts VerifyOptions) (rep *Report, err error) {
	opts = opts.withDefaults(archivePath)
	f, want, err := openWithChecksum(archivePath, opts)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if want != "" {
		h := sha256.New()
		if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
			return nil, fmt.Errorf("read archive %q: %w", archivePath, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			return nil, fmt.Errorf("archive integrity check failed: %w", checksumMismatch(archivePath, want, got, nil))
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("read archive %q: %w", archivePath, err)
		}
	}

	root, created, err := openDestRoot(destRoot)
	if err != nil {
		return nil, err
	}
	sink := &extractSink{root: root, top: map[string]bool{}}
	defer func() {
		if err != nil {
			sink.cleanup()
			if created {
				os.Remove(destRoot)
			}
		}
		root.Close()
	}()

	s := newScanner(opts.Limits, sink)
	if err := s.expectEarly(ctx, archivePath, opts); err != nil {
		return nil, err
	}
	s.checkDump = opts.CheckDump
	s.decryption = opts.Decryption
	// The second read is hashed too: a file changed since the first read is
	// caught by the checksum comparison.
	rep, err = runScan(ctx, f, archivePath, want, s)
	if err != nil {
		return nil, err
	}
	rep.ChecksumFile = opts.ChecksumFile
	if err := s.checkMetadata(rep, opts); err != nil {
		return nil, fmt.Errorf("archive integrity check failed: %w", err)
	}
	if err := sink.applyDirTimes(); err != nil {
		return nil, err
	}
	return rep, nil
}

func openDestRoot(dest string) (*os.Root, bool, error) {
	created := false
	st, err := os.Lstat(dest)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(dest, 0o700); err != nil {
			return nil, false, fmt.Errorf("extract archive: create %s: %w", dest, err)
		}
		created = true
	case err != nil:
		return nil, false, fmt.Errorf("extract archive: %w", err)
	case !st.IsDir():
		return nil, false, fmt.Errorf("extract archive: destination %s is a %s, not a directory", dest, describeMode(st.Mode()))
	default:
		d, err := os.Open(dest)
		if err != nil {
			return nil, false, fmt.Errorf("extract archive: %w", err)
		}
		names, err := d.Readdirnames(1)
		d.Close()
		if err != nil && err != io.EOF {
			return nil, false, fmt.Errorf("extract archive: %w", err)
		}
		if len(names) > 0 {
			return nil, false, fmt.Errorf("extract archive: destination %s is not empty: extract into a new or empty directory", dest)
		}
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		if created {
			os.Remove(dest)
		}
		return nil, false, fmt.Errorf("extract archive: %w", err)
	}
	return root, created, nil
}

// extractSink writes entries through an os.Root, which refuses any path that
// would leave the root, symlinks included.
type extractSink struct {
	root     *os.Root
	top      map[string]bool // top-level names created, for cleanup
	dirTimes []dirTime
	open     *os.File // file being written
}

type dirTime struct {
	name string
	hdr  *tar.Header
}

func (x *extractSink) note(name string) {
	top, _, _ := strings.Cut(name, "/")
	x.top[top] = true
}

func (x *extractSink) mkParents(name string) error {
	if dir := path.Dir(name); dir != "." {
		x.note(dir)
		if err := x.root.MkdirAll(filepath.FromSlash(dir), 0o700); err != nil {
			return fmt.Errorf("extract archive entry %q: %w", name, err)
		}
	}
	return nil
}

func (x *extractSink) dir(name string, hdr *tar.Header) error {
	if err := x.mkParents(name); err != nil {
		return err
	}
	x.note(name)
	err := x.root.Mkdir(filepath.FromSlash(name), 0o700)
	if errors.Is(err, fs.ErrExist) {
		// Created earlier as a parent; make sure it is a real directory.
		st, lerr := x.root.Lstat(filepath.FromSlash(name))
		if lerr == nil && st.IsDir() {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("extract archive entry %q: %w", name, err)
	}
	x.dirTimes = append(x.dirTimes, dirTime{name, hdr})
	return nil
}

func (x *extractSink) file(name string, hdr *tar.Header) (io.Writer, func() error, error) {
	if err := x.mkParents(name); err != nil {
		return nil, nil, err
	}
	x.note(name)
	local := filepath.FromSlash(name)
	out, err := x.root.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("extract archive entry %q: %w", name, err)
	}
	x.open = out
	finish := func() error {
		x.open = nil
		err := out.Chmod(fs.FileMode(hdr.Mode).Perm())
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err == nil && !hdr.ModTime.IsZero() {
			err = x.root.Chtimes(local, hdr.ModTime, hdr.ModTime)
		}
		if err != nil {
			return fmt.Errorf("extract archive entry %q: %w", name, err)
		}
		return nil
	}
	return out, finish, nil
}

// applyDirTimes sets directory mtimes last, after their content is written.
func (x *extractSink) applyDirTimes() error {
	for i := len(x.dirTimes) - 1; i >= 0; i-- {
		d := x.dirTimes[i]
		if d.hdr.ModTime.IsZero() {
			continue
		}
		if err := x.root.Chtimes(filepath.FromSlash(d.name), d.hdr.ModTime, d.hdr.ModTime); err != nil {
			return fmt.Errorf("extract archive entry %q: %w", d.name, err)
		}
	}
	return nil
}

func (x *extractSink) cleanup() {
	if x.open != nil {
		x.open.Close()
		x.open = nil
	}
	for top := range x.top {
		_ = x.root.RemoveAll(top)
	}
}
