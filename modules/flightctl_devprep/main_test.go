package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_devprep"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_devprep", &Options{})
}

type stores struct {
	pg    *testbed.Postgres
	kv    *testbed.Redis
	appPW string
}

// newStores starts PostgreSQL with a flightctl database holding three devices (one already
// awaiting reconnect) and a Redis.
func newStores(t *testing.T) *stores {
	pg := testbed.PostgresForTest(t)
	kv := testbed.RedisForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := &stores{pg: pg, kv: kv, appPW: "app 'pw"}
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: s.appPW}))
	db, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer db.Close(ctx)
	_, err = db.Exec(ctx, `INSERT INTO devices (org_id, name, annotations, status, resource_version) VALUES
		($1, 'a', NULL, '{"summary": {"status": "Online"}, "lifecycle": {"status": "Enrolled"}}', 1),
		($1, 'b', NULL, NULL, NULL),
		($1, 'c', '{"device-controller/awaitingReconnect": "true"}', '{}', 3)`, testbed.DefaultOrgID)
	require.NoError(t, err)
	return s
}

func (s *stores) args(extra map[string]any) map[string]any {
	a := map[string]any{
		"db_host": s.pg.Host, "db_port": strconv.Itoa(s.pg.Port), "db_password": s.appPW, "db_sslmode": "disable",
		"kv_host": s.kv.Host, "kv_port": s.kv.Port, "kv_password": s.kv.Password,
	}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

func (s *stores) annotated(t *testing.T) int {
	ctx := context.Background()
	db, err := s.pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	defer db.Close(ctx)
	var n int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM devices WHERE annotations->>'device-controller/awaitingReconnect' = 'true'`).Scan(&n))
	return n
}

func TestCheckRunRerun(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	s := newStores(t)

	// Check mode with diff: the counts, nothing changed.
	r := moduletest.Run(t, bin, s.args(map[string]any{"_ansible_check_mode": true, "_ansible_diff": true}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	assert.Equal(t, float64(2), r.Out["devices_updated"])
	assert.Equal(t, float64(1), r.Out["devices_already_awaiting"])
	assert.Equal(t, float64(3), r.Out["keys_written"])
	assert.Equal(t, float64(0), r.Out["keys_verified"])
	assert.Equal(t, true, r.Out["kv_flushed"])
	diff := r.Out["diff"].(map[string]any)
	assert.Equal(t, float64(1), diff["before"].(map[string]any)["devices_awaiting_reconnect"])
	assert.Equal(t, float64(3), diff["after"].(map[string]any)["devices_awaiting_reconnect"])
	assert.Equal(t, float64(0), diff["before"].(map[string]any)["awaiting_reconnect_keys_present"])
	assert.Equal(t, 1, s.annotated(t), "check mode changes nothing")
	assert.NotContains(t, r.Stdout, s.appPW)
	assert.NotContains(t, r.Stdout, s.kv.Password)
	assert.Equal(t, "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER", r.Out["invocation"].(map[string]any)["module_args"].(map[string]any)["db_password"])

	r = moduletest.Run(t, bin, s.args(map[string]any{"_ansible_diff": true, "restore_id": "r1"}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, true, r.Out["changed"])
	assert.Equal(t, float64(2), r.Out["devices_updated"])
	assert.Equal(t, float64(3), r.Out["keys_verified"])
	assert.Equal(t, true, r.Out["event_created"])
	diff = r.Out["diff"].(map[string]any)
	assert.Equal(t, float64(3), diff["after"].(map[string]any)["awaiting_reconnect_keys_present"], "measured after the run")
	assert.Equal(t, true, diff["after"].(map[string]any)["event_recorded"])
	assert.Equal(t, 3, s.annotated(t))
	keys, err := s.kv.Client().Keys(context.Background(), "*").Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{
		devprep.KeyFor(testbed.DefaultOrgID, "a"), devprep.KeyFor(testbed.DefaultOrgID, "b"), devprep.KeyFor(testbed.DefaultOrgID, "c"),
	}, keys)

	r = moduletest.Run(t, bin, s.args(map[string]any{"restore_id": "r1"}))
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, false, r.Out["changed"], "nothing needed doing")
	assert.Equal(t, false, r.Out["event_created"])
	assert.Equal(t, false, r.Out["kv_flushed"])
}

func TestClearFailures(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	s := newStores(t)

	r := moduletest.Run(t, bin, s.args(map[string]any{"db_password": "not-it"}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "refused the user or password")
	assert.NotContains(t, r.Stdout, "not-it")

	r = moduletest.Run(t, bin, s.args(map[string]any{"kv_password": "not-it"}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "KV store refused the password")

	port, err := testbed.FreePort()
	require.NoError(t, err)
	r = moduletest.Run(t, bin, s.args(map[string]any{"kv_port": port}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "KV store cannot be reached")

	r = moduletest.Run(t, bin, s.args(map[string]any{"db_name": "postgres"}))
	assert.Equal(t, true, r.Out["failed"])
	assert.Contains(t, r.Out["msg"], "not a flightctl database")

	r = moduletest.Run(t, bin, s.args(map[string]any{"bogus": 1}))
	assert.Equal(t, true, r.Out["failed"])

	assert.Equal(t, 1, s.annotated(t), "no failure changed anything")
}

// CLI mode takes upstream's DB_PASSWORD and KV_PASSWORD.
func TestCLIWithEnvPasswords(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	s := newStores(t)
	cmd := exec.Command(bin, "--json", "--db-host", s.pg.Host, "--db-port", strconv.Itoa(s.pg.Port), "--db-sslmode", "disable",
		"--kv-host", s.kv.Host, "--kv-port", strconv.Itoa(s.kv.Port))
	cmd.Env = append(os.Environ(), "DB_PASSWORD="+s.appPW, "KV_PASSWORD="+s.kv.Password)
	out, err := cmd.Output()
	require.NoError(t, err, "%s", out)
	var res map[string]any
	require.NoError(t, json.Unmarshal(out, &res))
	assert.Equal(t, true, res["changed"])
	assert.Equal(t, float64(2), res["devices_updated"])
	assert.Equal(t, 3, s.annotated(t))
}
