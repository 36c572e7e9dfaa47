//go:build linux

package archive

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback starts writing n bytes of f from off to disk (sync_file_range,
// SYNC_FILE_RANGE_WRITE: it does not wait for them). It is only a hint: an error changes
// nothing, the sync at Commit still writes and checks everything.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
