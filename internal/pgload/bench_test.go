package pgload_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/pgload"
	"flightctl.dr/internal/testbed"
)

// BenchmarkLoadVsPsql loads the same dump (the flightctl schema, FLIGHTCTL_DR_BENCH_LOAD_DEVICES
// devices, default 100,000, and about FLIGHTCTL_DR_BENCH_LOAD_MB MiB of events, default 64)
// with `psql -v ON_ERROR_STOP=1 -f` and with the loader at 2, 3 and 4 sessions, side by
// side in every iteration, each into an empty database. It reports each one's seconds and
// its ratio to psql.
func BenchmarkLoadVsPsql(b *testing.B) {
	ctx := context.Background()
	mb, devices := 64, 100000
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_LOAD_MB"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		mb = n
	}
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_LOAD_DEVICES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		devices = n
	}
	pg := testbed.PostgresForTest(b)
	require.NoError(b, pg.CreateFlightctlDB(ctx, "src", testbed.FlightctlPasswords{}))
	exec1(b, pg, "src", fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
		SELECT '%s', 'dev-' || i, '{"site":"a"}', 1, 1, now(), now(), '{}',
		       jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'), 'pad', md5(i::text))
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices))
	exec1(b, pg, "src", fmt.Sprintf(`INSERT INTO events (org_id, name, created_at, updated_at, reason, type, message, involved_object_name, involved_object_kind)
		SELECT '%s', 'ev-' || i, now(), now(), 'ResourceUpdated', 'Normal',
		       (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j), 'dev-' || (i %% 1000), 'Device'
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, mb*1024))
	dump := dumpDB(b, pg, "src")
	b.Logf("dump %.0f MiB", float64(len(dump))/(1<<20))
	sessions := []int{2, 3, 4}
	totals := make([]time.Duration, len(sessions))
	var psqlTotal time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		db := fmt.Sprintf("psql_%d", i)
		createDB(b, pg, db)
		start := time.Now()
		require.NoError(b, loadPsql(b, pg, db, dump))
		psqlTotal += time.Since(start)
		for k, n := range sessions {
			db := fmt.Sprintf("par%d_%d", n, i)
			createDB(b, pg, db)
			start := time.Now()
			_, err := loadParallel(b, pg, db, dump, pgload.Options{Connections: n})
			require.NoError(b, err)
			totals[k] += time.Since(start)
		}
	}
	nf := float64(b.N)
	b.ReportMetric(psqlTotal.Seconds()/nf, "psql-s")
	for k, n := range sessions {
		b.ReportMetric(totals[k].Seconds()/nf, fmt.Sprintf("load%d-s", n))
		b.ReportMetric(totals[k].Seconds()/psqlTotal.Seconds(), fmt.Sprintf("load%d/psql", n))
	}
	b.ReportMetric(float64(len(dump))/(1<<20), "dump-MiB")
}
