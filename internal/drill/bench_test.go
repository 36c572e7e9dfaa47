package drill_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/drill"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

// BenchmarkDrillVsRestore compares a drill of an archive (beside the live database, and on
// a throwaway PostgreSQL) with a whole restore of the same archive, on the restore
// benchmark's database: 20,000 devices and about FLIGHTCTL_DR_BENCH_DRILL_MB MiB of events
// (default 64; bench/drill/run.sh runs 1024). The archive is made by the real backup
// engine. The application units run under a real systemd user manager: every drill must
// leave them as they were (same main PID), which the benchmark checks. Run with
// -benchtime 1x: each iteration drills twice and restores once.
func BenchmarkDrillVsRestore(b *testing.B) {
	ctx := context.Background()
	mb := 64
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_DRILL_MB"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(b, err)
		mb = n
	}
	testbed.Need(b, "psql", "/usr/lib/postgresql/15/bin/pg_dump")
	pg := testbed.PostgresForTest(b)
	kv := testbed.RedisForTest(b)
	sd := testbed.SystemdForTest(b)
	require.NoError(b, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	conn, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(b, err)
	const devices = 20000
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
		SELECT '%s', 'dev-' || i, '{"site":"a"}', 1, 1, now(), now(), '{}',
		       jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'), 'pad', md5(i::text))
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices))
	require.NoError(b, err)
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO events (org_id, name, created_at, updated_at, reason, type, message, involved_object_name, involved_object_kind)
		SELECT '%s', 'ev-' || i, now(), now(), 'ResourceUpdated', 'Normal',
		       (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j),
		       'dev-' || (i %% %d), 'Device'
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices, mb*1024))
	require.NoError(b, err)
	conn.Close(ctx)

	root := b.TempDir()
	f := &fixture{t: b, pg: pg, kv: kv, root: root,
		pki: filepath.Join(root, "etc/flightctl/pki"), enc: filepath.Join(root, "etc/flightctl/encryption"),
		config: filepath.Join(root, "etc/flightctl/service-config.yaml"), out: filepath.Join(root, "backups"),
		state: filepath.Join(root, "state")}
	f.writePKI(pkiGood)
	require.NoError(b, os.MkdirAll(f.enc, 0o700))
	require.NoError(b, os.WriteFile(filepath.Join(f.enc, "key"), []byte("a2V5\n"), 0o600))
	require.NoError(b, os.WriteFile(f.config, []byte("db:\n  type: builtin\n  name: flightctl\n"), 0o640))
	appUnits := []string{"flightctl-api.service", "flightctl-worker.service"}
	for _, u := range appUnits {
		require.NoError(b, sd.WriteUnit(u, "[Service]\nExecStart=/bin/sleep infinity\n"))
	}
	require.NoError(b, sd.DaemonReload(ctx))
	_, err = sd.Systemctl(ctx, append([]string{"start"}, appUnits...)...)
	require.NoError(b, err)
	mainPIDs := func() string {
		out, err := sd.Systemctl(ctx, append([]string{"show", "-p", "MainPID", "-p", "ActiveState"}, appUnits...)...)
		require.NoError(b, err)
		return strings.Join(strings.Fields(out), " ")
	}

	start := time.Now()
	path := f.backup()
	b.Logf("backup (setup) %.1f s", time.Since(start).Seconds())
	info, err := os.Stat(path)
	require.NoError(b, err)

	target := func() *estate.PodmanRestore {
		pc := estate.DefaultPodmanConfig()
		pc.PKIDir, pc.EncryptionDir, pc.ConfigFile, pc.PAMVolume = f.pki, f.enc, f.config, ""
		pc.DBAccess, pc.DBHost, pc.DBPort = estate.DBAccessDirect, "127.0.0.1", pg.Port
		pc.DBAdminUser, pc.DBAdminPassword = "admin", "adminpass"
		pc.DBUser, pc.DBPassword = "flightctl_app", appPassword
		pc.KVHost, pc.KVPort, pc.KVPassword = kv.Host, kv.Port, kv.Password
		pc.SystemdScope, pc.SystemdBusAddress = string(units.ScopeUser), sd.BusAddress
		pc.Units = appUnits
		p := &estate.PodmanRestore{Config: pc, RunningVersion: testVersion}
		require.NoError(b, p.Open(ctx))
		b.Cleanup(p.Close)
		return p
	}

	var drillEstate, drillThrowaway, restoreTotal, loadEstate, loadThrowaway time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := mainPIDs()
		start := time.Now()
		rep, err := drill.Run(ctx, drill.Options{ArchivePath: path, Server: estateServer(b, f.child()), StateDir: f.state})
		require.NoError(b, err)
		drillEstate += time.Since(start)
		loadEstate += time.Duration(rep.LoadSeconds * float64(time.Second))
		require.Equal(b, int64(devices), rep.Rows["devices"])
		require.Equal(b, before, mainPIDs(), "the drill left the application units alone")

		start = time.Now()
		rep, err = drill.Run(ctx, drill.Options{ArchivePath: path, Server: &drill.Throwaway{Parent: b.TempDir()}, StateDir: f.state})
		require.NoError(b, err)
		drillThrowaway += time.Since(start)
		loadThrowaway += time.Duration(rep.LoadSeconds * float64(time.Second))
		require.Equal(b, before, mainPIDs(), "the drill left the application units alone")

		start = time.Now()
		res, err := restore.Run(ctx, restore.Options{ArchivePath: path, Target: target(), StateDir: filepath.Join(root, "restore-state"), FlushKV: true, Force: true})
		require.NoError(b, err)
		restoreTotal += time.Since(start)
		require.Contains(b, res.Steps, restore.StepFinalize)
	}
	n := float64(b.N)
	b.ReportMetric(drillEstate.Seconds()/n, "drill-estate-s")
	b.ReportMetric(loadEstate.Seconds()/n, "drill-estate-load-s")
	b.ReportMetric(drillThrowaway.Seconds()/n, "drill-throwaway-s")
	b.ReportMetric(loadThrowaway.Seconds()/n, "drill-throwaway-load-s")
	b.ReportMetric(restoreTotal.Seconds()/n, "restore-s")
	b.ReportMetric(drillEstate.Seconds()/restoreTotal.Seconds(), "drill/restore")
	b.ReportMetric(drillThrowaway.Seconds()/restoreTotal.Seconds(), "throwaway/restore")
	b.ReportMetric(float64(info.Size())/(1<<20), "archive-MiB")
}
