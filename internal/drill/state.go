package drill

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// StateFile and LockFile are kept in the state directory. The state file says what a
// running drill has made (its scratch database, its throwaway server), so that the next
// drill removes them when this one was killed; the lock keeps two drills of one host apart.
const (
	StateFile = "drill-state.json"
	LockFile  = "drill.lock"
)

// state is what a drill records before it makes anything.
type state struct {
	DrillID string    `json:"drill_id"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	// Server is "estate" or "throwaway".
	Server string `json:"server"`
	// LiveDatabase and ScratchDatabase: the scratch database on the estate's server.
	LiveDatabase    string `json:"live_database,omitempty"`
	ScratchDatabase string `json:"scratch_database,omitempty"`
	// ThrowawayDir holds a throwaway cluster; ThrowawayBin its programs.
	ThrowawayDir string `json:"throwaway_dir,omitempty"`
	ThrowawayBin string `json:"throwaway_bin,omitempty"`
	// ThrowawaySocketDir is the cluster's socket directory when it is not inside
	// ThrowawayDir.
	ThrowawaySocketDir string `json:"throwaway_socket_dir,omitempty"`
}

type stateStore struct {
	dir  string
	lock *os.File
}

// lockState takes the drill lock of dir (created 0700 when missing). The kernel releases
// it when the process dies, SIGKILL included.
func lockState(dir string) (*stateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another drill is running on this host (it holds %s): wait for it to finish", filepath.Join(dir, LockFile))
		}
		return nil, fmt.Errorf("lock %s: %w", filepath.Join(dir, LockFile), err)
	}
	return &stateStore{dir: dir, lock: f}, nil
}

func (s *stateStore) unlock() {
	if s.lock != nil {
		_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
		s.lock.Close()
		s.lock = nil
	}
}

func (s *stateStore) path() string { return filepath.Join(s.dir, StateFile) }

// read returns the state a previous drill left, nil when there is none.
func (s *stateStore) read() (*state, error) {
	b, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.path(), err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("read %s: %w: remove it after dropping any database named like <db>_drill_<id> by hand", s.path(), err)
	}
	return &st, nil
}

// save writes st durably: synced, then renamed into place.
func (s *stateStore) save(st *state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path() + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("record the drill in %s: %w", s.path(), err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.path())
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("record the drill in %s: %w", s.path(), err)
	}
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func (s *stateStore) clear() error {
	if err := os.Remove(s.path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", s.path(), err)
	}
	return nil
}
