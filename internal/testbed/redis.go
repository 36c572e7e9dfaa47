package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"flightctl.dr/internal/runner"
)

// RedisOptions says where and how to start a private Redis.
type RedisOptions struct {
	// Dir holds the config file, pid file and log. Empty: a new directory under the system
	// temporary directory, removed by Stop.
	Dir string
	// Port on 127.0.0.1. 0: a free port chosen at start.
	Port int
	// Password for the default user. Empty: no password.
	Password string
	Logger   *slog.Logger
}

// Redis is a running private redis-server.
type Redis struct {
	Addr     string
	Host     string
	Port     int
	Password string
	PID      int

	dir       string
	removeDir bool
	logger    *slog.Logger
	stopped   bool
}

// StartRedis starts redis-server on loopback with no persistence. The password travels in
// a 0600 config file, never in argv.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r := &Redis{Host: "127.0.0.1", Password: opts.Password, logger: logger}
	dir, remove, err := workDir(opts.Dir, "flightctl-dr-redis-")
	if err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	r.dir, r.removeDir = dir, remove

	startErr := startOnPort(opts.Port, logger, "redis", func(port int) error {
		r.Port = port
		r.Addr = fmt.Sprintf("%s:%d", r.Host, port)
		return r.start(ctx)
	})
	if startErr != nil {
		log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
		r.cleanup()
		return nil, fmt.Errorf("start redis: %w; log: %s", startErr, tail(string(log), 2000))
	}
	logger.Info("redis started", "addr", r.Addr, "pid", r.PID)
	return r, nil
}

func (r *Redis) start(ctx context.Context) error {
	pidFile := filepath.Join(r.dir, "redis.pid")
	_ = os.Remove(pidFile)
	conf := []string{
		"port " + strconv.Itoa(r.Port),
		"bind 127.0.0.1",
		`save ""`,
		"appendonly no",
		"daemonize yes",
		"dir " + quoteRedis(r.dir),
		"pidfile " + quoteRedis(pidFile),
		"logfile " + quoteRedis(filepath.Join(r.dir, "redis.log")),
	}
	if r.Password != "" {
		conf = append(conf, "requirepass "+quoteRedis(r.Password))
	}
	confFile := filepath.Join(r.dir, "redis.conf")
	if err := os.WriteFile(confFile, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if err := (runner.Exec{}).Run(ctx, runner.Cmd{Name: "redis-server", Args: []string{confFile}}); err != nil {
		return err
	}
	// The daemon writes its pid file once it is up; then wait for PING.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				r.PID = pid
			}
		}
		if r.PID > 0 && canDial(r.Addr) {
			c := r.Client()
			err := c.Ping(ctx).Err()
			_ = c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if r.PID > 0 {
				r.kill()
			}
			return fmt.Errorf("redis on %s did not answer PING within 10s", r.Addr)
		}
		select {
		case <-ctx.Done():
			if r.PID > 0 {
				r.kill()
			}
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func canDial(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// quoteRedis quotes a value for redis.conf (double quotes, backslash escapes).
func quoteRedis(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`).Replace(s) + `"`
}

// Client is a go-redis client for this server, DB 0, with the password.
func (r *Redis) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr, Password: r.Password, DB: 0})
}

func (r *Redis) kill() {
	if err := syscall.Kill(r.PID, syscall.SIGTERM); err == nil {
		if !WaitGone(r.PID, 10*time.Second) {
			_ = syscall.Kill(r.PID, syscall.SIGKILL)
			WaitGone(r.PID, 5*time.Second)
		}
	}
}

// Stop terminates the server by the PID it wrote and removes its directory when StartRedis
// created it.
func (r *Redis) Stop() error {
	if r == nil || r.stopped {
		return nil
	}
	r.stopped = true
	if r.PID > 0 {
		r.kill()
	}
	r.cleanup()
	r.logger.Info("redis stopped", "addr", r.Addr)
	return nil
}

func (r *Redis) cleanup() {
	if r.removeDir {
		_ = os.RemoveAll(r.dir)
	}
}

// RandomPassword returns 32 hex characters from crypto/rand.
func RandomPassword() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// RedisForTest starts a password-protected Redis for t (skipped or failed when
// redis-server is missing) and stops it when t ends.
func RedisForTest(t testing.TB) *Redis {
	t.Helper()
	Need(t, "redis-server")
	return startForTest(t, time.Minute, func(ctx context.Context) (*Redis, error) {
		return StartRedis(ctx, RedisOptions{Password: RandomPassword()})
	})
}
