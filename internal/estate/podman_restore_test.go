package estate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/archive/archivetest"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

// The psql command never carries a password in argv: in the container it is copied from
// podman's environment with -e NAME. (runner.Fake: only the command line is checked.)
func TestPodmanRestorePsqlCommandKeepsPasswordOutOfArgv(t *testing.T) {
	for _, access := range []estate.DBAccess{estate.DBAccessContainer, estate.DBAccessDirect} {
		cfg := estate.DefaultPodmanConfig()
		cfg.DBAccess, cfg.DBAdminPassword, cfg.DBName = access, "s3cret-pw", "flightctl"
		fake := &runner.Fake{Handle: func(c runner.Cmd, stdin []byte) (string, error) { return "1\n", nil }}
		p := &estate.PodmanRestore{Config: cfg, Runner: fake, UnitManager: noUnits{}}
		require.NoError(t, p.Open(context.Background()))
		ok, err := p.Database().Exists(context.Background(), "flightctl")
		require.NoError(t, err)
		require.True(t, ok)
		require.Len(t, fake.Calls, 1)
		c := fake.Calls[0].Cmd
		require.NotContains(t, c.String(), "s3cret-pw")
		require.Contains(t, c.Env, "PGPASSWORD=s3cret-pw")
		require.Contains(t, string(fake.Calls[0].Stdin), "pg_database", "SQL travels on stdin")
		if access == estate.DBAccessContainer {
			require.Equal(t, "podman", c.Name)
			require.Equal(t, []string{"exec", "-i", "-e", "PGOPTIONS", "-e", "PGPASSWORD", "flightctl-db", "psql", "-U", "postgres"}, c.Args[:10])
		} else {
			require.Equal(t, "psql", filepath.Base(c.Name))
			require.Equal(t, []string{"-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-w"}, c.Args[:7])
		}
	}
}

type noUnits struct{}

func (noUnits) UnitState(context.Context, string) (restore.UnitState, error) {
	return restore.UnitState{}, nil
}
func (noUnits) StopUnits(context.Context, []string) error  { return nil }
func (noUnits) StartUnits(context.Context, []string) error { return nil }

// TestPodmanRestoreInContainer restores through `podman exec flightctl-db psql` (upstream's
// way) into PostgreSQL running in a real podman container, re-imports a real PAM volume,
// and checks that a failure after the volume step puts the volume's content back.
func TestPodmanRestoreInContainer(t *testing.T) {
	ctx := context.Background()
	pod := testbed.PodmanForTest(t)
	sd := testbed.SystemdForTest(t)
	dbName := testbed.PodmanName("flightctl-db")
	kvName := testbed.PodmanName("flightctl-kv")
	kv := startRedisContainer(t, pod, kvName, "kv-Secret-4711")
	require.NoError(t, kv.Set(ctx, "stale-cache", "x", 0).Err())
	pp := testbed.PodmanPostgresForTest(t, pod, dbName)
	require.NoError(t, pp.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{}))
	exec1 := func(sql string) {
		c, err := pp.SuperuserConn(ctx, "flightctl")
		require.NoError(t, err)
		defer c.Close(ctx)
		_, err = c.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	count := func() int {
		c, err := pp.SuperuserConn(ctx, "flightctl")
		require.NoError(t, err)
		defer c.Close(ctx)
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM devices`).Scan(&n))
		return n
	}
	for i := 0; i < 3; i++ {
		exec1(fmt.Sprintf(`INSERT INTO devices (org_id, name, created_at, updated_at, spec, status) VALUES ('%s', 'dev-%d', now(), now(), '{}', '{}')`, testbed.DefaultOrgID, i))
	}
	require.NoError(t, sd.WriteUnit("flightctl-api.service", "[Service]\nExecStart=/bin/sleep infinity\n"))
	require.NoError(t, sd.DaemonReload(ctx))
	_, err := sd.Systemctl(ctx, "start", "flightctl-api.service")
	require.NoError(t, err)

	volume := testbed.PodmanName("flightctl-pam-issuer-etc")
	require.NoError(t, pod.CreateVolume(ctx, volume, map[string]string{"pam.d/issuer": "backed up\n"}))
	var volTar bytes.Buffer
	require.NoError(t, pod.Client().VolumeExport(ctx, volume, &volTar))

	root := t.TempDir()
	pki := filepath.Join(root, "pki")
	require.NoError(t, os.MkdirAll(pki, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("CA\n"), 0o644))
	cfgFile := filepath.Join(root, "service-config.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("db:\n  name: flightctl\n"), 0o600))

	// The dump as the backup takes it: pg_dump inside the container.
	dump, err := pod.Podman(ctx, "exec", dbName, "pg_dump", "--clean", "--if-exists", "-U", "postgres", "-d", "flightctl")
	require.NoError(t, err)
	ar := archivetest.Write(t, t.TempDir(), archivetest.Content{
		Dump: []byte(dump), PKIDir: pki, Config: []byte("db:\n  name: flightctl\n"), Volume: volTar.Bytes(),
		Metadata: archive.Metadata{Version: "v1.4.0", DeploymentType: "podman", DatabaseIncluded: true},
	})

	// Damage: a row, and the volume's content.
	exec1(`DELETE FROM devices WHERE name = 'dev-0'`)
	require.NoError(t, pod.Client().VolumeReplace(ctx, volume, tarOf(t, map[string]string{"pam.d/issuer": "damaged\n", "stray": "x\n"})))

	target := func() *estate.PodmanRestore {
		cfg := estate.DefaultPodmanConfig()
		// No host or port: device preparation finds the database at the port podman
		// publishes, and the KV store (published nowhere) at its container's IP.
		cfg.DBContainer, cfg.DBHost, cfg.DBPort, cfg.DBPassword = dbName, "", 0, "apppass"
		cfg.KVContainer, cfg.KVHost, cfg.KVPort, cfg.KVPassword = kvName, "", 0, "kv-Secret-4711"
		cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile, cfg.PAMVolume = pki, "", cfgFile, volume
		cfg.SystemdScope, cfg.SystemdBusAddress = string(units.ScopeUser), sd.BusAddress
		cfg.Units = []string{"flightctl-api.service"}
		p := &estate.PodmanRestore{Config: cfg, RunningVersion: "v1.4.0", Runner: runner.Exec{BaseEnv: append(os.Environ(), pod.Env...)}}
		require.NoError(t, p.Open(ctx))
		t.Cleanup(p.Close)
		return p
	}
	volumeFiles := func() string {
		var buf bytes.Buffer
		require.NoError(t, pod.Client().VolumeExport(ctx, volume, &buf))
		cmd := exec.Command("tar", "-xOf", "-", "pam.d/issuer")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		content, _ := cmd.Output()
		list := exec.Command("tar", "-tf", "-")
		list.Stdin = bytes.NewReader(buf.Bytes())
		names, err := list.Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(content)) + " | " + strings.Join(strings.Fields(string(names)), " ")
	}
	dbAt, kvAt, err := target().Endpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, estate.Endpoint{Host: "127.0.0.1", Port: pp.Port, Source: "published port of container " + dbName}, dbAt)
	require.Equal(t, "IP of container "+kvName, kvAt.Source)
	require.Equal(t, 6379, kvAt.Port)
	require.Equal(t, kv.Options().Addr, kvAt.String())

	damagedVolume := volumeFiles()
	require.Contains(t, damagedVolume, "damaged")

	state := filepath.Join(root, "state")
	spareOpts := *kv.Options()
	spareOpts.DB = 15
	spare := redis.NewClient(&spareOpts)
	defer spare.Close()
	// A failure after the volume was replaced puts it back, with the database; the keys
	// staged before the stop are dropped.
	_, err = restore.Run(ctx, restore.Options{ArchivePath: ar.Path, Target: target(), StateDir: state, FlushKV: true,
		Checkpoint: func(name string) error {
			if name == restore.StepStopUnits {
				require.Equal(t, int64(3+1), spare.DBSize(ctx).Val(), "3 keys and the stage's marker, staged before the stop")
			}
			if name == restore.StepVolume {
				require.Contains(t, volumeFiles(), "backed up")
				return errors.New("injected failure")
			}
			return nil
		}})
	require.ErrorContains(t, err, "injected failure")
	require.Equal(t, damagedVolume, volumeFiles())
	require.Equal(t, 2, count())
	require.Zero(t, spare.DBSize(ctx).Val(), "the staged keys are dropped")

	res, err := restore.Run(ctx, restore.Options{ArchivePath: ar.Path, Target: target(), StateDir: state, FlushKV: true})
	require.NoError(t, err)
	require.Contains(t, res.Steps, restore.StepVolume)
	require.Equal(t, 3, count())
	got := volumeFiles()
	require.True(t, strings.HasPrefix(got, "backed up |"), got)
	require.NotContains(t, got, "stray", "the import replaces the volume's content, it does not overlay it")
	out, _ := sd.Systemctl(ctx, "is-active", "flightctl-api.service")
	require.Equal(t, "active", strings.TrimSpace(out))
	_, err = os.Stat(filepath.Join(state, "pam-volume-before-"+res.RestoreID+".tar"))
	require.True(t, os.IsNotExist(err), "the saved volume is removed at the end")
	// Device preparation ran against the KV container it found: flushed, then one key
	// per device.
	require.Equal(t, int64(0), kv.Exists(ctx, "stale-cache").Val())
	keys, err := kv.Keys(ctx, "v1/*/awaiting-reconnect").Result()
	require.NoError(t, err)
	require.Len(t, keys, 3)
	require.Equal(t, true, res.DevicePrep.(*devprep.Result).KeysStaged, "staged before the stop, swapped in during it")
	require.Zero(t, spare.DBSize(ctx).Val())
}

// startRedisContainer runs redis-server in a container that publishes no port, as a KV
// store only reachable at the container's IP, and returns a client connected there.
func startRedisContainer(t testing.TB, pod *testbed.Podman, name, password string) *redis.Client {
	t.Helper()
	ctx := context.Background()
	testbed.Need(t, "/usr/bin/redis-server")
	conf := filepath.Join(t.TempDir(), "redis.conf")
	require.NoError(t, os.WriteFile(conf, []byte("port 6379\nbind 0.0.0.0\nrequirepass "+password+"\nsave \"\"\nappendonly no\n"), 0o644))
	require.NoError(t, pod.RunContainer(ctx, testbed.PodmanContainerOptions{Name: name, Image: testbed.PodmanHostUsrImage,
		Volumes: []string{"/usr:/usr:ro", conf + ":/etc/redis/redis.conf:ro"}, Command: []string{"/usr/bin/redis-server", "/etc/redis/redis.conf"}}))
	ip, err := pod.Client().ContainerIP(ctx, name)
	require.NoError(t, err)
	require.NotEmpty(t, ip)
	kv := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(ip, "6379"), Password: password})
	t.Cleanup(func() { kv.Close() })
	// Wait (not a timed assertion) until the server answers.
	deadline := time.Now().Add(30 * time.Second)
	for kv.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			logs, _ := pod.Podman(ctx, "logs", name)
			t.Fatalf("redis in container %s does not answer at %s: %v\n%s", name, ip, kv.Ping(ctx).Err(), logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return kv
}

// The address device preparation uses, in every case but the real ones covered above
// (runner.Fake: podman's answers only).
func TestPodmanRestoreEndpointsFake(t *testing.T) {
	ctx := context.Background()
	target := func(cfg estate.PodmanConfig, handle func(c runner.Cmd) (string, error)) (*estate.PodmanRestore, *runner.Fake) {
		cfg.PKIDir, cfg.ConfigFile = t.TempDir(), filepath.Join(t.TempDir(), "missing.yaml")
		fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) { return handle(c) }}
		p := &estate.PodmanRestore{Config: cfg, Runner: fake, UnitManager: noUnits{}}
		require.NoError(t, p.Open(ctx))
		return p, fake
	}
	noHost := func() estate.PodmanConfig {
		c := estate.DefaultPodmanConfig()
		c.DBHost, c.DBPort, c.KVHost, c.KVPort = "", 0, "", 0
		return c
	}

	// Given explicitly: used as they are, podman is not asked.
	cfg := noHost()
	cfg.DBPort, cfg.KVHost = 15432, "10.1.2.3"
	p, fake := target(cfg, func(runner.Cmd) (string, error) { return "", errors.New("podman must not run") })
	db, kv, err := p.Endpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:15432 10.1.2.3:6379", db.String()+" "+kv.String())
	require.Empty(t, fake.Calls)

	// Direct access: upstream's defaults, podman is not asked.
	cfg = noHost()
	cfg.DBAccess = estate.DBAccessDirect
	p, fake = target(cfg, func(runner.Cmd) (string, error) { return "", errors.New("podman must not run") })
	db, kv, err = p.Endpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:5432 127.0.0.1:6379", db.String()+" "+kv.String())
	require.Empty(t, fake.Calls)

	// Host network: nothing published, no IP of its own: loopback and the service's port.
	p, _ = target(noHost(), func(c runner.Cmd) (string, error) { return "", nil })
	db, kv, err = p.Endpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:5432 127.0.0.1:6379", db.String()+" "+kv.String())
	require.Equal(t, "host network of container flightctl-db", db.Source)

	// A missing container tells the operator what to do.
	p, _ = target(noHost(), func(c runner.Cmd) (string, error) {
		return "", &runner.ExitError{ExitCode: 125, Stderr: `Error: no container with name or ID "flightctl-db" found: no such container`}
	})
	_, _, err = p.Endpoints(ctx)
	require.ErrorContains(t, err, "container flightctl-db does not exist: start its unit, or give db_host and db_port")
}

func tarOf(t *testing.T, files map[string]string) *bytes.Buffer {
	dir := t.TempDir()
	for p, c := range files {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644))
	}
	out, err := exec.Command("tar", "-C", dir, "-cf", "-", ".").Output()
	require.NoError(t, err)
	return bytes.NewBuffer(out)
}
