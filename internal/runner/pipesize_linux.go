package runner

import (
	"os"
	"syscall"
)

// fcntlSetPipeSize is F_SETPIPE_SZ (Linux).
const fcntlSetPipeSize = 1031

// SetPipeSize asks the kernel for a pipe of n bytes, so that a writer of large pieces
// waits for its reader once per piece instead of once per 64 KiB (the default size); a
// refusal keeps the default size.
func SetPipeSize(f *os.File, n int) {
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, fcntlSetPipeSize, uintptr(n))
	})
}
