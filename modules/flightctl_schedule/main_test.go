package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/moduletest"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

func TestSidecarDocsMatchOptions(t *testing.T) {
	moduletest.CheckSidecar(t, "flightctl_schedule", &Options{})
}

func TestScheduleModule(t *testing.T) {
	bin := moduletest.Build(t, "flightctl.dr/modules/flightctl_schedule")
	r := moduletest.Run(t, bin, map[string]any{"schedule": "0 0 * * *", "last_duration": "300"})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, false, r.Out["changed"])
	assert.Equal(t, "*-*-* 00:00:00 UTC", r.Out["on_calendar"])
	assert.Equal(t, float64(86400), r.Out["interval"])
	assert.Empty(t, r.Out["warnings"])

	r = moduletest.Run(t, bin, map[string]any{"schedule": "*/30 * * * *", "last_duration": "45m"})
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	require.Len(t, r.Out["warnings"], 1)
	assert.Contains(t, r.Out["warnings"].([]any)[0], "fires every 30m0s but the last backup took 45m0s")

	r = moduletest.Run(t, bin, map[string]any{"schedule": "0 25 * * *"})
	require.Equal(t, true, r.Out["failed"])
	assert.Equal(t, `schedule: hour "25" is not a number from 0 to 23`, r.Out["msg"])
}
