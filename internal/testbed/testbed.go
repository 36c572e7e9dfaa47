// Package testbed starts real components on this machine (PostgreSQL with the flightctl
// schema, Redis, a systemd user manager, podman) for tests, benchmarks and the sandbox
// estate. Everything listens on loopback ports chosen at run time and is stopped by the PID
// that started it.
package testbed

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RequireRealEnv, when "1", turns a missing component into a test failure instead of a
// skip. make test and CI set it.
const RequireRealEnv = "FLIGHTCTL_DR_REQUIRE_REAL"

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Need skips (or, under FLIGHTCTL_DR_REQUIRE_REAL=1, fails) t when any of the programs is
// missing. Paths are checked as they are, names through PATH.
func Need(t testing.TB, programs ...string) {
	t.Helper()
	for _, p := range programs {
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if _, err := exec.LookPath(p); err == nil {
			continue
		}
		Unavailable(t, fmt.Sprintf("%s is not installed (scripts/install-deps.sh installs it)", p))
	}
}

// Unavailable skips t, or fails it when real components are required.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequireRealEnv) == "1" {
		t.Fatalf("real component required (%s=1): %s", RequireRealEnv, reason)
	}
	t.Skip(reason)
}

// stopper is a started component.
type stopper interface{ Stop() error }

// startForTest starts a component for t within timeout and stops it when t ends; a start
// failure fails t with what start said.
func startForTest[T stopper](t testing.TB, timeout time.Duration, start func(ctx context.Context) (T, error)) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := start(ctx)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return c
}

// workDir returns dir made absolute and created 0700, or a new temporary directory named
// after prefix when dir is ""; remove says whether the caller created it and so removes it.
func workDir(dir, prefix string) (abs string, remove bool, err error) {
	if dir == "" {
		d, err := os.MkdirTemp("", prefix)
		if err != nil {
			return "", false, err
		}
		return d, true, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, err
	}
	abs, err = filepath.Abs(dir)
	return abs, false, err
}

// startOnPort runs start on port, or, when port is 0, on a free port, retrying a few times
// with another one because a free port can be taken between choosing and listening.
func startOnPort(port int, logger *slog.Logger, what string, start func(port int) error) error {
	attempts := 1
	if port == 0 {
		attempts = 5
	}
	var err error
	for i := 0; i < attempts; i++ {
		p := port
		if p == 0 {
			if p, err = FreePort(); err != nil {
				return err
			}
		}
		if err = start(p); err == nil {
			return nil
		}
		logger.Warn(what+" did not start, retrying on another port", "port", p, "err", err)
	}
	return err
}
