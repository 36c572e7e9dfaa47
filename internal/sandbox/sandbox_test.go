package sandbox_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/sandbox"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

func needSandbox(t testing.TB, withPodman bool) {
	t.Helper()
	testbed.Need(t, testbed.SystemdBinary, "unshare", "nsenter", "systemctl",
		filepath.Join(testbed.PostgresBinDir, "postgres"), filepath.Join(testbed.PostgresBinDir, "psql"), "redis-server")
	if withPodman {
		testbed.Need(t, "podman", "runc", "/bin/busybox", testbed.PodmanInitBinary)
	}
	if os.Geteuid() != 0 {
		testbed.Unavailable(t, "the sandbox needs root (cgroups, podman)")
	}
}

// managerPIDs lists every process in the sandbox's systemd cgroups.
func managerPIDs(t *testing.T, dir string) []int {
	t.Helper()
	sd, err := testbed.AttachSystemd(dir, nil)
	require.NoError(t, err)
	var pids []int
	for _, d := range sd.CgroupDirs {
		_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() && e.Name() == "cgroup.procs" {
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
			}
			return nil
		})
	}
	return pids
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestSandboxUpCheckDownWithPodman(t *testing.T) {
	needSandbox(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	prefix := testbed.PodmanName("sbx") + "-"
	st, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Devices: 20, Version: "0.9.7", Prefix: prefix})
	require.NoError(t, err)
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			_ = sandbox.Down(context.Background(), dir, nil)
		}
	})

	// Outputs.
	loaded, err := sandbox.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, st.DB.Port, loaded.DB.Port)
	fi, err := os.Stat(filepath.Join(dir, sandbox.StateFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	out, err := exec.Command("sh", "-c", `. "$1"; echo "$FLIGHTCTL_DR_DB_PORT $FLIGHTCTL_DR_SERVER_VERSION $XDG_RUNTIME_DIR"`, "sh", filepath.Join(dir, sandbox.EnvFile)).Output()
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("%d 0.9.7 %s\n", st.DB.Port, st.Systemd.RuntimeDir), string(out))
	var inv map[string]any
	b, err := os.ReadFile(filepath.Join(dir, sandbox.InventoryFile))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &inv))
	host := inv["all"].(map[string]any)["children"].(map[string]any)["flightctl_servers"].(map[string]any)["hosts"].(map[string]any)["sandbox"].(map[string]any)
	assert.Equal(t, st.DB.Password, host["flightctl_dr_db_password"])
	assert.Equal(t, "container", host["flightctl_dr_db_access"])
	assert.Equal(t, st.Systemd.BusAddress, host["flightctl_dr_environment"].(map[string]any)["DBUS_SESSION_BUS_ADDRESS"])

	// Status says up; units are active through go-systemd with the sandbox's bus.
	rep, err := sandbox.Status(ctx, dir)
	require.NoError(t, err)
	assert.True(t, rep.Up, "%+v", rep)
	m, err := units.Connect(ctx, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: st.Systemd.BusAddress})
	require.NoError(t, err)
	states, err := m.States(ctx, st.Units)
	require.NoError(t, err)
	for _, s := range states {
		assert.True(t, s.Active(), "%+v", s)
	}
	missing, err := m.State(ctx, "flightctl-imagebuilder-api.service")
	require.NoError(t, err)
	assert.False(t, missing.Exists(), "a host without imagebuilder")

	// What a restore does: stop the application units (the api container stops with its
	// unit), then start them again.
	cli := &podman.Client{}
	require.NoError(t, m.Stop(ctx, sandbox.ApplicationUnits))
	info, err := cli.InspectContainer(ctx, st.APIContainer)
	require.NoError(t, err)
	assert.False(t, info.Running, "the api container stops with its unit")
	tag, err := cli.ContainerImageTag(ctx, st.APIContainer)
	require.NoError(t, err)
	assert.Equal(t, "0.9.7", tag, "the version is discoverable while the api is stopped")
	dbState, err := m.State(ctx, "flightctl-db.service")
	require.NoError(t, err)
	assert.True(t, dbState.Active(), "the database unit is not an application unit")
	require.NoError(t, m.Start(ctx, sandbox.ApplicationUnits))
	info, err = cli.InspectContainer(ctx, st.APIContainer)
	require.NoError(t, err)
	assert.True(t, info.Running)
	m.Close()

	// Database: seeded rows reachable with the app credentials.
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/%s?sslmode=disable", st.DB.User, st.DB.Password, st.DB.Port, st.DB.Name))
	require.NoError(t, err)
	var devices, seen, ers, orgs, fleets, events int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM devices`).Scan(&devices))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM device_timestamps WHERE last_seen IS NOT NULL`).Scan(&seen))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM enrollment_requests`).Scan(&ers))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM organizations`).Scan(&orgs))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM fleets`).Scan(&fleets))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&events))
	assert.Equal(t, 20, devices)
	assert.Greater(t, seen, 0)
	assert.Less(t, seen, devices, "awaiting-reconnect devices have no last_seen")
	assert.Equal(t, 6, ers)
	assert.Equal(t, 3, orgs)
	assert.Equal(t, 6, fleets)
	assert.Equal(t, 5, events)
	var nullAnnotations, lifecycle, deleted int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM devices WHERE annotations IS NULL`).Scan(&nullAnnotations))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM devices WHERE status->'lifecycle'->>'status' IN ('Decommissioned','Decommissioning')`).Scan(&lifecycle))
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM devices WHERE deleted_at IS NOT NULL`).Scan(&deleted))
	assert.Greater(t, nullAnnotations, 0, "gorm writes SQL NULL annotations")
	assert.Equal(t, 2, lifecycle)
	assert.Equal(t, 1, deleted)
	conn.Close(ctx)

	// KV with its password; without it, refused.
	kv := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", st.KV.Port), Password: st.KV.Password})
	keys, err := kv.Keys(ctx, "v1/*").Result()
	require.NoError(t, err)
	assert.Len(t, keys, 19)
	kv.Close()
	bad := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", st.KV.Port), Password: "wrong"})
	assert.Error(t, bad.Ping(ctx).Err())
	bad.Close()

	// PKI: the server certificate chains to the CA; keys are private.
	caPEM, err := os.ReadFile(filepath.Join(st.PKIDir, "ca.crt"))
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(caPEM))
	srvPEM, err := os.ReadFile(filepath.Join(st.PKIDir, "flightctl-api", "server.crt"))
	require.NoError(t, err)
	blk, _ := pem.Decode(srvPEM)
	srv, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	_, err = srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost"})
	assert.NoError(t, err)
	for _, k := range []string{"ca.key", "client-signer.key", "flightctl-api/server.key"} {
		fi, err := os.Stat(filepath.Join(st.PKIDir, k))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), k)
	}
	assert.FileExists(t, filepath.Join(st.EncryptionDir, "key"))
	cfg, err := os.ReadFile(st.ConfigFile)
	require.NoError(t, err)
	assert.Contains(t, string(cfg), "\ndb:\n  type: builtin\n  name: flightctl\n")

	// Podman: secrets, version from the api image, the database reached through podman exec.
	pw, err := cli.ReadSecret(ctx, st.DB.UserSecret)
	require.NoError(t, err)
	assert.Equal(t, st.DB.Password, pw)
	tag, err = cli.ContainerImageTag(ctx, st.APIContainer)
	require.NoError(t, err)
	assert.Equal(t, "0.9.7", tag)
	var dump bytes.Buffer
	require.NoError(t, cli.Exec(ctx, podman.ExecOptions{
		Container: st.DB.Container,
		Command:   []string{"sh", "-c", "PGPASSWORD=$(cat -) exec pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U flightctl_app -d flightctl"},
		Stdin:     strings.NewReader(st.DB.Password),
		Stdout:    &dump,
	}))
	assert.Contains(t, dump.String(), "device-0019")
	var vol bytes.Buffer
	require.NoError(t, cli.VolumeExport(ctx, st.PAMVolume, &vol))
	assert.Contains(t, vol.String(), "pam.d/flightctl-pam-issuer")

	// Down: nothing left running, nothing left in podman.
	pids := managerPIDs(t, st.Systemd.Dir)
	require.NotEmpty(t, pids)
	require.NoError(t, sandbox.Down(ctx, dir, nil))
	downDone = true
	for _, pid := range append(pids, st.Systemd.PID) {
		assert.False(t, alive(pid), "pid %d still running", pid)
	}
	for _, c := range st.Containers {
		ok, err := cli.ContainerExists(ctx, c)
		require.NoError(t, err)
		assert.False(t, ok, c)
	}
	for _, s := range st.Secrets {
		_, err := cli.ReadSecret(ctx, s)
		assert.ErrorIs(t, err, podman.ErrNotFound, s)
	}
	ok, err := cli.VolumeExists(ctx, st.PAMVolume)
	require.NoError(t, err)
	assert.False(t, ok)
	assert.False(t, portOpen(st.DB.Port), "database port still open")
	assert.False(t, portOpen(st.KV.Port), "KV port still open")
	rep, err = sandbox.Status(ctx, dir)
	require.NoError(t, err)
	assert.False(t, rep.Up)
}

func TestSandboxWithoutPodman(t *testing.T) {
	needSandbox(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	st, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Devices: 10, NoPodman: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir, nil) })
	assert.Equal(t, "direct", st.DB.Access)
	rep, err := sandbox.Status(ctx, dir)
	require.NoError(t, err)
	assert.True(t, rep.Up, "%+v", rep)
	total := 0
	for _, n := range rep.Devices {
		total += n
	}
	assert.Equal(t, 9, total, "10 devices, one soft-deleted")

	// Up again on a running sandbox is refused.
	_, err = sandbox.Up(ctx, sandbox.Options{Dir: dir, NoPodman: true})
	assert.ErrorContains(t, err, "already up")

	pids := managerPIDs(t, st.Systemd.Dir)
	require.NoError(t, sandbox.Down(ctx, dir, nil))
	for _, pid := range append(pids, st.Systemd.PID) {
		assert.False(t, alive(pid), "pid %d still running", pid)
	}
	assert.False(t, portOpen(st.DB.Port))
	assert.False(t, portOpen(st.KV.Port))
	assert.NoError(t, syscall.Access(dir, 0))
}

// BenchmarkSandboxUpDown measures a whole sandbox life with podman (30 devices).
func BenchmarkSandboxUpDown(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		if _, err := sandbox.Up(context.Background(), sandbox.Options{Dir: dir, Prefix: testbed.PodmanName("bsbx") + "-"}); err != nil {
			b.Fatal(err)
		}
		if err := sandbox.Down(context.Background(), dir, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// Sandboxes of the same server version share the api image's version name (podman's
// storage is the machine's). The first one down removed that name under the other, so a
// third one started beside it (another test run at the same time) found no image to
// create its api container from.
func TestSandboxDownKeepsAnImageNameAnotherSandboxUses(t *testing.T) {
	needSandbox(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	version := "0.9.8-" + testbed.PodmanName("shared")
	var dirs [2]string
	var states [2]*sandbox.State
	for i := range dirs {
		dirs[i] = t.TempDir()
		dir := dirs[i]
		st, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Devices: 2, Version: version, Prefix: testbed.PodmanName(fmt.Sprintf("img%d", i)) + "-"})
		require.NoError(t, err)
		t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir, nil) })
		states[i] = st
	}
	require.Equal(t, states[0].APIImage, states[1].APIImage)
	image := states[0].APIImage
	cli := &podman.Client{}
	imageExists := func() bool {
		_, err := exec.Command("podman", "image", "exists", image).Output()
		return err == nil
	}

	require.NoError(t, sandbox.Down(ctx, dirs[0], nil))
	assert.True(t, imageExists(), "%s removed while the other sandbox's api container uses it", image)
	tag, err := cli.ContainerImageTag(ctx, states[1].APIContainer)
	require.NoError(t, err)
	assert.Equal(t, version, tag)

	require.NoError(t, sandbox.Down(ctx, dirs[1], nil))
	assert.False(t, imageExists(), "%s left behind by the last sandbox using it", image)
}
