package estate_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/estate"
)

// The runbooks stop the application units, then run flightctl-restore: a stopped but
// installed flightctl-api.service is a Podman install for a restore; a kubeconfig, or no
// such unit at all, still leaves the choice to the operator.
func TestDetectRestoreTypeStoppedServer(t *testing.T) {
	ctx := context.Background()
	is := func(v bool) estate.UnitActiveFunc {
		return func(context.Context, string) (bool, error) { return v, nil }
	}
	noKube := func(string) string { return "" }
	home := func() (string, error) { return t.TempDir(), nil }
	typ, stopped, err := estate.DetectRestoreType(ctx, estate.DetectOptions{UnitActive: is(false), Getenv: noKube, HomeDir: home}, is(true))
	require.NoError(t, err)
	require.Equal(t, estate.Podman, typ)
	require.True(t, stopped)

	typ, stopped, err = estate.DetectRestoreType(ctx, estate.DetectOptions{UnitActive: is(true), Getenv: noKube, HomeDir: home}, is(true))
	require.NoError(t, err)
	require.Equal(t, estate.Podman, typ)
	require.False(t, stopped)

	_, _, err = estate.DetectRestoreType(ctx, estate.DetectOptions{UnitActive: is(false), Getenv: noKube, HomeDir: home}, is(false))
	require.ErrorContains(t, err, "unable to detect deployment type")
	_, _, err = estate.DetectRestoreType(ctx, estate.DetectOptions{UnitActive: is(false), Getenv: noKube, HomeDir: home}, nil)
	require.ErrorContains(t, err, "unable to detect deployment type")
}
