package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// JournalStore keeps a restore's journal where the next run finds it, and keeps two
// restores from using it at once: a file in the state directory (FileJournal), or, on an
// estate that offers one (JournalKeeper), a store of its own such as a Kubernetes Secret
// when the restore runs inside the cluster, whose file system is lost with its pod.
type JournalStore interface {
	// Lock takes exclusive use of the journal until unlock is called; an error says who
	// holds it and what to do. In check mode it may take nothing (a check changes nothing).
	Lock(ctx context.Context, checkMode bool) (unlock func(), err error)
	// Load returns the journal, or nil when there is none.
	Load(ctx context.Context) (*Journal, error)
	// Save writes j so that a crash leaves either the previous or the new journal.
	Save(ctx context.Context, j *Journal) error
	// String says where the journal is, for messages ("/var/lib/flightctl-dr/...",
	// "Secret flightctl/flightctl-dr-restore-journal").
	String() string
}

// JournalKeeper is a Target that keeps the journal itself; a nil store means the state
// directory.
type JournalKeeper interface {
	JournalStore() JournalStore
}

// journalIOTimeout bounds one journal read or write. Saves run on a context of their own:
// the journal must be written also while a cancelled restore rolls back.
const journalIOTimeout = time.Minute

// journalStore is the run's journal, whatever keeps it.
type journalStore struct {
	store JournalStore
	// path says where the journal is, for messages.
	path string
}

func newJournalStore(s JournalStore) *journalStore {
	return &journalStore{store: s, path: s.String()}
}

func (s *journalStore) load() (*Journal, error) {
	ctx, cancel := context.WithTimeout(context.Background(), journalIOTimeout)
	defer cancel()
	return s.store.Load(ctx)
}

func (s *journalStore) save(j *Journal) error {
	j.Updated = time.Now().UTC()
	ctx, cancel := context.WithTimeout(context.Background(), journalIOTimeout)
	defer cancel()
	return s.store.Save(ctx, Persisted(j))
}

// Persisted is what a store writes of j: a journal that is no longer running keeps no
// object content (the Secrets recorded for a rollback, and the archive's), only the
// references that tell a later run what the restore wrote; a finished or rolled back
// restore can no longer be undone, and its copies of Secrets would only leak.
func Persisted(j *Journal) *Journal {
	if j.State == StateRunning || j.Items == nil {
		return j
	}
	c := *j
	items := *j.Items
	strip := func(in []Item) []Item {
		if in == nil {
			return nil
		}
		out := make([]Item, len(in))
		for i, it := range in {
			it.Object = nil
			out[i] = it
		}
		return out
	}
	items.Staged, items.Before = strip(items.Staged), strip(items.Before)
	c.Items = &items
	return &c
}

// FileJournal is the journal file in a state directory, locked with flock.
type FileJournal struct {
	Dir string
}

// NewFileJournal is the journal kept in stateDir.
func NewFileJournal(stateDir string) *FileJournal { return &FileJournal{Dir: stateDir} }

func (s *FileJournal) path() string { return filepath.Join(s.Dir, JournalFile) }

func (s *FileJournal) String() string { return s.path() }

// Lock keeps two restores from running at once on the same state directory.
func (s *FileJournal) Lock(_ context.Context, checkMode bool) (func(), error) {
	if checkMode {
		// Check mode changes nothing, not even the state directory: where there is none,
		// no restore ever ran here, so there is nothing to lock against.
		if _, err := os.Stat(s.Dir); errors.Is(err, fs.ErrNotExist) {
			return func() {}, nil
		}
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", s.Dir, err)
	}
	p := filepath.Join(s.Dir, "flightctl-restore.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another restore is running (lock %s is held): wait for it to finish", p)
	}
	return func() { f.Close() }, nil
}

// Load returns the journal, or nil when there is none.
func (s *FileJournal) Load(context.Context) (*Journal, error) {
	data, err := os.ReadFile(s.path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read restore journal %s: %w", s.path(), err)
	}
	return DecodeJournal(data, s.path(), "move it away")
}

// DecodeJournal parses a journal read from where (for the message); damaged says how to
// start afresh.
func DecodeJournal(data []byte, where, moveAway string) (*Journal, error) {
	var j Journal
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("restore journal %s is damaged (%v): inspect it, then %s to start afresh", where, err, moveAway)
	}
	return &j, nil
}

// Save writes j under a temporary name, syncs it, renames it over the journal and syncs
// the directory, so that a crash leaves either the previous or the new journal.
func (s *FileJournal) Save(_ context.Context, j *Journal) error {
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode restore journal: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", s.Dir, err)
	}
	path := s.path()
	tmp := path + ".tmp"
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
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write restore journal: %w", err)
	}
	return syncDir(s.Dir)
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
	return NewFileJournal(stateDir).Load(context.Background())
}

// UnfinishedWarning is what the other modules say of journal j, kept in where, when its
// restore has not finished (it was killed, or it still runs): the application units, or
// on Kubernetes the Deployments, it stopped are still down. "" when j is nil or finished.
func UnfinishedWarning(j *Journal, where string) string {
	if j == nil || j.State != StateRunning {
		return ""
	}
	left, stopped, names := "units stopped", "stopped", "its application units"
	if j.DeploymentType == "kubernetes" {
		left, stopped, names = "Deployments scaled to zero", "scaled to zero", "its Deployments"
	}
	if len(j.ActiveUnits) > 0 {
		names = strings.Join(j.ActiveUnits, ", ")
	}
	return fmt.Sprintf("an unfinished restore left %s; run the restore again or roll it back: restore %s of %s, started %s, %s %s "+
		"(flightctl_restore with the same path finishes it, with rollback: true undoes it; journal in %s)",
		left, j.ID, j.ArchivePath, j.Started.UTC().Format("2006-01-02 15:04:05 UTC"), stopped, names, where)
}
