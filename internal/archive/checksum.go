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

// writeChecksumFile writes "<hex>  <name>\n" (the sha256sum format) to
// dir/name.sha256, mode 0644 as upstream, through a temporary name.
func writeChecksumFile(dir, name, sum string) (string, error) {
	final := filepath.Join(dir, name+".sha256")
	tmp := filepath.Join(dir, "."+randomName(name+".sha256.", ".partial"))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o644); err != nil {
		return "", err
	}
	if _, err := fmt.Fprintf(f, "%s  %s\n", sum, name); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	ok = true
	return final, syncDir(dir)
}

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
