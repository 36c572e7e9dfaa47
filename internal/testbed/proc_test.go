package testbed

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadProcStat(t *testing.T) {
	burn := 0
	for i := 0; i < 50_000_000; i++ {
		burn += i
	}
	st, err := ReadProcStat(os.Getpid())
	require.NoError(t, err)
	assert.Equal(t, os.Getppid(), st.PPID)
	assert.NotEmpty(t, st.Comm)
	assert.Contains(t, "RS", string(st.State))
	assert.Positive(t, st.CPUTicks, "after %d", burn)
	assert.InDelta(t, float64(st.CPUTicks)/ClockTicks, st.CPU(), 1e-9)

	_, err = ReadProcStat(-1)
	assert.Error(t, err)
}
