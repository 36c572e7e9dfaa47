package archive

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	childDirEnv = "FLIGHTCTL_DR_ARCHIVE_KILL_CHILD_DIR"
	fakeSecret  = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"
)

// secretThenBlock serves n bytes made of the secret, then blocks forever, like
// a pg_dump that hangs.
type secretThenBlock struct {
	left  int
	ready func()
}

func (s *secretThenBlock) Read(p []byte) (int, error) {
	if s.left == 0 {
		s.ready()
		select {}
	}
	n := min(len(p), s.left)
	for i := range n {
		p[i] = fakeSecret[i%len(fakeSecret)]
	}
	s.left -= n
	return n, nil
}

// runKillChild is the child process: it streams secrets into an archive and
// hangs until it is killed.
func runKillChild(dir string) {
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, CompressionLevel: 1})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	_ = w.AddFile("pki/ca.key", 0o600, time.Time{}, int64(len(fakeSecret)), strings.NewReader(fakeSecret))
	_, _ = w.AddStream("db/dump.sql", 0o600, time.Time{}, &secretThenBlock{left: 16 << 20, ready: func() { fmt.Println("ready") }})
	os.Exit(3) // not reached
}

func TestKilledWriterLeavesNothing(t *testing.T) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		runKillChild(dir)
		return
	}
	dir := t.TempDir()
	if f, err := openUnnamed(dir, 0o600); err != nil {
		t.Skipf("O_TMPFILE is not supported on %s: %v", dir, err)
	} else {
		f.Close()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterLeavesNothing$")
	cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ready\n", line)

	// The child holds the unnamed archive open and its data reach the file:
	// find it through /proc and wait until it has grown.
	archiveFD := ""
	require.Eventually(t, func() bool {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
		for _, fd := range fds {
			p := fmt.Sprintf("/proc/%d/fd/%s", cmd.Process.Pid, fd.Name())
			target, _ := os.Readlink(p)
			st, err := os.Stat(p)
			if strings.HasPrefix(target, dir+"/") && err == nil && st.Size() > 8<<10 {
				archiveFD = p
				return true
			}
		}
		return false
	}, 60*time.Second, 10*time.Millisecond, "the child's archive never grew")
	target, _ := os.Readlink(archiveFD)
	t.Logf("child archive %s -> %s", archiveFD, target)
	// While it is being written it has no name in the directory.
	assert.Empty(t, listTree(t, dir))

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err = cmd.Wait()
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr)
	assert.Equal(t, syscall.SIGKILL, exitErr.Sys().(syscall.WaitStatus).Signal())

	assert.Empty(t, listTree(t, dir), "nothing may remain after SIGKILL")
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			assert.False(t, bytes.Contains(b, []byte(fakeSecret)), "%s holds the secret", p)
		}
		return nil
	})
	_ = io.Discard
}
