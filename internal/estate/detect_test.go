package estate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

func TestDetectType(t *testing.T) {
	home := t.TempDir()
	homeWithKube := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(homeWithKube, ".kube"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(homeWithKube, ".kube", "config"), []byte("apiVersion: v1\n"), 0o600))
	explicitKube := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(explicitKube, []byte("apiVersion: v1\n"), 0o600))

	active := func(context.Context, string) (bool, error) { return true, nil }
	inactive := func(context.Context, string) (bool, error) { return false, nil }
	unreachable := func(context.Context, string) (bool, error) { return false, errors.New("no bus") }
	env := func(kubeconfig string) func(string) string {
		return func(k string) string {
			if k == "KUBECONFIG" {
				return kubeconfig
			}
			return ""
		}
	}
	tests := []struct {
		name       string
		requested  string
		unit       UnitActiveFunc
		home       string
		kubeconfig string
		want       Type
		wantErr    string
	}{
		{name: "explicit podman skips detection", requested: "podman", want: Podman},
		{name: "explicit kubernetes", requested: "kubernetes", want: Kubernetes},
		{name: "invalid type", requested: "docker", wantErr: `must be "kubernetes" or "podman"`},
		{name: "api active", unit: active, home: home, want: Podman},
		{name: "auto spelled out", requested: "auto", unit: active, home: home, want: Podman},
		{name: "kubeconfig in home", unit: inactive, home: homeWithKube, want: Kubernetes},
		{name: "KUBECONFIG file", unit: unreachable, home: home, kubeconfig: explicitKube, want: Kubernetes},
		{name: "KUBECONFIG missing falls back to home", unit: inactive, home: homeWithKube, kubeconfig: "/nonexistent", want: Kubernetes},
		{name: "both", unit: active, home: homeWithKube, wantErr: "conflicting deployment indicators"},
		{name: "neither", unit: inactive, home: home, wantErr: "unable to detect deployment type"},
		{name: "neither, systemd unreachable", unit: unreachable, home: home, wantErr: "no bus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DetectType(context.Background(), DetectOptions{
				Requested:  tc.requested,
				UnitActive: tc.unit,
				Getenv:     env(tc.kubeconfig),
				HomeDir:    func() (string, error) { return tc.home, nil },
			})
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				if tc.requested == "" {
					assert.Contains(t, err.Error(), "deployment_type", "the error must say what to set")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestDetectTypeRealSystemd asks a real systemd manager over D-Bus about a unit named as
// flightctl's.
func TestDetectTypeRealSystemd(t *testing.T) {
	sd := testbed.SystemdForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, sd.WriteUnit(APIUnit, "[Service]\nExecStart=/bin/sleep infinity\n"))
	require.NoError(t, sd.DaemonReload(ctx))

	active, closeConn, err := SystemdUnitActive(ctx, "user", sd.BusAddress)
	require.NoError(t, err)
	defer closeConn()
	home := t.TempDir()
	opts := DetectOptions{UnitActive: active, Getenv: func(string) string { return "" }, HomeDir: func() (string, error) { return home, nil }}

	_, err = DetectType(ctx, opts)
	require.Error(t, err, "a stopped flightctl-api is no Podman indicator")
	assert.Contains(t, err.Error(), "is not active")

	_, err = sd.Systemctl(ctx, "start", APIUnit)
	require.NoError(t, err)
	got, err := DetectType(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, Podman, got)

	// A unit that does not exist is simply not active.
	ok, err := active(ctx, "flightctl-nonexistent.service")
	require.NoError(t, err)
	assert.False(t, ok)
}

// TestDiscoverServerVersionFake drives the discovery order with runner.Fake, because
// neither a flightctl-api container nor rpm exist on this machine.
func TestDiscoverServerVersionFake(t *testing.T) {
	ctx := context.Background()
	notFound := &runner.ExitError{Cmd: "x", ExitCode: 125, Stderr: "Error: no such container flightctl-api"}

	got, err := DiscoverServerVersion(ctx, VersionOptions{Explicit: " v9 ", Runner: &runner.Fake{}})
	require.NoError(t, err)
	assert.Equal(t, "v9", got)

	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		if c.Name == "podman" {
			return `[{"Id": "abc", "ImageName": "quay.io/flightctl/flightctl-api:0.10.2"}]`, nil
		}
		return "", errors.New("unexpected")
	}}
	got, err = DiscoverServerVersion(ctx, VersionOptions{Runner: fake})
	require.NoError(t, err)
	assert.Equal(t, "0.10.2", got)
	assert.Equal(t, []string{"container", "inspect", "flightctl-api"}, fake.Calls[0].Cmd.Args)

	fake = &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		if c.Name == "podman" {
			return `[{"Id": "abc", "ImageName": "quay.io/flightctl/flightctl-api:latest"}]`, nil
		}
		return "1.4.0", nil
	}}
	got, err = DiscoverServerVersion(ctx, VersionOptions{Runner: fake})
	require.NoError(t, err)
	assert.Equal(t, "1.4.0", got, "a latest tag says nothing: the package version is used")

	versionFile := filepath.Join(t.TempDir(), "version")
	require.NoError(t, os.WriteFile(versionFile, []byte("v1.5.0\nbuild 7\n"), 0o644))
	fake = &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) { return "", notFound }}
	got, err = DiscoverServerVersion(ctx, VersionOptions{Runner: fake, VersionFile: versionFile})
	require.NoError(t, err)
	assert.Equal(t, "v1.5.0", got)

	_, err = DiscoverServerVersion(ctx, VersionOptions{Runner: fake})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "set server_version")
	assert.Contains(t, err.Error(), "flightctl-api")
}
