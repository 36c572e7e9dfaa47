package estate

import (
	"os"
	"syscall"
)

// fcntlSetPipeSize is F_SETPIPE_SZ (Linux).
const fcntlSetPipeSize = 1031

// setPipeSize asks the kernel for a pipe of n bytes; a refusal keeps the default size.
func setPipeSize(f *os.File, n int) {
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, fcntlSetPipeSize, uintptr(n))
	})
}
