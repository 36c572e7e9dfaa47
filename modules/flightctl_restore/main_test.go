package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

const pkg = "flightctl.dr/modules/flightctl_restore"

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_restore", &Options{})
}

// TestUpstreamPersonalityWithoutArchive: under upstream's name no archive argument means
// device preparation only, as the Red Hat runbooks use it (upstream's current binary
// insists on an archive); more than one argument is refused.
func TestUpstreamPersonalityWithoutArchive(t *testing.T) {
	bin := moduletest.Build(t, pkg)
	link := filepath.Join(t.TempDir(), "flightctl-restore")
	require.NoError(t, os.Symlink(bin, link))
	cmd := exec.Command(link, "--deployment-type", "podman", "--systemd-scope", "user", "--systemd-bus-address", "unix:path="+filepath.Join(t.TempDir(), "no-bus"))
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.NotContains(t, string(out), "accepts 1 arg(s), received 0")
	require.Contains(t, string(out), "Error: connect to systemd")
	out, err = exec.Command(link, "a.tar.gz", "b.tar.gz").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "accepts at most 1 arg(s), received 2")
	out, err = exec.Command(link, "version").CombinedOutput()
	require.NoError(t, err)
	require.Regexp(t, `^Flight Control Restore Version: v\d+\.\d+\.\d+\S* \(flightctl\.dr .+\)\n$`, string(out))
	out, err = exec.Command(link, "x.tar.gz", "--deployment-type", "openshift").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), `invalid --deployment-type "openshift": must be "kubernetes" or "podman"`)
}

// TestModuleRestore runs the real binary as Ansible does, on a real PostgreSQL, Redis and
// systemd user manager: check mode first (nothing changes), then the restore, then device
// preparation alone. Secrets never appear in the output.
func TestModuleRestore(t *testing.T) {
	ctx := context.Background()
	testbed.Need(t, "psql", "/usr/lib/postgresql/15/bin/pg_dump")
	bin := moduletest.Build(t, pkg)
	pg := testbed.PostgresForTest(t)
	rd := testbed.RedisForTest(t)
	sd := testbed.SystemdForTest(t)
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: "app-Secret-4711", Admin: "admin-Secret-4711"}))
	conn, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO devices (org_id, name, created_at, updated_at, spec, status) VALUES ('%s', 'dev-%d', now(), now(), '{}', '{}')`, testbed.DefaultOrgID, i))
		require.NoError(t, err)
	}
	require.NoError(t, sd.WriteUnit("flightctl-api.service", "[Service]\nExecStart=/bin/sleep infinity\n"))
	require.NoError(t, sd.DaemonReload(ctx))
	_, err = sd.Systemctl(ctx, "start", "flightctl-api.service")
	require.NoError(t, err)

	root := t.TempDir()
	pki := filepath.Join(root, "pki")
	require.NoError(t, os.MkdirAll(pki, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("CA\n"), 0o644))
	cfgFile := filepath.Join(root, "service-config.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("db:\n  name: flightctl\n"), 0o600))

	// The archive: a real pg_dump, the PKI tree and the config.
	dump := exec.Command("/usr/lib/postgresql/15/bin/pg_dump", "--clean", "--if-exists", "-h", "127.0.0.1", "-p", fmt.Sprint(pg.Port), "-U", "admin", "-d", "flightctl")
	dump.Env = append(os.Environ(), "PGPASSWORD=admin-Secret-4711")
	sql, err := dump.Output()
	require.NoError(t, err)
	ar := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump: sql, PKIDir: pki, Config: []byte("db:\n  name: flightctl\n"),
		Metadata: archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true},
	})

	// Damage after the backup.
	_, err = conn.Exec(ctx, `DELETE FROM devices WHERE name = 'dev-0'`)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("other CA\n"), 0o644))
	conn.Close(ctx)

	args := map[string]any{
		"path": ar.Path, "deployment_type": "podman", "server_version": "v1.4.0",
		"systemd_scope": "user", "systemd_bus_address": sd.BusAddress,
		"db_access": "direct", "db_port": fmt.Sprint(pg.Port), "db_admin_password": "admin-Secret-4711", "db_password": "app-Secret-4711",
		"kv_host": rd.Host, "kv_port": rd.Port, "kv_password": rd.Password,
		"pki_dir": pki, "encryption_dir": filepath.Join(root, "encryption"), "config_file": cfgFile, "pam_volume": "",
		"state_dir": filepath.Join(root, "state"), "units": []string{"flightctl-api.service", "flightctl-worker.service"},
	}
	secrets := []string{"admin-Secret-4711", "app-Secret-4711", rd.Password}
	noSecrets := func(r moduletest.Result) {
		for _, s := range secrets {
			require.NotContains(t, r.Stdout, s)
			require.NotContains(t, r.Stderr, s)
		}
	}
	count := func() int {
		c, err := pg.SuperuserConn(ctx, "flightctl")
		require.NoError(t, err)
		defer c.Close(ctx)
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM devices`).Scan(&n))
		return n
	}

	check := moduletest.Run(t, bin, merge(args, map[string]any{"_ansible_check_mode": true, "_ansible_diff": true, "_ansible_verbosity": 3}))
	require.Nil(t, check.Out["failed"], check.Out["msg"])
	noSecrets(check)
	require.Equal(t, true, check.Out["changed"])
	plan := check.Out["plan"].(map[string]any)
	require.Equal(t, []any{"flightctl-api.service"}, plan["units_to_stop"])
	// The places written before the swap, with their free space and what goes there.
	space := map[string]map[string]any{}
	for _, c := range plan["space"].([]any) {
		c := c.(map[string]any)
		space[c["what"].(string)] = c
	}
	require.Contains(t, space, "the database dump", plan["space"])
	require.Equal(t, float64(len(sql)), space["the database dump"]["bytes"])
	require.Positive(t, space["the database dump"]["free_bytes"])
	require.Contains(t, space["the database dump"]["where"], "database server")
	require.Contains(t, space, "the files staged beside the live ones", plan["space"])
	require.Equal(t, float64(len("CA\n")+len("db:\n  name: flightctl\n")), space["the files staged beside the live ones"]["bytes"])
	db := plan["database"].(map[string]any)
	require.Equal(t, float64(4), db["counts_now"].(map[string]any)["devices"])
	require.Equal(t, float64(5), db["counts_archive"].(map[string]any)["devices"])
	require.NotNil(t, check.Out["diff"])
	require.Equal(t, 4, count(), "check mode changes nothing")
	require.Equal(t, "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER", check.Out["invocation"].(map[string]any)["module_args"].(map[string]any)["db_password"])

	res := moduletest.Run(t, bin, merge(args, map[string]any{"_ansible_verbosity": 3}))
	require.Nil(t, res.Out["failed"], res.Out["msg"])
	noSecrets(res)
	require.Equal(t, true, res.Out["changed"])
	require.Contains(t, res.Out["steps"], "swap_database")
	require.Equal(t, 5, count())
	b, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	require.NoError(t, err)
	require.Equal(t, "CA\n", string(b))
	prep := res.Out["device_preparation"].(map[string]any)
	require.Equal(t, float64(5), prep["devices_updated"])
	// The keys were staged in a spare KV database before the stop and swapped in during it.
	require.Equal(t, true, prep["keys_staged"], prep)
	require.Equal(t, float64(5), prep["keys_verified"])
	kvInfo := rd.Client()
	require.NotContains(t, kvInfo.Info(ctx, "keyspace").Val(), "db15", "the spare database is empty again")
	_ = kvInfo.Close()
	require.NotContains(t, res.Stdout, "CREATE TABLE", "psql output never reaches stdout")

	// The same archive again: nothing done, and the operator is told why and how to force it.
	again := moduletest.Run(t, bin, args)
	require.Nil(t, again.Out["failed"], again.Out["msg"])
	require.Equal(t, false, again.Out["changed"])
	require.Contains(t, again.Out["msg"], "Nothing done: this server was already restored from this archive at ")
	require.Contains(t, again.Out["msg"], "Set force: true")
	require.NotEmpty(t, again.Out["already_restored_at"])

	// The CLI, as a person runs it: check mode reads as sentences and aligned lines, not JSON.
	cli := exec.Command(bin, ar.Path, "--check", "--force", "--deployment-type", "podman", "--server-version", "v1.4.0",
		"--systemd-scope", "user", "--systemd-bus-address", sd.BusAddress,
		"--db-access", "direct", "--db-port", fmt.Sprint(pg.Port), "--kv-host", rd.Host, "--kv-port", fmt.Sprint(rd.Port),
		"--pki-dir", pki, "--encryption-dir", filepath.Join(root, "encryption"), "--config-file", cfgFile, "--pam-volume", "",
		"--state-dir", filepath.Join(root, "state"), "--units", "flightctl-api.service,flightctl-worker.service")
	cli.Env = append(os.Environ(), "FLIGHTCTL_DR_DB_ADMIN_PASSWORD=admin-Secret-4711", "DB_PASSWORD=app-Secret-4711", "KV_PASSWORD="+rd.Password)
	var cliOut, cliErr bytes.Buffer
	cli.Stdout, cli.Stderr = &cliOut, &cliErr
	require.NoError(t, cli.Run(), cliErr.String())
	human := cliOut.String()
	require.True(t, strings.HasPrefix(human, "Check mode, nothing changed. A restore would stop 1 unit (flightctl-api), replace database flightctl"), human)
	require.Contains(t, human, "\nUnits ")
	require.Regexp(t, `devices +5 +5\n`, human)
	require.NotContains(t, human, "{", "no JSON for people")
	for _, s := range secrets {
		require.NotContains(t, human+cliErr.String(), s)
	}

	// deployment_type auto trusts an unfinished journal (the stopped server cannot be
	// detected) and says so in the result's warnings. Check mode: nothing is rolled back.
	stateDir := filepath.Join(root, "state")
	unfinished, err := json.Marshal(restore.Journal{FormatVersion: 1, ID: "0badc0de", ArchivePath: ar.Path, State: restore.StateRunning,
		Started: time.Now().UTC(), Done: []string{}})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(stateDir, restore.JournalFile), unfinished, 0o600))
	rb := moduletest.Run(t, bin, merge(args, map[string]any{"path": nil, "rollback": true, "deployment_type": "auto", "_ansible_check_mode": true}))
	require.Nil(t, rb.Out["failed"], rb.Out["msg"])
	require.Contains(t, rb.Out["msg"], "The unfinished restore 0badc0de (started ")
	require.Contains(t, fmt.Sprint(rb.Out["warnings"]), "deployment_type auto: taken as podman from the unfinished restore 0badc0de")
	require.NoError(t, os.Remove(filepath.Join(stateDir, restore.JournalFile)))

	// Device preparation alone (no archive) while flightctl-api runs: refused, saying what
	// it would do and which option lets it; the KV store is not flushed.
	only := merge(args, nil)
	delete(only, "path")
	kv := rd.Client()
	defer kv.Close()
	require.NoError(t, kv.Set(ctx, "v1/cache/sentinel", "live", 0).Err())
	// One device reconnected since the restore: it is no longer awaiting.
	c2, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	_, err = c2.Exec(ctx, `UPDATE devices SET annotations = '{}' WHERE name = 'dev-1'`)
	require.NoError(t, err)
	c2.Close(ctx)
	live := moduletest.Run(t, bin, only)
	require.Equal(t, true, live.Out["failed"], live.Out["msg"])
	require.Contains(t, live.Out["msg"], "device preparation refused: the application units flightctl-api.service are running")
	require.Contains(t, live.Out["msg"], "flush the KV store")
	require.Contains(t, live.Out["msg"], "mark 1 devices AwaitingReconnect (4 more already are)")
	require.Contains(t, live.Out["msg"], "allow_running_units")
	require.Equal(t, "live", kv.Get(ctx, "v1/cache/sentinel").Val(), "nothing flushed")
	out, _ := sd.Systemctl(ctx, "is-active", "flightctl-api.service")
	require.Equal(t, "active", strings.TrimSpace(out), "the refusal touches no unit")

	// Told so, it goes ahead: the KV store is flushed, the device marked again, every key
	// back.
	dp := moduletest.Run(t, bin, merge(only, map[string]any{"allow_running_units": true}))
	require.Nil(t, dp.Out["failed"], dp.Out["msg"])
	noSecrets(dp)
	require.Equal(t, float64(1), dp.Out["device_preparation"].(map[string]any)["devices_updated"])
	require.Nil(t, dp.Out["device_preparation"].(map[string]any)["keys_staged"], "no stage while the server runs")
	require.Contains(t, fmt.Sprint(dp.Out["warnings"]), "application units flightctl-api.service are running")
	require.Contains(t, dp.Out["msg"], "Device preparation done: KV store flushed, 1 devices marked AwaitingReconnect (4 already were)")
	require.Equal(t, int64(0), kv.Exists(ctx, "v1/cache/sentinel").Val())

	// On a large fleet device preparation alone splits its update over sessions, no more
	// than db_load_connections: 1 keeps one transaction.
	c3, err := pg.SuperuserConn(ctx, "flightctl")
	require.NoError(t, err)
	_, err = c3.Exec(ctx, fmt.Sprintf(`INSERT INTO devices (org_id, name, created_at, updated_at, spec, status)
		SELECT '%s', 'fleet-' || i, now(), now(), '{}', '{}' FROM generate_series(1, 40000) i`, testbed.DefaultOrgID))
	require.NoError(t, err)
	for _, tc := range []struct {
		connections int
		sessions    any
	}{{1, nil}, {2, float64(2)}} {
		_, err = c3.Exec(ctx, `UPDATE devices SET annotations = '{}' WHERE name LIKE 'fleet-%'`)
		require.NoError(t, err)
		fleet := moduletest.Run(t, bin, merge(only, map[string]any{"allow_running_units": true, "db_load_connections": tc.connections}))
		require.Nil(t, fleet.Out["failed"], fleet.Out["msg"])
		prep := fleet.Out["device_preparation"].(map[string]any)
		require.Equal(t, float64(40000), prep["devices_updated"])
		require.Equal(t, tc.sessions, prep["device_update_sessions"], "db_load_connections: %d", tc.connections)
	}
	c3.Close(ctx)

	// A wrong KV password fails before anything is touched.
	bad := moduletest.Run(t, bin, merge(args, map[string]any{"kv_password": "wrong-Secret-0000", "force": true}))
	require.Equal(t, true, bad.Out["failed"])
	require.NotContains(t, bad.Stdout, "wrong-Secret-0000")
	out, _ = sd.Systemctl(ctx, "is-active", "flightctl-api.service")
	require.Equal(t, "active", strings.TrimSpace(out))
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}
