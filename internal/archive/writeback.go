package archive

import "os"

// writebackBytes is how much of a plain archive is written before its writeback to disk
// is started (startWriteback).
const writebackBytes = 8 << 20

// writeback writes the archive to its file and, every writebackBytes, asks the kernel to
// start writing those bytes to disk without waiting for them: the sync at Commit then only
// waits for the last few megabytes instead of the whole archive.
type writeback struct {
	f       *os.File
	written int64
	started int64 // bytes whose writeback has been started
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= writebackBytes {
		startWriteback(w.f, w.started, w.written-w.started)
		w.started = w.written
	}
	return n, err
}
