package units_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

var appUnits = []string{
	"flightctl-api.service",
	"flightctl-worker.service",
	"flightctl-periodic.service",
	"flightctl-alert-exporter.service",
	"flightctl-alertmanager-proxy.service",
	"flightctl-gateway.service",
}

// startUnits writes flightctl-named units that sleep, plus one that fails to start.
func startUnits(t *testing.T, sd *testbed.Systemd) {
	t.Helper()
	ctx := context.Background()
	for _, u := range appUnits {
		require.NoError(t, sd.WriteUnit(u, "[Service]\nExecStart=/bin/sleep infinity\nStandardOutput=append:"+filepath.Join(sd.Dir, u+".log")+"\n"))
	}
	require.NoError(t, sd.WriteUnit("flightctl-broken.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n"))
	require.NoError(t, sd.DaemonReload(ctx))
	_, err := sd.Systemctl(ctx, append([]string{"start"}, appUnits...)...)
	require.NoError(t, err)
}

func connect(t *testing.T, opts units.ConnectOptions) *units.Manager {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := units.Connect(ctx, opts)
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m
}

func TestStateStopStartOnRealManager(t *testing.T) {
	sd := testbed.SystemdForTest(t)
	startUnits(t, sd)
	ctx := context.Background()

	for _, addr := range []string{sd.BusAddress, sd.PrivateAddress} {
		t.Run(filepath.Base(addr), func(t *testing.T) {
			m := connect(t, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: addr})
			assert.Equal(t, addr, m.Address())

			st, err := m.State(ctx, "flightctl-api.service")
			require.NoError(t, err)
			assert.True(t, st.Exists())
			assert.True(t, st.Active(), "%+v", st)
			assert.Equal(t, "running", st.SubState)

			missing, err := m.State(ctx, "flightctl-imagebuilder-api.service")
			require.NoError(t, err, "a unit that does not exist is not an error")
			assert.False(t, missing.Exists())
			assert.Equal(t, "not-found", missing.LoadState)
			assert.False(t, missing.Active())

			require.NoError(t, m.Stop(ctx, appUnits))
			states, err := m.States(ctx, appUnits)
			require.NoError(t, err)
			for _, s := range states {
				assert.Equal(t, "inactive", s.ActiveState, s.Name)
			}
			// The processes are really gone from the manager's view.
			out, err := sd.Systemctl(ctx, "show", "-p", "MainPID", "--value", "flightctl-api.service")
			require.NoError(t, err)
			assert.Equal(t, "0", strings.TrimSpace(out))

			require.NoError(t, m.Start(ctx, appUnits))
			states, err = m.States(ctx, appUnits)
			require.NoError(t, err)
			for _, s := range states {
				assert.True(t, s.Active(), "%+v", s)
			}
		})
	}
}

func TestStartReportsWhichUnitsFailed(t *testing.T) {
	sd := testbed.SystemdForTest(t)
	startUnits(t, sd)
	m := connect(t, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: sd.BusAddress})
	ctx := context.Background()

	err := m.Start(ctx, []string{"flightctl-api.service", "flightctl-broken.service", "flightctl-nope.service"})
	require.Error(t, err)
	je, ok := units.AsJobError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, []string{"flightctl-broken.service", "flightctl-nope.service"}, je.Failed())
	assert.Equal(t, "failed", je.Results["flightctl-broken.service"])
	assert.Contains(t, err.Error(), "flightctl-nope.service")
}

func TestConnectFromEnvironment(t *testing.T) {
	sd := testbed.SystemdForTest(t)
	// What Ansible's environment would give the module: XDG_RUNTIME_DIR only.
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	t.Setenv("XDG_RUNTIME_DIR", sd.RuntimeDir)
	m := connect(t, units.ConnectOptions{Scope: units.ScopeUser})
	assert.Equal(t, sd.BusAddress, m.Address())
	st, err := m.State(context.Background(), "default.target")
	require.NoError(t, err)
	assert.True(t, st.Active())
}

func TestConnectWithoutManagerIsClear(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DBUS_SESSION_BUS_ADDRESS", "")
	t.Setenv("XDG_RUNTIME_DIR", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := units.Connect(ctx, units.ConnectOptions{Scope: units.ScopeUser})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no systemd user manager reachable")

	_, err = units.Connect(ctx, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: "unix:path=" + filepath.Join(dir, "bus")})
	require.Error(t, err)
	assert.Contains(t, err.Error(), filepath.Join(dir, "bus"))

	_, err = units.Connect(ctx, units.ConnectOptions{Scope: "session"})
	require.Error(t, err)
}

// BenchmarkStopStartAppUnits measures stopping and starting the six application units
// over D-Bus, each job awaited.
func BenchmarkStopStartAppUnits(b *testing.B) {
	sd := testbed.SystemdForTest(b)
	ctx := context.Background()
	for _, u := range appUnits {
		if err := sd.WriteUnit(u, "[Service]\nExecStart=/bin/sleep infinity\n"); err != nil {
			b.Fatal(err)
		}
	}
	if err := sd.DaemonReload(ctx); err != nil {
		b.Fatal(err)
	}
	m, err := units.Connect(ctx, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: sd.BusAddress})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(ctx, appUnits); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.Stop(ctx, appUnits); err != nil {
			b.Fatal(err)
		}
		if err := m.Start(ctx, appUnits); err != nil {
			b.Fatal(err)
		}
	}
}
