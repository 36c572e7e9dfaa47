package schedule

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

var now = time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC) // a Tuesday

func TestCronToOnCalendar(t *testing.T) {
	for in, want := range map[string]string{
		"0 0 * * *":        "*-*-* 00:00:00 UTC",
		"@daily":           "*-*-* 00:00:00 UTC",
		"30 2 * * 1-5":     "Mon,Tue,Wed,Thu,Fri *-*-* 02:30:00 UTC",
		"*/15 * * * *":     "*-*-* *:00,15,30,45:00 UTC",
		"0 3 1 */3 *":      "*-01,04,07,10-01 03:00:00 UTC",
		"0 4 * * sun":      "Sun *-*-* 04:00:00 UTC",
		"0 4 * * 7":        "Sun *-*-* 04:00:00 UTC",
		"5 0-6/2 * * *":    "*-*-* 00,02,04,06:05:00 UTC",
		"0 1 15 jan,jul *": "*-01,07-15 01:00:00 UTC",
	} {
		s, err := Parse(context.Background(), in, Options{Now: now})
		require.NoError(t, err, in)
		assert.True(t, s.Cron, in)
		assert.Equal(t, want, s.OnCalendar, in)
	}
}

func TestCronNextAndInterval(t *testing.T) {
	s, err := Parse(context.Background(), "0 0 * * *", Options{Now: now, Iterations: 3})
	require.NoError(t, err)
	assert.Equal(t, []time.Time{time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)}, s.Next)
	assert.Equal(t, 24*time.Hour, s.Interval)

	s, err = Parse(context.Background(), "30 2 * * 1-5", Options{Now: now, Iterations: 1})
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 12, 2, 2, 30, 0, 0, time.UTC), s.Next[0])
	assert.Equal(t, 24*time.Hour, s.Interval, "Mon-Fri: the shortest gap is a day")

	s, err = Parse(context.Background(), "0 0,23 * * *", Options{Now: now})
	require.NoError(t, err)
	assert.Equal(t, time.Hour, s.Interval)
	assert.Len(t, s.Warnings(90*time.Minute), 1)
	assert.Contains(t, s.Warnings(90 * time.Minute)[0], "the last backup took 1h30m0s")
	assert.Empty(t, s.Warnings(30*time.Minute))
	assert.Empty(t, s.Warnings(0))

	s, err = Parse(context.Background(), "0 0 29 2 *", Options{Now: now, Iterations: 1})
	require.NoError(t, err)
	assert.Equal(t, time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC), s.Next[0])
}

func TestBadSchedules(t *testing.T) {
	for in, want := range map[string]string{
		"":               "the schedule is empty",
		"61 * * * *":     `minute "61" is not a number from 0 to 59`,
		"0 0 * * 1 2":    "", // six fields: taken as OnCalendar, refused by systemd-analyze below
		"0 0 1 * 1":      "restricts both the day of month and the day of week",
		"0 0 31 2 *":     "never fires",
		"*/0 * * * *":    "step",
		"0 5-2 * * *":    "runs backwards",
		"0 0 * * funday": `day of week "funday"`,
	} {
		if want == "" {
			continue
		}
		_, err := Parse(context.Background(), in, Options{Now: now})
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), want, in)
	}
	_, err := Parse(context.Background(), "*-*-* 02:00:00 Europe/Paris", Options{Now: now})
	require.ErrorContains(t, err, "give it in UTC")
}

// OnCalendar expressions are checked by the real systemd-analyze.
func TestOnCalendarWithSystemdAnalyze(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testbed.Unavailable(t, "systemd-analyze is not installed (package systemd)")
	}
	ctx := context.Background()
	s, err := Parse(ctx, "*-*-* 02:00:00", Options{Now: now, Iterations: 2})
	require.NoError(t, err)
	assert.False(t, s.Cron)
	assert.Equal(t, "*-*-* 02:00:00 UTC", s.OnCalendar)
	require.Len(t, s.Next, 2)
	assert.Equal(t, 24*time.Hour, s.Next[1].Sub(s.Next[0]))
	assert.Equal(t, 2, s.Next[0].Hour())
	assert.Equal(t, 24*time.Hour, s.Interval)

	s, err = Parse(ctx, "hourly", Options{Now: now})
	require.NoError(t, err)
	assert.Equal(t, time.Hour, s.Interval)

	_, err = Parse(ctx, "every tuesday-ish", Options{Now: now})
	require.ErrorContains(t, err, "is not valid")
	_, err = Parse(ctx, "0 0 * * 1 2", Options{Now: now})
	require.ErrorContains(t, err, "is not valid")
}
