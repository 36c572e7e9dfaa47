package estate_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

// BenchmarkPodmanRestoreInContainer is a whole restore with container access (`db_access:
// container`, the default of a quadlet host): every psql runs in the database's podman
// container through `podman exec`, device preparation reaches the database at its published
// port and the KV store at its container's IP, two application units under a systemd user
// manager. Beside it, in the same iteration, `podman exec -i <db> psql -f -` of the same dump
// into an empty database (the floor). FLIGHTCTL_DR_BENCH_CONTAINER_DEVICES devices (default
// 20,000) and about FLIGHTCTL_DR_BENCH_CONTAINER_MB MiB of events (default 64).
// downtime-s is from the first unit stopped to the last one started again; down-*-s are its
// parts. bench/restore/container.sh runs it.
func BenchmarkPodmanRestoreInContainer(b *testing.B) {
	ctx := context.Background()
	devices := benchEnvInt(b, "FLIGHTCTL_DR_BENCH_CONTAINER_DEVICES", 20000)
	mb := benchEnvInt(b, "FLIGHTCTL_DR_BENCH_CONTAINER_MB", 64)
	pod := testbed.PodmanForTest(b)
	sd := testbed.SystemdForTest(b)
	dbName := testbed.PodmanName("flightctl-db")
	kvName := testbed.PodmanName("flightctl-kv")
	startRedisContainer(b, pod, kvName, "kv-Secret-4711")
	pp := testbed.PodmanPostgresForTest(b, pod, dbName)
	require.NoError(b, pp.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	c, err := pp.SuperuserConn(ctx, "flightctl")
	require.NoError(b, err)
	_, err = c.Exec(ctx, fmt.Sprintf(`INSERT INTO devices (org_id, name, labels, generation, resource_version, created_at, updated_at, spec, status)
		SELECT '%s', 'dev-' || i, '{"site":"a"}', 1, 1, now(), now(), '{}',
		       jsonb_build_object('summary', jsonb_build_object('status', 'Online'), 'lifecycle', jsonb_build_object('status', 'Enrolled'), 'pad', md5(i::text))
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices))
	require.NoError(b, err)
	_, err = c.Exec(ctx, fmt.Sprintf(`INSERT INTO events (org_id, name, created_at, updated_at, reason, type, message, involved_object_name, involved_object_kind)
		SELECT '%s', 'ev-' || i, now(), now(), 'ResourceUpdated', 'Normal',
		       (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 30) j),
		       'dev-' || (i %% %d), 'Device'
		FROM generate_series(1, %d) i`, testbed.DefaultOrgID, devices, mb*1024))
	require.NoError(b, err)
	c.Close(ctx)

	for _, u := range []string{"flightctl-api.service", "flightctl-worker.service"} {
		require.NoError(b, sd.WriteUnit(u, "[Service]\nExecStart=/bin/sleep infinity\n"))
	}
	require.NoError(b, sd.DaemonReload(ctx))
	_, err = sd.Systemctl(ctx, "start", "flightctl-api.service", "flightctl-worker.service")
	require.NoError(b, err)

	root := b.TempDir()
	pki := filepath.Join(root, "pki")
	require.NoError(b, os.MkdirAll(pki, 0o755))
	require.NoError(b, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("CA\n"), 0o644))
	cfgFile := filepath.Join(root, "service-config.yaml")
	require.NoError(b, os.WriteFile(cfgFile, []byte("db:\n  name: flightctl\n"), 0o600))
	dump, err := pod.Podman(ctx, "exec", dbName, "pg_dump", "--clean", "--if-exists", "-U", "postgres", "-d", "flightctl")
	require.NoError(b, err)
	ar := archivetest.Write(b, b.TempDir(), archivetest.Content{
		Dump: []byte(dump), PKIDir: pki, Config: []byte("db:\n  name: flightctl\n"),
		Metadata: archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true},
	})
	b.Logf("dump %.0f MiB, %d devices", float64(len(dump))/(1<<20), devices)
	run := runner.Exec{BaseEnv: append(os.Environ(), pod.Env...)}
	var logger *slog.Logger
	if os.Getenv("FLIGHTCTL_DR_BENCH_LOG") == "1" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	target := func() *estate.PodmanRestore {
		cfg := estate.DefaultPodmanConfig()
		cfg.DBContainer, cfg.DBHost, cfg.DBPort, cfg.DBPassword = dbName, "", 0, "apppass"
		cfg.KVContainer, cfg.KVHost, cfg.KVPort, cfg.KVPassword = kvName, "", 0, "kv-Secret-4711"
		cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile, cfg.PAMVolume = pki, "", cfgFile, ""
		cfg.SystemdScope, cfg.SystemdBusAddress = string(units.ScopeUser), sd.BusAddress
		cfg.Units = []string{"flightctl-api.service", "flightctl-worker.service"}
		p := &estate.PodmanRestore{Config: cfg, RunningVersion: "v1.4.0", Runner: run, Logger: logger}
		require.NoError(b, p.Open(ctx))
		b.Cleanup(p.Close)
		return p
	}
	parts := []struct{ step, metric string }{
		{restore.StepStopUnits, "down-stop-s"}, {restore.StepSwapDatabase, "down-swap-s"},
		{restore.StepRelabel, "down-files-s"}, {restore.StepDevicePrep, "down-devprep-s"}, {restore.StepStartUnits, "down-start-s"},
	}
	partTotal := make([]time.Duration, len(parts))
	var floorTotal, restoreTotal, downTotal time.Duration
	state := filepath.Join(root, "state")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		empty := fmt.Sprintf("bench_floor_%d", i)
		_, err := pod.Podman(ctx, "exec", dbName, "psql", "-U", "postgres", "-c", "CREATE DATABASE "+empty+" TEMPLATE template0 OWNER admin")
		require.NoError(b, err)
		b.StartTimer()
		start := time.Now()
		require.NoError(b, run.Run(ctx, runner.Cmd{Name: "podman", Args: []string{"exec", "-i", "-e", "PGOPTIONS", dbName, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", empty, "-f", "-"},
			Env: []string{"PGOPTIONS=-c client_min_messages=warning"}, Stdin: strings.NewReader(dump)}))
		floorTotal += time.Since(start)

		at := map[string]time.Time{}
		opts := restore.Options{ArchivePath: ar.Path, Target: target(), StateDir: state, FlushKV: true, Force: true, Logger: logger,
			Checkpoint: func(name string) error { at[name] = time.Now(); return nil }}
		start = time.Now()
		res, err := restore.Run(ctx, opts)
		require.NoError(b, err)
		restoreTotal += time.Since(start)
		require.Contains(b, res.Steps, restore.StepFinalize)
		stopAt := at["stop_units:recorded"]
		downTotal += at[restore.StepStartUnits].Sub(stopAt)
		prev := stopAt
		for j, p := range parts {
			partTotal[j] += at[p.step].Sub(prev)
			prev = at[p.step]
		}

		b.StopTimer()
		_, err = pod.Podman(ctx, "exec", dbName, "psql", "-U", "postgres", "-c", "DROP DATABASE "+empty)
		require.NoError(b, err)
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(floorTotal.Seconds()/n, "psql-in-container-s")
	b.ReportMetric(restoreTotal.Seconds()/n, "restore-s")
	b.ReportMetric(restoreTotal.Seconds()/floorTotal.Seconds(), "restore/psql")
	b.ReportMetric(downTotal.Seconds()/n, "downtime-s")
	for j, p := range parts {
		b.ReportMetric(partTotal[j].Seconds()/n, p.metric)
	}
	b.ReportMetric(float64(devices), "devices")
	b.ReportMetric(float64(len(dump))/(1<<20), "dump-MiB")
}

func benchEnvInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(b, err, name)
	return n
}
