package estate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
)

// A dump through `podman exec` reaches this process through three copies: pg_dump's
// output goes to conmon, which relays it over the exec's attach socket to podman, which
// writes it to its stdout, in small pieces (measured on a 883 MB dump: podman and conmon
// spent 2.7 s of CPU relaying it, more than pg_dump itself). When this process may reach
// the container's file system (root on a rootful host: /proc/<pid>/root), the dump
// instead goes through a FIFO made in the container's /tmp: the exec still runs pg_dump
// in the container as upstream does, with the password on stdin, but its output goes
// straight into the FIFO this process reads. The FIFO is removed as soon as both ends are
// open. Whenever the FIFO cannot be made or opened on either side, the dump goes through
// the exec's stdout as before.

// containerPipe is the FIFO in the database container, open for reading here.
type containerPipe struct {
	host string // the FIFO's path from this host (/proc/<pid>/root/tmp/...)
	r    *os.File
}

// newDumpNames returns the FIFO's path inside the container and the marker line the
// container prints once the FIFO is open there.
func newDumpNames() (inner, marker string) {
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	return "/tmp/.flightctl-dr-dump-" + id, "flightctl-dr-fifo-open-" + id
}

// openContainerPipe makes the FIFO inner in the running container, owned by the user of
// the container's main process, and opens it for reading without waiting for a writer.
func openContainerPipe(ctx context.Context, pm *podman.Client, container, inner string) (*containerPipe, error) {
	pid, err := pm.ContainerPID(ctx, container)
	if err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, fmt.Errorf("container %s is not running", container)
	}
	uid, gid, err := processOwner(pid)
	if err != nil {
		return nil, err
	}
	host := "/proc/" + strconv.Itoa(pid) + "/root" + inner
	if err := syscall.Mkfifo(host, 0o600); err != nil {
		return nil, fmt.Errorf("make a FIFO in container %s: %w", container, err)
	}
	p := &containerPipe{host: host}
	if err := os.Lchown(host, uid, gid); err != nil {
		p.close()
		return nil, fmt.Errorf("make a FIFO in container %s: %w", container, err)
	}
	// O_NONBLOCK: opening for reading does not wait for the writer; reads go through Go's
	// poller. No read happens before the container says the FIFO is open there, so an
	// early end of file cannot be taken for the end of the dump.
	r, err := os.OpenFile(host, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		p.close()
		return nil, fmt.Errorf("open the FIFO in container %s: %w", container, err)
	}
	runner.SetPipeSize(r, dumpPipeSize)
	p.r = r
	return p, nil
}

// processOwner is the real user and group of a process, as this host sees them.
func processOwner(pid int) (int, int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	uid, gid := -1, -1
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Uid:":
			uid, _ = strconv.Atoi(f[1])
		case "Gid:":
			gid, _ = strconv.Atoi(f[1])
		}
	}
	if uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("no owner in /proc/%d/status", pid)
	}
	return uid, gid, nil
}

// unlink removes the FIFO's name; open ends stay usable.
func (p *containerPipe) unlink() { _ = os.Remove(p.host) }

func (p *containerPipe) close() {
	if p.r != nil {
		_ = p.r.Close()
	}
	p.unlink()
}

// pipedDumpScript is the early container dump: the first line of stdin is the password,
// the second says where the dump goes ("fifo" or "stdout"). With "fifo", and when the
// FIFO can be opened in the container (tried first with `true`, whose failed redirection
// does not end the shell as one of `exec` would), the shell holds it open, prints marker
// on stdout and pg_dump writes into the FIFO; otherwise pg_dump writes to stdout, as
// upstream's command does.
func (d dbClient) pipedDumpScript(inner, marker string) string {
	dump := d.dumpScript()
	return "IFS= read -r PGPASSWORD; export PGPASSWORD; IFS= read -r where; f=" + inner + "; " +
		`if [ "$where" = fifo ] && [ -p "$f" ] && true 2>/dev/null 3>"$f"; then exec 3>"$f"; echo ` + marker + "; exec " + dump + " >&3 3>&-; fi; exec " + dump
}

// pipedOutput reads the early container dump: the exec's stdout, and once the container
// has printed the marker there, the FIFO instead.
type pipedOutput struct {
	stdout  io.Reader
	marker  string
	decided chan struct{} // closed when pipe (or nil) and restart are set
	pipe    *containerPipe
	// restart: the password holds a line break, which this script cannot take on stdin;
	// the dump is run again with upstream's command.
	restart bool
	logf    func(string) // debug log

	once   sync.Once
	src    io.Reader
	err    error
	closed bool
}

// choose finds where the dump comes from: the marker on stdout switches to the FIFO.
func (o *pipedOutput) choose() {
	<-o.decided
	if o.pipe == nil {
		o.src = o.stdout
		return
	}
	want := []byte(o.marker + "\n")
	head := make([]byte, len(want))
	n, err := io.ReadFull(o.stdout, head)
	if n == len(want) && bytes.Equal(head, want) {
		// Both ends are open: the name is no longer needed.
		o.pipe.unlink()
		o.src = o.pipe.r
		if o.logf != nil {
			o.logf("the dump is read through a FIFO in the database container")
		}
		return
	}
	// The container could not open the FIFO: the dump is on stdout.
	o.pipe.close()
	o.src = io.MultiReader(bytes.NewReader(head[:n]), o.stdout)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		o.err = err
	}
}

func (o *pipedOutput) Read(p []byte) (int, error) {
	o.once.Do(o.choose)
	if o.err != nil {
		return 0, o.err
	}
	return o.src.Read(p)
}

// close releases the FIFO (its reader too: a writer still running gets EPIPE). It waits
// for the choice of stdout or FIFO, which follows the password lookup.
func (o *pipedOutput) close() {
	<-o.decided
	if o.pipe != nil {
		o.pipe.close()
	}
}
