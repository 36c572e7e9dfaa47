package testbed

import (
	"strings"
	"sync"
	"testing"
)

// LogRecorder keeps the log lines written to it (a restore's, say) for a test to read, and
// shows each in the test log as it comes.
type LogRecorder struct {
	T  testing.TB
	mu sync.Mutex
	b  strings.Builder
}

func (w *LogRecorder) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.b.Write(p)
	w.mu.Unlock()
	w.T.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// String is everything written so far.
func (w *LogRecorder) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
