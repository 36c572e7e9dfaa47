package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// SwapRequest names the databases of a swap: the live database goes aside to Old and the
// restored Temp takes its name, then gets Info's owner and grants.
type SwapRequest struct {
	Live, Temp, Old string
	// LiveExisted is false when the restore creates the database from nothing: a live
	// database without an Old one then already is the restored copy.
	LiveExisted bool
	Info        DatabaseInfo
}

// SwapOutcome is what one swap found and did.
type SwapOutcome struct {
	// LiveRenamed and TempRenamed say which renames this call made (none when an earlier
	// run had swapped already).
	LiveRenamed, TempRenamed bool
	// Sessions are the other sessions that were connected to the live or the restored
	// database when the swap began ("database:application or backend type:user"); they
	// were ended, and the renames ran once pg_stat_activity no longer showed them.
	Sessions []string
}

// DatabaseSwapper is a Database that swaps in one session and one transaction: it looks
// at which databases exist, ends the sessions still connected to them and waits until
// they are gone, renames the live database aside and the restored one into its place and
// gives it its owner and grants, all committed together. An interrupt leaves either the
// state before or the state after, never half of it.
type DatabaseSwapper interface {
	// PrepareSwap starts, before the units stop, the session the swap will run in (its
	// psql, and its `podman exec` with container access), so that in the downtime the swap
	// only sends its statements. Close ends it unused.
	PrepareSwap(ctx context.Context) PreparedSwap
	// SwapDatabases swaps, in prepared when it is not nil and still usable.
	SwapDatabases(ctx context.Context, req SwapRequest, prepared PreparedSwap) (SwapOutcome, error)
}

// PreparedSwap is a session started ahead by PrepareSwap.
type PreparedSwap interface {
	Close()
}

// psqlSession is one psql started ahead, connected to the postgres database and waiting
// for its script on stdin: psql reads a pipe statement by statement, so nothing runs
// before the script is sent, and a process that dies closes the pipe, so nothing runs
// then either.
type psqlSession struct {
	w    *io.PipeWriter
	out  bytes.Buffer
	err  error
	done chan struct{}
	once sync.Once
}

// PrepareSwap starts the swap's psql now.
func (d *PsqlDatabase) PrepareSwap(ctx context.Context) PreparedSwap {
	pr, pw := io.Pipe()
	s := &psqlSession{w: pw, done: make(chan struct{})}
	c := d.Command([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f", "-"},
		[]string{"PGOPTIONS=-c client_min_messages=warning"})
	c.Stdin, c.Stdout = pr, &s.out
	go func() {
		defer close(s.done)
		s.err = d.Runner.Run(context.WithoutCancel(ctx), c)
		_ = pr.CloseWithError(io.ErrClosedPipe)
	}()
	return s
}

// run sends sql and waits for psql to finish it. A cancelled restore still waits: the
// script is one transaction bounded by its own wait, and the rollback must find the
// databases either swapped or not, never while the swap runs.
func (s *psqlSession) run(sql string) (string, error) {
	sent := false
	s.once.Do(func() {
		if _, err := io.WriteString(s.w, sql); err == nil {
			sent = true
		}
		_ = s.w.Close()
	})
	<-s.done
	if !sent {
		return "", errSessionGone
	}
	return strings.TrimSpace(s.out.String()), s.err
}

// Close ends the session without running anything.
func (s *psqlSession) Close() {
	s.once.Do(func() { _ = s.w.Close() })
	<-s.done
}

var errSessionGone = errors.New("the prepared psql session ended before the swap")

var _ DatabaseSwapper = (*PsqlDatabase)(nil)

// Errors of a swap that found the databases in a state it cannot go on from.
func swapAllExistError(req SwapRequest) error {
	return fmt.Errorf("swap database: %s, %s and %s all exist: inspect them and roll back", req.Live, req.Temp, req.Old)
}

func swapTempMissingError(req SwapRequest) error {
	return fmt.Errorf("swap database: the restored database %s is missing and the swap has not happened: run the restore again to reload it", req.Temp)
}

// SwapDatabases runs the swap as one psql script (one process, so one `podman exec` with
// container access): a DO block, hence one transaction, decides from pg_database what is
// left to do, ends the other sessions of both databases (pg_terminate_backend) and waits
// until pg_stat_activity shows none, renames, and applies the owner and grants. A session
// that connects again between that wait and the rename makes the rename fail ("being
// accessed by other users") with nothing changed; the script then runs again, until
// RenameTimeout.
func (d *PsqlDatabase) SwapDatabases(ctx context.Context, req SwapRequest, prepared PreparedSwap) (SwapOutcome, error) {
	limit := d.RenameTimeout
	if limit == 0 {
		limit = 30 * time.Second
	}
	script, err := swapScript(req, limit)
	if err != nil {
		return SwapOutcome{}, err
	}
	deadline := time.Now().Add(limit)
	session, _ := prepared.(*psqlSession)
	for {
		var out string
		var err error
		if session != nil {
			out, err = session.run(script)
			session = nil
			if err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "being accessed by other users") {
				// The session started ahead did not run the script to its end (it could
				// not connect, or it died): the transaction did not commit, so a fresh
				// psql runs it.
				d.logger().Info("the prepared psql session failed; swapping in a new one", "err", err)
				out, err = d.query(ctx, "postgres", script)
			}
		} else {
			out, err = d.query(ctx, "postgres", script)
		}
		if err == nil {
			return parseSwapOutcome(req, out)
		}
		if ctx.Err() != nil {
			return SwapOutcome{}, fmt.Errorf("swap database %s and %s: %w", req.Live, req.Temp, ctx.Err())
		}
		if !strings.Contains(err.Error(), "being accessed by other users") || time.Now().After(deadline) {
			return SwapOutcome{}, fmt.Errorf("swap database %s and %s: %w", req.Live, req.Temp, err)
		}
		d.logger().Info("a session connected again before the rename, swapping again", "database", req.Live)
	}
}

// swapScript is the SQL of SwapDatabases. It prints the outcome ("all_exist",
// "temp_missing", "already", "renamed_temp", "renamed_both") on the first line and the
// sessions it ended on the next ones.
func swapScript(req SwapRequest, wait time.Duration) (string, error) {
	for _, n := range []string{req.Live, req.Temp, req.Old} {
		if err := ValidDatabaseName(n); err != nil {
			return "", fmt.Errorf("swap database: %w", err)
		}
	}
	priv, err := privilegeSQL(req.Live, req.Info)
	if err != nil {
		return "", err
	}
	live, temp, old := quoteLiteral(req.Live), quoteLiteral(req.Temp), quoteLiteral(req.Old)
	others := fmt.Sprintf("FROM pg_stat_activity WHERE datname IN (%s, %s) AND pid <> pg_backend_pid()", live, temp)
	body := fmt.Sprintf(`
DECLARE
	live_there boolean := EXISTS (SELECT 1 FROM pg_database WHERE datname = %[1]s);
	temp_there boolean := EXISTS (SELECT 1 FROM pg_database WHERE datname = %[2]s);
	old_there boolean := EXISTS (SELECT 1 FROM pg_database WHERE datname = %[3]s);
	outcome text;
	sessions text := '';
	deadline timestamptz := clock_timestamp() + interval '%[4]d milliseconds';
BEGIN
	IF temp_there AND live_there AND old_there THEN
		outcome := 'all_exist';
	ELSIF temp_there THEN
		SELECT coalesce(string_agg(datname || ':' || coalesce(nullif(application_name, ''), backend_type) || ':' || coalesce(usename, ''), E'\n'), '')
			INTO sessions %[5]s;
		PERFORM pg_terminate_backend(pid) %[5]s;
		-- Wait for the state, not for a time: until pg_stat_activity (read afresh each
		-- round) no longer lists them; the rename itself refuses if one is still there.
		LOOP
			PERFORM pg_stat_clear_snapshot();
			EXIT WHEN NOT EXISTS (SELECT 1 %[5]s) OR clock_timestamp() > deadline;
			PERFORM pg_sleep(0.002);
		END LOOP;
		IF live_there THEN
			ALTER DATABASE %[6]s RENAME TO %[8]s;
			outcome := 'renamed_both';
		ELSE
			outcome := 'renamed_temp';
		END IF;
		ALTER DATABASE %[7]s RENAME TO %[6]s;
	ELSIF live_there AND (old_there OR NOT %[9]t) THEN
		outcome := 'already';
	ELSE
		outcome := 'temp_missing';
	END IF;
	-- After renames the owner and grants are applied; when an earlier run swapped, only if
	-- they are not already those (applying them again would reorder the grants).
	IF outcome IN ('renamed_both', 'renamed_temp') OR (outcome = 'already' AND NOT %[11]s) THEN
%[10]s
	END IF;
	PERFORM set_config('flightctl_dr.swap', outcome || E'\n' || sessions, false);
END
`, live, temp, old, wait.Milliseconds(), others, quoteIdent(req.Live), quoteIdent(req.Temp), quoteIdent(req.Old), req.LiveExisted, indent(priv),
		privilegesInPlace(req.Live, req.Info))
	return "DO " + dollarQuote(body) + ";\nSELECT current_setting('flightctl_dr.swap');\n", nil
}

// privilegesInPlace is an SQL condition: database name has info's owner and grants (the
// grants compared as sets).
func privilegesInPlace(name string, info DatabaseInfo) string {
	cond := []string{"datname = " + quoteLiteral(name)}
	if info.Owner != "" {
		cond = append(cond, "pg_get_userbyid(datdba) = "+quoteLiteral(info.Owner))
	}
	if !info.ACLSet {
		cond = append(cond, "datacl IS NULL")
	} else {
		items := make([]string, len(info.ACL))
		for i, a := range info.ACL {
			items[i] = quoteLiteral(a)
		}
		want := "ARRAY[" + strings.Join(items, ", ") + "]::text[]"
		cond = append(cond, "datacl IS NOT NULL",
			"(SELECT array_agg(x ORDER BY x) FROM unnest(datacl::text[]) AS x) IS NOT DISTINCT FROM (SELECT array_agg(x ORDER BY x) FROM unnest("+want+") AS x)")
	}
	return "EXISTS (SELECT 1 FROM pg_database WHERE " + strings.Join(cond, " AND ") + ")"
}

func parseSwapOutcome(req SwapRequest, out string) (SwapOutcome, error) {
	lines := strings.Split(out, "\n")
	var o SwapOutcome
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			o.Sessions = append(o.Sessions, l)
		}
	}
	switch strings.TrimSpace(lines[0]) {
	case "renamed_both":
		o.LiveRenamed, o.TempRenamed = true, true
	case "renamed_temp":
		o.TempRenamed = true
	case "already":
	case "all_exist":
		return o, swapAllExistError(req)
	case "temp_missing":
		return o, swapTempMissingError(req)
	default:
		return o, fmt.Errorf("swap database: unexpected answer %q from the database server", out)
	}
	return o, nil
}

// dollarQuote quotes body with a dollar tag that does not occur in it.
func dollarQuote(body string) string {
	tag := "$flightctl_dr$"
	for i := 0; strings.Contains(body, tag); i++ {
		tag = fmt.Sprintf("$flightctl_dr_%d$", i)
	}
	return tag + body + tag
}

func indent(sql string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(sql, "\n"), "\n") {
		if l != "" {
			b.WriteString("\t\t" + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "\t\tNULL;\n"
	}
	return b.String()
}
