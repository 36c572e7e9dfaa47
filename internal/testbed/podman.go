package testbed

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
)

// PodmanContainersConf is what every `podman run` needs on these machines (TESTBED.md):
// podman 4.3.1's default ulimits are refused, and crun is not installed. cgroupfs and file
// events keep podman away from systemd and journald, which it would otherwise expect when
// it runs under the test systemd manager (whose namespace looks booted with systemd).
const PodmanContainersConf = `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
`

// PodmanInitBinary is what podman run --init runs as PID 1 (Debian package catatonit):
// containers then stop in a fraction of a second instead of after the 10 s timeout.
const PodmanInitBinary = "/usr/libexec/podman/catatonit"

// PodmanBusyboxImage is a tiny image made from busybox-static with `podman import`.
const PodmanBusyboxImage = "localhost/flightctl-dr-busybox:latest"

// PodmanHostUsrImage is an image whose /usr is meant to be the host's /usr mounted
// read-only: it runs the host's PostgreSQL programs inside a container.
const PodmanHostUsrImage = "localhost/flightctl-dr-hostusr:latest"

// Podman is a podman usable for tests on this machine: a CONTAINERS_CONF file and helpers
// to run named containers. Containers, volumes and secrets it makes are removed by Cleanup.
type Podman struct {
	// ConfFile is the CONTAINERS_CONF file; Env carries it for commands that run podman.
	ConfFile string
	Env      []string

	logger  *slog.Logger
	cleanup []func()
}

// PodmanOptions configures StartPodman.
type PodmanOptions struct {
	// Dir receives the containers.conf file. Required.
	Dir string
	// OwnStore gives this podman an image and container store of its own under Dir
	// (vfs driver), empty at first as on a new machine; otherwise the machine's store.
	OwnStore bool
	Logger   *slog.Logger
}

// StartPodman checks podman and runc, writes the CONTAINERS_CONF file, and builds the
// busybox image when it is missing.
func StartPodman(ctx context.Context, opts PodmanOptions) (*Podman, error) {
	if opts.Dir == "" {
		return nil, errors.New("podman test bed: Dir is required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for _, p := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("podman test bed: %s is not installed (apt-get install podman runc)", p)
		}
	}
	if _, err := os.Stat(PodmanInitBinary); err != nil {
		return nil, fmt.Errorf("podman test bed: containers run with --init, which needs %s (apt-get install catatonit)", PodmanInitBinary)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("podman test bed: %w", err)
	}
	conf := filepath.Join(opts.Dir, "containers.conf")
	if err := os.WriteFile(conf, []byte(PodmanContainersConf), 0o644); err != nil {
		return nil, fmt.Errorf("podman test bed: %w", err)
	}
	abs, _ := filepath.Abs(conf)
	p := &Podman{ConfFile: abs, Env: []string{"CONTAINERS_CONF=" + abs}, logger: logger}
	if opts.OwnStore {
		store, _ := filepath.Abs(filepath.Join(opts.Dir, "store"))
		storageConf := filepath.Join(store, "storage.conf")
		if err := os.MkdirAll(store, 0o700); err != nil {
			return nil, fmt.Errorf("podman test bed: %w", err)
		}
		body := fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", filepath.Join(store, "graph"), filepath.Join(store, "run"))
		if err := os.WriteFile(storageConf, []byte(body), 0o644); err != nil {
			return nil, fmt.Errorf("podman test bed: %w", err)
		}
		p.Env = append(p.Env, "CONTAINERS_STORAGE_CONF="+storageConf)
	}
	if err := p.ensureBusyboxImage(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Client is a podman client carrying this test bed's environment.
func (p *Podman) Client() *podman.Client {
	return &podman.Client{Env: p.Env, Logger: p.logger}
}

// Podman runs podman with this test bed's environment and returns its stdout.
func (p *Podman) Podman(ctx context.Context, args ...string) (string, error) {
	out, err := runner.Output(ctx, runner.Exec{}, runner.Cmd{Name: "podman", Args: args, Env: p.Env})
	return string(out), err
}

func (p *Podman) imageExists(ctx context.Context, image string) bool {
	_, err := p.Podman(ctx, "image", "exists", image)
	return err == nil
}

// ensureBusyboxImage imports a root filesystem holding busybox-static and its links.
func (p *Podman) ensureBusyboxImage(ctx context.Context) error {
	if p.imageExists(ctx, PodmanBusyboxImage) {
		return nil
	}
	busybox := "/bin/busybox"
	out, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("podman test bed: busybox-static is needed for the test image (apt-get install busybox-static): %w", err)
	}
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("podman test bed: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin", "etc", "tmp", "root", "data"} {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		_ = tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))})
	_, _ = tw.Write(bin)
	for _, name := range strings.Fields(string(out)) {
		if name == "busybox" || strings.Contains(name, "/") {
			continue
		}
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + name, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	writeTarFile(tw, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
	writeTarFile(tw, "etc/group", "root:x:0:\n", 0o644)
	if err := tw.Close(); err != nil {
		return err
	}
	return p.importImage(ctx, PodmanBusyboxImage, &buf)
}

// EnsureHostUsrImage imports PodmanHostUsrImage when it is missing: a root filesystem with
// the merged-/usr links, /etc/passwd naming the host's postgres user, and the directories
// PostgreSQL needs.
func (p *Podman) EnsureHostUsrImage(ctx context.Context) error {
	if p.imageExists(ctx, PodmanHostUsrImage) {
		return nil
	}
	pgUID, pgGID, err := postgresOSUser()
	if err != nil {
		return fmt.Errorf("image %s: %w", PodmanHostUsrImage, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"etc", "usr", "proc", "dev", "sys", "run", "root", "var", "var/lib", "var/run"} {
		_ = tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755})
	}
	_ = tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777})
	for _, d := range []string{"var/lib/postgresql", "var/run/postgresql"} {
		_ = tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o775, Uid: pgUID, Gid: pgGID})
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		_ = tw.WriteHeader(&tar.Header{Name: l, Typeflag: tar.TypeSymlink, Linkname: "usr/" + l, Mode: 0o777})
	}
	writeTarFile(tw, "etc/passwd", fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\npostgres:x:%d:%d:PostgreSQL:/var/lib/postgresql:/bin/sh\n", pgUID, pgGID), 0o644)
	writeTarFile(tw, "etc/group", fmt.Sprintf("root:x:0:\npostgres:x:%d:\n", pgGID), 0o644)
	if err := tw.Close(); err != nil {
		return err
	}
	return p.importImage(ctx, PodmanHostUsrImage, &buf)
}

// postgresOSUser is the host's postgres user, whose files the containers share.
func postgresOSUser() (uid, gid int, err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return 0, 0, fmt.Errorf("the OS user postgres is needed (apt-get install postgresql): %w", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

func writeTarFile(tw *tar.Writer, name, content string, mode int64) {
	_ = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(content))})
	_, _ = io.WriteString(tw, content)
}

func (p *Podman) importImage(ctx context.Context, image string, r io.Reader) error {
	err := runner.Exec{}.Run(ctx, runner.Cmd{Name: "podman", Args: []string{"import", "-q", "-", image}, Env: p.Env, Stdin: r, Stdout: io.Discard})
	if err != nil {
		return fmt.Errorf("podman test bed: import image %s: %w", image, err)
	}
	p.logger.Info("podman image imported", "image", image)
	return nil
}

// PodmanContainerOptions describes a detached container started with --init.
type PodmanContainerOptions struct {
	Name string
	// CreateOnly creates the container (podman create) without starting it.
	CreateOnly bool
	Image      string // "" is PodmanBusyboxImage
	Command    []string
	// Volumes are podman -v values (NAME:/path or /host:/path[:ro]).
	Volumes []string
	// Env are KEY=VALUE pairs (no secrets: they appear in argv).
	Env     []string
	User    string
	Publish []string // podman -p values
	Network string   // "" is podman's default
	// Secrets are Podman secret names mounted at /run/secrets/NAME.
	Secrets []string
}

// RunContainer starts a container in the background (or only creates it) and removes it at
// Cleanup.
func (p *Podman) RunContainer(ctx context.Context, o PodmanContainerOptions) error {
	if o.Name == "" {
		return errors.New("run container: Name is required")
	}
	image := o.Image
	if image == "" {
		image = PodmanBusyboxImage
	}
	if image == PodmanHostUsrImage {
		// Made on first use, whoever asks first (a KV container may come before any database).
		if err := p.EnsureHostUsrImage(ctx); err != nil {
			return fmt.Errorf("run container %s: %w", o.Name, err)
		}
	}
	args := []string{"run", "-d", "--init", "--name", o.Name}
	if o.CreateOnly {
		args = []string{"create", "--init", "--name", o.Name}
	}
	for _, v := range o.Volumes {
		args = append(args, "-v", v)
	}
	for _, e := range o.Env {
		args = append(args, "--env", e)
	}
	for _, pub := range o.Publish {
		args = append(args, "-p", pub)
	}
	for _, s := range o.Secrets {
		args = append(args, "--secret", s)
	}
	if o.User != "" {
		args = append(args, "--user", o.User)
	}
	if o.Network != "" {
		args = append(args, "--network", o.Network)
	}
	args = append(args, image)
	args = append(args, o.Command...)
	p.onCleanup(func() { _ = p.RemoveContainer(context.Background(), o.Name) })
	if _, err := p.Podman(ctx, args...); err != nil {
		return fmt.Errorf("run container %s: %w", o.Name, err)
	}
	return nil
}

// RemoveContainer removes a container, stopping it first (quickly, thanks to --init).
func (p *Podman) RemoveContainer(ctx context.Context, name string) error {
	if _, err := p.Podman(ctx, "rm", "-f", "-t", "2", name); err != nil && !strings.Contains(err.Error(), "no container") && !strings.Contains(err.Error(), "no such container") {
		return fmt.Errorf("remove container %s: %w", name, err)
	}
	return nil
}

// CreateSecret creates a Podman secret (value on stdin) and removes it at Cleanup.
func (p *Podman) CreateSecret(ctx context.Context, name, value string) error {
	p.onCleanup(func() { _ = p.Client().RemoveSecret(context.Background(), name) })
	return p.Client().CreateSecret(ctx, name, value, true)
}

// CreateVolume creates a volume holding files (relative path → content) and removes it at
// Cleanup.
func (p *Podman) CreateVolume(ctx context.Context, name string, files map[string]string) error {
	p.onCleanup(func() { _ = p.Client().VolumeRemove(context.Background(), name) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for path, content := range files {
		for d := filepath.Dir(path); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			_ = tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		writeTarFile(tw, path, content, 0o644)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return p.Client().VolumeReplace(ctx, name, &buf)
}

// ForgetCleanup drops the registered cleanups: the caller took over the objects
// (the sandbox removes them itself on down).
func (p *Podman) ForgetCleanup() { p.cleanup = nil }

func (p *Podman) onCleanup(f func()) { p.cleanup = append(p.cleanup, f) }

// Cleanup removes every container, volume and secret made through p, newest first.
func (p *Podman) Cleanup() {
	for i := len(p.cleanup) - 1; i >= 0; i-- {
		p.cleanup[i]()
	}
	p.cleanup = nil
}

// PodmanName returns prefix-<random hex>, for names that do not collide between tests.
func PodmanName(prefix string) string { return prefix + "-" + randomHex(4) }

// PodmanForTest prepares podman for t and removes what t made with it at cleanup. It
// skips (or fails under FLIGHTCTL_DR_REQUIRE_REAL=1) when podman, runc or busybox-static
// is missing, or when podman cannot run a container here.
func PodmanForTest(t testing.TB) *Podman {
	t.Helper()
	Need(t, "podman", "runc", "/bin/busybox", PodmanInitBinary)
	if os.Geteuid() != 0 {
		Unavailable(t, "the podman test bed runs rootful podman and needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := StartPodman(ctx, PodmanOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(p.Cleanup)
	return p
}

// PodmanPostgresOptions configures StartPodmanPostgres.
type PodmanPostgresOptions struct {
	// Name is the container name; "" is flightctl-db.
	Name string
	// Dir holds the data directory and the unix socket shared with the host. Required.
	Dir string
	// Port is the host port published on 127.0.0.1 for the container's 5432; 0 picks one.
	Port int
	// CreateOnly creates the container without starting it (for example to run it from a
	// systemd unit with podman start -a); start it, then call WaitReady.
	CreateOnly bool
	Logger     *slog.Logger
}

// PodmanPostgres is PostgreSQL 15 running inside a podman container, as flightctl-db runs
// on a quadlet host: it listens on 5432 in its own network namespace (so pg_dump/psql run
// inside with -h 127.0.0.1 -p 5432, or over the local socket as postgres), published on
// 127.0.0.1:Port. The container runs the host's PostgreSQL programs (host /usr mounted
// read-only) with PATH set so that `podman exec NAME psql` and `pg_dump` work.
type PodmanPostgres struct {
	// Postgres reaches the same server from the host: TCP on 127.0.0.1:Port and the
	// shared unix socket (trusted superuser postgres). Use it for CreateFlightctlDB, DSN,
	// SuperuserConn, Psql. Do not call its Stop: call PodmanPostgres.Stop.
	*Postgres
	Container string

	podman *Podman
	logger *slog.Logger
	port   int
	dir    string
}

// StartPodmanPostgres initialises a cluster and runs it in a container named Name.
func StartPodmanPostgres(ctx context.Context, p *Podman, opts PodmanPostgresOptions) (*PodmanPostgres, error) {
	if opts.Dir == "" {
		return nil, errors.New("podman postgres: Dir is required")
	}
	if opts.Name == "" {
		opts.Name = "flightctl-db"
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := p.EnsureHostUsrImage(ctx); err != nil {
		return nil, fmt.Errorf("podman postgres: %w", err)
	}
	uid, gid, err := postgresOSUser()
	if err != nil {
		return nil, fmt.Errorf("podman postgres: %w", err)
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	dataDir, sockDir := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, d := range []string{dir, dataDir, sockDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("podman postgres: %w", err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return nil, fmt.Errorf("podman postgres: %w", err)
		}
	}
	// The socket dir is traversed by the host's psql as root only; data stays 0700.
	common := []string{"run", "--rm", "--user", "postgres", "-v", "/usr:/usr:ro", "-v", dataDir + ":/var/lib/postgresql/data"}
	initdb := append(common, "--network", "none", PodmanHostUsrImage,
		PostgresBinDir+"/initdb", "-D", "/var/lib/postgresql/data", "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
	if _, err := p.Podman(ctx, initdb...); err != nil {
		return nil, fmt.Errorf("podman postgres: initdb: %w", err)
	}
	// Published connections arrive from the bridge's gateway, not from 127.0.0.1.
	hba, err := os.OpenFile(filepath.Join(dataDir, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("podman postgres: %w", err)
	}
	_, err = hba.WriteString("host all all 0.0.0.0/0 scram-sha-256\n")
	hba.Close()
	if err != nil {
		return nil, fmt.Errorf("podman postgres: %w", err)
	}

	pp := &PodmanPostgres{Container: opts.Name, podman: p, logger: logger, port: opts.Port, dir: dir}
	err = p.RunContainer(ctx, PodmanContainerOptions{
		CreateOnly: opts.CreateOnly,
		Name:       opts.Name,
		Image:      PodmanHostUsrImage,
		User:       "postgres",
		Volumes:    []string{"/usr:/usr:ro", dataDir + ":/var/lib/postgresql/data", sockDir + ":/var/run/postgresql"},
		Env:        []string{"PATH=" + PostgresBinDir + ":/usr/local/bin:/usr/bin:/bin", "PGDATA=/var/lib/postgresql/data"},
		Publish:    []string{fmt.Sprintf("127.0.0.1:%d:5432", opts.Port)},
		Command: []string{PostgresBinDir + "/postgres", "-D", "/var/lib/postgresql/data",
			"-c", "listen_addresses=*", "-c", "fsync=off", "-c", "full_page_writes=off"},
	})
	if err != nil {
		return nil, err
	}
	// The host's clients name the socket after the port they use: link it to 5432's.
	if err := os.Symlink(".s.PGSQL.5432", filepath.Join(sockDir, fmt.Sprintf(".s.PGSQL.%d", opts.Port))); err != nil {
		_ = pp.Stop()
		return nil, fmt.Errorf("podman postgres: %w", err)
	}
	if opts.CreateOnly {
		return pp, nil
	}
	if err := pp.WaitReady(ctx); err != nil {
		_ = pp.Stop()
		return nil, err
	}
	return pp, nil
}

// WaitReady waits until the server in the container accepts connections, then makes
// pp.Postgres usable.
func (pp *PodmanPostgres) WaitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := pp.podman.Podman(ctx, "exec", pp.Container, "pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			logs, _ := pp.podman.Podman(context.Background(), "logs", "--tail", "20", pp.Container)
			return fmt.Errorf("podman postgres %s: not ready: %w\n%s", pp.Container, err, logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pg, err := AttachPostgres(ctx, "127.0.0.1", pp.port, filepath.Join(pp.dir, "sock"))
	if err != nil {
		return err
	}
	pg.DataDir = filepath.Join(pp.dir, "data")
	pg.logger = pp.logger
	pp.Postgres = pg
	pp.logger.Info("postgres running in podman", "container", pp.Container, "port", pp.port)
	return nil
}

// Stop removes the container (the server stops with it). The data directory stays.
func (pp *PodmanPostgres) Stop() error {
	return pp.podman.RemoveContainer(context.Background(), pp.Container)
}

// PodmanPostgresForTest runs PostgreSQL in a container named name (flightctl-db when "")
// for t, removed at cleanup.
func PodmanPostgresForTest(t testing.TB, p *Podman, name string) *PodmanPostgres {
	t.Helper()
	Need(t, filepath.Join(PostgresBinDir, "postgres"), filepath.Join(PostgresBinDir, "psql"))
	return startForTest(t, 2*time.Minute, func(ctx context.Context) (*PodmanPostgres, error) {
		return StartPodmanPostgres(ctx, p, PodmanPostgresOptions{Name: name, Dir: t.TempDir()})
	})
}

// AttachPostgres returns a Postgres for a server this process did not start (one run by a
// container or a systemd unit): TCP on host:port, the trusted superuser postgres on the
// unix socket in socketDir. Its Stop does nothing: whoever runs the server stops it.
func AttachPostgres(ctx context.Context, host string, port int, socketDir string) (*Postgres, error) {
	pg := &Postgres{
		Host: host, Port: port, SocketDir: socketDir, BinDir: PostgresBinDir,
		logger: slog.New(slog.DiscardHandler), run: runner.Exec{},
		stopped: true,
	}
	if err := pg.readPsqlVersion(ctx); err != nil {
		return nil, err
	}
	return pg, nil
}

// KillByPIDFile sends SIGTERM (then SIGKILL) to the process whose PID is on the first line
// of pidFile, only when its command line contains mustContain: a PID written inside a
// container, or reused since, must never hit an unrelated process.
func KillByPIDFile(pidFile, mustContain string) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil || mustContain == "" {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(mustContain)) {
		return false
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if !WaitGone(pid, 10*time.Second) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		WaitGone(pid, 5*time.Second)
	}
	return true
}
