package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"flightctl.dr/internal/pgload"
	"flightctl.dr/internal/runner"
)

// PsqlDatabase administers databases through psql, either a local psql against a host and
// port or psql inside the database container (podman exec), as upstream does. SQL always
// travels on stdin; credentials only in the environment.
type PsqlDatabase struct {
	// DBName is the live database.
	DBName string
	Runner runner.Runner
	// Command builds the psql command for psql's own arguments and extra environment
	// (NAME=VALUE entries): it adds the program, the connection options and the password.
	Command func(psqlArgs, env []string) runner.Cmd
	// FreeSpaceOf returns the free space of the filesystem holding dir on the database
	// server; nil: statfs on this machine when dir exists here.
	FreeSpaceOf func(ctx context.Context, dir string) (int64, bool, error)
	// RenameTimeout bounds how long Rename retries while sessions reconnect (30 s).
	RenameTimeout time.Duration
	Logger        *slog.Logger

	// restricts is RestrictsMetaCommands' answer, asked once.
	restrictsOnce sync.Once
	restricts     bool
}

var _ Database = (*PsqlDatabase)(nil)

// identRE accepts the database names this tool creates and upstream's defaults.
var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)

// ValidDatabaseName reports whether name is a database name the restore can handle safely.
func ValidDatabaseName(name string) error {
	if !identRE.MatchString(name) {
		return fmt.Errorf("database name %q is not supported: use letters, digits, _ or -, at most 63 characters", name)
	}
	return nil
}

func quoteIdent(s string) string   { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (d *PsqlDatabase) Name() string { return d.DBName }

func (d *PsqlDatabase) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return d.Logger
}

// query runs sql in database db and returns psql's unaligned, tuples-only output.
func (d *PsqlDatabase) query(ctx context.Context, db, sql string) (string, error) {
	c := d.Command([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"},
		[]string{"PGOPTIONS=-c client_min_messages=warning"})
	c.Stdin = strings.NewReader(sql)
	out, err := runner.Output(ctx, d.Runner, c)
	return strings.TrimSpace(string(out)), err
}

func (d *PsqlDatabase) Ping(ctx context.Context) error {
	out, err := d.query(ctx, "postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user;")
	if err != nil {
		return fmt.Errorf("connect to the database server as the admin user: %w", err)
	}
	if out != "t" {
		return errNotSuperuser
	}
	return nil
}

var errNotSuperuser = errors.New("the database admin user is not a superuser: loading a flightctl dump needs one (the postgres user in the container, or admin)")

func (d *PsqlDatabase) Exists(ctx context.Context, name string) (bool, error) {
	out, err := d.query(ctx, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_database WHERE datname = %s;", quoteLiteral(name)))
	if err != nil {
		return false, fmt.Errorf("look up database %s: %w", name, err)
	}
	return out == "1", nil
}

func (d *PsqlDatabase) Info(ctx context.Context, name string) (DatabaseInfo, error) {
	out, err := d.query(ctx, "postgres", infoSQL(name)+";")
	if err != nil {
		return DatabaseInfo{}, fmt.Errorf("read owner and grants of database %s: %w", name, err)
	}
	return parseInfo(name, out)
}

// infoSQL selects Info's answer as one JSON object, no row when there is no such database.
func infoSQL(name string) string {
	return fmt.Sprintf(`SELECT json_build_object(
  'owner', pg_get_userbyid(datdba),
  'acl', datacl::text[],
  'acl_set', datacl IS NOT NULL,
  'encoding', pg_encoding_to_char(encoding),
  'collate', datcollate,
  'ctype', datctype,
  'size', pg_database_size(oid))
FROM pg_database WHERE datname = %s`, quoteLiteral(name))
}

func parseInfo(name, out string) (DatabaseInfo, error) {
	if out == "" {
		return DatabaseInfo{}, fmt.Errorf("database %s does not exist", name)
	}
	var info DatabaseInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return DatabaseInfo{}, fmt.Errorf("read owner and grants of database %s: %w", name, err)
	}
	return info, nil
}

func (d *PsqlDatabase) Counts(ctx context.Context, name string, tables []string) (map[string]int64, error) {
	out, err := d.query(ctx, name, countsSQL(tables)+";")
	if err != nil {
		return nil, fmt.Errorf("count rows in database %s: %w", name, err)
	}
	return parseCounts(name, out, tables)
}

// countsSQL selects the row count of every table, comma-separated, in one round trip: a
// table that does not exist counts -1 (query_to_xml runs the count only when the table is
// there).
func countsSQL(tables []string) string {
	parts := make([]string, len(tables))
	for i, t := range tables {
		parts[i] = fmt.Sprintf("CASE WHEN to_regclass(%s) IS NULL THEN -1 ELSE (xpath('/row/c/text()', query_to_xml(%s, false, true, '')))[1]::text::bigint END",
			quoteLiteral("public."+t), quoteLiteral("SELECT count(*) AS c FROM public."+quoteIdent(t)))
	}
	return "SELECT " + strings.Join(parts, " || ',' || ")
}

func parseCounts(name, out string, tables []string) (map[string]int64, error) {
	fields := strings.Split(out, ",")
	if len(fields) != len(tables) {
		return nil, fmt.Errorf("count rows in database %s: unexpected answer %q", name, out)
	}
	counts := map[string]int64{}
	for i, t := range tables {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("count rows in database %s: %w", name, err)
		}
		counts[t] = n
	}
	return counts, nil
}

// Survey answers Ping, Exists, Info and Counts in one psql: it reads the admin user and
// the database from the maintenance database, then connects to the database, when it
// exists, for the counts. Each answer is a line of its own, tagged; the errors are those
// of the four calls.
func (d *PsqlDatabase) Survey(ctx context.Context, name string, tables []string) (DatabaseSurvey, error) {
	script := `SELECT 'super|' || COALESCE((SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user), 'false');
SELECT 'datadir|' || CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN current_setting('data_directory') ELSE '' END;
SELECT 'info|' || COALESCE((` + infoSQL(name) + `)::text, '');
SELECT count(*) = 1 AS fdr_survey_exists FROM pg_database WHERE datname = ` + quoteLiteral(name) + ` \gset
\if :fdr_survey_exists
\connect ` + quoteLiteral(name) + `
SELECT 'counts|' || ` + strings.TrimPrefix(countsSQL(tables), "SELECT ") + `;
\endif
`
	out, queryErr := d.query(ctx, "postgres", script)
	lines := taggedLines(out)
	// failed is the error of the call whose answer is missing: psql's, else the output.
	failed := func(format string, args ...any) (DatabaseSurvey, error) {
		cause := queryErr
		if cause == nil {
			cause = fmt.Errorf("unexpected answer %q", out)
		}
		return DatabaseSurvey{}, fmt.Errorf(format+": %w", append(args, cause)...)
	}
	super, pinged := lines["super"]
	if !pinged {
		return failed("connect to the database server as the admin user")
	}
	if super != "true" {
		return DatabaseSurvey{}, errNotSuperuser
	}
	info, hasInfo := lines["info"]
	if !hasInfo {
		return failed("read owner and grants of database %s", name)
	}
	sv := DatabaseSurvey{DataDirectory: lines["datadir"]}
	if info == "" {
		if queryErr != nil {
			return failed("look up database %s", name)
		}
		return sv, nil
	}
	sv.Exists = true
	var err error
	if sv.Info, err = parseInfo(name, info); err != nil {
		return DatabaseSurvey{}, err
	}
	counts, hasCounts := lines["counts"]
	if !hasCounts || queryErr != nil {
		return failed("count rows in database %s", name)
	}
	if sv.Counts, err = parseCounts(name, counts, tables); err != nil {
		return DatabaseSurvey{}, err
	}
	return sv, nil
}

func (d *PsqlDatabase) FreeSpace(ctx context.Context) (int64, bool, error) {
	dir, err := d.query(ctx, "postgres", "SHOW data_directory;")
	if err != nil {
		return 0, false, fmt.Errorf("find the database data directory: %w", err)
	}
	return d.FreeSpaceAt(ctx, dir)
}

func (d *PsqlDatabase) FreeSpaceAt(ctx context.Context, dataDir string) (int64, bool, error) {
	if d.FreeSpaceOf != nil {
		return d.FreeSpaceOf(ctx, dataDir)
	}
	return LocalFreeSpace(dataDir)
}

// LocalFreeSpace is the space available to the database's owner in the filesystem holding
// dir, when dir exists on this machine.
func LocalFreeSpace(dir string) (int64, bool, error) {
	if _, err := os.Stat(dir); err != nil {
		return 0, false, nil
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false, nil
	}
	return int64(st.Bavail) * int64(st.Bsize), true, nil
}

func (d *PsqlDatabase) Create(ctx context.Context, name string, like DatabaseInfo) error {
	if _, err := d.query(ctx, "postgres", createSQL(name, like)); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// RecreateForLoad is Drop then Create in one psql, which also asks what the load into
// name needs before it starts: the number of sessions (LoadConnections' answer for requested)
// and whether this psql has a restricted mode (RestrictsMetaCommands, remembered). With
// container access that is one exec instead of three at once.
func (d *PsqlDatabase) RecreateForLoad(ctx context.Context, name string, like DatabaseInfo, requested int) (int, error) {
	script := dropSQL(name) + "\n" + createSQL(name, like) + "\n\\echo 'version|' :VERSION_NUM\n"
	if requested <= 0 {
		script += "SELECT 'free|' || (" + pgload.FreeConnectionsSQL + ");\n"
	}
	out, err := d.query(ctx, "postgres", script)
	if err != nil {
		return 0, fmt.Errorf("drop and create database %s: %w", name, err)
	}
	lines := taggedLines(out)
	// psql before 11 has no VERSION_NUM and echoes the name: RestrictsMetaCommands asks.
	if num, err := strconv.Atoi(lines["version"]); err == nil {
		d.restrictsOnce.Do(func() { d.restricts = knowsRestrict(num/10000, num%10000) })
	}
	return sessionsFor(requested, lines["free"]), nil
}

// taggedLines are the "tag|value" lines of out by tag, their values trimmed.
func taggedLines(out string) map[string]string {
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if tag, v, ok := strings.Cut(l, "|"); ok {
			lines[tag] = strings.TrimSpace(v)
		}
	}
	return lines
}

func createSQL(name string, like DatabaseInfo) string {
	sql := "CREATE DATABASE " + quoteIdent(name) + " WITH TEMPLATE template0"
	if like.Owner != "" {
		sql += " OWNER " + quoteIdent(like.Owner)
	}
	if like.Encoding != "" {
		sql += " ENCODING " + quoteLiteral(like.Encoding)
	}
	if like.Collate != "" {
		sql += " LC_COLLATE " + quoteLiteral(like.Collate)
	}
	if like.CType != "" {
		sql += " LC_CTYPE " + quoteLiteral(like.CType)
	}
	return sql + ";"
}

func (d *PsqlDatabase) Load(ctx context.Context, name string, dump io.Reader) error {
	c := d.Command([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", name, "-f", "-"},
		[]string{"PGOPTIONS=-c client_min_messages=warning"})
	c.Stdin = dump
	// psql echoes SET, CREATE TABLE, COPY n...: never onto our stdout.
	c.Stdout = &debugWriter{logger: d.logger()}
	if err := d.Runner.Run(ctx, c); err != nil {
		return fmt.Errorf("load the dump into %s: %w", name, err)
	}
	return nil
}

func (d *PsqlDatabase) Rename(ctx context.Context, from, to string) error {
	limit := d.RenameTimeout
	if limit == 0 {
		limit = 30 * time.Second
	}
	deadline := time.Now().Add(limit)
	sql := fmt.Sprintf("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid();\nALTER DATABASE %s RENAME TO %s;",
		quoteLiteral(from), quoteIdent(from), quoteIdent(to))
	for {
		_, err := d.query(ctx, "postgres", sql)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "being accessed by other users") || time.Now().After(deadline) {
			return fmt.Errorf("rename database %s to %s: %w", from, to, err)
		}
		d.logger().Info("database still in use, retrying the rename", "database", from)
		select {
		case <-ctx.Done():
			return fmt.Errorf("rename database %s to %s: %w", from, to, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (d *PsqlDatabase) Drop(ctx context.Context, name string) error {
	if _, err := d.query(ctx, "postgres", dropSQL(name)); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func dropSQL(name string) string {
	return "DROP DATABASE IF EXISTS " + quoteIdent(name) + " WITH (FORCE);"
}

func (d *PsqlDatabase) SetPrivileges(ctx context.Context, name string, info DatabaseInfo) error {
	sql, err := privilegeSQL(name, info)
	if err != nil {
		return err
	}
	if sql == "" {
		return nil
	}
	if _, err := d.query(ctx, "postgres", sql); err != nil {
		return fmt.Errorf("give database %s its owner and grants back: %w", name, err)
	}
	return nil
}

// privilegeSQL turns an owner and a datacl into statements that reproduce them.
func privilegeSQL(name string, info DatabaseInfo) (string, error) {
	var b strings.Builder
	db := quoteIdent(name)
	if info.Owner != "" {
		fmt.Fprintf(&b, "ALTER DATABASE %s OWNER TO %s;\n", db, quoteIdent(info.Owner))
	}
	if !info.ACLSet {
		return b.String(), nil
	}
	// An explicit ACL replaces the defaults, so start from nothing.
	fmt.Fprintf(&b, "REVOKE ALL ON DATABASE %s FROM PUBLIC;\n", db)
	if info.Owner != "" {
		fmt.Fprintf(&b, "REVOKE ALL ON DATABASE %s FROM %s;\n", db, quoteIdent(info.Owner))
	}
	for _, item := range info.ACL {
		grantee, plain, withGrant, err := parseACLItem(item)
		if err != nil {
			return "", err
		}
		if len(plain) > 0 {
			fmt.Fprintf(&b, "GRANT %s ON DATABASE %s TO %s;\n", strings.Join(plain, ", "), db, grantee)
		}
		if len(withGrant) > 0 {
			fmt.Fprintf(&b, "GRANT %s ON DATABASE %s TO %s WITH GRANT OPTION;\n", strings.Join(withGrant, ", "), db, grantee)
		}
	}
	return b.String(), nil
}

var dbPrivileges = map[byte]string{'C': "CREATE", 'c': "CONNECT", 'T': "TEMPORARY"}

// parseACLItem reads "grantee=privs/grantor" (an empty grantee is PUBLIC) and returns the
// quoted grantee and the privileges without and with grant option.
func parseACLItem(item string) (string, []string, []string, error) {
	eq := strings.LastIndex(item, "=")
	slash := strings.LastIndex(item, "/")
	if eq < 0 || slash < eq {
		return "", nil, nil, fmt.Errorf("cannot read database grant %q", item)
	}
	grantee := item[:eq]
	privs := item[eq+1 : slash]
	if grantee == "" {
		grantee = "PUBLIC"
	} else {
		if strings.HasPrefix(grantee, `"`) && strings.HasSuffix(grantee, `"`) && len(grantee) >= 2 {
			grantee = strings.ReplaceAll(grantee[1:len(grantee)-1], `""`, `"`)
		}
		grantee = quoteIdent(grantee)
	}
	var plain, withGrant []string
	for i := 0; i < len(privs); i++ {
		p, ok := dbPrivileges[privs[i]]
		if !ok {
			return "", nil, nil, fmt.Errorf("cannot read database grant %q: unknown privilege %q", item, privs[i])
		}
		if i+1 < len(privs) && privs[i+1] == '*' {
			withGrant = append(withGrant, p)
			i++
		} else {
			plain = append(plain, p)
		}
	}
	return grantee, plain, withGrant, nil
}

// debugWriter sends psql's output lines to the debug log, never to stdout.
type debugWriter struct {
	logger *slog.Logger
	buf    []byte
}

func (w *debugWriter) Write(p []byte) (int, error) {
	if !w.logger.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.logger.Debug("psql", "out", string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// RestrictsMetaCommands says whether the psql that loads dumps knows \restrict, so that
// the load can put it in restricted mode even for a dump without a \restrict line: psql
// 13.22, 14.19, 15.14, 16.10, 17.6 and every later release.
func (d *PsqlDatabase) RestrictsMetaCommands(ctx context.Context) bool {
	d.restrictsOnce.Do(func() {
		out, err := runner.Output(ctx, d.Runner, d.Command([]string{"--version"}, nil))
		d.restricts = err == nil && psqlKnowsRestrict(string(out))
	})
	return d.restricts
}

var psqlVersionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(?:\.(\d+))?`)

func psqlKnowsRestrict(version string) bool {
	m := psqlVersionRE.FindStringSubmatch(version)
	if m == nil {
		return false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return knowsRestrict(major, minor)
}

// knowsRestrict says whether psql major.minor knows \restrict.
func knowsRestrict(major, minor int) bool {
	first := map[int]int{13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
	switch {
	case major >= 18:
		return true
	case first[major] > 0:
		return minor >= first[major]
	}
	return false
}
