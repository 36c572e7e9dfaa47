package testbed

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/podman"
)

func TestPodmanRunsNamedContainer(t *testing.T) {
	p := PodmanForTest(t)
	ctx := context.Background()
	name := PodmanName("fdr-tb")
	require.NoError(t, p.RunContainer(ctx, PodmanContainerOptions{Name: name, Command: []string{"sleep", "3600"}}))
	info, err := p.Client().InspectContainer(ctx, name)
	require.NoError(t, err)
	assert.True(t, info.Running)
	require.NoError(t, p.RemoveContainer(ctx, name))
	ok, err := p.Client().ContainerExists(ctx, name)
	require.NoError(t, err)
	assert.False(t, ok)
}

// TestPodmanRunsTheHostUsrImageOnANewStore starts a container of the host-/usr image (as the
// KV store of the container benchmarks and tests is) on a store that has never held it, as
// on a new machine: it used to exist only once a PostgreSQL container had been started.
func TestPodmanRunsTheHostUsrImageOnANewStore(t *testing.T) {
	Need(t, "podman", "runc", "/bin/busybox", PodmanInitBinary)
	if os.Geteuid() != 0 {
		Unavailable(t, "the podman test bed runs rootful podman and needs root")
	}
	ctx := context.Background()
	p, err := StartPodman(ctx, PodmanOptions{Dir: t.TempDir(), OwnStore: true})
	require.NoError(t, err)
	t.Cleanup(p.Cleanup)
	_, err = p.Podman(ctx, "image", "exists", PodmanHostUsrImage)
	require.Error(t, err, "a new store holds no host-/usr image yet")

	name := PodmanName("fdr-hostusr")
	require.NoError(t, p.RunContainer(ctx, PodmanContainerOptions{Name: name, Image: PodmanHostUsrImage,
		Volumes: []string{"/usr:/usr:ro"}, Command: []string{"/usr/bin/sleep", "3600"}}))
	info, err := p.Client().InspectContainer(ctx, name)
	require.NoError(t, err)
	assert.True(t, info.Running)
	require.NoError(t, p.RemoveContainer(ctx, name))
}

// TestPodmanPostgresUpstreamCommands runs the commands upstream's backup and restore run
// against flightctl-db, inside a real container.
func TestPodmanPostgresUpstreamCommands(t *testing.T) {
	p := PodmanForTest(t)
	pg := PodmanPostgresForTest(t, p, PodmanName("flightctl-db"))
	ctx := context.Background()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", FlightctlPasswords{App: "app-pw"}))

	c := p.Client()
	// Backup: pg_dump inside the container, password on stdin.
	var dump bytes.Buffer
	err := c.Exec(ctx, podman.ExecOptions{
		Container: pg.Container,
		Command:   []string{"sh", "-c", `PGPASSWORD=$(cat -) exec pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U flightctl_app -d flightctl`},
		Stdin:     strings.NewReader("app-pw"),
		Stdout:    &dump,
	})
	require.NoError(t, err)
	assert.Contains(t, dump.String(), "CREATE TABLE public.devices")
	assert.Contains(t, dump.String(), "00000000-0000-0000-0000-000000000000")

	// Restore: psql as postgres over the container's local socket.
	var out bytes.Buffer
	err = c.Exec(ctx, podman.ExecOptions{Container: pg.Container, Command: []string{"psql", "-U", "postgres", "-d", "postgres", "-Atc", `CREATE DATABASE "flightctl_restore_1"`}, Stdout: &out})
	require.NoError(t, err)
	err = c.Exec(ctx, podman.ExecOptions{
		Container: pg.Container,
		Command:   []string{"psql", "-U", "postgres", "-d", "flightctl_restore_1", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"},
		Stdin:     bytes.NewReader(dump.Bytes()),
		Stdout:    &out,
	})
	require.NoError(t, err)

	// The host reaches the same server over TCP (published port) and the shared socket.
	conn, err := pg.SuperuserConn(ctx, "flightctl_restore_1")
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM organizations").Scan(&n))
	assert.Equal(t, 1, n)

	// A wrong password fails.
	err = c.Exec(ctx, podman.ExecOptions{
		Container: pg.Container,
		Command:   []string{"sh", "-c", `PGPASSWORD=$(cat -) exec psql -h 127.0.0.1 -p 5432 -U flightctl_app -d flightctl -c 'select 1'`},
		Stdin:     strings.NewReader("wrong"),
		Stdout:    &out,
	})
	require.Error(t, err)
}
