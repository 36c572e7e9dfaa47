package testbed

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"flightctl.dr/internal/procstat"
)

// PostmasterPID is the PID of the cluster's postmaster.
func (p *Postgres) PostmasterPID() int { return p.postmaster }

// auxiliaryProcesses are the postmaster's children that live as long as it does (their
// titles in /proc/<pid>/cmdline).
var auxiliaryProcesses = []string{"checkpointer", "background writer", "walwriter", "autovacuum launcher",
	"logical replication launcher", "stats collector", "archiver", "logger"}

// Backends lists the PIDs of postmaster's children other than its auxiliary processes:
// client sessions, parallel workers, autovacuum workers, alive or exited and not yet reaped.
func Backends(postmaster int) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if st, err := procstat.Read(pid); err != nil || st.PPID != postmaster {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !slices.ContainsFunc(auxiliaryProcesses, func(a string) bool { return strings.Contains(string(cmd), a) }) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// WaitBackends waits, at most limit, until every backend of postmaster is one of keep,
// so that the CPU of every other has been added to the postmaster's reaped children's
// (a backend ends a moment after its client closes the session); false when one is left.
func WaitBackends(postmaster int, keep []int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		left := slices.DeleteFunc(Backends(postmaster), func(pid int) bool { return slices.Contains(keep, pid) })
		if len(left) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
