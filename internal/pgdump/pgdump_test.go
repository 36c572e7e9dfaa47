package pgdump_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/testbed"
)

// flightctlDump is a real `pg_dump --clean --if-exists` of a Flight Control database
// (the fixtures' schema, rows in the main tables, including awkward values).
func flightctlDump(t *testing.T) ([]byte, *testbed.Postgres) {
	t.Helper()
	testbed.Need(t, "/usr/lib/postgresql/15/bin/pg_dump")
	pg := testbed.PostgresForTest(t)
	ctx := context.Background()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	conn, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer conn.Close(ctx)
	for i := 0; i < 50; i++ {
		// Values with semicolons, quotes, backslashes, newlines and a "\." line.
		_, err := conn.Exec(ctx, `INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, updated_at, spec, status)
			VALUES ($1, $2, '{"a":"b;c"}', $3, 1, 1, now(), now(), '{}', '{"summary":{"status":"Online"}}')`,
			testbed.DefaultOrgID, fmt.Sprintf("dev-%02d", i), fmt.Sprintf(`{"note":"line1\nline2 \\. ;' $$ \\! x %d"}`, i))
		require.NoError(t, err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO fleets (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
		VALUES ($1, 'fleet-1', '{}', 1, 1, now(), now(), '{"selector":{}}', '{}')`, testbed.DefaultOrgID)
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists",
		"-h", pg.SocketDir, "-p", fmt.Sprint(pg.Port), "-U", "postgres", "-d", "flightctl")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	require.NoError(t, cmd.Run(), stderr.String())
	return out.Bytes(), pg
}

func filterAll(dump []byte) ([]byte, *pgdump.Filter, error) {
	f := pgdump.NewFilter(bytes.NewReader(dump), pgdump.FilterOptions{})
	out, err := io.ReadAll(f)
	return out, f, err
}

func TestRealDumpPassesUnchanged(t *testing.T) {
	dump, pg := flightctlDump(t)

	// The reader's items are the dump, byte for byte, split where psql splits it.
	rd := pgdump.NewReader(bytes.NewReader(dump))
	var again bytes.Buffer
	kinds := map[pgdump.ItemKind]int{}
	types := map[string]bool{}
	for {
		it, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		again.Write(it.Raw)
		kinds[it.Kind]++
		if it.Entry != nil {
			types[it.Entry.Type] = true
		}
	}
	require.Equal(t, string(dump), again.String())
	require.True(t, rd.Complete())
	rows, order := rd.Rows()
	require.Equal(t, int64(50), rows["public.devices"])
	require.Equal(t, int64(1), rows["public.fleets"])
	require.Equal(t, int64(1), rows["public.organizations"])
	require.Len(t, order, 26)
	require.Equal(t, 2, kinds[pgdump.Meta])
	require.Equal(t, 26, kinds[pgdump.CopyEnd])
	for _, typ := range []string{"TABLE", "TABLE DATA", "INDEX", "FK CONSTRAINT", "ACL", "EVENT TRIGGER", "FUNCTION"} {
		require.True(t, types[typ], typ)
	}

	// The filter passes it: the same bytes, the dump's \restrict pair replaced by one of
	// its own at the very start.
	out, f, err := filterAll(dump)
	require.NoError(t, err)
	require.True(t, f.Complete())
	require.True(t, f.Restricted)
	require.True(t, bytes.HasPrefix(out, []byte(`\restrict `)))
	strip := func(b []byte) string {
		var keep []string
		for _, l := range strings.SplitAfter(string(b), "\n") {
			if !strings.HasPrefix(l, `\restrict `) && !strings.HasPrefix(l, `\unrestrict `) {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "")
	}
	require.Equal(t, strip(dump), strip(out))

	// Loaded through psql, the filtered dump gives exactly what the dump gives.
	ctx := context.Background()
	for _, db := range []string{"direct", "filtered"} {
		conn, err := pg.SuperuserConn(ctx, "postgres")
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "CREATE DATABASE "+db+" OWNER admin")
		require.NoError(t, err)
		conn.Close(ctx)
	}
	require.NoError(t, pg.Psql(ctx, "direct", bytes.NewReader(dump)))
	require.NoError(t, pg.Psql(ctx, "filtered", bytes.NewReader(out)))
	dumpOf := func(db string) string {
		cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists", "--restrict-key=k",
			"-h", pg.SocketDir, "-p", fmt.Sprint(pg.Port), "-U", "postgres", "-d", db)
		b, err := cmd.Output()
		require.NoError(t, err)
		return string(b)
	}
	require.Equal(t, dumpOf("direct"), dumpOf("filtered"))
}

// hostile edits a real dump as an attacker with write access to the backups would.
type hostile struct {
	name string
	edit func(d string) string
	want string // in the refusal
}

func prepend(s string) func(string) string {
	return func(d string) string { return s + d }
}

// afterPreamble inserts s after the dump's session settings, before its first object.
func afterPreamble(s string) func(string) string {
	return func(d string) string {
		i := strings.Index(d, "SET row_security = off;\n")
		return d[:i] + "SET row_security = off;\n" + s + d[i+len("SET row_security = off;\n"):]
	}
}

func hostileCases() []hostile {
	return []hostile{
		{"shell before the restrict line", prepend("\\! touch /tmp/x\n"), `the psql meta-command \!`},
		{"shell after the preamble", afterPreamble("\\! touch /tmp/x\n"), `the psql meta-command \!`},
		{"shell inside a statement", afterPreamble("SELECT 1 \\! touch /tmp/x\n;\n"), `meta-command \! inside a statement`},
		{"connect to another database", afterPreamble("\\connect postgres\n"), `the psql meta-command \connect`},
		{"second unrestrict", afterPreamble("\\unrestrict abc\n"), `\unrestrict here`},
		{"include a file", afterPreamble("\\i /etc/passwd\n"), `the psql meta-command \i`},
		{"psql variable", afterPreamble("SELECT :'x';\n"), "psql variable reference"},
		{"superuser role", afterPreamble("CREATE ROLE x SUPERUSER;\n"), "a role"},
		{"alter role", afterPreamble("ALTER ROLE flightctl_app SUPERUSER;\n"), "a role"},
		{"role membership", afterPreamble("GRANT admin TO flightctl_app;\n"), "role membership grant"},
		{"drop live database", afterPreamble("DROP DATABASE flightctl WITH (FORCE);\n"), "another database"},
		{"create database", afterPreamble("CREATE DATABASE flightctl;\n"), "another database"},
		{"alter system", afterPreamble("ALTER SYSTEM SET archive_command = 'touch /tmp/x';\n"), "server settings"},
		{"copy to program", afterPreamble("COPY public.devices TO PROGRAM 'touch /tmp/x';\n"), "never to or from a program or a file"},
		{"copy from a file", afterPreamble("COPY public.devices FROM '/etc/passwd';\n"), "never to or from a program or a file"},
		{"read a server file", afterPreamble("SELECT pg_read_file('/etc/passwd');\n"), "only SELECTs"},
		{"lo_import in a function", afterPreamble("CREATE FUNCTION public.f() RETURNS oid LANGUAGE sql AS $$ SELECT lo_import('/etc/shadow') $$;\n"), `"lo_import"`},
		{"lo_export", afterPreamble("SELECT lo_export(1, '/tmp/x');\n"), "only SELECTs"},
		{"set role", afterPreamble("SET ROLE admin;\n"), "change who runs"},
		{"session authorization", afterPreamble("SET SESSION AUTHORIZATION admin;\n"), "change who runs"},
		{"do block", afterPreamble("DO $$ BEGIN PERFORM 1; END $$;\n"), "a DO block"},
		{"C function", afterPreamble("CREATE FUNCTION public.f() RETURNS int LANGUAGE c AS '/tmp/x.so', 'f';\n"), "not LANGUAGE c"},
		{"untrusted extension", afterPreamble("CREATE EXTENSION dblink;\n"), "only the extensions"},
		{"set_config role in a function", afterPreamble("CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$ SELECT set_config('role','admin',false) $$;\n"), `"set_config"`},
		{"create table as", afterPreamble("CREATE TABLE public.x AS SELECT public.f();\n"), "CREATE ... AS runs a query"},
		{"materialized view with data", afterPreamble("CREATE MATERIALIZED VIEW public.v AS SELECT 1;\n"), "CREATE ... AS runs a query"},
		{"refresh", afterPreamble("REFRESH MATERIALIZED VIEW public.v;\n"), "a REFRESH statement"},
		{"insert", afterPreamble("INSERT INTO public.organizations VALUES ('x');\n"), "a INSERT statement"},
		{"standard_conforming_strings off", afterPreamble("SET standard_conforming_strings = off;\n"), "always writes standard_conforming_strings = on"},
		{"pg_dump --create", func(d string) string {
			return strings.Replace(d, "SET row_security = off;\n", "SET row_security = off;\n\nDROP DATABASE IF EXISTS flightctl;\nCREATE DATABASE flightctl WITH TEMPLATE = template0;\n\\connect flightctl\n", 1)
		}, "another database"},
		{"copy data ending early", func(d string) string {
			return strings.Replace(d, "\\.\n", "\\.\r\n\\! touch /tmp/x\n", 1)
		}, "carriage return"},
		{"copy end marker with text", func(d string) string {
			return strings.Replace(d, "\\.\n", "\\.x\n", 1)
		}, `"\\.x"`},
		{"trigger before data", func(d string) string {
			i := strings.Index(d, "COPY public.")
			return d[:i] + "CREATE TRIGGER t AFTER INSERT ON public.devices FOR EACH ROW EXECUTE FUNCTION public.f();\n" + d[i:]
		}, "after a trigger"},
		{"statement after the event trigger", func(d string) string {
			i := strings.Index(d, "-- PostgreSQL database dump complete")
			return d[:i] + "CREATE TABLE public.x (a int);\n" + d[i:]
		}, "after an event trigger"},
		{"statement after the completion line", func(d string) string {
			return d + "CREATE TABLE public.x (a int);\n"
		}, "after pg_dump's completion line"},
		{"truncated", func(d string) string { return d[:len(d)/2] }, "truncated"},
		{"no completion line", func(d string) string {
			return d[:strings.Index(d, "-- PostgreSQL database dump complete")]
		}, "without pg_dump's completion line"},
		{"empty", func(string) string { return "" }, "empty or holds only comments"},
		{"comments only", func(string) string { return "--\n-- PostgreSQL database dump\n--\n\n" }, "empty or holds only comments"},
	}
}

func TestHostileDumpsRefused(t *testing.T) {
	dump, _ := flightctlDump(t)
	for _, c := range hostileCases() {
		t.Run(c.name, func(t *testing.T) {
			bad := c.edit(string(dump))
			var refusedAt error
			f := pgdump.NewFilter(strings.NewReader(bad), pgdump.FilterOptions{OnRefusal: func(err error) { refusedAt = err }})
			out, err := io.ReadAll(f)
			require.Error(t, err)
			var ref *pgdump.Refusal
			require.ErrorAs(t, err, &ref)
			require.Contains(t, err.Error(), c.want)
			require.Equal(t, err, refusedAt)
			require.Positive(t, ref.Line)
			require.NotContains(t, string(out), "touch /tmp/x", "what was refused never reaches psql")
			require.False(t, f.Complete())
		})
	}
}

func TestNormalize(t *testing.T) {
	require.Equal(t, `CREATE TABLE PUBLIC."Odd;name" (A TEXT DEFAULT 'x;--y');`,
		pgdump.Normalize([]byte("create  table public.\"Odd;name\" -- c;\n (a text /* ; */ default 'x;--y');")))
	require.Equal(t, "SELECT $f$ a; b $f$;", pgdump.Normalize([]byte("select $f$ a; b $f$;")))
}

// The tests' smallest dump is one a restore accepts.
func TestTestDumpPasses(t *testing.T) {
	out, f, err := filterAll([]byte(archivetest.Dump))
	require.NoError(t, err)
	require.True(t, f.Complete())
	require.False(t, f.Restricted, "no \\restrict line of its own: psql's restricted mode is not forced")
	require.Equal(t, archivetest.Dump, string(out))
	rows, _ := f.Rows()
	require.Equal(t, map[string]int64{"public.t": 1}, rows)
}

// Restricted mode is the second fence: were a meta-command to get past the checker, the
// psql that loads the filtered dump refuses to run it.
func TestFilteredDumpRunsInRestrictedMode(t *testing.T) {
	dump, pg := flightctlDump(t)
	out, _, err := filterAll(dump)
	require.NoError(t, err)
	marker := filepath.Join(t.TempDir(), "pwned")
	i := bytes.Index(out, []byte(pgdump.CompletionLine))
	smuggled := append(append(append([]byte{}, out[:i]...), []byte("\\! touch "+marker+"\n")...), out[i:]...)
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE DATABASE restricted OWNER admin")
	require.NoError(t, err)
	conn.Close(ctx)
	err = pg.Psql(ctx, "restricted", bytes.NewReader(smuggled))
	require.Error(t, err)
	require.Contains(t, err.Error(), "restricted")
	require.NoFileExists(t, marker)
}
