package testbed

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIOBinaryEnv names a MinIO server binary to use instead of the cached build.
const MinIOBinaryEnv = "FLIGHTCTL_DR_MINIO"

// MinIOBinary finds the MinIO server: $FLIGHTCTL_DR_MINIO, the build that
// scripts/build-minio.sh caches under $FLIGHTCTL_DR_CACHE (default
// ~/.cache/flightctl-dr)/minio/<version>/minio, or minio on PATH.
func MinIOBinary() (string, error) {
	if p := os.Getenv(MinIOBinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", MinIOBinaryEnv, p, err)
		}
		return p, nil
	}
	cache := os.Getenv("FLIGHTCTL_DR_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "flightctl-dr")
		}
	}
	if cache != "" {
		found, _ := filepath.Glob(filepath.Join(cache, "minio", "*", "minio"))
		sort.Strings(found)
		for i := len(found) - 1; i >= 0; i-- {
			if st, err := os.Stat(found[i]); err == nil && st.Mode()&0o111 != 0 {
				return found[i], nil
			}
		}
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no MinIO server: run scripts/build-minio.sh (it builds one from the Go module proxy into the cache) or set %s", MinIOBinaryEnv)
}

// MinIOOptions say where and how to start a private MinIO.
type MinIOOptions struct {
	// Dir holds the data and the log. Empty: a new temporary directory, removed by Stop.
	Dir string
	// Port on 127.0.0.1. 0: a free port chosen at start.
	Port      int
	AccessKey string
	SecretKey string
	Logger    *slog.Logger
}

// MinIO is a running private MinIO server (S3 API on loopback, plain http).
type MinIO struct {
	Endpoint  string // 127.0.0.1:PORT
	URL       string // http://127.0.0.1:PORT
	Port      int
	AccessKey string
	SecretKey string
	PID       int
	Dir       string

	cmd       *exec.Cmd
	exited    chan struct{}
	removeDir bool
	logger    *slog.Logger
	stopped   bool
}

// StartMinIO starts a single-drive MinIO server on loopback. The root
// credentials travel in its environment, never in argv.
func StartMinIO(ctx context.Context, opts MinIOOptions) (*MinIO, error) {
	bin, err := MinIOBinary()
	if err != nil {
		return nil, fmt.Errorf("start minio: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &MinIO{AccessKey: opts.AccessKey, SecretKey: opts.SecretKey, logger: logger}
	if m.AccessKey == "" {
		m.AccessKey = "dr" + RandomPassword()[:14]
	}
	if m.SecretKey == "" {
		m.SecretKey = RandomPassword()
	}
	dir, remove, err := workDir(opts.Dir, "flightctl-dr-minio-")
	if err != nil {
		return nil, fmt.Errorf("start minio: %w", err)
	}
	m.Dir, m.removeDir = dir, remove
	startErr := startOnPort(opts.Port, logger, "minio", func(port int) error {
		m.Port = port
		m.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
		m.URL = "http://" + m.Endpoint
		return m.start(ctx, bin)
	})
	if startErr != nil {
		log, _ := os.ReadFile(filepath.Join(m.Dir, "minio.log"))
		m.cleanup()
		return nil, fmt.Errorf("start minio: %w; log: %s", startErr, tail(string(log), 2000))
	}
	logger.Info("minio started", "endpoint", m.Endpoint, "pid", m.PID)
	return m, nil
}

func (m *MinIO) start(ctx context.Context, bin string) error {
	consolePort, err := FreePort()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(m.Dir, "minio.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	data := filepath.Join(m.Dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	cmd := exec.Command(bin, "server", "--quiet", "--address", m.Endpoint, "--console-address", fmt.Sprintf("127.0.0.1:%d", consolePort), data)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=1",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	m.cmd, m.PID, m.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() { _ = cmd.Wait(); close(m.exited) }()
	// For a caller that outlives this process (the sandbox): KillByPIDFile(PIDFile(), Dir).
	if err := os.WriteFile(m.PIDFile(), []byte(fmt.Sprintf("%d\n", m.PID)), 0o600); err != nil {
		m.kill()
		return err
	}
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	client := &http.Client{Timeout: time.Second}
	// Health endpoints answer before the object layer is up: ready means a signed S3
	// request (list the buckets) succeeds.
	s3, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		m.kill()
		return err
	}
	for {
		resp, err := client.Get(m.URL + "/minio/health/cluster")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := s3.ListBuckets(lctx)
				cancel()
				if err == nil {
					return nil
				}
			}
		}
		select {
		case <-m.exited:
			return fmt.Errorf("minio on %s exited during start", m.Endpoint)
		case <-deadline.C:
			m.kill()
			return fmt.Errorf("minio on %s was not ready within 60s", m.Endpoint)
		case <-ctx.Done():
			m.kill()
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (m *MinIO) kill() {
	if m.cmd == nil {
		return
	}
	_ = syscall.Kill(m.PID, syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(m.PID, syscall.SIGKILL)
		<-m.exited
	}
}

// PIDFile holds the server's PID.
func (m *MinIO) PIDFile() string { return filepath.Join(m.Dir, "minio.pid") }

// Stop terminates the server by its PID and removes its directory when StartMinIO made it.
func (m *MinIO) Stop() error {
	if m == nil || m.stopped {
		return nil
	}
	m.stopped = true
	m.kill()
	m.cleanup()
	m.logger.Info("minio stopped", "endpoint", m.Endpoint)
	return nil
}

func (m *MinIO) cleanup() {
	if m.removeDir {
		_ = os.RemoveAll(m.Dir)
	}
}

// MinIOForTest starts a MinIO for t (skipped, or failed under
// FLIGHTCTL_DR_REQUIRE_REAL=1, when no MinIO binary is built) and stops it
// when t ends.
func MinIOForTest(t testing.TB) *MinIO {
	t.Helper()
	if _, err := MinIOBinary(); err != nil {
		Unavailable(t, err.Error())
	}
	return startForTest(t, 2*time.Minute, func(ctx context.Context) (*MinIO, error) {
		return StartMinIO(ctx, MinIOOptions{})
	})
}
