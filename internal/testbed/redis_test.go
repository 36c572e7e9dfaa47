package testbed

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRedisPasswordAndStop(t *testing.T) {
	Need(t, "redis-server")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	pw := `p"a\ss w` + RandomPassword()
	r, err := StartRedis(ctx, RedisOptions{Dir: dir, Password: pw})
	require.NoError(t, err)
	defer r.Stop()

	c := r.Client()
	defer c.Close()
	require.NoError(t, c.Set(ctx, "k", "v", 0).Err())

	bad := redis.NewClient(&redis.Options{Addr: r.Addr, Password: "wrong"})
	defer bad.Close()
	err = bad.Ping(ctx).Err()
	require.Error(t, err)

	conf, err := os.Stat(filepath.Join(dir, "redis.conf"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), conf.Mode().Perm())
	cmdline, err := os.ReadFile(filepathProc(r.PID))
	require.NoError(t, err)
	assert.NotContains(t, strings.ReplaceAll(string(cmdline), "\x00", " "), pw, "the password must not be in argv")

	require.NoError(t, r.Stop())
	assert.Error(t, c.Ping(ctx).Err(), "the server is gone after Stop")
}

func filepathProc(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "cmdline") }
