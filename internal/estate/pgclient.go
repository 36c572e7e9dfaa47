package estate

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// debianClientDir is where Debian and Ubuntu install each PostgreSQL version's clients.
const debianClientDir = "/usr/lib/postgresql"

var clientPrograms sync.Map // name → program

// clientProgram is the PostgreSQL client to run on this host for name (psql, pg_dump).
// On Debian and Ubuntu the one on PATH is postgresql-common's pg_wrapper, a Perl script
// that picks a version and runs it: about 50 ms of CPU each time, and a restore runs psql
// about ten times, one of them while the server is down. For a server given by host and
// port it picks the newest installed version (the one that can read every server), so
// that one runs directly. With PGCLUSTER set, which the wrapper honours, or anything but
// the wrapper on PATH, name stays as it is.
func clientProgram(name string) string {
	if p, ok := clientPrograms.Load(name); ok {
		return p.(string)
	}
	onPath, _ := exec.LookPath(name)
	p := resolveClient(name, onPath, debianClientDir, os.Getenv("PGCLUSTER"))
	clientPrograms.Store(name, p)
	return p
}

// resolveClient is clientProgram's choice: onPath is where PATH finds name ("" when it
// does not), libDir holds the <version>/bin directories.
func resolveClient(name, onPath, libDir, pgcluster string) string {
	if onPath == "" || pgcluster != "" {
		return name
	}
	target, err := filepath.EvalSymlinks(onPath)
	if err != nil || filepath.Base(target) != "pg_wrapper" {
		return name
	}
	entries, err := os.ReadDir(libDir)
	if err != nil {
		return name
	}
	best, bestVersion := "", []int(nil)
	for _, e := range entries {
		v, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		bin := filepath.Join(libDir, e.Name(), "bin", name)
		if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			continue
		}
		if bestVersion == nil || newer(v, bestVersion) {
			best, bestVersion = bin, v
		}
	}
	if best == "" {
		return name
	}
	return best
}

// parseVersion reads a version directory name: "15", "9.6".
func parseVersion(s string) ([]int, bool) {
	var v []int
	for _, f := range strings.Split(s, ".") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, len(v) > 0
}

func newer(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return len(a) > len(b)
}
