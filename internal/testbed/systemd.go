package testbed

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"flightctl.dr/internal/procstat"
)

// SystemdBinary is the systemd executable started in user mode.
const SystemdBinary = "/lib/systemd/systemd"

// systemdLauncher moves itself into a new child cgroup "<current>/<name>" in every
// hierarchy of /proc/self/cgroup, checks that the move happened everywhere, and only then
// fakes a booted system inside a private mount namespace and becomes systemd --user.
//
// Why: systemd --user started from the machine's root cgroup takes that cgroup as its own
// and moves every process of the machine (PID 1 included) into its init.scope. Moving the
// launcher first confines systemd, and everything it starts, to the new child cgroups.
//
// Before leaving the caller's mount namespace it starts a keeper process that stays in it,
// so that units can run commands there (nsenter --mount=/proc/<keeper>/ns/mnt): podman
// must mount container root filesystems where the rest of the machine sees them.
//
// $1 cgroup name, $2 file that receives the created cgroup directories (one per line),
// $3 the systemd binary, $4 file that receives the keeper's PID. Runs under /bin/sh; the
// move concerns this shell only.
const systemdLauncher = `set -eu
name="$1"; record="$2"; systemd="$3"; keeper="$4"
self=$$
: > "$record"
cgroups=$(cat /proc/$self/cgroup)
echo "$cgroups" | while IFS=: read -r id ctrl path; do
  case "$ctrl" in
    "")
      if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then base=/sys/fs/cgroup/unified
      elif [ -e /sys/fs/cgroup/cgroup.controllers ]; then base=/sys/fs/cgroup
      else echo "launcher: no cgroup2 mount for 0::$path" >&2; exit 1; fi ;;
    name=systemd) base=/sys/fs/cgroup/systemd ;;
    name=*) base=/sys/fs/cgroup/${ctrl#name=} ;;
    *) base=/sys/fs/cgroup/$ctrl ;;
  esac
  parent="${base}${path%/}"
  if [ ! -d "$parent" ]; then echo "launcher: cgroup $parent not found" >&2; exit 1; fi
  dir="$parent/$name"
  mkdir "$dir"
  echo "$dir" >> "$record"
  case ",$ctrl," in
    *,cpuset,*)
      cat "$parent/cpuset.cpus" > "$dir/cpuset.cpus"
      cat "$parent/cpuset.mems" > "$dir/cpuset.mems" ;;
  esac
  echo "$self" > "$dir/cgroup.procs"
done
# Refuse to go on unless every hierarchy now ends in /<name>.
while IFS=: read -r id ctrl path; do
  case "$path" in
    */"$name") ;;
    *) echo "launcher: still in cgroup $ctrl:$path after the move; not starting systemd" >&2; exit 1 ;;
  esac
done < /proc/$self/cgroup
sleep infinity </dev/null >/dev/null 2>&1 &
echo $! > "$keeper"
exec unshare --mount --propagation private /bin/sh -c '
  set -eu
  while IFS=: read -r id ctrl path; do
    case "$path" in */"$1") ;; *) echo "launcher: cgroup check failed in namespace" >&2; exit 1 ;; esac
  done < /proc/self/cgroup
  mkdir -p /run/systemd
  mount -t tmpfs tmpfs /run/systemd
  mkdir -p /run/systemd/system
  exec "$2" --user' launcher-ns "$name" "$systemd"
`

// SystemdOptions configures StartSystemd.
type SystemdOptions struct {
	// Dir holds everything of this manager: runtime dir, unit files, logs, state. Required.
	Dir string
	// Env is added to the manager's environment, which its units inherit.
	Env    []string
	Logger *slog.Logger
}

// Validate checks the options.
func (o SystemdOptions) Validate() error {
	if o.Dir == "" {
		return errors.New("systemd options: Dir is required")
	}
	return nil
}

// Systemd is a running systemd user manager confined to its own cgroups and mount
// namespace, with a private runtime directory.
type Systemd struct {
	Dir string `json:"dir"`
	// RuntimeDir is the manager's XDG_RUNTIME_DIR (mode 0700, private to this instance).
	RuntimeDir string `json:"runtime_dir"`
	// ConfigHome is the manager's XDG_CONFIG_HOME; UnitDir the unit search directory in it.
	ConfigHome string `json:"config_home"`
	UnitDir    string `json:"unit_dir"`
	// BusAddress is a DBUS_SESSION_BUS_ADDRESS value for the user bus of this manager.
	BusAddress string `json:"bus_address"`
	// PrivateAddress is systemd's own peer-to-peer socket (no bus daemon involved).
	PrivateAddress string `json:"private_address"`
	// PID is systemd's process id.
	PID int `json:"pid"`
	// CgroupName is the leaf name of the cgroups created for it; CgroupDirs their paths.
	CgroupName string   `json:"cgroup_name"`
	CgroupDirs []string `json:"cgroup_dirs"`
	LogFile    string   `json:"log_file"`
	// HostNamespacePID is a process kept in the caller's mount namespace (see HostCommand).
	HostNamespacePID int `json:"host_namespace_pid"`
	// OwnRuntimeDir is set when RuntimeDir lies outside Dir and Stop must remove it.
	OwnRuntimeDir bool `json:"own_runtime_dir"`

	logger *slog.Logger
	done   chan struct{} // closed when our child exits; nil when attached by state file
}

const systemdStateFile = "systemd.json"

// StartSystemd starts systemd --user through the safe launcher and waits until it runs.
// It checks afterwards that PID 1 and this process are still in their original cgroups.
func StartSystemd(ctx context.Context, opts SystemdOptions) (*Systemd, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, p := range []string{SystemdBinary, "/usr/bin/unshare", "/bin/sh"} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("start systemd: %s is missing (install systemd and util-linux): %w", p, err)
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start systemd: %w", err)
	}
	s := &Systemd{
		Dir:        dir,
		RuntimeDir: filepath.Join(dir, "run"),
		ConfigHome: filepath.Join(dir, "config"),
		LogFile:    filepath.Join(dir, "systemd.log"),
		CgroupName: "flightctl-dr-systemd-" + randomHex(4),
		logger:     logger,
	}
	s.UnitDir = filepath.Join(s.ConfigHome, "systemd", "user")
	if err := os.MkdirAll(s.UnitDir, 0o755); err != nil {
		return nil, fmt.Errorf("start systemd: %w", err)
	}
	// Unix socket paths are limited to 107 bytes: a deep Dir gets a short runtime dir in
	// the system temp dir instead, removed by Stop.
	if len(s.RuntimeDir)+len("/systemd/private") > 100 {
		rt, err := os.MkdirTemp("", "fdr-run-")
		if err != nil {
			return nil, fmt.Errorf("start systemd: %w", err)
		}
		s.RuntimeDir, s.OwnRuntimeDir = rt, true
	} else if err := os.Mkdir(s.RuntimeDir, 0o700); err != nil {
		return nil, fmt.Errorf("start systemd: runtime dir (use a fresh Dir per manager): %w", err)
	}
	if err := os.Chmod(s.RuntimeDir, 0o700); err != nil {
		return nil, fmt.Errorf("start systemd: %w", err)
	}

	s.BusAddress = "unix:path=" + filepath.Join(s.RuntimeDir, "bus")
	s.PrivateAddress = "unix:path=" + filepath.Join(s.RuntimeDir, "systemd", "private")

	removeStaleCgroups(logger)

	pid1Before, err1 := os.ReadFile("/proc/1/cgroup")
	selfBefore, err2 := os.ReadFile("/proc/self/cgroup")
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("start systemd: read cgroups: %w", err)
	}

	logFile, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start systemd: %w", err)
	}
	defer logFile.Close()
	record := filepath.Join(dir, "cgroups")
	keeperFile := filepath.Join(dir, "keeper.pid")
	cmd := exec.Command("/bin/sh", "-c", systemdLauncher, "launcher", s.CgroupName, record, SystemdBinary, keeperFile)
	cmd.Env = append([]string{
		"PATH=" + envOr("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
		"HOME=" + envOr("HOME", "/root"),
		"LANG=C.UTF-8",
		"XDG_RUNTIME_DIR=" + s.RuntimeDir,
		"XDG_CONFIG_HOME=" + s.ConfigHome,
		// No journald here: the manager logs to its stderr, the log file.
		"SYSTEMD_LOG_TARGET=console",
		"SYSTEMD_LOG_LEVEL=info",
	}, opts.Env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own session: a Ctrl-C meant for the caller does not reach the manager, which is
	// stopped explicitly (Stop) and may outlive a short-lived caller (the sandbox CLI).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start systemd: launcher: %w", err)
	}
	s.PID = cmd.Process.Pid
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	logger.Info("systemd user manager starting", "pid", s.PID, "cgroup", s.CgroupName, "runtime_dir", s.RuntimeDir)

	fail := func(err error) (*Systemd, error) {
		s.readCgroupRecord()
		_ = s.Stop()
		return nil, fmt.Errorf("start systemd (log: %s): %w", s.LogFile, err)
	}
	if err := s.waitRunning(ctx, 30*time.Second); err != nil {
		return fail(err)
	}
	s.readCgroupRecord()
	if err := s.checkConfined(); err != nil {
		return fail(err)
	}
	if err := s.readKeeper(keeperFile); err != nil {
		return fail(err)
	}
	pid1After, _ := os.ReadFile("/proc/1/cgroup")
	selfAfter, _ := os.ReadFile("/proc/self/cgroup")
	if !bytes.Equal(pid1Before, pid1After) || !bytes.Equal(selfBefore, selfAfter) {
		return fail(fmt.Errorf("DANGER: PID 1 or the caller changed cgroup while systemd started (PID 1 before %q after %q); stop everything and inspect /sys/fs/cgroup",
			pid1Before, pid1After))
	}
	if err := s.saveState(); err != nil {
		return fail(err)
	}
	logger.Info("systemd user manager running", "pid", s.PID)
	return s, nil
}

// waitRunning waits for the private socket and then for SystemState running/degraded.
func (s *Systemd) waitRunning(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last string
	for {
		if s.exited() {
			return fmt.Errorf("systemd exited during start-up: %s", lastLines(s.LogFile, 10))
		}
		if _, err := os.Stat(filepath.Join(s.RuntimeDir, "systemd", "private")); err == nil {
			out, err := s.Systemctl(ctx, "show", "-p", "SystemState", "--value")
			last = strings.TrimSpace(out)
			if err == nil && (last == "running" || last == "degraded") {
				if _, err := os.Stat(filepath.Join(s.RuntimeDir, "bus")); err == nil {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("systemd did not reach running within %s (state %q)", limit, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// checkConfined verifies that systemd sits in the cgroups made for it in every hierarchy.
func (s *Systemd) checkConfined() error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", s.PID))
	if err != nil {
		return fmt.Errorf("read systemd's cgroups: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.Contains(parts[2], "/"+s.CgroupName) {
			return fmt.Errorf("DANGER: systemd (pid %d) is outside its cgroup %s: %q", s.PID, s.CgroupName, line)
		}
	}
	return nil
}

// readKeeper reads the keeper's PID and checks that it shares the caller's mount namespace.
func (s *Systemd) readKeeper(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read keeper pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("read keeper pid: %w", err)
	}
	own, err1 := os.Readlink("/proc/self/ns/mnt")
	its, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("keeper mount namespace: %w", err)
	}
	if own != its {
		return fmt.Errorf("keeper is in mount namespace %s, not the caller's %s", its, own)
	}
	s.HostNamespacePID = pid
	return nil
}

// HostCommand returns an ExecStart= command line that runs args in the caller's mount
// namespace instead of the manager's private one. Arguments are not quoted: keep them
// free of spaces.
func (s *Systemd) HostCommand(args ...string) string {
	return fmt.Sprintf("/usr/bin/nsenter --mount=/proc/%d/ns/mnt -- %s", s.HostNamespacePID, strings.Join(args, " "))
}

func (s *Systemd) readCgroupRecord() {
	b, err := os.ReadFile(filepath.Join(s.Dir, "cgroups"))
	if err != nil {
		return
	}
	s.CgroupDirs = nil
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// Only directories the launcher created under /sys/fs/cgroup, named as ours.
		if l != "" && strings.HasPrefix(l, "/sys/fs/cgroup/") && filepath.Base(l) == s.CgroupName {
			s.CgroupDirs = append(s.CgroupDirs, l)
		}
	}
}

func (s *Systemd) saveState() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Dir, systemdStateFile), b, 0o600)
}

// AttachSystemd finds the manager started earlier in dir (by another process) from its
// state file, so that it can be used or stopped.
func AttachSystemd(dir string, logger *slog.Logger) (*Systemd, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b, err := os.ReadFile(filepath.Join(dir, systemdStateFile))
	if err != nil {
		return nil, fmt.Errorf("attach systemd: %w", err)
	}
	s := &Systemd{logger: logger}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("attach systemd: %s: %w", filepath.Join(dir, systemdStateFile), err)
	}
	return s, nil
}

// Env is the environment a client needs to reach this manager (systemctl --user,
// go-systemd's NewUserConnectionContext, Ansible's systemd module with scope user).
func (s *Systemd) Env() []string {
	return []string{"XDG_RUNTIME_DIR=" + s.RuntimeDir, "DBUS_SESSION_BUS_ADDRESS=" + s.BusAddress}
}

// Systemctl runs systemctl --user against this manager and returns its stdout.
func (s *Systemd) Systemctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "systemctl", append([]string{"--user", "--no-pager"}, args...)...)
	cmd.Env = append(os.Environ(), s.Env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("systemctl --user %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// WriteUnit writes a unit file into the manager's unit directory. Call DaemonReload after.
func (s *Systemd) WriteUnit(name, content string) error {
	if name == "" || strings.ContainsRune(name, '/') {
		return fmt.Errorf("write unit: invalid unit name %q", name)
	}
	if err := os.WriteFile(filepath.Join(s.UnitDir, name), []byte(content), 0o644); err != nil {
		return fmt.Errorf("write unit %s: %w", name, err)
	}
	return nil
}

// DaemonReload makes the manager read its unit files again.
func (s *Systemd) DaemonReload(ctx context.Context) error {
	_, err := s.Systemctl(ctx, "daemon-reload")
	return err
}

// Running reports whether the manager's process is alive.
func (s *Systemd) Running() bool { return !s.exited() }

func (s *Systemd) exited() bool {
	if s.done != nil {
		select {
		case <-s.done:
			return true
		default:
			return false
		}
	}
	return !procstat.Alive(s.PID) || !s.ownsPID()
}

// ownsPID checks that s.PID still is our manager (not a reused PID) by its cgroup.
func (s *Systemd) ownsPID() bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", s.PID))
	return err == nil && s.CgroupName != "" && bytes.Contains(b, []byte("/"+s.CgroupName))
}

// Stop asks the manager to exit (stopping its units), waits, signals it if it does not,
// kills whatever remains in its cgroups, and removes the cgroups it was given.
func (s *Systemd) Stop() error {
	if s.PID > 0 && !s.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := s.Systemctl(ctx, "exit")
		cancel()
		if err != nil {
			s.logger.Warn("systemctl --user exit failed; sending SIGTERM", "err", err)
		}
		if err != nil || !s.waitExit(20*time.Second) {
			_ = syscall.Kill(s.PID, syscall.SIGTERM)
			if !s.waitExit(10 * time.Second) {
				_ = syscall.Kill(s.PID, syscall.SIGKILL)
				s.waitExit(5 * time.Second)
			}
		}
	}
	var errs []error
	// Units left behind by a manager that was killed: they are ours, in our cgroups only.
	for _, dir := range s.CgroupDirs {
		for _, pid := range cgroupPIDs(dir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, dir := range s.CgroupDirs {
		if err := removeCgroupTree(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if s.OwnRuntimeDir {
		if err := os.RemoveAll(s.RuntimeDir); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop systemd: %w", err)
	}
	s.logger.Info("systemd user manager stopped", "pid", s.PID)
	return nil
}

func (s *Systemd) waitExit(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if s.exited() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s.exited()
}

// removeStaleCgroups removes cgroups left by managers that were never stopped (their
// test binary was killed): trees named flightctl-dr-systemd-* beside where ours will be,
// older than two minutes and holding no process. Best effort.
func removeStaleCgroups(logger *slog.Logger) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		base := "/sys/fs/cgroup/" + strings.TrimPrefix(parts[1], "name=")
		if parts[1] == "" {
			base = "/sys/fs/cgroup/unified"
		}
		matches, _ := filepath.Glob(filepath.Join(base+parts[2], "flightctl-dr-systemd-*"))
		for _, dir := range matches {
			fi, err := os.Stat(dir)
			if err != nil || time.Since(fi.ModTime()) < 2*time.Minute || len(cgroupPIDs(dir)) > 0 {
				continue
			}
			if err := removeCgroupTree(dir); err == nil {
				logger.Info("removed a stale cgroup", "dir", dir)
			}
		}
	}
}

// cgroupPIDs lists the processes in a cgroup directory and all its descendants.
func cgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && pid > 1 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupTree removes a cgroup and its children, deepest first, retrying briefly while
// killed processes finish exiting.
func removeCgroupTree(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		var last error
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				last = err
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func lastLines(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SystemdForTest starts a manager for t in a temporary directory and stops it at cleanup.
// It skips (or fails under FLIGHTCTL_DR_REQUIRE_REAL=1) when systemd is not installed.
func SystemdForTest(t testing.TB) *Systemd {
	t.Helper()
	Need(t, SystemdBinary, "unshare", "systemctl")
	if os.Geteuid() != 0 {
		Unavailable(t, "the systemd test manager needs root to create cgroups")
	}
	return startForTest(t, 60*time.Second, func(ctx context.Context) (*Systemd, error) {
		return StartSystemd(ctx, SystemdOptions{Dir: t.TempDir()})
	})
}
