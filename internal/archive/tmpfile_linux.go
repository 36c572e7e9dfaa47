//go:build linux

package archive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// openUnnamed opens an unnamed regular file in dir (O_TMPFILE). If this
// process dies, the kernel frees it: nothing written into it stays on disk.
// It returns errUnnamedUnsupported when the file system cannot do it.
func openUnnamed(dir string, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm))
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			return nil, errUnnamedUnsupported
		}
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, "(unnamed)")), nil
}

// linkUnnamed gives the unnamed file f the name dir/name. Like link(2) it
// fails with an error matching os.ErrExist rather than replace a file.
func linkUnnamed(f *os.File, dir, name string) error {
	target := filepath.Join(dir, name)
	procPath := fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	err := unix.Linkat(unix.AT_FDCWD, procPath, unix.AT_FDCWD, target, unix.AT_SYMLINK_FOLLOW)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		// Without /proc, AT_EMPTY_PATH works for privileged processes.
		if err2 := unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, target, unix.AT_EMPTY_PATH); err2 == nil {
			return nil
		}
	}
	if err != nil {
		return &os.LinkError{Op: "linkat", Old: procPath, New: target, Err: err}
	}
	return nil
}
