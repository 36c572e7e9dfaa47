package testbed

import "flightctl.dr/internal/procstat"

// ClockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat.
const ClockTicks = procstat.ClockTicks

// ProcStat is what the benchmarks read of a process's /proc/<pid>/stat.
type ProcStat = procstat.Stat

// ReadProcStat reads /proc/<pid>/stat.
func ReadProcStat(pid int) (ProcStat, error) { return procstat.Read(pid) }

// PostmasterPID is the PID of the cluster's postmaster.
func (p *Postgres) PostmasterPID() int { return p.postmaster }
