package drill

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
)

// Throwaway is a PostgreSQL cluster the drill starts for itself on this machine (the
// controller, or the execution environment), of the dump's major version, in a temporary
// directory, reachable only over a unix socket in that directory, and removed afterwards.
type Throwaway struct {
	// BinDir holds initdb, pg_ctl, postgres and psql; "" finds the directory of the dump's
	// major version (/usr/lib/postgresql/<major>/bin, /usr/pgsql-<major>/bin).
	BinDir string
	// Parent is where the temporary directory is made ("" : the system's).
	Parent string
	Runner runner.Runner
	Logger *slog.Logger

	bin     string
	dir     string
	data    string
	sock    string
	port    int
	asUser  string
	started bool
	// sockDir is the socket's own directory when the cluster's is too long a path.
	sockDir string
}

// Name prefixes of the directories a throwaway cluster lives in.
const (
	throwawayPrefix = "flightctl-dr-drill-"
	socketPrefix    = "fdr-"
)

// maxSocketPath is what a unix socket's path may hold (108 bytes with the NUL on Linux).
const maxSocketPath = 100

var _ Server = (*Throwaway)(nil)

func (t *Throwaway) Kind() string         { return ServerThrowaway }
func (t *Throwaway) LiveDatabase() string { return "" }

// Dir is the cluster's directory while it runs.
func (t *Throwaway) Dir() string { return t.dir }

func (t *Throwaway) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Logger
}

func (t *Throwaway) run() runner.Runner {
	if t.Runner == nil {
		return runner.Exec{}
	}
	return t.Runner
}

// binCandidates are where distributions install one major version's server programs.
func binCandidates(major int) []string {
	return []string{
		fmt.Sprintf("/usr/lib/postgresql/%d/bin", major), // Debian, Ubuntu
		fmt.Sprintf("/usr/pgsql-%d/bin", major),          // PGDG RPMs
		"/usr/bin",                                       // RHEL's postgresql-server module
	}
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)`)

// findBin returns the first directory whose postgres is of major.
func (t *Throwaway) findBin(ctx context.Context, major int) (string, error) {
	cands := binCandidates(major)
	if t.BinDir != "" {
		cands = []string{t.BinDir}
	}
	var seen []string
	for _, d := range cands {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			continue
		}
		out, err := runner.Output(ctx, t.run(), runner.Cmd{Name: filepath.Join(d, "postgres"), Args: []string{"--version"}, Dir: "/"})
		if err != nil {
			continue
		}
		m := versionRE.FindStringSubmatch(string(out))
		if m == nil {
			continue
		}
		got, _ := strconv.Atoi(m[1])
		if major == 0 || got == major {
			return d, nil
		}
		seen = append(seen, fmt.Sprintf("%s is PostgreSQL %d", d, got))
	}
	if len(seen) > 0 {
		return "", fmt.Errorf("no PostgreSQL %d server programs on this machine (%s): install PostgreSQL %d (Debian: apt-get install postgresql-%d; RHEL: dnf install postgresql%d-server), or give throwaway_bin_dir",
			major, strings.Join(seen, "; "), major, major, major)
	}
	return "", fmt.Errorf("no PostgreSQL %d server programs (initdb, pg_ctl, postgres) in %s: install PostgreSQL %d server on the machine running the drill, or give throwaway_bin_dir",
		major, strings.Join(cands, ", "), major)
}

// Open starts the cluster for a dump of PostgreSQL major. record is called with the
// cluster's directory before anything is made, so that a killed drill's cluster is found.
func (t *Throwaway) Open(ctx context.Context, major int, record func(dir, bin, sockDir string) error) error {
	bin, err := t.findBin(ctx, major)
	if err != nil {
		return err
	}
	t.bin = bin
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		// initdb refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root, the throwaway PostgreSQL needs the OS user postgres (the PostgreSQL server package creates it): %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		t.asUser = "postgres"
	}
	dir, err := os.MkdirTemp(t.Parent, throwawayPrefix)
	if err != nil {
		return fmt.Errorf("make the throwaway PostgreSQL's directory: %w", err)
	}
	t.dir = dir
	if err := record(dir, bin, ""); err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	t.data, t.sock = filepath.Join(dir, "data"), filepath.Join(dir, "s")
	for _, d := range []string{t.data, t.sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("make the throwaway PostgreSQL's directory: %w", err)
		}
	}
	if len(t.sock)+len("/.s.PGSQL.55555") > maxSocketPath {
		// A unix socket's path is short: the socket goes into a directory of its own
		// under /tmp, recorded in the state file as the cluster's directory is.
		s, err := os.MkdirTemp("/tmp", socketPrefix)
		if err != nil {
			return fmt.Errorf("make the throwaway PostgreSQL's socket directory: %w", err)
		}
		t.sock, t.sockDir = s, s
		if err := record(dir, bin, s); err != nil {
			return err
		}
	}
	if uid >= 0 {
		for _, d := range []string{dir, t.data, t.sock} {
			if err := os.Chown(d, uid, gid); err != nil {
				return fmt.Errorf("give %s to the postgres user: %w", d, err)
			}
		}
		if err := letTraverse(filepath.Dir(dir), uid); err != nil {
			return err
		}
	}
	if err := t.command(ctx, "initdb", "-D", t.data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"); err != nil {
		return fmt.Errorf("initdb of the throwaway PostgreSQL: %w", err)
	}
	// Only the superuser, only over the socket in the private directory: no TCP at all.
	hba := "local all postgres trust\n"
	if err := os.WriteFile(filepath.Join(t.data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}
	if uid >= 0 {
		_ = os.Chown(filepath.Join(t.data, "pg_hba.conf"), uid, gid)
	}
	t.port = privatePort()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB", t.port, t.sock)
	if err := t.command(ctx, "pg_ctl", "-D", t.data, "-l", filepath.Join(dir, "postgres.log"), "-o", opts, "-w", "-t", "120", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
		return fmt.Errorf("start the throwaway PostgreSQL: %w; its log: %s", err, lastBytes(string(log), 1500))
	}
	t.started = true
	t.logger().Info("throwaway PostgreSQL started", "dir", dir, "bin", bin, "socket", t.sock, "port", t.port)
	return nil
}

// privatePort is the port number of the cluster's socket file (55000-56999): no TCP
// listener is opened, the number only names the socket.
func privatePort() int {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return 55000 + int(binary.BigEndian.Uint16(b[:]))%2000
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// letTraverse gives others search permission on the ancestors of dir the postgres user
// could not pass.
func letTraverse(dir string, uid int) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid && fi.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode()|0o001); err != nil {
				return fmt.Errorf("let the postgres user reach %s: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func (t *Throwaway) cmd(prog string, args ...string) runner.Cmd {
	p := filepath.Join(t.bin, prog)
	if t.asUser != "" {
		return runner.Cmd{Name: "runuser", Args: append([]string{"-u", t.asUser, "--", p}, args...), Dir: "/"}
	}
	return runner.Cmd{Name: p, Args: args, Dir: "/"}
}

func (t *Throwaway) command(ctx context.Context, prog string, args ...string) error {
	c := t.cmd(prog, args...)
	c.Stdout = io.Discard
	return t.run().Run(ctx, c)
}

// Database administers the cluster through its psql, as the superuser over the socket.
func (t *Throwaway) Database() restore.Database {
	return &restore.PsqlDatabase{DBName: "postgres", Runner: t.run(), Logger: t.Logger,
		Command: func(psqlArgs, env []string) runner.Cmd {
			args := append([]string{"-h", t.sock, "-p", strconv.Itoa(t.port), "-U", "postgres", "-w"}, psqlArgs...)
			return runner.Cmd{Name: filepath.Join(t.bin, "psql"), Args: args, Env: env, Dir: "/"}
		},
		FreeSpaceOf: func(context.Context, string) (int64, bool, error) { return restore.LocalFreeSpace(t.dir) },
	}
}

// flightctlRoles are the roles a Flight Control dump gives its objects to.
var flightctlRoles = []string{"admin", "flightctl_migrator", "flightctl_app"}

// PrepareRoles creates the roles the dump's objects belong to (without login; admin a
// superuser, as on the server): a throwaway cluster has none of the server's.
func (t *Throwaway) PrepareRoles(ctx context.Context, owner string) error {
	roles := append([]string{}, flightctlRoles...)
	if owner != "" {
		roles = append(roles, owner)
	}
	var b strings.Builder
	for _, r := range roles {
		if err := restore.ValidDatabaseName(r); err != nil {
			return fmt.Errorf("role %q recorded in the archive: %w", r, err)
		}
		attrs := "NOLOGIN"
		if r == "admin" {
			attrs += " SUPERUSER" // it owns the event trigger, which only a superuser may
		}
		fmt.Fprintf(&b, "SELECT 'CREATE ROLE \"%s\" %s' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%s')\\gexec\n", r, attrs, r)
	}
	db := t.Database().(*restore.PsqlDatabase)
	c := db.Command([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", "-"}, nil)
	c.Stdin = strings.NewReader(b.String())
	c.Stdout = io.Discard
	if err := t.run().Run(ctx, c); err != nil {
		return fmt.Errorf("create the server's roles in the throwaway PostgreSQL: %w", err)
	}
	return nil
}

// Devices plans device preparation on database db of the cluster, without a KV store
// (none belongs to a throwaway cluster; a restore flushes the KV store anyway).
func (t *Throwaway) Devices(db string) restore.DevicePreparer { return &throwawayDevices{t: t, db: db} }

type throwawayDevices struct {
	t  *Throwaway
	db string
}

func (d *throwawayDevices) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", d.t.sock, d.t.port, d.db))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func (d *throwawayDevices) Check(ctx context.Context) error {
	c, err := d.connect(ctx)
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

func (d *throwawayDevices) Prepare(ctx context.Context, req restore.DevicePrepRequest) (any, bool, error) {
	if !req.DryRun {
		return nil, false, errors.New("a drill only plans device preparation")
	}
	c, err := d.connect(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("device preparation: connect to the scratch database: %w", err)
	}
	defer c.Close(context.Background())
	res, err := devprep.Plan(ctx, devprep.Options{DB: c, WithoutKV: true, FlushKV: req.FlushKV, CreateEvent: true, RestoreID: req.RestoreID, Logger: d.t.Logger})
	if err != nil {
		return nil, false, err
	}
	return res, res.Changed, nil
}

// Close stops the cluster and removes its directory.
func (t *Throwaway) Close(ctx context.Context) error {
	if t.dir == "" {
		return nil
	}
	err := stopCluster(ctx, t.run(), t.bin, t.dir, t.asUser)
	if rerr := os.RemoveAll(t.dir); rerr != nil && err == nil {
		err = rerr
	}
	if t.sockDir != "" && err == nil {
		if err = os.RemoveAll(t.sockDir); err == nil {
			t.sockDir = ""
		}
	}
	if err == nil {
		t.logger().Info("throwaway PostgreSQL removed", "dir", t.dir)
		t.dir = ""
	}
	return err
}

// stopCluster stops the cluster in dir (if its postmaster runs): pg_ctl immediate stop,
// else SIGKILL to the postmaster the cluster recorded, waiting until it is gone.
func stopCluster(ctx context.Context, r runner.Runner, bin, dir, asUser string) error {
	data := filepath.Join(dir, "data")
	pid := postmasterPID(data)
	if !procstat.Alive(pid) {
		return nil
	}
	if bin != "" {
		p := filepath.Join(bin, "pg_ctl")
		args := []string{"-D", data, "-m", "immediate", "-w", "-t", "30", "stop"}
		c := runner.Cmd{Name: p, Args: args, Dir: "/", Stdout: io.Discard}
		if asUser != "" || os.Geteuid() == 0 {
			c = runner.Cmd{Name: "runuser", Args: append([]string{"-u", "postgres", "--", p}, args...), Dir: "/", Stdout: io.Discard}
		}
		if err := r.Run(ctx, c); err == nil {
			return nil
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	// Gone, or a zombie: it has exited, and whoever its parent is now reaps it.
	for procstat.Alive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the throwaway PostgreSQL (pid %d, %s) does not stop", pid, dir)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func postmasterPID(data string) int {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	return pid
}
