package pgload_test

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/procstat"
)

// cpuSampler reads, every few milliseconds, the CPU time (utime+stime from
// /proc/<pid>/stat) of this process, of the psql processes it started and of the
// PostgreSQL server's processes, and adds what each used since the last sample to the
// phase the load is in at that moment. A process's last few milliseconds before it exits
// are not seen; the sampler's own reading is part of this process's figure.
type cpuSampler struct {
	postmaster int
	self       int
	phase      func() string

	mu     sync.Mutex
	last   map[int]uint64
	cpu    map[string]map[string]float64 // phase → who → CPU-seconds
	perPid map[string]map[int]float64    // phase → backend → CPU-seconds
	wall   map[string]time.Duration
	order  []string
	stop   chan struct{}
	done   chan struct{}
	lastT  time.Time
	cmdAt  map[int]string
	period time.Duration
}

func newCPUSampler(pm int, phase func() string) *cpuSampler {
	return &cpuSampler{postmaster: pm, self: os.Getpid(), phase: phase, last: map[int]uint64{},
		cpu: map[string]map[string]float64{}, perPid: map[string]map[int]float64{}, wall: map[string]time.Duration{}, cmdAt: map[int]string{},
		period: 50 * time.Millisecond}
}

func (c *cpuSampler) who(pid, ppid int, comm string) string {
	switch {
	case pid == c.self:
		return "go"
	case ppid == c.self && comm == "psql":
		return "psql"
	case ppid == c.postmaster:
		cmd, ok := c.cmdAt[pid]
		if !ok {
			b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			cmd = string(b)
			if strings.HasPrefix(cmd, "postgres: ") {
				// A new backend has the postmaster's command line until it is set up.
				c.cmdAt[pid] = cmd
			}
		}
		if strings.Contains(cmd, "[local]") || strings.Contains(cmd, "parallel worker") {
			return "backend"
		}
		return "server-bg"
	}
	return ""
}

// children lists the children of every thread of pid.
func children(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

func (c *cpuSampler) sample(count bool) {
	pids := append(append([]int{c.self}, children(c.self)...), children(c.postmaster)...)
	now := time.Now()
	ph := c.phase()
	c.mu.Lock()
	defer c.mu.Unlock()
	if count {
		if _, ok := c.wall[ph]; !ok {
			c.order = append(c.order, ph)
		}
		c.wall[ph] += now.Sub(c.lastT)
	}
	c.lastT = now
	for _, pid := range pids {
		st, err := procstat.Read(pid)
		if err != nil {
			continue
		}
		t := st.CPUTicks
		w := c.who(pid, st.PPID, st.Comm)
		if w == "" {
			continue
		}
		prev, seen := c.last[pid]
		c.last[pid] = t
		if !count || t <= prev {
			continue
		}
		if !seen && pid == c.self {
			continue
		}
		m := c.cpu[ph]
		if m == nil {
			m = map[string]float64{}
			c.cpu[ph] = m
		}
		m[w] += float64(t-prev) / procstat.ClockTicks
		if w == "backend" {
			pp := c.perPid[ph]
			if pp == nil {
				pp = map[int]float64{}
				c.perPid[ph] = pp
			}
			pp[pid] += float64(t-prev) / procstat.ClockTicks
		}
	}
}

func (c *cpuSampler) start() {
	c.stop, c.done = make(chan struct{}), make(chan struct{})
	c.sample(false)
	go func() {
		defer close(c.done)
		tk := time.NewTicker(c.period)
		defer tk.Stop()
		for {
			select {
			case <-c.stop:
				c.sample(true)
				return
			case <-tk.C:
				c.sample(true)
			}
		}
	}()
}

func (c *cpuSampler) finish() { close(c.stop); <-c.done }

var whoOrder = []string{"go", "psql", "backend", "server-bg"}

// table is the per-phase wall time and CPU-seconds, one line per phase and a total.
func (c *cpuSampler) table(title string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s\n%-14s %8s", title, "phase", "wall-s")
	for _, w := range whoOrder {
		fmt.Fprintf(&sb, " %10s", w+"-s")
	}
	fmt.Fprintf(&sb, " %10s %12s\n", "cpu-s", "busiest-be-s")
	tot := map[string]float64{}
	var wall time.Duration
	for _, ph := range c.order {
		fmt.Fprintf(&sb, "%-14s %8.2f", ph, c.wall[ph].Seconds())
		wall += c.wall[ph]
		sum := 0.0
		for _, w := range whoOrder {
			v := c.cpu[ph][w]
			sum += v
			tot[w] += v
			fmt.Fprintf(&sb, " %10.2f", v)
		}
		busiest := 0.0
		for _, v := range c.perPid[ph] {
			busiest = max(busiest, v)
		}
		fmt.Fprintf(&sb, " %10.2f %12.2f\n", sum, busiest)
	}
	fmt.Fprintf(&sb, "%-14s %8.2f", "total", wall.Seconds())
	sum := 0.0
	for _, w := range whoOrder {
		sum += tot[w]
		fmt.Fprintf(&sb, " %10.2f", tot[w])
	}
	fmt.Fprintf(&sb, " %10.2f\n", sum)
	return sb.String()
}

// totals are the CPU-seconds of each kind of process over the whole load.
func (c *cpuSampler) totals() map[string]float64 {
	tot := map[string]float64{}
	for _, m := range c.cpu {
		for w, v := range m {
			tot[w] += v
		}
	}
	return tot
}

// dumpPhases maps byte offsets of a dump to the part of the load they belong to, as the
// loader names its phases: serial (pre-data), data, index (indexes and constraints),
// trigger, foreign key, serial-post (what follows: ACLs and the rest).
type dumpPhases struct {
	starts []int64
	names  []string
}

func phaseOfType(typ string, post bool) string {
	switch typ {
	case "TABLE DATA", "SEQUENCE SET":
		return "data"
	case "INDEX", "CONSTRAINT":
		return "index"
	case "TRIGGER":
		return "trigger"
	case "FK CONSTRAINT":
		return "foreign key"
	case "COMMENT":
		if post {
			return "" // with the object it is on
		}
	}
	if post {
		return "serial-post"
	}
	return "serial"
}

func newDumpPhases(dump []byte) *dumpPhases {
	d := &dumpPhases{}
	rd := pgdump.NewReader(bytes.NewReader(dump))
	var off int64
	post := false
	cur := ""
	for {
		it, err := rd.Next()
		if err != nil {
			break
		}
		if it.Kind == pgdump.Statement || it.Kind == pgdump.CopyData {
			typ := ""
			if it.Entry != nil {
				typ = it.Entry.Type
			}
			ph := phaseOfType(typ, post)
			if ph == "" {
				ph = cur
			}
			if ph != "serial" && ph != "serial-post" && ph != "data" {
				post = true
			}
			if ph != cur {
				d.starts = append(d.starts, off)
				d.names = append(d.names, ph)
				cur = ph
			}
		}
		off += int64(len(it.Raw))
	}
	return d
}

func (d *dumpPhases) at(off int64) string {
	i := sort.Search(len(d.starts), func(i int) bool { return d.starts[i] > off }) - 1
	if i < 0 {
		return "serial"
	}
	return d.names[i]
}

// psqlPos follows the read position of the psql process that has file open.
type psqlPos struct {
	self int
	file string
	info string // /proc/<pid>/fdinfo/<fd> once found
}

// pos is psql's read position in the file, or -1 before it opened it.
func (p *psqlPos) pos() int64 {
	if p.info == "" {
		p.info = p.find()
		if p.info == "" {
			return -1
		}
	}
	b, err := os.ReadFile(p.info)
	if err != nil {
		return 1 << 62 // psql has ended
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "pos:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return -1
}

func (p *psqlPos) find() string {
	for _, pid := range children(p.self) {
		st, err := procstat.Read(pid)
		if err != nil || st.PPID != p.self || st.Comm != "psql" {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == p.file {
				return fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name())
			}
		}
	}
	return ""
}
