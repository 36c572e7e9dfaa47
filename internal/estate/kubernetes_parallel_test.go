package estate_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

// The parallel loader on Kubernetes: every session is one psql exec stream in the database
// pod (through the real API server and the exec node's kubelet streaming protocol), and the
// database part of device preparation runs on the temporary database before any
// Deployment is scaled to zero.

// seedBulk adds rows whose text a loader must carry as it is (tabs, backslashes,
// semicolons, "\."-looking lines, newlines) and enough of them (about 3 MB of events) that
// the events table is cut into several COPY pieces loaded on different sessions.
func seedBulk(t *testing.T, pg *testbed.Postgres, db string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO events (org_id, name, created_at, updated_at, reason, type, message, involved_object_name, involved_object_kind)
		SELECT '%s', 'ev-' || i, now(), now(), 'ResourceUpdated', 'Normal',
		       i || E' tab\there back\\slash semi;colon $$dollar$$\n\\.\nnext ' || (SELECT string_agg(md5(i::text || j), '') FROM generate_series(1, 45) j),
		       'device-' || lpad((i %% 12 + 1)::text, 5, '0'), 'Device'
		FROM generate_series(1, 2000) i`, testbed.DefaultOrgID))
	require.NoError(t, err)
}

func recLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// schemaDump is `pg_dump --schema-only` of db (owners, grants, comments, extensions),
// without its random \restrict key.
func schemaDump(t *testing.T, pg *testbed.Postgres, db string) string {
	t.Helper()
	out, err := pg.SchemaDump(context.Background(), db)
	require.NoError(t, err)
	return out
}

// tableDigests is every table's row count and a digest of its rows in order, and every
// sequence's value. The SystemRestored event is left out: its name and time are the
// restore's own.
func tableDigests(t *testing.T, pg *testbed.Postgres, db string) map[string]string {
	t.Helper()
	out, err := pg.Contents(context.Background(), db, map[string]string{"public.events": "x.reason IS DISTINCT FROM 'SystemRestored'"})
	require.NoError(t, err)
	return out
}

// preparedRows counts the devices of db that carry the awaiting-reconnect annotation.
func preparedRows(t *testing.T, pg *testbed.Postgres, db string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pg.SuperuserConn(ctx, db)
	require.NoError(t, err)
	defer c.Close(ctx)
	var n int
	require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM devices WHERE annotations ->> $1 = 'true'", devprep.AnnotationAwaitingReconnect).Scan(&n))
	return n
}

// restoreDatabases are the temporary databases of restores of db left on the server.
func restoreDatabases(t *testing.T, pg *testbed.Postgres, db string) []string {
	t.Helper()
	ctx := context.Background()
	c, err := pg.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	defer c.Close(ctx)
	rows, err := c.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", db+"_restore_%")
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return names
}

// atStop is what a restore had done when it was about to scale the first Deployment to 0
// (the checkpoint after the replicas are recorded, before any scale).
type atStop struct {
	seen           bool
	apiReplicas    int32
	done           []string
	journalPrep    *devprep.DatabaseCounts
	tempPrepared   int
	tempDatabase   string
	restoreRunning bool
}

func (c *kubeCase) watchStop(t *testing.T, opts *restore.Options) *atStop {
	st := &atStop{}
	opts.Checkpoint = func(name string) error {
		if name != "stop_units:recorded" {
			return nil
		}
		st.seen = true
		d, err := c.b.k.Clientset.AppsV1().Deployments(c.est.Namespace).Get(context.Background(), "flightctl-api", metav1.GetOptions{})
		require.NoError(t, err)
		st.apiReplicas = *d.Spec.Replicas
		j, err := restore.ReadJournal(c.state)
		require.NoError(t, err)
		require.NotNil(t, j)
		st.done, st.journalPrep, st.restoreRunning = j.Done, j.DevicesPrepared, j.State == restore.StateRunning
		require.NotNil(t, j.Database)
		st.tempDatabase = j.Database.Temp
		st.tempPrepared = preparedRows(t, c.b.pg, j.Database.Temp)
		return nil
	}
	return st
}

func stepIndex(t *testing.T, steps []string, step string) int {
	t.Helper()
	for i, s := range steps {
		if s == step {
			return i
		}
	}
	t.Fatalf("step %s is not in %v", step, steps)
	return -1
}

func TestKubernetesRestoreParallelLoad(t *testing.T) {
	b := newKubeRestoreBed(t)
	ctx := context.Background()

	t.Run("four_sessions_same_as_one_devices_prepared_before_scale_down", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		seedBulk(t, b.pg, c.db)
		archive := c.backup(t)

		// The reference: one psql reading the dump through one exec, device preparation
		// whole in the downtime.
		c.disaster()
		opts := c.options(t, archive)
		opts.LoadConnections, opts.Force = 1, true
		serial := c.watchStop(t, &opts)
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		c.assertRestored(t)
		require.NotNil(t, res.DatabaseLoad)
		assert.Equal(t, 1, res.DatabaseLoad.Sessions)
		assert.Equal(t, restore.DevicePrepInDowntime, res.DatabaseLoad.DevicePrep)
		require.True(t, serial.seen)
		assert.Nil(t, serial.journalPrep, "the serial path prepares no device before the stop")
		assert.Zero(t, serial.tempPrepared, "no device row of the temporary database was prepared before the stop")
		wantSchema, wantRows := schemaDump(t, b.pg, c.db), tableDigests(t, b.pg, c.db)
		require.NotEmpty(t, wantSchema)
		assert.Equal(t, 12, preparedRows(t, b.pg, c.db))

		// Four psql exec streams at once.
		c.disaster()
		opts = c.options(t, archive)
		opts.LoadConnections, opts.Force = 4, true
		rec := &testbed.LogRecorder{T: t}
		opts.Target.(*estate.KubernetesRestore).Logger = recLogger(rec)
		opts.Logger = recLogger(rec)
		par := c.watchStop(t, &opts)
		res, err = restore.Run(ctx, opts)
		require.NoError(t, err)
		c.assertRestored(t)
		require.NotNil(t, res.DatabaseLoad)
		assert.Equal(t, 4, res.DatabaseLoad.Sessions, "the result says four sessions loaded the dump")
		assert.Equal(t, restore.DevicePrepTemporaryDatabase, res.DatabaseLoad.DevicePrep)
		assert.Contains(t, rec.String(), "sessions=4")
		assert.Less(t, stepIndex(t, res.Steps, restore.StepLoadDatabase), stepIndex(t, res.Steps, restore.StepStopUnits))
		assert.Less(t, stepIndex(t, res.Steps, restore.StepStopUnits), stepIndex(t, res.Steps, restore.StepDevicePrep))
		assert.Less(t, stepIndex(t, res.Steps, restore.StepDevicePrep), stepIndex(t, res.Steps, restore.StepStartUnits))

		// The device rows were prepared on the temporary database before the first
		// Deployment was scaled to 0: at that point the journal holds load_database done
		// with the counts of the database part, and the rows are annotated.
		require.True(t, par.seen)
		assert.Equal(t, int32(2), par.apiReplicas, "nothing was scaled yet")
		assert.True(t, par.restoreRunning)
		assert.Contains(t, par.done, restore.StepLoadDatabase)
		assert.NotContains(t, par.done, restore.StepStopUnits)
		assert.NotContains(t, par.done, restore.StepDevicePrep)
		require.NotNil(t, par.journalPrep, "the journal records the database part as done before the stop")
		assert.Equal(t, 12, par.journalPrep.DevicesUpdated)
		assert.Equal(t, 4, par.journalPrep.EnrollmentRequestsUpdated)
		assert.True(t, par.journalPrep.EventCreated)
		assert.Equal(t, 12, par.tempPrepared, "every device row of %s was prepared before the scale-down", par.tempDatabase)
		log := rec.String()
		early, stop := strings.Index(log, "database prepared in the temporary database"), strings.Index(log, "Deployment scaled to 0")
		require.Positive(t, early)
		require.Greater(t, stop, early, "the database part ran before the first Deployment was scaled to 0")

		// The same schema and the same rows as the serial load, device preparation included.
		assert.Equal(t, wantSchema, schemaDump(t, b.pg, c.db), "pg_dump --schema-only differs")
		assert.Equal(t, wantRows, tableDigests(t, b.pg, c.db), "rows or sequence values differ")
		assert.Empty(t, restoreDatabases(t, b.pg, c.db))
		kv, err := b.kv.Client().Keys(ctx, "v1/*/awaiting-reconnect").Result()
		require.NoError(t, err)
		assert.Len(t, kv, 12, "the KV part ran in the downtime")
	})

	t.Run("error_halfway_stops_with_psql_message", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		seedBulk(t, b.pg, c.db)
		ours := c.backup(t)
		// A devices row with too few fields in the middle of the data.
		archive := upstreamArchive(t, ours, func(name string, data []byte) []byte {
			if name != "db/dump.sql" {
				return data
			}
			i := bytes.Index(data, []byte("COPY public.devices "))
			require.Positive(t, i)
			nl := bytes.IndexByte(data[i:], '\n') + i + 1
			return append(append(append([]byte{}, data[:nl]...), []byte("too\tfew\n")...), data[nl:]...)
		})
		before := c.replicas()
		opts := c.options(t, archive)
		opts.LoadConnections = 4
		stopped := c.watchStop(t, &opts)
		res, err := restore.Run(ctx, opts)
		require.Error(t, err)
		msg := err.Error()
		assert.Contains(t, msg, "load_database")
		assert.Contains(t, msg, "psql session", "the failing session is named")
		assert.Contains(t, msg, "in pod "+c.est.InternalNamespace+"/", "the exec is named")
		assert.Contains(t, msg, `ERROR:  invalid input syntax for type uuid: "too"`, "psql's own message reaches the operator")
		assert.Contains(t, msg, "COPY devices")
		assert.False(t, stopped.seen, "a dump that does not load stops nothing")
		assert.True(t, res.RolledBack)
		assert.Equal(t, before, c.replicas(), "nothing scaled")
		assert.EqualValues(t, 12, c.deviceCount(), "the live database is intact")
		assert.Empty(t, restoreDatabases(t, b.pg, c.db), "the temporary database is dropped")
	})

	t.Run("admin_password_on_stdin_only", func(t *testing.T) {
		// psql in the database pod is a wrapper that records its arguments and whether the
		// admin password reached its environment, then runs the real psql.
		realPsql, err := exec.LookPath("psql")
		require.NoError(t, err)
		bin, record := t.TempDir(), filepath.Join(t.TempDir(), "psql-calls")
		script := "#!/bin/sh\n" +
			"printf 'argv %s\\n' \"$*\" >>" + record + "\n" +
			"printf 'password %s\\n' \"${PGPASSWORD:-none}\" >>" + record + "\n" +
			"exec " + realPsql + " \"$@\"\n"
		require.NoError(t, os.WriteFile(filepath.Join(bin, "psql"), []byte(script), 0o755))
		c := b.newCase(t, testbed.HelmEstateOptions{DBPodEnv: map[string]string{"PATH": bin + ":" + os.Getenv("PATH")}})
		archive := c.backup(t)
		c.disaster()
		// Only the restore's calls count (the backup's psql runs as the application user).
		require.NoError(t, os.RemoveAll(record))
		const secret = "admin-Pässword-on-stdin"
		opts := c.options(t, archive)
		opts.Target.(*estate.KubernetesRestore).Restore.DBAdminPassword = secret
		opts.LoadConnections = 4
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		c.assertRestored(t)
		require.NotNil(t, res.DatabaseLoad)
		assert.Equal(t, 4, res.DatabaseLoad.Sessions)
		raw, err := os.ReadFile(record)
		require.NoError(t, err)
		sessions, passwords := 0, 0
		for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
			kind, val, _ := strings.Cut(line, " ")
			switch kind {
			case "argv":
				assert.NotContains(t, val, secret, "the admin password in a psql command line")
				if strings.Contains(val, "-d "+c.db+"_restore_") && strings.Contains(val, "-f -") {
					sessions++
				}
			case "password":
				if val == secret {
					passwords++
				}
			}
		}
		assert.GreaterOrEqual(t, sessions, 4, "the four load sessions (and the device preparation) ran psql in the pod:\n%s", raw)
		assert.Equal(t, strings.Count(string(raw), "argv "), passwords, "every psql in the pod got the admin password in its environment:\n%s", raw)
	})

	t.Run("direct_access_sessions_are_local_psql", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		c.disaster()
		opts := c.options(t, archive)
		// db_access direct: this machine's psql against the server (its socket here).
		cfg := c.config()
		cfg.DBAccess, cfg.DBHost = estate.DBAccessDirect, b.pg.SocketDir
		k := &estate.KubernetesRestore{Config: cfg, Restore: estate.KubernetesRestoreConfig{PollInterval: 20 * time.Millisecond, QuiesceTimeout: time.Minute},
			Logger: recLogger(testWriter{t})}
		require.NoError(t, k.Open(ctx))
		opts.Target, opts.LoadConnections = k, 3
		par := c.watchStop(t, &opts)
		res, err := restore.Run(ctx, opts)
		require.NoError(t, err)
		c.assertRestored(t)
		require.NotNil(t, res.DatabaseLoad)
		assert.Equal(t, 3, res.DatabaseLoad.Sessions)
		assert.Equal(t, restore.DevicePrepTemporaryDatabase, res.DatabaseLoad.DevicePrep)
		require.NotNil(t, par.journalPrep)
		assert.Equal(t, 12, par.tempPrepared)
	})
}
