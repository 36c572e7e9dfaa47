package testbed

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat (100 on Linux).
const ClockTicks = 100

// ProcStat is what the benchmarks read of a process's /proc/<pid>/stat.
type ProcStat struct {
	PPID  int
	Comm  string
	State byte
	// CPUTicks is utime+stime; ChildrenCPUTicks is cutime+cstime, the CPU of the children
	// the process has reaped. Both in clock ticks (ClockTicks per second).
	CPUTicks, ChildrenCPUTicks uint64
}

// CPU is utime+stime in seconds.
func (s ProcStat) CPU() float64 { return float64(s.CPUTicks) / ClockTicks }

// ChildrenCPU is cutime+cstime in seconds.
func (s ProcStat) ChildrenCPU() float64 { return float64(s.ChildrenCPUTicks) / ClockTicks }

// ReadProcStat reads /proc/<pid>/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: the fields after it
	// follow its last ')'.
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[j+1:])) // f[0] is field 3 (state)
	if len(f) < 15 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	n := func(k int) uint64 { v, _ := strconv.ParseUint(f[k], 10, 64); return v }
	ppid, _ := strconv.Atoi(f[1])
	return ProcStat{PPID: ppid, Comm: string(b[i+1 : j]), State: f[0][0],
		CPUTicks: n(11) + n(12), ChildrenCPUTicks: n(13) + n(14)}, nil
}

// PostmasterPID is the PID of the cluster's postmaster.
func (p *Postgres) PostmasterPID() int { return p.postmaster }
