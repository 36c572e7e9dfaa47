package devprep

import (
	"context"
	"regexp"
	"testing"

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

// The database part run ahead as DatabaseScript (as a restore does on its temporary
// database), then Run with Prepared, ends where Run alone ends: same rows, same event,
// same keys, same counts.
func TestDatabaseScriptThenPreparedEqualsRun(t *testing.T) {
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

	var out string
	require.NoError(t, b.admin.QueryRow(ctx, DatabaseScript("r-1")).Scan(&out))
	counts, err := ParseDatabaseCounts(out)
	require.NoError(t, err)
	require.Equal(t, &DatabaseCounts{DevicesUpdated: 6, TimestampsCleared: 6, EnrollmentRequestsUpdated: 4, EventCreated: true, JSONRepaired: 2}, counts)
	require.Equal(t, map[string]string{"v1/stale/cache": "x"}, b.kvKeys(t), "the script leaves the KV store alone")
	optsB := b.options(t)
	optsB.RestoreID = "r-1"
	optsB.Prepared = counts
	resB, err := Run(ctx, optsB)
	require.NoError(t, err)

	ra, rb := a.rowsWithoutTimes(t), b.rowsWithoutTimes(t)
	require.True(t, ra == rb, "rows differ:\n%s\n%s", ra, rb)
	require.Equal(t, a.kvKeys(t), b.kvKeys(t))
	require.NotContains(t, b.kvKeys(t), "v1/stale/cache", "flushed")
	require.Equal(t, resA.Counts, resB.Counts)
	require.Equal(t, resA.EventName, resB.EventName)
	require.True(t, resB.KVFlushed)
	require.True(t, resB.Changed)

	// The script run again changes nothing and records no second event.
	before := b.rowsWithoutTimes(t)
	require.NoError(t, b.admin.QueryRow(ctx, DatabaseScript("r-1")).Scan(&out))
	require.Equal(t, "0|0|0|0|0", out)
	require.Equal(t, before, b.rowsWithoutTimes(t))
}
