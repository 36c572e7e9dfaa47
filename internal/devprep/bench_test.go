package devprep

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/testbed"
)

// Benchmarks (off the default test run):
//
//	go test -run '^$' -bench . -benchtime 3x ./internal/devprep/
//
// BENCH_DEVICES (default 100000) sets the number of devices, spread over 10 organizations;
// BENCH_SEQ_SAMPLE (default 3000) bounds the sequential SETNX run through the 1 ms link,
// which would otherwise take 100 s per iteration: its figure is reported per key.

const benchLinkDelay = 500 * time.Microsecond // each direction: ~1 ms round trip

type benchEnv struct {
	*env
	devices int
	db      *pgx.Conn
	ownerDB *pgx.Conn // as flightctl_migrator, the tables' owner
	direct  *redis.Client
	slow    *redis.Client
	proxy   *delayProxy
}

var (
	benchOnce sync.Once
	benchData *benchEnv
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchSetup builds the data set once per process: N devices as the server writes them,
// across 10 organizations, each with a last_seen.
func benchSetup(b *testing.B) *benchEnv {
	benchOnce.Do(func() {
		e := newEnvWith(b, atExit)
		ctx := context.Background()
		be := &benchEnv{env: e, devices: envInt("BENCH_DEVICES", 100000)}
		orgs := []string{DefaultOrgID}
		for i := 1; i < 10; i++ {
			id := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
			e.addOrg(b, id, fmt.Sprintf("org-%d", i))
			orgs = append(orgs, id)
		}
		_, err := e.admin.Exec(ctx, `INSERT INTO devices (org_id, name, labels, annotations, generation, resource_version, created_at, updated_at,
			spec, status, service_conditions, render_timestamp)
			SELECT ($1::uuid[])[1 + i % 10], 'device-' || lpad(i::text, 7, '0'), '{"site": "s1"}', NULL, 1, 1, now(), now(),
				'{}', $2::jsonb, '{"conditions": []}', '0001-01-01 00:00:00+00'
			FROM generate_series(1, $3::int) AS i`, orgs, typicalStatus, be.devices)
		require.NoError(b, err)
		_, err = e.admin.Exec(ctx, `UPDATE device_timestamps SET last_seen = now()`)
		require.NoError(b, err)
		_, err = e.admin.Exec(ctx, `VACUUM ANALYZE devices, device_timestamps`)
		require.NoError(b, err)
		be.db, be.direct = e.connect(b)
		be.ownerDB, _ = e.connectWith(b, e.ownerConnOptions())
		be.proxy, err = startDelayProxy(e.kv.Addr, benchLinkDelay)
		require.NoError(b, err)
		atExit(func() { _ = be.proxy.Close() })
		be.slow = redis.NewClient(&redis.Options{Addr: be.proxy.Addr(), Password: e.kv.Password, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
		atExit(func() { _ = be.slow.Close() })
		benchData = be
	})
	if benchData == nil {
		b.Fatal("benchmark setup failed in an earlier benchmark")
	}
	return benchData
}

// resetDevices puts every device back to its state before preparation.
func (be *benchEnv) resetDevices(b *testing.B) {
	ctx := context.Background()
	for _, q := range []string{
		`UPDATE devices SET annotations = NULL, status = '` + typicalStatus + `'::jsonb, resource_version = 1`,
		`UPDATE device_timestamps SET last_seen = now()`,
		`DELETE FROM events`,
		`DELETE FROM enrollment_requests`,
		`VACUUM devices, device_timestamps`,
	} {
		_, err := be.admin.Exec(ctx, q)
		require.NoError(b, err)
	}
}

// annotateAll gives every device its annotation, as after the database part.
func (be *benchEnv) annotateAll(b *testing.B) {
	_, err := be.admin.Exec(context.Background(), `UPDATE devices SET annotations = '{"device-controller/awaitingReconnect": "true"}' WHERE annotations IS NULL`)
	require.NoError(b, err)
}

// BenchmarkPrepare is the whole preparation (verify, the database part, flush, keys
// written and checked) of every device: as flightctl_app with the device update split
// over the default number of sessions (loopback, 1ms-link; loopback-keys-after-commit
// without a spare KV database for the keys, keyStage), in the run's own transaction
// alone (loopback-one-session: every index of devices maintained row by row), and
// (owner-loopback) alone as flightctl_migrator, the tables' owner, whose transaction
// builds the btree indexes of devices again instead. db-cpu-s is the CPU time of the
// database session and of the postmaster's exited children: the extra sessions of a split
// update and the parallel workers of index builds (the load of other processes changes it
// much less than the wall time).
func BenchmarkPrepare(b *testing.B) {
	be := benchSetup(b)
	for _, link := range []string{"loopback", "loopback-keys-after-commit", "loopback-one-session", "1ms-link", "owner-loopback"} {
		b.Run(link, func(b *testing.B) {
			kv, db, sessions := be.direct, be.db, 0
			if link == "1ms-link" {
				kv = be.slow
			}
			if link == "owner-loopback" || link == "loopback-one-session" {
				sessions = 1 // the run's own transaction alone; as the owner, with the btree indexes built again
			}
			if link == "owner-loopback" {
				db = be.ownerDB
			}
			var cpu float64
			updateSessionsUsed := 1
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				be.resetDevices(b)
				if link == "loopback-keys-after-commit" {
					occupySpare(b, be.env) // no stage: FLUSHALL, and the keys after the commit
				}
				keep := be.backendsNow()
				cpu0 := be.dbCPU(b, db, keep)
				b.StartTimer()
				res, err := Run(context.Background(), Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true, Connections: sessions, Logger: benchLogger()})
				require.NoError(b, err)
				b.StopTimer()
				cpu += be.dbCPU(b, db, keep) - cpu0
				b.StartTimer()
				if res.DevicesUpdated != be.devices || res.KeysVerified != be.devices {
					b.Fatalf("prepared %d devices, verified %d keys; want %d", res.DevicesUpdated, res.KeysVerified, be.devices)
				}
				updateSessionsUsed = max(res.DeviceUpdateSessions, 1)
				if (link == "owner-loopback") != (res.IndexesRebuilt > 0) {
					b.Fatalf("%d indexes built again", res.IndexesRebuilt)
				}
			}
			b.ReportMetric(float64(updateSessionsUsed), "sessions")
			b.ReportMetric(float64(be.devices), "devices")
			b.ReportMetric(cpu/float64(b.N), "db-cpu-s")
		})
	}
}

// dbCPU is the CPU seconds used so far by db's server process and by the postmaster's
// exited children (the parallel workers of index builds; also autovacuum's). keep are the
// backends that were there before the run (backendsNow): every other, the extra sessions
// of a split update and of the key stage's listing among them, ends as the run returns,
// and its CPU counts once the postmaster has reaped it.
func (be *benchEnv) dbCPU(b *testing.B, db *pgx.Conn, keep []int) float64 {
	require.True(b, testbed.WaitBackends(be.pg.PostmasterPID(), keep, time.Minute), "the run's extra database sessions did not end")
	backend, err := procstat.Read(int(db.PgConn().PID()))
	require.NoError(b, err)
	postmaster, err := procstat.Read(be.pg.PostmasterPID())
	require.NoError(b, err)
	return backend.CPU() + postmaster.ChildrenCPU()
}

// backendsNow is the server's backends before a run, for dbCPU.
func (be *benchEnv) backendsNow() []int { return testbed.Backends(be.pg.PostmasterPID()) }

// benchLogger shows the phases' timing with BENCH_LOG=1.
func benchLogger() *slog.Logger {
	if os.Getenv("BENCH_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// BenchmarkKV compares the KV part: ours (flush, pipelined SETNX, pipelined read-back)
// against upstream's (flush, names per organization, one SETNX per device in sequence).
func BenchmarkKV(b *testing.B) {
	be := benchSetup(b)
	be.annotateAll(b)
	ctx := context.Background()
	for _, link := range []string{"loopback", "1ms-link"} {
		kv := be.direct
		if link == "1ms-link" {
			kv = be.slow
		}
		b.Run("pipelined/"+link, func(b *testing.B) {
			opts := &Options{DB: be.db, KV: kv}
			for i := 0; i < b.N; i++ {
				require.NoError(b, kv.FlushAll(ctx).Err())
				written, err := writeKeys(ctx, be.db, opts, false)
				require.NoError(b, err)
				verified, err := checkKeys(ctx, be.db, opts)
				require.NoError(b, err)
				if written != be.devices || verified != be.devices {
					b.Fatalf("wrote %d, verified %d keys; want %d", written, verified, be.devices)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*be.devices), "ns/key")
		})
		b.Run("prepared-list/"+link, func(b *testing.B) {
			// As in a restore's downtime: the devices were listed before the stop, so only
			// the flush, the writes and the read-back remain.
			opts := &Options{DB: be.db, KV: kv, Prepared: &DatabaseCounts{After: be.listed(b)}}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				require.NoError(b, kv.FlushAll(ctx).Err())
				written, err := writeKeys(ctx, be.db, opts, true)
				require.NoError(b, err)
				verified, err := checkKeys(ctx, be.db, opts)
				require.NoError(b, err)
				if written != be.devices || verified != be.devices {
					b.Fatalf("wrote %d, verified %d keys; want %d", written, verified, be.devices)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*be.devices), "ns/key")
		})
		b.Run("sequential/"+link, func(b *testing.B) {
			limit := be.devices
			if link == "1ms-link" {
				limit = min(limit, envInt("BENCH_SEQ_SAMPLE", 3000))
			}
			for i := 0; i < b.N; i++ {
				require.NoError(b, kv.FlushAll(ctx).Err())
				n, err := sequentialSETNX(ctx, be.db, kv, limit)
				require.NoError(b, err)
				if n != limit {
					b.Fatalf("set %d keys; want %d", n, limit)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*limit), "ns/key")
			b.ReportMetric(float64(limit), "keys")
		})
	}
}

// listed is the devices that need a key, as PreparedReadsScript lists them before a
// restore's stop.
func (be *benchEnv) listed(b *testing.B) *AfterState {
	rows, err := be.db.Query(context.Background(), keyedDevicesSQL)
	require.NoError(b, err)
	a := &AfterState{}
	for rows.Next() {
		var d device
		require.NoError(b, rows.Scan(&d.org, &d.name))
		a.devices = append(a.devices, d)
	}
	require.NoError(b, rows.Err())
	return a
}

// sequentialSETNX is upstream's KV step (UPSTREAM §4.1 step 5): for each organization, the
// names of its devices, then one SETNX per device, waiting for each reply.
func sequentialSETNX(ctx context.Context, db *pgx.Conn, kv *redis.Client, limit int) (int, error) {
	rows, err := db.Query(ctx, `SELECT id::text FROM organizations`)
	if err != nil {
		return 0, err
	}
	orgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	n := 0
	for _, org := range orgs {
		rows, err := db.Query(ctx, `SELECT name FROM devices WHERE org_id = $1 AND deleted_at IS NULL`, org)
		if err != nil {
			return n, err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return n, err
		}
		for _, name := range names {
			if n == limit {
				return n, nil
			}
			if err := kv.SetNX(ctx, KeyFor(org, name), "true", 0).Err(); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// BenchmarkLinkRoundTrip measures one PING through the delaying proxy and directly.
func BenchmarkLinkRoundTrip(b *testing.B) {
	be := benchSetup(b)
	for name, kv := range map[string]*redis.Client{"loopback": be.direct, "1ms-link": be.slow} {
		b.Run(name, func(b *testing.B) {
			require.NoError(b, kv.Ping(context.Background()).Err()) // connection set up outside the timer
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				require.NoError(b, kv.Ping(context.Background()).Err())
			}
		})
	}
}
