package devprep

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

var timestampRE = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00`)

// rowsWithoutTimes is what device preparation changes, with every time (when the test
// seeded a row) replaced by T; a NULL stays empty.
func (e *env) rowsWithoutTimes(t *testing.T) string {
	t.Helper()
	var fp string
	require.NoError(t, e.admin.QueryRow(context.Background(), `SELECT
		coalesce((SELECT string_agg(d::text, '|' ORDER BY org_id, name) FROM devices d), '') || '#' ||
		coalesce((SELECT string_agg(t::text, '|' ORDER BY org_id, name) FROM device_timestamps t), '') || '#' ||
		coalesce((SELECT string_agg(r::text, '|' ORDER BY org_id, name) FROM enrollment_requests r), '') || '#' ||
		coalesce((SELECT string_agg(concat_ws(',', org_id, name, reason, source_component, actor, type, message, details,
			involved_object_name, involved_object_kind, annotations), '|' ORDER BY org_id, name) FROM events v), '')`).Scan(&fp))
	return timestampRE.ReplaceAllString(fp, "T")
}

// finishLikeRun runs Run on b with the database part's counts as Prepared (restore ID
// r-1) and requires it to end where Run alone ended on a (resA): same rows, keys, counts.
func finishLikeRun(t *testing.T, a, b *env, resA *Result, counts *DatabaseCounts) *Result {
	t.Helper()
	optsB := b.options(t)
	optsB.RestoreID = "r-1"
	optsB.Prepared = counts
	resB, err := Run(context.Background(), optsB)
	require.NoError(t, err)
	ra, rb := a.rowsWithoutTimes(t), b.rowsWithoutTimes(t)
	require.True(t, ra == rb, "rows differ:\n%s\n%s", ra, rb)
	require.Equal(t, a.kvKeys(t), b.kvKeys(t))
	require.Equal(t, resA.Counts, resB.Counts)
	return resB
}

// The database part run ahead as a restore runs it on its temporary database, beside the
// index builds (DatabaseUpdateScript, then EventScript with its device count), then Run
// with Prepared, ends where Run alone ends: same rows, same event, same keys, same
// counts; the update touches only PreparedTables.
func TestDatabaseUpdateThenEventEqualsRun(t *testing.T) {
	ctx := context.Background()
	a, b := newEnv(t), newEnv(t)
	workedExample(t, a)
	workedExample(t, b)
	for _, e := range []*env{a, b} {
		require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	}
	optsA := a.options(t)
	optsA.RestoreID = "r-1"
	resA, err := Run(ctx, optsA)
	require.NoError(t, err)

	eventsBefore := func() int {
		var n int
		require.NoError(t, b.admin.QueryRow(ctx, "SELECT count(*) FROM events").Scan(&n))
		return n
	}
	n0 := eventsBefore()
	var out string
	require.NoError(t, b.admin.QueryRow(ctx, DatabaseUpdateScript()).Scan(&out))
	counts, err := ParseDatabaseCounts(out)
	require.NoError(t, err)
	require.Equal(t, &DatabaseCounts{DevicesUpdated: 6, TimestampsCleared: 6, EnrollmentRequestsUpdated: 4, JSONRepaired: 2}, counts)
	require.Equal(t, n0, eventsBefore(), "the update leaves events alone")
	var created int
	require.NoError(t, b.admin.QueryRow(ctx, EventScript("r-1", counts.DevicesUpdated)).Scan(&created))
	require.Equal(t, 1, created)
	counts.EventCreated = true
	require.Equal(t, map[string]string{"v1/stale/cache": "x"}, b.kvKeys(t), "the scripts leave the KV store alone")
	resB := finishLikeRun(t, a, b, resA, counts)
	require.NotContains(t, b.kvKeys(t), "v1/stale/cache", "flushed")
	require.Equal(t, resA.EventName, resB.EventName)
	require.Equal(t, resA.EventCreated, resB.EventCreated)
	require.True(t, resB.KVFlushed)
	require.True(t, resB.Changed)

	// The scripts run again change nothing and record no second event.
	before := b.rowsWithoutTimes(t)
	require.NoError(t, b.admin.QueryRow(ctx, EventScript("r-1", 0)).Scan(&created))
	require.Zero(t, created)
	require.NoError(t, b.admin.QueryRow(ctx, DatabaseUpdateScript()).Scan(&out))
	require.Equal(t, "0|0|0|0|0", out)
	require.Equal(t, before, b.rowsWithoutTimes(t))
}

// scriptOutput runs sql as psql -A -t would print it: every row's one column, one per
// line.
func scriptOutput(t *testing.T, e *env, sql string) string {
	t.Helper()
	results, err := e.admin.PgConn().Exec(context.Background(), sql).ReadAll()
	require.NoError(t, err)
	var lines []string
	for _, r := range results {
		require.NoError(t, r.Err)
		for _, row := range r.Rows {
			lines = append(lines, string(row[0]))
		}
	}
	return strings.Join(lines, "\n")
}

// prepareAsRestore runs the database part as a restore does on its temporary database:
// DatabaseUpdateScript, EventScript with its device count, then PreparedReadsScript, and
// returns what ParsePrepared reads of the update's line and the reads, with the event's
// outcome.
func prepareAsRestore(t *testing.T, e *env, restoreID string) *DatabaseCounts {
	t.Helper()
	update := scriptOutput(t, e, DatabaseUpdateScript())
	first, err := ParseDatabaseCounts(update)
	require.NoError(t, err)
	created := scriptOutput(t, e, EventScript(restoreID, first.DevicesUpdated))
	counts, err := ParsePrepared(update + "\n" + scriptOutput(t, e, PreparedReadsScript()))
	require.NoError(t, err)
	counts.EventCreated = created == "1"
	return counts
}

// sqlLog records every statement a connection sends.
type sqlLog struct {
	mu  sync.Mutex
	sql []string
}

func (l *sqlLog) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sql = append(l.sql, d.SQL)
	return ctx
}

func (l *sqlLog) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// The database part and what the KV part needs, read as a restore reads it
// (PreparedReadsScript), then Run with what was printed, ends where Run alone ends, and
// Run then reads no row of devices or enrollment requests: the downtime of a restore holds
// only the KV part.
func TestPreparedReadsThenRunReadsNoRow(t *testing.T) {
	ctx := context.Background()
	a, b := newEnv(t), newEnv(t)
	for _, e := range []*env{a, b} {
		workedExample(t, e)
		// Names that a line-based listing would mangle.
		e.addDevice(t, row{org: orgA, name: "odd \"quoted\" \\ name", rv: i64(1), status: js(typicalStatus), lastSeen: true})
		e.addDevice(t, row{org: orgB, name: "two\nlines", rv: i64(1), status: js(typicalStatus), lastSeen: true})
		require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	}
	optsA := a.options(t)
	optsA.RestoreID = "r-1"
	resA, err := Run(ctx, optsA)
	require.NoError(t, err)

	counts := prepareAsRestore(t, b, "r-1")
	require.True(t, counts.EventCreated)
	require.NotNil(t, counts.After)
	require.Equal(t, 9, counts.After.Keys())
	require.Equal(t, map[string]string{"v1/stale/cache": "x"}, b.kvKeys(t), "the scripts leave the KV store alone")

	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s user=flightctl_app sslmode=disable", b.pg.Host, b.pg.Port, b.dbName))
	require.NoError(t, err)
	cfg.Password = appPassword
	log := &sqlLog{}
	cfg.Tracer = log
	db, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer db.Close(ctx)
	optsB := b.options(t)
	optsB.DB, optsB.RestoreID, optsB.Prepared = db, "r-1", counts
	resB, err := Run(ctx, optsB)
	require.NoError(t, err)

	ra, rb := a.rowsWithoutTimes(t), b.rowsWithoutTimes(t)
	require.True(t, ra == rb, "rows differ:\n%s\n%s", ra, rb)
	require.Equal(t, a.kvKeys(t), b.kvKeys(t))
	require.Contains(t, b.kvKeys(t), KeyFor(orgA, "odd \"quoted\" \\ name"))
	require.Contains(t, b.kvKeys(t), KeyFor(orgBLower, "two\nlines"))
	require.Equal(t, resA.Counts, resB.Counts)
	require.Equal(t, resA.EventName, resB.EventName)
	require.True(t, resB.KVFlushed)
	for _, q := range log.sql {
		require.NotRegexp(t, `(?i)\bfrom\s+(devices|enrollment_requests|device_timestamps)\b`, q, "Run read rows in the downtime")
	}

	// A key missing after the write is still found: the check reads the keys back.
	require.NoError(t, b.redis.Del(ctx, KeyFor(orgA, "dev-typical")).Err())
	optsB.FlushKV = false
	_, err = checkKeys(ctx, db, &optsB)
	var missing *MissingKeysError
	require.ErrorAs(t, err, &missing)
	require.Equal(t, []string{orgA + "/dev-typical"}, missing.Devices)
}
