package archive

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// pendingChecksum is a checksum file written and synced under a hidden name before the
// archive is named, so that a full disk fails the backup before anything is named rather
// than leaving an archive without its checksum.
type pendingChecksum struct {
	dir, tmp, name, sum string
}

// prepareChecksumFile writes "<sum>  <name>\n" to a hidden file in dir (mode 0644, as
// upstream) and syncs it.
func prepareChecksumFile(dir, name, sum string) (*pendingChecksum, error) {
	p := &pendingChecksum{dir: dir, tmp: filepath.Join(dir, "."+randomName(name+".sha256.", ".partial")), name: name, sum: sum}
	if err := p.write(os.O_WRONLY | os.O_CREATE | os.O_EXCL); err != nil {
		p.discard()
		return nil, err
	}
	return p, nil
}

func (p *pendingChecksum) write(flags int) error {
	f, err := os.OpenFile(p.tmp, flags, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(f, "%s  %s\n", p.sum, p.name); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// commit gives the checksum file its final name beside the archive called name. Archive
// names all have the same length, so rewriting the line for a bumped name needs no new
// space.
func (p *pendingChecksum) commit(name string) (string, error) {
	if name != p.name {
		p.name = name
		if err := p.write(os.O_WRONLY); err != nil {
			return "", err
		}
	}
	final := filepath.Join(p.dir, name+".sha256")
	if err := os.Rename(p.tmp, final); err != nil {
		return "", err
	}
	return final, syncDir(p.dir)
}

// discard removes the hidden file; harmless after commit.
func (p *pendingChecksum) discard() { _ = os.Remove(p.tmp) }

// readChecksumFile returns the lowercase hex digest in a sha256sum-style
// file. Only the first field counts, as upstream. It returns an error
// wrapping fs.ErrNotExist when the file is missing.
func readChecksumFile(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", &IntegrityError{Kind: KindChecksum, Detail: fmt.Sprintf("cannot access checksum file %q", path), Err: err}
		}
		return "", fmt.Errorf("cannot access checksum file %q: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", &IntegrityError{Kind: KindChecksum, Detail: fmt.Sprintf("checksum file %q is not a regular file (%s)", path, describeMode(st.Mode()))}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot access checksum file %q: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read checksum file %q: %w", path, err)
	}
	fields := strings.Fields(string(b))
	got := ""
	if len(fields) > 0 {
		got = fields[0]
	}
	if len(got) != 64 || !isHex(got) {
		detail := fmt.Sprintf("checksum file %q is malformed: expected 64-character hex hash, got %d characters", path, len(got))
		if len(got) == 64 {
			detail = fmt.Sprintf("checksum file %q is malformed: expected 64-character hex hash, got non-hex characters", path)
		}
		return "", &IntegrityError{Kind: KindChecksum, Detail: detail}
	}
	return strings.ToLower(got), nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
