// Package runbooks_test runs the procedures of Red Hat's "Backup and restore" document
// (Red Hat Edge Manager 1.2) that flightctl-backup and flightctl-restore take part in,
// command by command as written there, against the sandbox estate, and checks what the
// document says to verify. Where a line cannot run on this machine as written, the test
// says why and what it runs instead.
package runbooks_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/moduletest"
)

// TestMain removes the module binaries the runbooks build.
func TestMain(m *testing.M) { moduletest.Main(m) }

// §1.8 step 3 and §3.2 step 2 / step 11: the application units, as the document lists them.
const (
	stopUnits18 = `
sudo systemctl stop flightctl-api.service
sudo systemctl stop flightctl-worker.service
sudo systemctl stop flightctl-periodic.service
sudo systemctl stop flightctl-alert-exporter.service
sudo systemctl stop flightctl-alertmanager-proxy.service
sudo systemctl stop flightctl-telemetry-gateway.service
sudo systemctl stop flightctl-pam-issuer.service
sudo systemctl stop flightctl-cli-artifacts.service
sudo systemctl stop flightctl-alertmanager.service
sudo systemctl stop flightctl-imagebuilder-api.service
sudo systemctl stop flightctl-imagebuilder-worker.service
sudo systemctl stop flightctl-ui.service`
	startUnits18 = `
sudo systemctl start flightctl-api.service
sudo systemctl start flightctl-worker.service
sudo systemctl start flightctl-periodic.service
sudo systemctl start flightctl-alert-exporter.service
sudo systemctl start flightctl-alertmanager-proxy.service
sudo systemctl start flightctl-telemetry-gateway.service
sudo systemctl start flightctl-pam-issuer.service
sudo systemctl start flightctl-cli-artifacts.service
sudo systemctl start flightctl-alertmanager.service
sudo systemctl start flightctl-imagebuilder-api.service
sudo systemctl start flightctl-imagebuilder-worker.service
sudo systemctl start flightctl-ui.service`
	stopUnits32  = "sudo systemctl stop flightctl-gateway.service" + stopUnits18
	startUnits32 = startUnits18 + "\nsudo systemctl start flightctl-gateway.service"

	// §1.8 step 4 and §3.2 steps 5-6.
	retrieveSecrets = `DB_APP_PASSWORD=$(sudo podman secret inspect flightctl-postgresql-user-password --showsecret | jq -r '.[0].SecretData')
KV_PASSWORD=$(sudo podman secret inspect flightctl-kv-password --showsecret | jq -r '.[0].SecretData')`

	// §1.11.1, the cron line (after the schedule and user fields).
	cronLine = `# /etc/cron.d/rhem-backup (example — adjust paths and retention to your environment)
0 2 * * * root /usr/local/bin/flightctl-backup --output /var/backups/rhem && \
  find /var/backups/rhem -name 'flightctl-backup-*.tar.gz' -mtime +14 -delete`
)

var versionRE = regexp.MustCompile(`^Flight Control (Backup|Restore) Version: (v?\d+\.\d+\.\d+\S*) \(flightctl\.dr .+\)\n$`)

// TestRunbooks runs, in order on one sandbox: §1.7 (back up the full server), §1.11.1
// (the cron line), §1.8 (restore the full server from the archive) and §3.2 (a DBA-led
// database restore, then flightctl-restore without an archive for device preparation).
func TestRunbooks(t *testing.T) {
	h := newHost(t)
	ctx := context.Background()

	t.Run("1.7 backing up the full server", func(t *testing.T) {
		h.t = t
		// Step 1.
		r := h.ok("flightctl-backup version")
		m := versionRE.FindStringSubmatch(r.stdout)
		require.NotNil(t, m, "the release first, then ours: %q", r.stdout)
		// Step 2.
		h.ok(`sudo mkdir -p /var/backups/rhem
sudo chown "$(whoami)" /var/backups/rhem`)
		// Step 3: both forms.
		r = h.ok("flightctl-backup --output /var/backups/rhem")
		require.Contains(t, r.stdout, "Backup completed successfully: /var/backups/rhem/flightctl-backup-")
		r = h.ok("flightctl-backup --output /var/backups/rhem --config /etc/flightctl/service-config.yaml")
		require.Contains(t, r.stdout, "Backup completed successfully: /var/backups/rhem/flightctl-backup-")
		// A wrong --config is refused in the words of this command line.
		r = h.run("flightctl-backup --output /var/backups/rhem --config /etc/flightctl/no-such.yaml")
		require.Equal(t, 1, r.code, r)
		require.Contains(t, r.stderr, "point --config at the server's service-config.yaml")
		require.NotContains(t, r.stderr, "config_file")

		// Step 4, and the verification: sha256sum -c reports OK, -rw-------. The .sha256
		// names the archive without a directory (the format upstream's restore reads), so
		// sha256sum -c runs in the directory of the archive, as §1.5 says.
		r = h.ok("ls -l /var/backups/rhem/flightctl-backup-*.tar.gz*")
		archives := 0
		for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if strings.HasSuffix(line, ".tar.gz") {
				archives++
				require.True(t, strings.HasPrefix(line, "-rw------- "), "archive permissions: %s", line)
			}
		}
		require.Equal(t, 2, archives)
		r = h.ok("cd /var/backups/rhem && sha256sum -c /var/backups/rhem/flightctl-backup-*.tar.gz.sha256")
		require.Regexp(t, `(?m)^flightctl-backup-\d{8}T\d{6}Z\.tar\.gz: OK$`, r.stdout)
		require.Equal(t, 2, strings.Count(r.stdout, ": OK"))
		// Run from anywhere else, the document's line cannot find the archive.
		r = h.run("cd / && sha256sum -c /var/backups/rhem/flightctl-backup-*.tar.gz.sha256")
		require.NotEqual(t, 0, r.code)
		requireUnitsActive(t, h, h.st.Units)
	})

	t.Run("1.11.1 the cron line", func(t *testing.T) {
		h.t = t
		old := filepath.Join(h.backups, "rhem", "flightctl-backup-20200101T020000Z.tar.gz")
		recent := filepath.Join(h.backups, "rhem", "flightctl-backup-20200102T020000Z.tar.gz")
		for p, age := range map[string]time.Duration{old: 20 * 24 * time.Hour, recent: 5 * 24 * time.Hour} {
			require.NoError(t, os.WriteFile(p, []byte("an older archive"), 0o600))
			tm := time.Now().Add(-age)
			require.NoError(t, os.Chtimes(p, tm, tm))
		}
		before := archivesIn(t, h.backups)
		// cron runs the command with /bin/sh and its own small environment.
		command := strings.TrimPrefix(strings.SplitN(cronLine, "\n", 2)[1], "0 2 * * * root ")
		r := h.runEnv([]string{"PATH=" + h.shims + ":/usr/bin:/bin", "HOME=/root", "LOGNAME=root", "SHELL=/bin/sh"}, command)
		require.Equal(t, 0, r.code, r)
		after := archivesIn(t, h.backups)
		require.NotContains(t, after, filepath.Base(old), "older than 14 days: deleted")
		require.Contains(t, after, filepath.Base(recent), "5 days old: kept")
		require.Len(t, after, len(before), "one new archive, one deleted")
		require.NoError(t, os.Remove(recent))
		// §1.11.3: sha256sum -c on the newest archive.
		newest := after[len(after)-1]
		h.ok("cd /var/backups/rhem && sha256sum -c " + newest + ".sha256")
	})

	// The archive §1.8 restores: the newest; then the server moves on (rows deleted, a
	// fleet added, the CA replaced), which the restore must undo.
	names := archivesIn(t, h.backups)
	archive := "/var/backups/rhem/" + names[len(names)-1]
	devicesBefore := deviceNames(t, h)
	caBefore, err := os.ReadFile(filepath.Join(h.st.PKIDir, "ca.crt"))
	require.NoError(t, err)
	damage(t, h)

	t.Run("1.8 restoring the full server", func(t *testing.T) {
		h.t = t
		// Step 1.
		r := h.ok("flightctl-restore version")
		require.Regexp(t, versionRE, r.stdout)
		// Step 2.
		r = h.ok("cd /var/backups/rhem && sha256sum -c " + archive + ".sha256")
		require.Contains(t, r.stdout, ": OK")
		// Step 3.
		h.systemctlLines(stopUnits18)
		requireUnitsInactive(t, h, "flightctl-api.service", "flightctl-worker.service")
		requireUnitsActive(t, h, []string{"flightctl-db.service", "flightctl-kv.service"})
		// Step 4, as written.
		r = h.ok(retrieveSecrets + `
export DB_PASSWORD="$DB_APP_PASSWORD" KV_PASSWORD="$KV_PASSWORD"
flightctl-restore ` + archive)
		out := r.stdout + r.stderr
		require.Contains(t, r.stdout, "Restored from "+filepath.Base(archive))
		require.NotContains(t, strings.ToLower(out), "checksum mismatch")
		require.NotContains(t, out, "deployment type mismatch")
		require.NotContains(t, out, "CREATE TABLE", "no psql noise")
		// Run again, nothing has changed since: nothing to do, and the way to force it is
		// a flag of this command line.
		r = h.ok(retrieveSecrets + `
export DB_PASSWORD="$DB_APP_PASSWORD" KV_PASSWORD="$KV_PASSWORD"
flightctl-restore ` + archive)
		require.Contains(t, r.stdout, "Nothing done: this server was already restored from this archive")
		require.Contains(t, r.stdout, "Set --force to restore it again.")
		require.NotContains(t, r.stdout+r.stderr, "force: true")
		// Step 5.
		h.systemctlLines(startUnits18)
		// The document's step 3 does not stop flightctl-gateway.service, but stopping
		// flightctl-api.service stops it (Requires=), and step 5 does not start it: after
		// §1.8 as written the gateway is down. §3.2 step 11 starts it; so do we.
		require.Equal(t, "inactive", unitState(t, h, "flightctl-gateway.service"))
		h.ok("sudo systemctl start flightctl-gateway.service")
		// Verification: the server is back as backed up, devices AwaitingReconnect.
		requireUnitsActive(t, h, h.st.Units)
		require.Equal(t, devicesBefore, deviceNames(t, h))
		ca, err := os.ReadFile(filepath.Join(h.st.PKIDir, "ca.crt"))
		require.NoError(t, err)
		require.Equal(t, string(caBefore), string(ca))
		requireAwaitingReconnect(t, h)
		// The devices reconnect, as the server would record it.
		devicesReconnect(t, h)
	})

	t.Run("3.2 device preparation refused while the server runs", func(t *testing.T) {
		h.t = t
		kv := kvClient(h)
		defer kv.Close()
		require.NoError(t, kv.Set(ctx, "v1/cache/live", "x", 0).Err())
		r := h.run(retrieveSecrets + `
DB_PASSWORD="$DB_APP_PASSWORD" KV_PASSWORD="$KV_PASSWORD" ./bin/flightctl-restore`)
		require.Equal(t, 1, r.code, r)
		require.Contains(t, r.stderr, "device preparation refused: the application units flightctl-api.service")
		require.Contains(t, r.stderr, "would flush the KV store")
		require.Contains(t, r.stderr, "or set --allow-running-units")
		require.NotContains(t, r.stderr, "allow_running_units")
		require.Equal(t, int64(1), kv.Exists(ctx, "v1/cache/live").Val(), "nothing flushed")
		requireUnitsActive(t, h, h.st.Units)
	})

	t.Run("3.2 restore using quadlets and flightctl-restore", func(t *testing.T) {
		h.t = t
		// Step 1.
		r := h.ok("flightctl-restore version")
		require.Regexp(t, versionRE, r.stdout)
		// The DBA's own backup, taken while the server ran.
		h.ok("sudo podman exec flightctl-db pg_dump --clean --if-exists -U postgres -d flightctl > dba-dump.sql")
		devices := deviceNames(t, h)
		damage(t, h)
		// Step 2.
		h.systemctlLines(stopUnits32)
		// Step 3.
		h.run("sudo systemctl status flightctl-api.service")
		r = h.run("systemctl is-active flightctl-api.service")
		require.Equal(t, "inactive\n", r.stdout)
		// Step 4: the DBA's restore (psql with a SQL dump).
		h.ok("sudo podman exec -i flightctl-db psql -q -v ON_ERROR_STOP=1 -U postgres -d flightctl < dba-dump.sql > /dev/null")
		require.Equal(t, devices, deviceNames(t, h))
		// Steps 5, 6 and 7 (the optional checks through the containers).
		r = h.ok(retrieveSecrets + `
echo "Database password retrieved successfully"
echo "KV store credentials retrieved successfully"
sudo podman exec flightctl-db pg_isready -U postgres
sudo podman exec flightctl-db psql -U flightctl_app -d flightctl -c 'SELECT 1' </dev/null`)
		require.Contains(t, r.stdout, "accepting connections")
		// Step 8 publishes 5432 and 6379 through quadlet drop-ins. Not here: Debian's
		// podman has no quadlet generator, and 5432/6379 may belong to others on this
		// machine. The sandbox publishes the same two ports on private loopback ports, and
		// step 8's checks run against those.
		r = h.ok(retrieveSecrets+`
pg_isready -h localhost -p "$DB_PORT"
REDISCLI_AUTH="$KV_PASSWORD" redis-cli -h localhost -p "$KV_PORT" ping`,
			fmt.Sprintf("DB_PORT=%d", h.st.DB.Port), fmt.Sprintf("KV_PORT=%d", h.st.KV.Port))
		require.Contains(t, r.stdout, "PONG")
		kv := kvClient(h)
		defer kv.Close()
		require.NoError(t, kv.Set(ctx, "v1/cache/stale", "x", 0).Err())
		// Step 9, as written.
		r = h.ok(retrieveSecrets + `
DB_PASSWORD="$DB_APP_PASSWORD" KV_PASSWORD="$KV_PASSWORD" ./bin/flightctl-restore`)
		require.Contains(t, r.stderr, "device preparation will flush the KV store")
		require.Regexp(t, `Device preparation done: KV store flushed, \d+ devices marked AwaitingReconnect`, r.stdout)
		require.Equal(t, int64(0), kv.Exists(ctx, "v1/cache/stale").Val(), "the KV store was flushed")
		// Step 10 removes the drop-ins of step 8: there are none here.
		// Step 11.
		h.systemctlLines(startUnits32)
		r = h.ok(`sudo podman ps --filter "name=flightctl-"`)
		require.Contains(t, r.stdout, "flightctl-db")
		requireUnitsActive(t, h, h.st.Units)
		requireAwaitingReconnect(t, h)
	})

	t.Run("sandbox database trusts connections from inside its container", func(t *testing.T) {
		h.t = t
		// As the flightctl-db image: upstream's backup runs pg_dump -h 127.0.0.1 inside the
		// container with an empty password.
		h.ok("sudo podman exec flightctl-db sh -c 'PGPASSWORD= pg_dump --schema-only -h 127.0.0.1 -p 5432 -U flightctl_app -d flightctl' > /dev/null")
		// Through the published port a password is still needed.
		r := h.run(fmt.Sprintf("psql -w -h 127.0.0.1 -p %d -U flightctl_app -d flightctl -c 'SELECT 1'", h.st.DB.Port))
		require.NotEqual(t, 0, r.code, r)
	})
}

func archivesIn(t *testing.T, backups string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(backups, "rhem", "flightctl-backup-*.tar.gz"))
	require.NoError(t, err)
	out := make([]string, len(m))
	for i, p := range m {
		out[i] = filepath.Base(p)
	}
	return out
}

func dbConn(t *testing.T, h *host) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", h.st.DB.User, h.st.DB.Password, h.st.DB.Port, h.st.DB.Name))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func kvClient(h *host) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", h.st.KV.Port), Password: h.st.KV.Password})
}

func deviceNames(t *testing.T, h *host) []string {
	t.Helper()
	rows, err := dbConn(t, h).Query(context.Background(), `SELECT org_id::text || '/' || name FROM devices ORDER BY 1`)
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, names)
	return names
}

// damage is the server moving on after the backup.
func damage(t *testing.T, h *host) {
	t.Helper()
	c := dbConn(t, h)
	_, err := c.Exec(context.Background(), `DELETE FROM devices WHERE name IN (SELECT name FROM devices ORDER BY name LIMIT 3)`)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(h.st.PKIDir, "ca.crt"), []byte("a CA the backup never saw\n"), 0o644))
}

// devicesReconnect does what the server does when each device reconnects after a restore:
// the annotation and the KV key go, the device is Online again.
func devicesReconnect(t *testing.T, h *host) {
	t.Helper()
	ctx := context.Background()
	_, err := dbConn(t, h).Exec(ctx, `UPDATE devices SET annotations = coalesce(annotations, '{}') - 'device-controller/awaitingReconnect',
		status = jsonb_set(coalesce(status, '{}'), '{summary}', '{"status":"Online","info":"Device is up to date"}')
		WHERE deleted_at IS NULL`)
	require.NoError(t, err)
	kv := kvClient(h)
	defer kv.Close()
	keys, err := kv.Keys(ctx, "v1/*/awaiting-reconnect").Result()
	require.NoError(t, err)
	if len(keys) > 0 {
		require.NoError(t, kv.Del(ctx, keys...).Err())
	}
}

// requireAwaitingReconnect: every device the server will talk to again is
// AwaitingReconnect, and has the KV key without which it would stay so forever.
func requireAwaitingReconnect(t *testing.T, h *host) {
	t.Helper()
	rows, err := dbConn(t, h).Query(context.Background(), `SELECT 'v1/' || org_id::text || '/device/' || name || '/awaiting-reconnect',
		coalesce(status->'summary'->>'status', '') FROM devices
		WHERE deleted_at IS NULL AND coalesce(status->'lifecycle'->>'status', '') NOT IN ('Decommissioned', 'Decommissioning')`)
	require.NoError(t, err)
	type dev struct {
		Key, Summary string
	}
	devs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[dev])
	require.NoError(t, err)
	require.NotEmpty(t, devs)
	kv := kvClient(h)
	defer kv.Close()
	for _, d := range devs {
		require.Equal(t, "AwaitingReconnect", d.Summary, d.Key)
		require.Equal(t, "true", kv.Get(context.Background(), d.Key).Val(), d.Key)
	}
}

func unitState(t *testing.T, h *host, unit string) string {
	r := h.run("systemctl is-active " + unit)
	return strings.TrimSpace(r.stdout)
}

func requireUnitsActive(t *testing.T, h *host, units []string) {
	t.Helper()
	for _, u := range units {
		require.Equal(t, "active", unitState(t, h, u), u)
	}
}

func requireUnitsInactive(t *testing.T, h *host, units ...string) {
	t.Helper()
	for _, u := range units {
		require.Equal(t, "inactive", unitState(t, h, u), u)
	}
}
