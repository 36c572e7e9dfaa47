package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5"
)

var restrictKeyLine = regexp.MustCompile(`(?m)^\\(un)?restrict [A-Za-z0-9]+\n`)

// SchemaDump is `pg_dump --schema-only` of db (owners, grants, comments, extensions),
// without the random \restrict key pg_dump writes into every dump, so that two databases
// with the same schema give the same text.
func (p *Postgres) SchemaDump(ctx context.Context, db string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(p.BinDir, "pg_dump"), "--schema-only", "-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-d", db)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pg_dump --schema-only %s: %w: %s", db, err, stderr.String())
	}
	return restrictKeyLine.ReplaceAllString(string(out), ""), nil
}

// Contents is what a load must reproduce beyond the schema, keyed by schema.table: every
// table's row count and a digest of its rows in order, and every sequence's value. where
// holds, per schema.table, a condition on its rows (alias x) for rows that differ by
// design (a restore's own event).
func (p *Postgres) Contents(ctx context.Context, db string, where map[string]string) (map[string]string, error) {
	c, err := p.SuperuserConn(ctx, db)
	if err != nil {
		return nil, err
	}
	defer c.Close(ctx)
	rows, err := c.Query(ctx, `SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r','S') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2`)
	if err != nil {
		return nil, err
	}
	type rel struct{ schema, name, kind string }
	var rels []rel
	for rows.Next() {
		var r rel
		if err := rows.Scan(&r.schema, &r.name, &r.kind); err != nil {
			return nil, err
		}
		rels = append(rels, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range rels {
		key := r.schema + "." + r.name
		id := pgx.Identifier{r.schema, r.name}.Sanitize()
		q := "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM " + id + " x"
		if r.kind == "S" {
			q = "SELECT last_value::text || ' ' || is_called::text FROM " + id
		} else if w := where[key]; w != "" {
			q += " WHERE " + w
		}
		var v string
		if err := c.QueryRow(ctx, q).Scan(&v); err != nil {
			return nil, fmt.Errorf("read %s of %s: %w", key, db, err)
		}
		out[key] = v
	}
	return out, nil
}
