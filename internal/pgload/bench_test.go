package pgload_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/pgload"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// BenchmarkLoadVsPsql loads the same dump (the flightctl schema, FLIGHTCTL_DR_BENCH_LOAD_DEVICES
// devices, default 100,000, and about FLIGHTCTL_DR_BENCH_LOAD_MB MiB of events, default 64)
// with `psql -v ON_ERROR_STOP=1 -f` and with the loader at 2, 3 and 4 sessions
// (FLIGHTCTL_DR_BENCH_LOAD_SESSIONS to choose: comma-separated session counts, each
// optionally with "/KiB", the size of the COPY pieces, and "/W", the sessions'
// max_parallel_maintenance_workers: "2/1024/0"), side by side in every
// iteration, each into an empty database. It reports each one's seconds, its ratio to
// psql and its CPU-seconds (this process, the psql processes and the server's client
// backends), and logs the wall time and CPU-seconds of each phase of each load.
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
	type variant struct {
		name        string
		n, chunkKiB int
		workers     string // the sessions' max_parallel_maintenance_workers ("": the server's)
	}
	variants := []variant{{"2", 2, 0, ""}, {"3", 3, 0, ""}, {"4", 4, 0, ""}}
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_LOAD_SESSIONS"); v != "" {
		variants = nil
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			ns, ck, _ := strings.Cut(f, "/")
			ck, w, _ := strings.Cut(ck, "/")
			n, err := strconv.Atoi(ns)
			require.NoError(b, err)
			k := 0
			if ck != "" {
				k, err = strconv.Atoi(ck)
				require.NoError(b, err)
			}
			variants = append(variants, variant{strings.ReplaceAll(f, "/", "_"), n, k, w})
		}
	}
	file := filepath.Join(b.TempDir(), "dump.sql")
	require.NoError(b, os.WriteFile(file, dump, 0o644))
	phases := newDumpPhases(dump)
	totals := make([]time.Duration, len(variants))
	cpus := make([]float64, len(variants))
	var psqlTotal time.Duration
	var psqlCPU float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		db := fmt.Sprintf("psql_%d", i)
		createDB(b, pg, db)
		pos := &psqlPos{self: os.Getpid(), file: file}
		smp := newCPUSampler(pg.PostmasterPID(), func() string { return phases.at(pos.pos()) })
		smp.start()
		start := time.Now()
		require.NoError(b, loadPsqlFile(pg, db, file))
		psqlTotal += time.Since(start)
		smp.finish()
		fmt.Fprintln(os.Stderr, smp.table("psql -f, CPU-seconds per phase"))
		psqlCPU += sumCPU(smp)
		for k, v := range variants {
			n := v.n
			db := fmt.Sprintf("par%s_%d", v.name, i)
			createDB(b, pg, db)
			var mu sync.Mutex
			cur, post := "serial", false
			smp := newCPUSampler(pg.PostmasterPID(), func() string { mu.Lock(); defer mu.Unlock(); return cur })
			onPhase := func(p string) {
				mu.Lock()
				defer mu.Unlock()
				switch {
				case p == "serial" && post:
					p = "serial-post"
				case p != "serial" && p != "data":
					post = true
				}
				cur = p
			}
			smp.start()
			start := time.Now()
			opts := pgload.Options{Connections: n, Chunk: v.chunkKiB << 10, Phase: onPhase}
			if v.workers != "" {
				opts.Command = withPGOption(psqlCommand(pg), "max_parallel_maintenance_workers="+v.workers)
			}
			st, err := loadParallel(b, pg, db, dump, opts)
			require.NoError(b, err)
			totals[k] += time.Since(start)
			smp.finish()
			fmt.Fprintln(os.Stderr, smp.table(fmt.Sprintf("loader %s (sessions[/KiB pieces]), CPU-seconds per phase (%d data pieces)", v.name, st.Data)))
			cpus[k] += sumCPU(smp)
		}
	}
	nf := float64(b.N)
	b.ReportMetric(psqlTotal.Seconds()/nf, "psql-s")
	b.ReportMetric(psqlCPU/nf, "psql-cpu-s")
	for k, v := range variants {
		b.ReportMetric(totals[k].Seconds()/nf, fmt.Sprintf("load%s-s", v.name))
		b.ReportMetric(totals[k].Seconds()/psqlTotal.Seconds(), fmt.Sprintf("load%s/psql", v.name))
		b.ReportMetric(cpus[k]/nf, fmt.Sprintf("load%s-cpu-s", v.name))
	}
	b.ReportMetric(float64(len(dump))/(1<<20), "dump-MiB")
}

// sumCPU is the CPU-seconds of this process, the psql processes and the server's client
// backends (background processes left out).
func sumCPU(c *cpuSampler) float64 {
	t := c.totals()
	return t["go"] + t["psql"] + t["backend"]
}

// withPGOption adds a server setting to the PGOPTIONS of every command.
func withPGOption(cmd func(args, env []string) runner.Cmd, opt string) func(args, env []string) runner.Cmd {
	return func(args, env []string) runner.Cmd {
		out := make([]string, 0, len(env))
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, "PGOPTIONS="); ok {
				e = "PGOPTIONS=" + v + " -c " + opt
			}
			out = append(out, e)
		}
		return cmd(args, out)
	}
}
