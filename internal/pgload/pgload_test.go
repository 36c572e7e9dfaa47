package pgload_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/pgload"
	"flightctl.dr/internal/testbed"
)

// flightctlDump is the flightctl schema with generated rows in every table, as
// `pg_dump --clean --if-exists` writes it.
func flightctlDump(t *testing.T, pg *testbed.Postgres, rows int) []byte {
	t.Helper()
	require.NoError(t, pg.CreateFlightctlDB(context.Background(), "src", testbed.FlightctlPasswords{}))
	fillEveryTable(t, pg, "src", rows)
	return dumpDB(t, pg, "src")
}

func TestSameAsPsqlOnFlightctlSchemaWithRows(t *testing.T) {
	pg := testbed.PostgresForTest(t)
	dump := flightctlDump(t, pg, 40)
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", dump))
	for _, n := range []int{1, 3} {
		db := "par" + string(rune('0'+n))
		createDB(t, pg, db)
		// Small pieces, so that every table's COPY block is cut into several.
		st, err := loadParallel(t, pg, db, dump, pgload.Options{Connections: n, Chunk: 2048})
		require.NoError(t, err)
		t.Logf("%d sessions: %+v", n, st)
		got := requireSame(t, pg, "ref", db)
		require.GreaterOrEqual(t, len(got), 26)
		require.Equal(t, n, st.Sessions)
		require.Greater(t, st.Data, 26, "COPY blocks cut into pieces")
		require.Greater(t, st.Post, 100, "indexes, constraints, triggers and foreign keys in parallel")
		t.Logf("%d sessions: %+v", n, st)
	}
}

func TestSameAsPsqlOnUpstreamDump(t *testing.T) {
	// The schema fixture is pg_dump's own output of a database made by upstream's migration.
	fixture, err := os.ReadFile(filepath.Join(testbed.FixturesDir(), "flightctl-schema.sql"))
	require.NoError(t, err)
	pg := withRoles(t)
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", fixture))
	createDB(t, pg, "par")
	st, err := loadParallel(t, pg, "par", fixture, pgload.Options{Connections: 4})
	require.NoError(t, err)
	requireSame(t, pg, "ref", "par")
	require.Greater(t, st.Post, 100)
}

// withRoles is a private cluster with the flightctl roles.
func withRoles(t *testing.T) *testbed.Postgres {
	pg := testbed.PostgresForTest(t)
	roles, err := os.ReadFile(filepath.Join(testbed.FixturesDir(), "flightctl-roles.sql"))
	require.NoError(t, err)
	require.NoError(t, pg.Psql(context.Background(), "postgres", bytes.NewReader(roles)))
	return pg
}

// awkwardSQL makes objects whose dump holds what a statement splitter can get wrong.
const awkwardSQL = `
CREATE SCHEMA extra;
CREATE EXTENSION pg_trgm WITH SCHEMA public;
CREATE TABLE public.t (id bigserial PRIMARY KEY, body text, doc jsonb, tags text[]);
CREATE TABLE extra."Odd; Name" (k text PRIMARY KEY, v text);
COMMENT ON TABLE public.t IS 'a comment; with semicolons; and ''quotes'' -- and dashes';
COMMENT ON COLUMN public.t.body IS $$dollar; quoted$$;
CREATE FUNCTION public.f1(x text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  -- a comment; with a semicolon
  RETURN x || ';' || $q$ inner; $q$ || E'\\. ';
END;
$body$;
CREATE FUNCTION public.f2() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.body := coalesce(NEW.body, 'x;y'); RETURN NEW; END; $$;
CREATE FUNCTION public.f3(a int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + 1; ';
CREATE INDEX t_body_trgm ON public.t USING gin (body public.gin_trgm_ops);
CREATE INDEX t_doc ON public.t USING gin (doc);
CREATE UNIQUE INDEX t_f3 ON public.t (public.f3(id::int));
COMMENT ON INDEX public.t_doc IS 'index; comment';
CREATE TRIGGER t_trg BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.f2();
CREATE TABLE public.child (id bigint REFERENCES public.t(id), k text REFERENCES extra."Odd; Name"(k));
CREATE VIEW public.v AS SELECT id, public.f1(body) AS b FROM public.t;
GRANT SELECT ON public.t TO flightctl_app;
GRANT USAGE ON SCHEMA extra TO flightctl_app;
ALTER TABLE public.t OWNER TO flightctl_migrator;
INSERT INTO public.t (body, doc, tags)
  SELECT CASE i % 5
           WHEN 0 THEN E'\\.'
           WHEN 1 THEN E'tab\there\\back\\\\slash\nnew line'
           WHEN 2 THEN E'\\.\n\\.\n'
           WHEN 3 THEN 'semi;colon -- not a comment /* nor this */'
           ELSE NULL END,
         jsonb_build_object('i', i, 's', E'a\tb\\c\nd'), ARRAY[E'x\ty', E'\\.', i::text]
  FROM generate_series(1, 3000) i;
INSERT INTO extra."Odd; Name" VALUES (E'\\.', E'\t'), ('a;b', E'\\\\'), ('\x', 'x');
INSERT INTO public.child SELECT i, CASE WHEN i % 2 = 0 THEN 'a;b' ELSE E'\\.' END FROM generate_series(1, 200) i;
SELECT setval('public.t_id_seq', 5000, false);
`

func TestSameAsPsqlOnAwkwardDump(t *testing.T) {
	pg := withRoles(t)
	createDB(t, pg, "src")
	require.NoError(t, pg.Psql(context.Background(), "src", strings.NewReader(awkwardSQL)))
	dump := dumpDB(t, pg, "src")
	// What the test is about is really in the dump.
	for _, s := range []string{"$_$", "$q$", "a comment; with semicolons", "\\\\.", "\t"} {
		require.True(t, bytes.Contains(dump, []byte(s)), "the dump holds %q", s)
	}
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", dump))
	createDB(t, pg, "par")
	st, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 3, Chunk: 1024})
	require.NoError(t, err)
	got := requireSame(t, pg, "ref", "par")
	require.Equal(t, "3000 ", got["public.t"][:5])
	require.Equal(t, "5000 false", got["public.t_id_seq"])
	require.Greater(t, st.Data, 10)
}

func TestLargeTableSplitAcrossSessions(t *testing.T) {
	pg := withRoles(t)
	createDB(t, pg, "src")
	require.NoError(t, pg.Psql(context.Background(), "src", strings.NewReader(`
CREATE TABLE public.big (id bigint PRIMARY KEY, payload text, doc jsonb);
CREATE INDEX big_doc ON public.big USING gin (doc);
INSERT INTO public.big SELECT i, repeat(md5(i::text), 4) || E'\t\\', jsonb_build_object('k', i % 100) FROM generate_series(1, 200000) i;
`)))
	dump := dumpDB(t, pg, "src")
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", dump))
	createDB(t, pg, "par")
	st, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 3, Chunk: 256 << 10})
	require.NoError(t, err)
	got := requireSame(t, pg, "ref", "par")
	require.True(t, strings.HasPrefix(got["public.big"], "200000 "))
	require.Greater(t, st.Data, 50, "the one table's rows went out in pieces")
	busy := 0
	for _, n := range st.DataPerSession {
		if n > 0 {
			busy++
		}
	}
	require.Greater(t, busy, 1, "pieces of one table loaded on more than one session: %v", st.DataPerSession)
	// Each piece is its own COPY, so its own transaction.
	var xmins int
	c, err := pg.SuperuserConn(context.Background(), "par")
	require.NoError(t, err)
	defer c.Close(context.Background())
	require.NoError(t, c.QueryRow(context.Background(), "SELECT count(DISTINCT xmin::text) FROM public.big").Scan(&xmins))
	require.Greater(t, xmins, 50)
}

func TestErrorHalfwayStopsTheLoad(t *testing.T) {
	pg := testbed.PostgresForTest(t)
	dump := flightctlDump(t, pg, 20)
	// A row of devices with one field too many, in the middle of the data: psql stops
	// there, so nothing after it (indexes, constraints, grants) may be made.
	i := bytes.Index(dump, []byte("COPY public.devices "))
	require.Positive(t, i)
	nl := bytes.IndexByte(dump[i:], '\n') + i + 1
	bad := append(append(append([]byte{}, dump[:nl]...), []byte("one\ttoo\tfew\n")...), dump[nl:]...)

	createDB(t, pg, "ref")
	refErr := loadPsql(t, pg, "ref", bad)
	require.Error(t, refErr)
	createDB(t, pg, "par")
	_, err := loadParallel(t, pg, "par", bad, pgload.Options{Connections: 3, Chunk: 1024})
	require.Error(t, err)
	require.Contains(t, err.Error(), "devices")
	require.Contains(t, err.Error(), "ERROR")
	c, err := pg.SuperuserConn(context.Background(), "par")
	require.NoError(t, err)
	defer c.Close(context.Background())
	var indexes, sessions int
	require.NoError(t, c.QueryRow(context.Background(), "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").Scan(&indexes))
	require.Zero(t, indexes, "nothing after the error ran")
	require.NoError(t, c.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE datname = 'par' AND pid <> pg_backend_pid()").Scan(&sessions))
	require.Zero(t, sessions, "every session of the load has ended")
}

func TestRefusedDumpStopsTheLoad(t *testing.T) {
	pg := withRoles(t)
	createDB(t, pg, "par")
	dump := []byte("SET statement_timeout = 0;\nCREATE TABLE public.a (x int);\nCOPY public.a (x) FROM stdin;\n1\n\\.\nCOPY public.a (x) TO PROGRAM 'id';\n-- PostgreSQL database dump complete\n")
	_, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 2})
	var ref *pgdump.Refusal
	require.True(t, errors.As(err, &ref), "%v", err)
	// Truncated: no completion line.
	_, err = loadParallel(t, pg, "par", []byte("CREATE TABLE public.b (x int);\n"), pgload.Options{Connections: 2})
	require.True(t, errors.As(err, &ref), "%v", err)
}

func TestAfterDataRunsBetweenDataAndIndexes(t *testing.T) {
	pg := testbed.PostgresForTest(t)
	dump := flightctlDump(t, pg, 30)
	createDB(t, pg, "par")
	var seen struct{ devices, indexes int }
	_, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 2, AfterData: func(ctx context.Context) error {
		c, err := pg.SuperuserConn(ctx, "par")
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, "SELECT count(*) FROM public.devices").Scan(&seen.devices); err != nil {
			return err
		}
		return c.QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").Scan(&seen.indexes)
	}})
	require.NoError(t, err)
	require.Equal(t, 30, seen.devices, "all data in")
	require.Zero(t, seen.indexes, "no index yet")

	// A failing hook stops the load.
	createDB(t, pg, "par2")
	_, err = loadParallel(t, pg, "par2", dump, pgload.Options{Connections: 2, AfterData: func(context.Context) error { return errors.New("hook failed") }})
	require.ErrorContains(t, err, "hook failed")
}

// With AfterDataTables the hook runs beside the post-data work: the index builds of the
// other tables go on while it runs (the hook waits until one on events exists, a state the
// load reaches only if they do), those of its tables wait for it, and the load returns
// after it, with the same database as psql -f plus what the hook wrote.
func TestAfterDataBesidePostData(t *testing.T) {
	pg := testbed.PostgresForTest(t)
	dump := flightctlDump(t, pg, 30)
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", dump))
	exec1(t, pg, "ref", "UPDATE public.devices SET resource_version = resource_version + 1")
	createDB(t, pg, "par")
	var seen struct{ devices, deviceIndexes, eventIndexes int }
	returned := false
	st, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 2, AfterDataTables: []string{"public.devices"},
		AfterData: func(ctx context.Context) error {
			c, err := pg.SuperuserConn(ctx, "par")
			if err != nil {
				return err
			}
			defer c.Close(ctx)
			indexes := func(table string) (n int, err error) {
				err = c.QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = $1", table).Scan(&n)
				return n, err
			}
			// Waits for a state: if the other tables' work waited for the hook, it would
			// never come, and the bound turns that into a failure instead of a hang.
			wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			for seen.eventIndexes == 0 {
				if seen.eventIndexes, err = indexes("events"); err != nil {
					return err
				}
				select {
				case <-wctx.Done():
					return errors.New("no index of events was built while the hook ran")
				case <-time.After(5 * time.Millisecond):
				}
			}
			if seen.deviceIndexes, err = indexes("devices"); err != nil {
				return err
			}
			if _, err := c.Exec(ctx, "UPDATE public.devices SET resource_version = resource_version + 1"); err != nil {
				return err
			}
			returned = true
			return c.QueryRow(ctx, "SELECT count(*) FROM public.devices").Scan(&seen.devices)
		}})
	require.NoError(t, err)
	require.True(t, returned, "the load returned after the hook")
	require.Equal(t, 30, seen.devices, "all data in")
	require.Positive(t, seen.eventIndexes, "events indexed while the hook ran")
	require.Zero(t, seen.deviceIndexes, "no index of devices before the hook returned")
	requireSame(t, pg, "ref", "par")
	require.Positive(t, st.AfterData)

	// A failing hook stops the load.
	createDB(t, pg, "par2")
	_, err = loadParallel(t, pg, "par2", dump, pgload.Options{Connections: 2, AfterDataTables: []string{"public.devices"},
		AfterData: func(context.Context) error { return errors.New("hook failed") }})
	require.ErrorContains(t, err, "hook failed")
}

// pg_dump's SET statements are session state that every session must apply: a dump in
// LATIN1 (pg_dump -E LATIN1) has its COPY data in LATIN1, which a session left at its
// default client encoding would read wrong or refuse.
func TestSessionSettingsReachEverySession(t *testing.T) {
	pg := withRoles(t)
	createDB(t, pg, "src")
	require.NoError(t, pg.Psql(context.Background(), "src", strings.NewReader(`
CREATE TABLE public.words (id int PRIMARY KEY, w text);
INSERT INTO public.words SELECT i, 'café crème ü ' || i FROM generate_series(1, 20000) i;
`)))
	dump := dumpDB(t, pg, "src", "-E", "LATIN1")
	require.True(t, bytes.Contains(dump, []byte("SET client_encoding = 'LATIN1';")))
	require.True(t, bytes.Contains(dump, []byte("caf\xe9")), "the data is in LATIN1")
	createDB(t, pg, "ref")
	require.NoError(t, loadPsql(t, pg, "ref", dump))
	createDB(t, pg, "par")
	st, err := loadParallel(t, pg, "par", dump, pgload.Options{Connections: 3, Chunk: 4096})
	require.NoError(t, err)
	got := requireSame(t, pg, "ref", "par")
	require.True(t, strings.HasPrefix(got["public.words"], "20000 "))
	busy := 0
	for _, n := range st.DataPerSession {
		if n > 0 {
			busy++
		}
	}
	require.Greater(t, busy, 1, "data pieces ran on sessions other than the first: %v", st.DataPerSession)
}
