// Package procstat reads a process's /proc/<pid>/stat (Linux).
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat (100 on Linux).
const ClockTicks = 100

// Stat is what this project reads of a process's /proc/<pid>/stat.
type Stat struct {
	PPID  int
	Comm  string
	State byte
	// CPUTicks is utime+stime; ChildrenCPUTicks is cutime+cstime, the CPU of the children
	// the process has reaped. Both in clock ticks (ClockTicks per second).
	CPUTicks, ChildrenCPUTicks uint64
	// StartTicks is when the process started, in clock ticks since boot (field 22): with
	// the boot's id it tells a process from a later one that got the same PID.
	StartTicks uint64
}

// CPU is utime+stime in seconds.
func (s Stat) CPU() float64 { return float64(s.CPUTicks) / ClockTicks }

// ChildrenCPU is cutime+cstime in seconds.
func (s Stat) ChildrenCPU() float64 { return float64(s.ChildrenCPUTicks) / ClockTicks }

// Read reads /proc/<pid>/stat.
func Read(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return parse(pid, b)
}

func parse(pid int, b []byte) (Stat, error) {
	// The command name (field 2) may hold spaces and parentheses: the fields after it
	// follow its last ')'.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return Stat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[j+1:])) // f[0] is field 3 (state)
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	n := func(k int) uint64 { v, _ := strconv.ParseUint(f[k], 10, 64); return v }
	ppid, _ := strconv.Atoi(f[1])
	return Stat{PPID: ppid, Comm: string(b[i+1 : j]), State: f[0][0],
		CPUTicks: n(11) + n(12), ChildrenCPUTicks: n(13) + n(14), StartTicks: n(19)}, nil
}

// BootID is this boot's id (/proc/sys/kernel/random/boot_id).
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Alive says whether process pid exists and has not exited: a zombie, which has exited
// and waits only for its parent to reap it, is not alive.
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	st, err := Read(pid)
	return err == nil && st.State != 'Z'
}
