package runbooks_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/sandbox"
	"flightctl.dr/internal/testbed"
)

// host is a Red Hat Enterprise Linux host as the runbooks see it, made of the sandbox:
// every runbook command runs as written in a private mount namespace where
//
//   - /etc/flightctl is the sandbox's (an overlay keeps the machine's /etc untouched),
//   - /var/backups, /usr/local/bin and /var/lib/flightctl-dr are the test's own directories,
//   - the system looks booted with systemd (/run/systemd/system) and the system bus is the
//     sandbox's systemd manager, so `sudo systemctl stop flightctl-api.service` and our
//     binaries' default (system) scope reach the sandbox's units,
//   - flightctl-backup and flightctl-restore are on PATH, in /usr/local/bin and in ./bin.
//
// Two stand-ins exist only because this machine cannot run the real thing, and say so:
// `sudo` (not installed here; the tests run as root) runs its command, and `podman` answers
// `secret inspect --showsecret` (podman 4.3.1 here; the runbooks are written for podman
// ≥ 4.4) from the file driver's store, passing every other command to the real podman.
type host struct {
	t       *testing.T
	st      *sandbox.State
	work    string // the working directory: ./bin/flightctl-restore is here
	backups string // /var/backups on the host
	shims   string
	upper   string // the overlay's writable half over /etc
	state   string // /var/lib/flightctl-dr on the host
	local   string // /usr/local/bin on the host
}

// runbookLock keeps two runs of this suite on one machine apart: the runbooks use the
// upstream names (flightctl-db, flightctl-postgresql-user-password...), which only one
// sandbox at a time can have.
const runbookLock = "/run/lock/flightctl-dr-runbooks.lock"

func newHost(t *testing.T) *host {
	t.Helper()
	testbed.Need(t, testbed.SystemdBinary, "unshare", "nsenter", "systemctl", "podman", "runc", "/bin/busybox",
		testbed.PodmanInitBinary, "jq", "sha256sum", "pg_isready", "redis-cli", "redis-server",
		filepath.Join(testbed.PostgresBinDir, "postgres"))
	if os.Geteuid() != 0 {
		testbed.Unavailable(t, "the runbook procedures run as root against the sandbox (cgroups, podman, mounts)")
	}
	lock, err := os.OpenFile(runbookLock, os.O_RDWR|os.O_CREATE, 0o600)
	require.NoError(t, err)
	require.NoError(t, syscall.Flock(int(lock.Fd()), syscall.LOCK_EX), "wait for another run of the runbook suite")
	t.Cleanup(func() { lock.Close() })

	backupBin := moduletest.Build(t, "flightctl.dr/modules/flightctl_backup")
	restoreBin := moduletest.Build(t, "flightctl.dr/modules/flightctl_restore")
	h := &host{t: t, work: t.TempDir(), backups: t.TempDir(), shims: t.TempDir(), upper: t.TempDir(), state: t.TempDir(), local: t.TempDir()}
	for _, dir := range []string{filepath.Join(h.work, "bin"), h.local, h.shims} {
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.Symlink(backupBin, filepath.Join(dir, "flightctl-backup")))
		require.NoError(t, os.Symlink(restoreBin, filepath.Join(dir, "flightctl-restore")))
	}
	writeShim(t, filepath.Join(h.shims, "sudo"), sudoShim)
	writeShim(t, filepath.Join(h.shims, "podman"), podmanShim)
	// The mount point of the journal directory: an empty directory on the machine; the
	// journal itself goes to the test's directory mounted there.
	if _, err := os.Stat("/var/lib/flightctl-dr"); os.IsNotExist(err) {
		require.NoError(t, os.MkdirAll("/var/lib/flightctl-dr", 0o700))
		t.Cleanup(func() { _ = os.Remove("/var/lib/flightctl-dr") })
	}

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	st, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Devices: 25})
	if err != nil {
		_ = sandbox.Down(context.Background(), dir, nil)
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir, nil) })
	h.st = st
	return h
}

func writeShim(t *testing.T, path, body string) {
	require.NoError(t, os.WriteFile(path, []byte(body), 0o755))
}

const sudoShim = `#!/bin/sh
# Stand-in for sudo, which is not installed on this machine: the tests already run as root.
exec "$@"
`

// podmanShim: podman 4.3.1 has no "secret inspect --showsecret"; this stand-in answers it
// from the file driver's store (as internal/podman does) and runs everything else.
const podmanShim = `#!/bin/sh
real=/usr/bin/podman
if [ "$1" = secret ] && [ "$2" = inspect ]; then
  for a in "$@"; do [ "$a" = --showsecret ] && show=1; done
  if [ -n "$show" ]; then
    name=
    for a in "$@"; do case "$a" in secret|inspect|--showsecret) ;; *) name=$a ;; esac; done
    meta=$("$real" secret inspect "$name") || exit $?
    id=$(printf '%s' "$meta" | jq -r '.[0].ID')
    store=$(printf '%s' "$meta" | jq -r '.[0].Spec.Driver.Options.path // "/var/lib/containers/storage/secrets/filedriver"')
    value=$(jq -r --arg id "$id" '.[$id]' "$store/secretsdata.json" | base64 -d)
    jq -n --arg id "$id" --arg name "$name" --arg v "$value" '[{ID: $id, Spec: {Name: $name}, SecretData: $v}]'
    exit 0
  fi
fi
exec "$real" "$@"
`

// namespace sets up the host's view, then runs the runbook text with /bin/sh.
const namespace = `set -e
mkdir -p "$H_UPPER/upper" "$H_UPPER/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$H_UPPER/upper,workdir=$H_UPPER/work" /etc
mkdir -p /etc/flightctl
mount --bind "$H_ETC" /etc/flightctl
mount --bind "$H_BACKUPS" /var/backups
mount --bind "$H_LOCAL" /usr/local/bin
mount --bind "$H_STATE" /var/lib/flightctl-dr
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
cd "$H_WORK"
set +e
exec /bin/sh -c "$1"
`

// result is one run of runbook text.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// run runs script (runbook text, verbatim) on the host with the environment an operator's
// root shell has there, plus env.
func (h *host) run(script string, env ...string) result {
	h.t.Helper()
	return h.runEnv(h.baseEnv(), script, env...)
}

// baseEnv is a root login shell's environment on the host.
func (h *host) baseEnv() []string {
	return []string{
		"PATH=" + h.shims + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh", "LANG=C.UTF-8",
	}
}

// hostSetup is what makes this machine the host (not runbook content): the system bus is
// the sandbox's manager, and podman uses the sandbox's containers.conf.
func (h *host) hostSetup() []string {
	env := []string{"DBUS_SYSTEM_BUS_ADDRESS=" + h.st.Systemd.BusAddress}
	if h.st.ContainersConf != "" {
		env = append(env, "CONTAINERS_CONF="+h.st.ContainersConf)
	}
	return env
}

func (h *host) runEnv(base []string, script string, env ...string) result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", namespace, "host", script)
	cmd.Env = append(append(append([]string{}, base...), h.hostSetup()...), env...)
	cmd.Env = append(cmd.Env, "H_UPPER="+h.upper, "H_ETC="+filepath.Join(h.st.Root, "etc", "flightctl"), "H_BACKUPS="+h.backups,
		"H_LOCAL="+h.local, "H_STATE="+h.state, "H_WORK="+h.work)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else {
		require.NoError(h.t, err)
	}
	h.t.Logf("$ %s\n%s", strings.TrimSpace(script), r)
	return r
}

// ok runs script and requires exit 0.
func (h *host) ok(script string, env ...string) result {
	h.t.Helper()
	r := h.run(script, env...)
	require.Equal(h.t, 0, r.code, "%s\n%s", script, r)
	return r
}

// units present in the sandbox; the runbooks say to skip the lines of units a host lacks.
func (h *host) hasUnit(unit string) bool {
	for _, u := range h.st.Units {
		if u == unit {
			return true
		}
	}
	return false
}

// lines runs each "sudo systemctl stop|start X.service" line of a runbook block: those of
// units this host has must succeed; those of units it lacks must fail with the unknown
// unit answer, and are skipped, as the runbooks say.
func (h *host) systemctlLines(block string) {
	h.t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(block), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		unit := f[len(f)-1]
		if h.hasUnit(unit) {
			h.ok(line)
			continue
		}
		r := h.run(line)
		require.NotEqual(h.t, 0, r.code, "%s: the sandbox has no such unit", line)
		require.Regexp(h.t, `not (loaded|found)|Unit .* not`, r.stderr, line)
	}
}
