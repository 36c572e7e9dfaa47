package pgload_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/pgload"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// psqlCommand reaches the test cluster as its superuser over the unix socket, the way
// restore.PsqlDatabase's Command does for a real host.
func psqlCommand(pg *testbed.Postgres) func(args, env []string) runner.Cmd {
	return func(args, env []string) runner.Cmd {
		base := []string{"-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres"}
		return runner.Cmd{Name: filepath.Join(pg.BinDir, "psql"), Args: append(base, args...), Env: env}
	}
}

func exec1(t testing.TB, pg *testbed.Postgres, db, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	c, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql, args...)
	require.NoError(t, err, "%s", sql)
}

func createDB(t testing.TB, pg *testbed.Postgres, name string) {
	t.Helper()
	exec1(t, pg, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0 OWNER admin")
}

// dumpDB is `pg_dump --clean --if-exists` of db (extra arguments added), as a backup writes it.
func dumpDB(t testing.TB, pg *testbed.Postgres, db string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"--clean", "--if-exists", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "-d", db}, extra...)
	cmd := exec.Command(filepath.Join(pg.BinDir, "pg_dump"), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "pg_dump: %s", stderr.String())
	return out
}

// schemaOf is `pg_dump --schema-only` of db with its random \restrict key removed.
func schemaOf(t testing.TB, pg *testbed.Postgres, db string) string {
	t.Helper()
	out, err := pg.SchemaDump(context.Background(), db)
	require.NoError(t, err)
	return out
}

// loadPsql is the reference: `psql -v ON_ERROR_STOP=1 -f` of the dump.
func loadPsql(t testing.TB, pg *testbed.Postgres, db string, dump []byte) error {
	t.Helper()
	f := filepath.Join(t.TempDir(), "dump.sql")
	require.NoError(t, os.WriteFile(f, dump, 0o644))
	return loadPsqlFile(pg, db, f)
}

// loadPsqlFile is `psql -v ON_ERROR_STOP=1 -f file`.
func loadPsqlFile(pg *testbed.Postgres, db, f string) error {
	cmd := exec.Command(filepath.Join(pg.BinDir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", "postgres", "-d", db, "-f", f)
	cmd.Env = append(os.Environ(), "PGOPTIONS=-c client_min_messages=warning")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	return nil
}

// loadParallel loads the dump through the checked stream and the parallel loader.
func loadParallel(t testing.TB, pg *testbed.Postgres, db string, dump []byte, opts pgload.Options) (pgload.Stats, error) {
	t.Helper()
	opts.Database = db
	if opts.Command == nil {
		opts.Command = psqlCommand(pg)
	}
	opts.Runner = runner.Exec{}
	opts.Restrict = true
	return pgload.Load(context.Background(), pgdump.NewChecked(bytes.NewReader(dump)), opts)
}

// content is what a load must reproduce beyond the schema: every table's rows (count and
// a digest of the rows in order) and every sequence's value.
func content(t testing.TB, pg *testbed.Postgres, db string) map[string]string {
	t.Helper()
	out, err := pg.Contents(context.Background(), db, nil)
	require.NoError(t, err)
	return out
}

// requireSame checks that db b holds what db a holds: the same schema dump (owners,
// grants, comments, extensions included), the same rows and sequence values.
func requireSame(t testing.TB, pg *testbed.Postgres, a, b string) map[string]string {
	t.Helper()
	sa, sb := schemaOf(t, pg, a), schemaOf(t, pg, b)
	require.NotEmpty(t, sa)
	require.Equal(t, sa, sb, "pg_dump --schema-only differs")
	ca, cb := content(t, pg, a), content(t, pg, b)
	require.Equal(t, ca, cb, "rows or sequence values differ")
	return ca
}

type column struct {
	name, dataType, udt, udtSchema, def string
	nullable                            bool
	maxLen                              *int
}

// fillEveryTable inserts rows into every table of the public schema of db, in the order
// the foreign keys need, with values of every column's type (text holding tabs,
// backslashes, semicolons, "\." and newlines); foreign keys take the values of rows of the
// tables they reference. Rows that a trigger already made are skipped (ON CONFLICT).
func fillEveryTable(t testing.TB, pg *testbed.Postgres, db string, n int) {
	t.Helper()
	ctx := context.Background()
	c, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer c.Close(ctx)
	tables := map[string][]column{}
	rows, err := c.Query(ctx, `SELECT table_name, column_name, data_type, udt_name, udt_schema, coalesce(column_default, ''), is_nullable = 'YES', character_maximum_length
		FROM information_schema.columns WHERE table_schema = 'public' AND is_generated = 'NEVER' AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')
		ORDER BY table_name, ordinal_position`)
	require.NoError(t, err)
	for rows.Next() {
		var tn string
		var col column
		require.NoError(t, rows.Scan(&tn, &col.name, &col.dataType, &col.udt, &col.udtSchema, &col.def, &col.nullable, &col.maxLen))
		tables[tn] = append(tables[tn], col)
	}
	require.NoError(t, rows.Err())
	type fk struct {
		cols, refCols []string
		ref           string
	}
	fks := map[string][]fk{}
	rows, err = c.Query(ctx, `SELECT cl.relname, rf.relname,
		  (SELECT array_agg(a.attname ORDER BY k.i) FROM unnest(co.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.n),
		  (SELECT array_agg(a.attname ORDER BY k.i) FROM unnest(co.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.n)
		FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid JOIN pg_class rf ON rf.oid = co.confrelid
		JOIN pg_namespace ns ON ns.oid = cl.relnamespace WHERE co.contype = 'f' AND ns.nspname = 'public'`)
	require.NoError(t, err)
	for rows.Next() {
		var tn string
		var f fk
		require.NoError(t, rows.Scan(&tn, &f.ref, &f.cols, &f.refCols))
		fks[tn] = append(fks[tn], f)
	}
	require.NoError(t, rows.Err())
	names := make([]string, 0, len(tables))
	for tn := range tables {
		names = append(names, tn)
	}
	sort.Strings(names)
	done := map[string]bool{}
	for len(done) < len(names) {
		progress := false
		for _, tn := range names {
			if done[tn] {
				continue
			}
			ready := true
			for _, f := range fks[tn] {
				if f.ref != tn && !done[f.ref] {
					ready = false
				}
			}
			if !ready {
				continue
			}
			progress = true
			done[tn] = true
			// Wider foreign keys first: their columns win over a narrower one's.
			list := append([]fk(nil), fks[tn]...)
			sort.SliceStable(list, func(i, j int) bool { return len(list[i].cols) > len(list[j].cols) })
			set := map[string]string{}
			var joins []string
			for k, f := range list {
				if f.ref == tn {
					continue
				}
				alias := fmt.Sprintf("f%d", k)
				var refN int
				require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM public."+pgx.Identifier{f.ref}.Sanitize()).Scan(&refN))
				require.Positive(t, refN, "table %s referenced by %s is empty", f.ref, tn)
				cols := make([]string, len(f.refCols))
				for i, rc := range f.refCols {
					cols[i] = pgx.Identifier{rc}.Sanitize()
				}
				joins = append(joins, fmt.Sprintf("JOIN (SELECT %s, row_number() OVER (ORDER BY %s) AS rn FROM public.%s) %s ON %s.rn = ((i - 1) %% %d) + 1",
					strings.Join(cols, ", "), strings.Join(cols, ", "), pgx.Identifier{f.ref}.Sanitize(), alias, alias, refN))
				for i, col := range f.cols {
					if _, ok := set[col]; !ok {
						set[col] = alias + "." + pgx.Identifier{f.refCols[i]}.Sanitize()
					}
				}
			}
			var cols, exprs []string
			for _, col := range tables[tn] {
				if strings.HasPrefix(col.def, "nextval(") {
					continue
				}
				e, ok := set[col.name]
				if !ok {
					e = valueOf(tn, col)
				}
				if e == "" {
					continue
				}
				cols = append(cols, pgx.Identifier{col.name}.Sanitize())
				exprs = append(exprs, e)
			}
			sql := fmt.Sprintf("INSERT INTO public.%s (%s) SELECT %s FROM generate_series(1, %d) i %s ON CONFLICT DO NOTHING",
				pgx.Identifier{tn}.Sanitize(), strings.Join(cols, ", "), strings.Join(exprs, ", "), n, strings.Join(joins, " "))
			_, err := c.Exec(ctx, sql)
			require.NoError(t, err, "%s", sql)
		}
		require.True(t, progress, "foreign keys form a cycle")
	}
	for _, tn := range names {
		var got int
		require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM public."+pgx.Identifier{tn}.Sanitize()).Scan(&got))
		require.Positive(t, got, "table %s has no rows", tn)
	}
}

// awkward is text that a loader must carry as it is.
const awkward = `E' tab\there back\\slash semi;colon $$dollar$$ \\. nl\nend'`

func valueOf(table string, col column) string {
	switch col.dataType {
	case "uuid":
		return fmt.Sprintf("md5('%s.%s' || i)::uuid", table, col.name)
	case "text", "character varying", "character":
		e := "i::text || " + awkward
		if col.maxLen != nil {
			e = fmt.Sprintf("left(%s, %d)", e, *col.maxLen)
		}
		return e
	case "jsonb", "json":
		return fmt.Sprintf("jsonb_build_object('i', i, 's', %s, 'site', 'a', 'lifecycle', jsonb_build_object('status', 'Enrolled'))::%s", awkward, col.dataType)
	case "integer", "bigint", "smallint", "numeric", "real", "double precision":
		return "i"
	case "boolean":
		return "i % 2 = 0"
	case "timestamp with time zone", "timestamp without time zone", "date":
		return fmt.Sprintf("(timestamp '2026-01-01 00:00:00' + i * interval '1 minute')::%s", col.dataType)
	case "bytea":
		return "decode(md5(i::text) || '5c2e0a09', 'hex')"
	case "ARRAY":
		if col.udt == "_text" || col.udt == "_varchar" {
			return "ARRAY[i::text, " + awkward + "]"
		}
		return "'{}'"
	case "USER-DEFINED":
		return fmt.Sprintf("(enum_range(NULL::%s))[1]", pgx.Identifier{col.udtSchema, col.udt}.Sanitize())
	}
	return ""
}
