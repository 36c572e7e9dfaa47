package restore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"flightctl.dr/internal/devprep"
)

// JournalFile is the journal's name inside the state directory.
const JournalFile = "flightctl-restore.journal.json"

// Journal states.
const (
	StateRunning    = "running"     // steps are being applied; a re-run resumes
	StateDone       = "done"        // the restore finished; the archive is in place
	StateRolledBack = "rolled_back" // a failure or a rollback request put the previous state back
)

// Step names, in the order they run. They appear in results and in the journal.
const (
	StepLoadDatabase = "load_database"
	StepStopUnits    = "stop_units"
	StepSwapDatabase = "swap_database"
	StepStageFiles   = "stage_files"
	StepSwapFiles    = "swap_files"
	StepVolume       = "pam_volume"
	StepDevicePrep   = "device_preparation"
	StepStartUnits   = "start_units"
	StepFinalize     = "finalize"
)

// Journal records how far a restore got, so that an interrupted restore (even by SIGKILL)
// can be finished or undone by a later run. It is rewritten atomically and fsync'd on
// every step transition.
type Journal struct {
	FormatVersion int    `json:"format_version"`
	ID            string `json:"id"`
	ArchivePath   string `json:"archive_path"`
	ArchiveSHA256 string `json:"archive_sha256"`
	// DeploymentType is the estate restored ("podman", "kubernetes"), so that a re-run
	// without an explicit type finds it although the stopped server cannot be detected.
	DeploymentType string    `json:"deployment_type,omitempty"`
	State          string    `json:"state"`
	Started        time.Time `json:"started"`
	Updated        time.Time `json:"updated"`

	// ActiveUnits are the units that were active before the restore stopped them; exactly
	// these are started again.
	ActiveUnits []string `json:"active_units"`
	// UnitsRecorded is true once ActiveUnits holds the state from before any stop.
	UnitsRecorded bool `json:"units_recorded"`
	// Scales are the replicas of the active workloads before the stop (Kubernetes
	// Deployments); they are brought back to exactly these.
	Scales map[string]int32 `json:"scales,omitempty"`

	Database *JournalDatabase `json:"database,omitempty"`
	Files    []JournalFileSet `json:"files,omitempty"`
	Volume   *JournalVolume   `json:"volume,omitempty"`
	// Items are the objects (Kubernetes Secrets) staged, and the live ones they replace.
	Items *JournalItems `json:"items,omitempty"`
	// DevicesPrepared is set when the database part of device preparation ran on the
	// temporary database during its load: device preparation in the downtime then does
	// only the KV part.
	DevicesPrepared *devprep.DatabaseCounts `json:"devices_prepared,omitempty"`

	Done     []string `json:"done"`
	Warnings []string `json:"warnings,omitempty"`
	Error    string   `json:"error,omitempty"`

	// KVMayBeFlushed is set before device preparation clears the KV store: a rollback
	// from then on must prepare the KV store again for the database it puts back.
	KVMayBeFlushed bool `json:"kv_may_be_flushed,omitempty"`

	// Produced is what the finished restore left on the server (see LiveState).
	Produced *LiveState `json:"produced,omitempty"`
}

// JournalDatabase records the names used by the database swap and the live database's
// owner, grants and encoding, read before anything changed.
type JournalDatabase struct {
	Live string       `json:"live"`
	Temp string       `json:"temp"`
	Old  string       `json:"old"`
	Info DatabaseInfo `json:"info"`
	// LiveExisted is false when the restore creates the database from nothing.
	LiveExisted bool `json:"live_existed"`
}

// JournalFileSet records one file or directory replaced from the archive.
type JournalFileSet struct {
	Name    string `json:"name"`
	Live    string `json:"live"`
	Staged  string `json:"staged"`
	Old     string `json:"old"`
	HadLive bool   `json:"had_live"`
}

// JournalVolume records the volume re-import and where the previous content was saved.
type JournalVolume struct {
	Name    string `json:"name"`
	Saved   string `json:"saved,omitempty"`
	Existed bool   `json:"existed"`
}

func (j *Journal) isDone(step string) bool {
	for _, s := range j.Done {
		if s == step {
			return true
		}
	}
	return false
}

func (j *Journal) markDone(step string) {
	if !j.isDone(step) {
		j.Done = append(j.Done, step)
	}
}

// journalStore reads and writes the journal file.
type journalStore struct {
	dir  string
	path string
}

func newJournalStore(dir string) *journalStore {
	return &journalStore{dir: dir, path: filepath.Join(dir, JournalFile)}
}

// load returns the journal, or nil when there is none.
func (s *journalStore) load() (*Journal, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read restore journal %s: %w", s.path, err)
	}
	var j Journal
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("restore journal %s is damaged (%v): inspect it, then move it away to start afresh", s.path, err)
	}
	return &j, nil
}

// save writes j under a temporary name, syncs it, renames it over the journal and syncs
// the directory, so that a crash leaves either the previous or the new journal.
func (s *journalStore) save(j *Journal) error {
	j.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode restore journal: %w", err)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", s.dir, err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write restore journal: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write restore journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync restore journal: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write restore journal: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write restore journal: %w", err)
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// ReadJournal returns the journal kept in stateDir, or nil when there is none.
func ReadJournal(stateDir string) (*Journal, error) {
	return newJournalStore(stateDir).load()
}
