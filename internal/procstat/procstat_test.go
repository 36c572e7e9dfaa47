package procstat

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRead(t *testing.T) {
	burn := 0
	for i := 0; i < 50_000_000; i++ {
		burn += i
	}
	st, err := Read(os.Getpid())
	require.NoError(t, err)
	assert.Equal(t, os.Getppid(), st.PPID)
	assert.NotEmpty(t, st.Comm)
	assert.Contains(t, "RS", string(st.State))
	assert.Positive(t, st.CPUTicks, "after %d", burn)
	assert.InDelta(t, float64(st.CPUTicks)/ClockTicks, st.CPU(), 1e-9)
	assert.Positive(t, st.StartTicks)
	parent, err := Read(os.Getppid())
	require.NoError(t, err)
	assert.LessOrEqual(t, parent.StartTicks, st.StartTicks, "the parent started first")

	_, err = Read(-1)
	assert.Error(t, err)
	boot, err := BootID()
	require.NoError(t, err)
	assert.Len(t, boot, 36)
}

// A command name may hold spaces and parentheses: the fields are counted after its last ')'.
func TestParseOddCommandName(t *testing.T) {
	line := "4242 (a) (b c) S 17 4242 4242 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 987654 1000 10 18446744073709551615\n"
	st, err := parse(4242, []byte(line))
	require.NoError(t, err)
	assert.Equal(t, Stat{PPID: 17, Comm: "a) (b c", State: 'S', CPUTicks: 10, ChildrenCPUTicks: 3, StartTicks: 987654}, st)
	_, err = parse(1, []byte("1 (x) S 0 1"))
	assert.Error(t, err, "too few fields")
	_, err = parse(1, []byte("1 x S"))
	assert.Error(t, err, "no command name")
}
