package restore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

// BenchmarkRestoreVsPsqlLoad compares a whole restore (checksum and metadata, load and verify the dump
// into a temporary database, stop units, swap, files, device preparation, start, finalise) with
// `psql -f` of the same dump into an empty database, on a database of about
// FLIGHTCTL_DR_BENCH_RESTORE_MB MiB of SQL (default 64) with FLIGHTCTL_DR_BENCH_RESTORE_DEVICES
// devices (default 100,000). bench/restore/run.sh runs it at 1 GiB. Each iteration runs
// psql -f, archive.Verify, a whole restore with the default number of load sessions, and,
// with FLIGHTCTL_DR_BENCH_RESTORE_SERIAL=1, a whole restore with db_load_connections 1 (the
// serial path), side by side. downtime-s is from the units being stopped to the last one
// started again; down-*-s are its parts (stop, swap, files with volume and labels, device
// preparation, start) for the default restore. loader-alone-s is the restore's load step
// without the archive around it (restore.LoadDump of the plain dump file: the dump checker
// and the loader over the same sessions, no device preparation), so that restore-s against
// it and psql-load-s shows what the verifying load pass adds. *-go-cpu-s, *-psql-cpu-s and
// *-backend-cpu-s are the CPU-seconds of psql -f, the loader alone and the whole restore in
// this process, in its psql processes and in the server's backends (those that ended within
// the part: autovacuum workers count where they end; FLIGHTCTL_DR_BENCH_AUTOVACUUM=off turns
// autovacuum off). Each part runs in a pprof label phase=loader-alone or phase=restore, so
// that `go tool pprof -tagfocus=phase=restore` shows one part of a -cpuprofile.
func BenchmarkRestoreVsPsqlLoad(b *testing.B) {
	ctx := context.Background()
	mb := 64
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_RESTORE_MB"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		mb = n
	}
	devices := 100000
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_RESTORE_DEVICES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		devices = n
	}
	serialToo := os.Getenv("FLIGHTCTL_DR_BENCH_RESTORE_SERIAL") == "1"
	testbed.Need(b, "psql", "/usr/lib/postgresql/15/bin/pg_dump")
	pg := testbed.PostgresForTest(b)
	if os.Getenv("FLIGHTCTL_DR_BENCH_AUTOVACUUM") == "off" {
		// No autovacuum worker on the freshly loaded tables: each part's CPU is then its own.
		c, err := pg.SuperuserConn(ctx, "postgres")
		require.NoError(b, err)
		_, err = c.Exec(ctx, "ALTER SYSTEM SET autovacuum = off")
		require.NoError(b, err)
		_, err = c.Exec(ctx, "SELECT pg_reload_conf()")
		require.NoError(b, err)
		c.Close(ctx)
	}
	rd := testbed.RedisForTest(b)
	sd := testbed.SystemdForTest(b)
	require.NoError(b, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	conn, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(b, err)
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
		SELECT '%s', 'dev-' || i, '{"site":"a"}', 1, 1, now(), now(), '{}',
		       jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'), 'pad', md5(i::text))
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices))
	require.NoError(b, err)
	// The bulk: events with about 1 KiB of hex text each (compresses about 2:1, like real data).
	rows := mb * 1024
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO events (org_id, name, created_at, updated_at, reason, type, message, involved_object_name, involved_object_kind)
		SELECT '%s', 'ev-' || i, now(), now(), 'ResourceUpdated', 'Normal',
		       (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j),
		       'dev-' || (i %% %d), 'Device'
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices, rows))
	require.NoError(b, err)
	conn.Close(ctx)

	cfg := envConfig{PGPort: pg.Port, PGSocket: pg.SocketDir, RedisHost: rd.Host, RedisPort: rd.Port, RedisPass: rd.Password,
		BusAddress: sd.BusAddress, Root: b.TempDir(), StateDir: filepath.Join(b.TempDir(), "state")}
	e := &env{t: b, cfg: cfg, pg: pg, kv: rd.Client(), sd: sd}
	defer e.kv.Close()
	for _, u := range []string{"flightctl-api.service", "flightctl-worker.service"} {
		require.NoError(b, sd.WriteUnit(u, "[Service]\nExecStart=/bin/sleep infinity\n"))
	}
	require.NoError(b, sd.DaemonReload(ctx))
	_, err = sd.Systemctl(ctx, "start", "flightctl-api.service", "flightctl-worker.service")
	require.NoError(b, err)
	e.writeFiles()

	dir := b.TempDir()
	dumpPath := filepath.Join(dir, "dump.sql")
	dump := exec.Command("/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "admin", "-d", "flightctl", "-f", dumpPath)
	dump.Env = append(os.Environ(), "PGPASSWORD=adminpass")
	out, err := dump.CombinedOutput()
	require.NoError(b, err, "%s", out)
	f, err := os.Open(dumpPath)
	require.NoError(b, err)
	w, err := archive.NewWriter(ctx, archive.WriterOptions{Dir: filepath.Join(dir)})
	require.NoError(b, err)
	now := time.Now()
	require.NoError(b, w.AddDir("db", 0o755, now))
	_, err = w.AddStream(archive.DatabaseDump, 0o600, now, f)
	require.NoError(b, err)
	f.Close()
	_, err = w.AddTree("pki", cfg.pki())
	require.NoError(b, err)
	_, err = w.AddTree("encryption", cfg.encryption())
	require.NoError(b, err)
	require.NoError(b, w.AddDir("config", 0o700, now))
	require.NoError(b, w.AddFile("config/service-config.yaml", 0o640, now, 21, bytesReader("db:\n  name: flightctl\n")))
	ar, err := w.Commit(metadata())
	require.NoError(b, err)
	dumpInfo, _ := os.Stat(dumpPath)
	b.Logf("dump %.0f MiB, archive %.0f MiB", float64(dumpInfo.Size())/(1<<20), float64(ar.Size)/(1<<20))

	var psqlTotal, restoreTotal, verifyTotal, downTotal, serialTotal, serialDown, aloneTotal time.Duration
	// CPU-seconds of each part, which a loaded machine changes far less than its wall time:
	// this process (the Go side), its reaped children (psql), the server's reaped backends.
	var psqlCPU, aloneCPU, restoreCPU cpuSpent
	md, err := archive.ReadMetadata(ctx, ar.Path)
	require.NoError(b, err)
	pm := pg.PostmasterPID()
	benchPostmaster = pm
	// The downtime's parts, from the checkpoints each step passes when it is done: units
	// stopped, database swapped, files, volume and labels, device preparation, units started.
	parts := []struct{ step, metric string }{
		{restore.StepStopUnits, "down-stop-s"}, {restore.StepSwapDatabase, "down-swap-s"},
		{restore.StepRelabel, "down-files-s"}, {restore.StepDevicePrep, "down-devprep-s"}, {restore.StepStartUnits, "down-start-s"},
	}
	partTotal := make([]time.Duration, len(parts))
	restoreOnce := func(conns int, split bool) (time.Duration, time.Duration) {
		var stopAt, startAt time.Time
		at := map[string]time.Time{}
		opts := restore.Options{Logger: benchLogger(), ArchivePath: ar.Path, Target: target(ctx, b, cfg, benchLogger()), StateDir: cfg.StateDir, FlushKV: true, Force: true,
			LoadConnections: conns, Checkpoint: func(name string) error {
				switch name {
				case "stop_units:recorded":
					stopAt = time.Now()
				case restore.StepStartUnits:
					startAt = time.Now()
				}
				at[name] = time.Now()
				return nil
			}}
		start := time.Now()
		res, err := restore.Run(ctx, opts)
		require.NoError(b, err)
		total := time.Since(start)
		require.Contains(b, res.Steps, restore.StepFinalize)
		require.False(b, stopAt.IsZero() || startAt.IsZero(), "units stopped and started")
		if split {
			prev := stopAt
			for i, p := range parts {
				partTotal[i] += at[p.step].Sub(prev)
				prev = at[p.step]
			}
		}
		return total, startAt.Sub(stopAt)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		emptyDB := fmt.Sprintf("bench_psql_%d", i)
		c, err := pg.SuperuserConn(ctx, "postgres")
		require.NoError(b, err)
		_, err = c.Exec(ctx, "CREATE DATABASE "+emptyDB+" TEMPLATE template0 OWNER admin")
		require.NoError(b, err)
		c.Close(ctx)
		b.StartTimer()

		start := time.Now()
		serverIdle(pm)
		c0 := cpuNow(pm)
		psql := exec.Command("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "admin", "-d", emptyDB, "-f", dumpPath)
		psql.Env = append(os.Environ(), "PGPASSWORD=adminpass", "PGOPTIONS=-c client_min_messages=warning")
		out, err := psql.CombinedOutput()
		require.NoError(b, err, "%s", out)
		psqlTotal += time.Since(start)
		psqlCPU.add(c0, cpuAfter(pm))
		// Dropped at once, so that its autovacuum does not run into the next part's time.
		b.StopTimer()
		c, err = pg.SuperuserConn(ctx, "postgres")
		require.NoError(b, err)
		_, err = c.Exec(ctx, "DROP DATABASE "+emptyDB+" WITH (FORCE)")
		require.NoError(b, err)
		c.Close(ctx)
		b.StartTimer()

		// The loader alone on the same dump: the plain file through the dump checker and
		// the loader (restore.LoadDump, the restore's load step without the archive around
		// it), over the restore's default number of sessions, into an empty database.
		b.StopTimer()
		aloneDB := fmt.Sprintf("bench_alone_%d", i)
		adb := target(ctx, b, cfg, nil).Database()
		require.NoError(b, adb.Create(ctx, aloneDB, restore.DatabaseInfo{Owner: "admin"}))
		b.StartTimer()
		df, err := os.Open(dumpPath)
		require.NoError(b, err)
		serverIdle(pm)
		start = time.Now()
		c0 = cpuNow(pm)
		pprof.Do(ctx, pprof.Labels("phase", "loader-alone"), func(ctx context.Context) {
			_, _, err = restore.LoadDump(ctx, adb, aloneDB, df, *md, nil, benchLogger())
		})
		require.NoError(b, err)
		aloneTotal += time.Since(start)
		aloneCPU.add(c0, cpuAfter(pm))
		df.Close()
		b.StopTimer()
		require.NoError(b, adb.Drop(ctx, aloneDB))
		b.StartTimer()

		start = time.Now()
		_, err = archive.Verify(ctx, ar.Path, archive.VerifyOptions{RequireChecksum: true})
		require.NoError(b, err)
		verifyTotal += time.Since(start)

		var total, down time.Duration
		serverIdle(pm)
		c0 = cpuNow(pm)
		pprof.Do(ctx, pprof.Labels("phase", "restore"), func(context.Context) { total, down = restoreOnce(0, true) })
		restoreCPU.add(c0, cpuAfter(pm))
		restoreTotal += total
		downTotal += down
		if serialToo {
			total, down = restoreOnce(1, false)
			serialTotal += total
			serialDown += down
		}

	}
	n := float64(b.N)
	b.ReportMetric(psqlTotal.Seconds()/n, "psql-load-s")
	b.ReportMetric(verifyTotal.Seconds()/n, "verify-s")
	b.ReportMetric(restoreTotal.Seconds()/n, "restore-s")
	b.ReportMetric(restoreTotal.Seconds()/psqlTotal.Seconds(), "restore/psql")
	b.ReportMetric(aloneTotal.Seconds()/n, "loader-alone-s")
	b.ReportMetric(aloneTotal.Seconds()/psqlTotal.Seconds(), "loader-alone/psql")
	for _, c := range []struct {
		name string
		c    cpuSpent
	}{{"psql", psqlCPU}, {"alone", aloneCPU}, {"restore", restoreCPU}} {
		b.ReportMetric(c.c.self/n, c.name+"-go-cpu-s")
		b.ReportMetric(c.c.children/n, c.name+"-psql-cpu-s")
		b.ReportMetric(c.c.server/n, c.name+"-backend-cpu-s")
	}
	b.ReportMetric(downTotal.Seconds()/n, "downtime-s")
	for i, p := range parts {
		b.ReportMetric(partTotal[i].Seconds()/n, p.metric)
	}
	b.ReportMetric(float64(devices), "devices")
	if serialToo {
		b.ReportMetric(serialTotal.Seconds()/n, "serial-restore-s")
		b.ReportMetric(serialTotal.Seconds()/psqlTotal.Seconds(), "serial-restore/psql")
		b.ReportMetric(serialDown.Seconds()/n, "serial-downtime-s")
	}
	b.ReportMetric(float64(dumpInfo.Size())/(1<<20), "dump-MiB")
	b.ReportMetric(float64(ar.Size)/(1<<20), "archive-MiB")
}

// benchLogger shows the steps with their times when FLIGHTCTL_DR_BENCH_LOG=1, each with
// the CPU-seconds spent so far (cpu_go: this process, cpu_psql: its reaped psql
// processes, cpu_backend: the server's reaped backends), so that a step's CPU is the
// difference between two lines.
func benchLogger() *slog.Logger {
	if os.Getenv("FLIGHTCTL_DR_BENCH_LOG") != "1" {
		return nil
	}
	return slog.New(cpuHandler{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})})
}

// benchPostmaster is the PID of the benchmark's database server, for cpuHandler.
var benchPostmaster int

type cpuHandler struct{ slog.Handler }

func (h cpuHandler) Handle(ctx context.Context, r slog.Record) error {
	c := cpuNow(benchPostmaster)
	r.AddAttrs(slog.String("cpu_go", strconv.FormatFloat(c.self, 'f', 2, 64)), slog.String("cpu_psql", strconv.FormatFloat(c.children, 'f', 2, 64)),
		slog.String("cpu_backend", strconv.FormatFloat(c.server, 'f', 2, 64)))
	return h.Handler.Handle(ctx, r)
}

func (h cpuHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return cpuHandler{h.Handler.WithAttrs(as)}
}
func (h cpuHandler) WithGroup(name string) slog.Handler { return cpuHandler{h.Handler.WithGroup(name)} }

// cpuSpent adds up CPU-seconds: this process's, its reaped children's (the psql
// processes) and the database server's reaped backends' (the postmaster's children).
type cpuSpent struct{ self, children, server float64 }

func (c *cpuSpent) add(from, to cpuSpent) {
	c.self += to.self - from.self
	c.children += to.children - from.children
	c.server += to.server - from.server
}

// cpuAfter is cpuNow once the server has reaped every backend (client sessions, parallel
// and autovacuum workers): a backend ends a moment after its psql, and its CPU counts only
// once the postmaster has waited for it.
func cpuAfter(postmaster int) cpuSpent {
	serverIdle(postmaster)
	return cpuNow(postmaster)
}

// serverIdle waits until the postmaster has no child but its auxiliary processes.
func serverIdle(postmaster int) { testbed.WaitBackends(postmaster, nil, time.Minute) }

func cpuNow(postmaster int) cpuSpent {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	c := cpuSpent{self: tv(self.Utime) + tv(self.Stime), children: tv(kids.Utime) + tv(kids.Stime)}
	// The server's backends count once the postmaster has reaped them.
	if st, err := procstat.Read(postmaster); err == nil {
		c.server = st.ChildrenCPU()
	}
	return c
}
