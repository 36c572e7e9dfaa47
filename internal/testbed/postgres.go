package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"flightctl.dr/internal/runner"
)

// PostgresBinDir is where Debian installs the PostgreSQL 15 server programs.
const PostgresBinDir = "/usr/lib/postgresql/15/bin"

// FixturesEnv overrides the fixtures directory (roles and schema SQL).
const FixturesEnv = "FLIGHTCTL_DR_FIXTURES"

// DefaultOrgID is the organization the flightctl migration inserts.
const DefaultOrgID = "00000000-0000-0000-0000-000000000000"

// PostgresOptions says where and how to start a private PostgreSQL cluster.
type PostgresOptions struct {
	// Dir holds the cluster (data, socket, log). Empty: a new directory under the system
	// temporary directory, removed by Stop.
	Dir string
	// Port is the TCP port on 127.0.0.1. 0: a free port chosen at start.
	Port int
	// BinDir holds initdb, pg_ctl and psql. Empty: PostgresBinDir.
	BinDir string
	Logger *slog.Logger
}

// Postgres is a running private cluster. TCP connections on Host:Port need a password
// (scram-sha-256); the unix socket in SocketDir trusts the superuser "postgres".
type Postgres struct {
	Host      string
	Port      int
	SocketDir string
	BinDir    string
	DataDir   string

	dir        string
	removeDir  bool
	runAsUser  string // "postgres" when started by root, else ""
	logger     *slog.Logger
	run        runner.Runner
	psqlMajor  int
	psqlMinor  int
	stopped    bool
	postmaster int
}

// FlightctlPasswords are the passwords set on the flightctl roles. Empty fields keep the
// test values of flightctl-roles.sql (adminpass, migratorpass, apppass).
type FlightctlPasswords struct {
	Admin    string
	Migrator string
	App      string
}

func (p FlightctlPasswords) withDefaults() FlightctlPasswords {
	if p.Admin == "" {
		p.Admin = "adminpass"
	}
	if p.Migrator == "" {
		p.Migrator = "migratorpass"
	}
	if p.App == "" {
		p.App = "apppass"
	}
	return p
}

// StartPostgres creates and starts a private cluster. Root cannot run initdb, so as root
// the cluster belongs to the OS user postgres (via runuser).
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Postgres{Host: "127.0.0.1", BinDir: opts.BinDir, logger: logger, run: runner.Exec{}}
	if p.BinDir == "" {
		p.BinDir = PostgresBinDir
	}
	for _, prog := range []string{"initdb", "pg_ctl", "psql"} {
		if _, err := os.Stat(filepath.Join(p.BinDir, prog)); err != nil {
			return nil, fmt.Errorf("start postgres: %s not found in %s: install PostgreSQL 15 (apt-get install postgresql): %w", prog, p.BinDir, err)
		}
	}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("start postgres: running as root needs the OS user postgres (the postgresql package creates it): %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		p.runAsUser = "postgres"
	}

	dir, remove, err := workDir(opts.Dir, "flightctl-dr-pg-")
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p.dir, p.removeDir = dir, remove
	p.DataDir = filepath.Join(p.dir, "data")
	p.SocketDir = filepath.Join(p.dir, "sock")
	for _, d := range []string{p.DataDir, p.SocketDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}
	if uid >= 0 {
		for _, d := range []string{p.dir, p.DataDir, p.SocketDir} {
			if err := os.Chown(d, uid, gid); err != nil {
				return nil, fmt.Errorf("start postgres: give %s to the postgres user: %w", d, err)
			}
		}
		if err := letTraverse(filepath.Dir(p.dir), uid, logger); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}
	if err := p.readPsqlVersion(ctx); err != nil {
		p.cleanup()
		return nil, err
	}

	if err := p.command(ctx, "initdb", "-D", p.DataDir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"); err != nil {
		p.cleanup()
		return nil, fmt.Errorf("start postgres: initdb: %w", err)
	}
	hba := "# written by flightctl.dr testbed\n" +
		"local all postgres trust\n" +
		"local all all scram-sha-256\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n" +
		"host all all ::1/128 scram-sha-256\n"
	hbaPath := filepath.Join(p.DataDir, "pg_hba.conf")
	if err := os.WriteFile(hbaPath, []byte(hba), 0o600); err != nil {
		p.cleanup()
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(hbaPath, uid, gid); err != nil {
			p.cleanup()
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}

	startErr := startOnPort(opts.Port, logger, "postgres", func(port int) error {
		p.Port = port
		serverOpts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", port, p.SocketDir)
		return p.command(ctx, "pg_ctl", "-D", p.DataDir, "-l", filepath.Join(p.dir, "postgres.log"), "-o", serverOpts, "-w", "-t", "60", "start")
	})
	if startErr != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
		p.cleanup()
		return nil, fmt.Errorf("start postgres: pg_ctl start: %w; server log: %s", startErr, tail(string(log), 2000))
	}
	p.postmaster = readPostmasterPID(p.DataDir)
	logger.Info("postgres started", "dir", p.dir, "port", p.Port, "pid", p.postmaster)
	return p, nil
}

// letTraverse gives "others" search permission (x, not read) on every ancestor of dir
// that the postgres user could not otherwise pass, so that it can reach its cluster.
func letTraverse(dir string, uid int, logger *slog.Logger) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		if ok && int(st.Uid) != uid && mode&0o001 == 0 {
			if err := os.Chmod(d, fi.Mode()|0o001); err != nil {
				return fmt.Errorf("let the postgres user traverse %s: %w", d, err)
			}
			logger.Debug("added o+x so postgres can reach its cluster", "dir", d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func readPostmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(first))
	return pid
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// command runs a PostgreSQL program from BinDir, as the postgres user when we are root.
func (p *Postgres) command(ctx context.Context, prog string, args ...string) error {
	c := p.cmd(prog, args...)
	return p.run.Run(ctx, c)
}

func (p *Postgres) cmd(prog string, args ...string) runner.Cmd {
	path := filepath.Join(p.BinDir, prog)
	if p.runAsUser != "" {
		return runner.Cmd{Name: "runuser", Args: append([]string{"-u", p.runAsUser, "--", path}, args...), Dir: "/"}
	}
	return runner.Cmd{Name: path, Args: args, Dir: "/"}
}

var psqlVersionRE = regexp.MustCompile(`(\d+)\.(\d+)`)

func (p *Postgres) readPsqlVersion(ctx context.Context) error {
	out, err := runner.Output(ctx, p.run, runner.Cmd{Name: filepath.Join(p.BinDir, "psql"), Args: []string{"--version"}})
	if err != nil {
		return fmt.Errorf("start postgres: psql --version: %w", err)
	}
	m := psqlVersionRE.FindStringSubmatch(string(out))
	if m == nil {
		return fmt.Errorf("start postgres: cannot read the psql version from %q", strings.TrimSpace(string(out)))
	}
	p.psqlMajor, _ = strconv.Atoi(m[1])
	p.psqlMinor, _ = strconv.Atoi(m[2])
	return nil
}

// Stop stops the cluster (fast shutdown) and removes its directory when StartPostgres
// created it.
func (p *Postgres) Stop() error {
	if p == nil || p.stopped {
		return nil
	}
	p.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := p.command(ctx, "pg_ctl", "-D", p.DataDir, "-m", "fast", "-w", "-t", "30", "stop")
	if err != nil && p.postmaster > 0 {
		// Fall back to the PID this cluster wrote at start.
		if kerr := syscall.Kill(p.postmaster, syscall.SIGQUIT); kerr == nil {
			WaitGone(p.postmaster, 10*time.Second)
			err = nil
		}
	}
	p.cleanup()
	if err != nil {
		return fmt.Errorf("stop postgres in %s: %w", p.dir, err)
	}
	p.logger.Info("postgres stopped", "dir", p.dir)
	return nil
}

func (p *Postgres) cleanup() {
	if p.removeDir {
		_ = os.RemoveAll(p.dir)
	}
}

// WaitGone waits until pid no longer exists (reaped: a zombie still answers), at most
// limit; false when it still does.
func WaitGone(pid int, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// DSN is a TCP connection string for db as user with password (sslmode=disable).
func (p *Postgres) DSN(db, user, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     fmt.Sprintf("%s:%d", p.Host, p.Port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// SuperuserConn connects to db as the superuser postgres over the unix socket (trusted).
func (p *Postgres) SuperuserConn(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable", p.SocketDir, p.Port, db))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg)
}

// Psql runs psql as the superuser over the unix socket on db, with ON_ERROR_STOP, feeding
// it sql on stdin.
func (p *Postgres) Psql(ctx context.Context, db string, sql io.Reader) error {
	c := runner.Cmd{
		Name:  filepath.Join(p.BinDir, "psql"),
		Args:  []string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", db, "-f", "-"},
		Stdin: sql,
		// Notices would only add noise to test logs.
		Env: []string{"PGOPTIONS=-c client_min_messages=warning"},
	}
	c.Stdout = io.Discard
	return p.run.Run(ctx, c)
}

// CreateFlightctlDB creates database name as the flightctl server has it: roles from
// flightctl-roles.sql (created when absent) with the given passwords, the database owned by
// admin with CONNECT granted to flightctl_app and CREATE to flightctl_migrator, the schema
// from flightctl-schema.sql, and the default organization row.
func (p *Postgres) CreateFlightctlDB(ctx context.Context, name string, passwords FlightctlPasswords) error {
	passwords = passwords.withDefaults()
	fixtures := FixturesDir()
	roles, err := os.ReadFile(filepath.Join(fixtures, "flightctl-roles.sql"))
	if err != nil {
		return fmt.Errorf("create flightctl database: read roles fixture (set %s to the fixtures directory): %w", FixturesEnv, err)
	}
	schema, err := os.ReadFile(filepath.Join(fixtures, "flightctl-schema.sql"))
	if err != nil {
		return fmt.Errorf("create flightctl database: read schema fixture (set %s to the fixtures directory): %w", FixturesEnv, err)
	}
	if err := p.Psql(ctx, "postgres", bytes.NewReader(roles)); err != nil {
		return fmt.Errorf("create flightctl database: roles: %w", err)
	}
	conn, err := p.SuperuserConn(ctx, "postgres")
	if err != nil {
		return fmt.Errorf("create flightctl database: connect as postgres: %w", err)
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{name}.Sanitize()
	stmts := []string{
		fmt.Sprintf("ALTER ROLE admin PASSWORD %s", quoteLiteral(passwords.Admin)),
		fmt.Sprintf("ALTER ROLE flightctl_migrator PASSWORD %s", quoteLiteral(passwords.Migrator)),
		fmt.Sprintf("ALTER ROLE flightctl_app PASSWORD %s", quoteLiteral(passwords.App)),
		fmt.Sprintf("CREATE DATABASE %s OWNER admin", ident),
		fmt.Sprintf("GRANT CONNECT ON DATABASE %s TO flightctl_app", ident),
		fmt.Sprintf("GRANT CREATE ON DATABASE %s TO flightctl_migrator", ident),
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			// Do not echo the statement: it may carry a password.
			return fmt.Errorf("create flightctl database %s: %w", name, err)
		}
	}
	if p.psqlMajor < 15 || (p.psqlMajor == 15 && p.psqlMinor < 14) {
		schema = stripRestrict(schema)
	}
	if err := p.Psql(ctx, name, bytes.NewReader(schema)); err != nil {
		return fmt.Errorf("create flightctl database %s: load schema: %w", name, err)
	}
	db, err := p.SuperuserConn(ctx, name)
	if err != nil {
		return fmt.Errorf("create flightctl database %s: %w", name, err)
	}
	defer db.Close(context.Background())
	if _, err := db.Exec(ctx, `INSERT INTO organizations (id, display_name, external_id, created_at, updated_at)
		VALUES ($1, 'Default', 'default', now(), now()) ON CONFLICT (id) DO NOTHING`, DefaultOrgID); err != nil {
		return fmt.Errorf("create flightctl database %s: default organization: %w", name, err)
	}
	return nil
}

// stripRestrict removes the \restrict and \unrestrict meta-commands that psql before
// 15.14 does not know.
func stripRestrict(sql []byte) []byte {
	lines := bytes.SplitAfter(sql, []byte("\n"))
	out := make([]byte, 0, len(sql))
	for _, l := range lines {
		t := bytes.TrimSpace(l)
		if bytes.HasPrefix(t, []byte(`\restrict`)) || bytes.HasPrefix(t, []byte(`\unrestrict`)) {
			continue
		}
		out = append(out, l...)
	}
	return out
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// FixturesDir is $FLIGHTCTL_DR_FIXTURES, or ../shared/fixtures next to the module root
// (the directory holding go.mod, found by walking up from the working directory).
func FixturesDir() string {
	if d := os.Getenv(FixturesEnv); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		return filepath.Join("..", "shared", "fixtures")
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(filepath.Dir(d), "shared", "fixtures")
		}
		if d == filepath.Dir(d) {
			return filepath.Join("..", "shared", "fixtures")
		}
	}
}

// PostgresForTest starts a private cluster for t (skipped or failed when PostgreSQL is not
// installed) and stops it when t ends. Each call has its own directory and port, so tests
// of several packages can run at the same time.
func PostgresForTest(t testing.TB) *Postgres {
	t.Helper()
	Need(t, filepath.Join(PostgresBinDir, "initdb"), filepath.Join(PostgresBinDir, "pg_ctl"), filepath.Join(PostgresBinDir, "psql"))
	if os.Geteuid() == 0 {
		Need(t, "runuser")
		if _, err := user.Lookup("postgres"); err != nil {
			Unavailable(t, "running as root needs the OS user postgres to own the cluster")
		}
	}
	return startForTest(t, 2*time.Minute, func(ctx context.Context) (*Postgres, error) {
		return StartPostgres(ctx, PostgresOptions{})
	})
}
