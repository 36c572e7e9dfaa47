// Package devprep prepares devices after a database restore (SPEC §5): every device is
// told to reconnect and report its real state before the server renders anything for it.
//
// Unlike upstream, the database part (devices, device_timestamps, enrollment requests, the
// SystemRestored event) commits in one transaction or not at all (on a large fleet the
// device update is split over several sessions that commit together, parallel.go), and
// the KV keys are derived from the database after the commit, written in pipelined
// batches and checked.
// Running it again after any failure converges to the same end state.
package devprep

import (
	"crypto/rand"
	"crypto/sha1"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"flightctl.dr/internal/pgload"
)

// DefaultKeyBatchSize is how many keys go in one pipeline.
const DefaultKeyBatchSize = 5000

// Options for Plan and Run.
type Options struct {
	// DB is a connection to the flightctl database (as flightctl_app or any user with DML
	// rights on its tables).
	DB *pgx.Conn
	// KV is a client for the server's KV store (DB 0 on the real server).
	KV *redis.Client
	// FlushKV clears the whole KV store (FLUSHALL, as upstream) before the keys are
	// written, when this run prepares a restore: when rows needed updating, or when the
	// event for RestoreID is not recorded yet. A re-run of a finished preparation does not
	// flush again. Callers normally set it (upstream always flushes).
	FlushKV bool
	// CreateEvent records one SystemRestored event in the default organization, in the
	// same transaction as the row updates.
	CreateEvent bool
	// RestoreID names the restore being prepared; the event's name is derived from it, so
	// a re-run never records a second event for the same restore. Without it, the event
	// is created only when this run updated devices.
	RestoreID string
	// Connections is the number of database sessions the device update is split over
	// on a large fleet (0: one per CPU of this machine, 2 to 8, within half the server's
	// free connections; 1: the run's own transaction alone). The extra sessions connect
	// as DB does.
	Connections int
	// ServerRunning says the application runs against this database now (a restore's
	// device preparation alone with allow_running_units): the btree indexes of devices are
	// then maintained row by row, never dropped and built again, since a rebuild locks
	// devices against the server's reads for the whole transaction.
	ServerRunning bool
	// KeyBatchSize is the number of keys per pipeline (default DefaultKeyBatchSize).
	KeyBatchSize int
	Logger       *slog.Logger
	// WithoutKV lets Plan (never Run) work without a KV store, as after the flush a
	// restore does: every key counts as missing. A restore drill's scratch database has
	// no KV store of its own.
	WithoutKV bool
	// Prepared says the database part already ran (DatabaseUpdateScript and EventScript,
	// on the database before it went live) with these counts: Run then updates no row and
	// records no event, but clears the KV store (with FlushKV, whatever the rows say) and
	// writes and checks the keys of the devices the database part annotated.
	Prepared *DatabaseCounts
	// Staged are the keys of Prepared's devices, staged ahead of the run (StageKeys): with
	// FlushKV, Run swaps them in instead of clearing the store and writing them, when the
	// spare database still holds them whole.
	Staged *StagedKeys
}

// Validate checks the options.
func (o *Options) Validate() error {
	if o.DB == nil {
		return errors.New("device preparation: no database connection given")
	}
	if o.KV == nil && !o.WithoutKV {
		return errors.New("device preparation: no KV client given")
	}
	if o.Connections < 0 || o.Connections > pgload.MaxConnections {
		return fmt.Errorf("device preparation: %d database connections: give 0 (the default) to %d", o.Connections, pgload.MaxConnections)
	}
	if o.KeyBatchSize < 0 {
		return fmt.Errorf("device preparation: key batch size %d must be positive", o.KeyBatchSize)
	}
	return nil
}

func (o *Options) batchSize() int {
	if o.KeyBatchSize == 0 {
		return DefaultKeyBatchSize
	}
	return o.KeyBatchSize
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o.Logger
}

// Counts describe one run (or, from Plan, what a run would do).
type Counts struct {
	DevicesUpdated int `json:"devices_updated"`
	// TimestampsCleared is the number of device_timestamps rows whose last_seen was set to
	// NULL (upstream's "devices updated"; equal to DevicesUpdated when every device has its
	// timestamp row).
	TimestampsCleared            int `json:"timestamps_cleared"`
	DevicesAlreadyAwaiting       int `json:"devices_already_awaiting"`
	DevicesSkippedDecommissioned int `json:"devices_skipped_decommissioned"`
	DevicesDeleted               int `json:"devices_deleted"`
	EnrollmentRequestsUpdated    int `json:"enrollment_requests_updated"`
	EnrollmentRequestsAwaiting   int `json:"enrollment_requests_already_awaiting"`
	EnrollmentRequestsApproved   int `json:"enrollment_requests_skipped_approved"`
	// JSONRepaired counts updated rows whose status or annotations held JSON that is not
	// an object (such as JSON null); it was treated as {}.
	JSONRepaired  int `json:"json_repaired"`
	Organizations int `json:"organizations"`
	// KeysExpected is the number of awaiting-reconnect keys that must exist afterwards.
	KeysExpected int `json:"keys_expected"`
	// KeysWritten is the number of keys this run created.
	KeysWritten int `json:"keys_written"`
	// KeysVerified is the number of keys read back with the value "true" (Run only).
	KeysVerified int `json:"keys_verified"`
}

// State is what the database and KV store hold, for a before/after diff.
type State struct {
	DevicesAwaitingReconnect            int `json:"devices_awaiting_reconnect"`
	DevicesToPrepare                    int `json:"devices_to_prepare"`
	EnrollmentRequestsAwaitingReconnect int `json:"enrollment_requests_awaiting_reconnect"`
	EnrollmentRequestsToPrepare         int `json:"enrollment_requests_to_prepare"`
	KeysPresent                         int `json:"awaiting_reconnect_keys_present"`
	KeysMissing                         int `json:"awaiting_reconnect_keys_missing"`
	// EventRecorded says whether the event of Options.RestoreID is in the database; it is
	// always false without a RestoreID (the event's name is then random).
	EventRecorded bool `json:"event_recorded"`
}

// Result of Plan or Run.
type Result struct {
	Counts
	EventCreated bool   `json:"event_created"`
	EventName    string `json:"event_name,omitempty"`
	KVFlushed    bool   `json:"kv_flushed"`
	Changed      bool   `json:"changed"`
	// IndexesRebuilt is the number of btree indexes of devices that the transaction
	// dropped before the update and built again before the commit, instead of adding
	// every updated row to them (only as the table's owner, and when most rows change).
	IndexesRebuilt int `json:"indexes_rebuilt,omitempty"`
	// KeysStaged says the keys were written and read back in a spare database of the KV
	// store before the commit (or, in a restore, before the units stopped), then put in
	// place of the store's contents at once (SWAPDB) instead of FLUSHALL and writing them.
	KeysStaged bool `json:"keys_staged,omitempty"`
	// DeviceUpdateSessions is the number of database sessions the device update was
	// split over (Options.Connections), when more than one.
	DeviceUpdateSessions int `json:"device_update_sessions,omitempty"`
	// Before and After are filled by Plan only: the state now and the state a run would
	// leave. For a measured diff, call Plan before and after Run.
	Before *State `json:"before,omitempty"`
	After  *State `json:"after,omitempty"`
}

func (r *Result) setChanged() {
	r.Changed = r.DevicesUpdated > 0 || r.EnrollmentRequestsUpdated > 0 || r.EventCreated || r.KVFlushed || r.KeysWritten > 0
}

// eventName is the event's name: derived from the restore ID (a name-based UUID, so the
// same restore always gives the same name), else a random UUID as upstream.
func eventName(restoreID string) string {
	var b [16]byte
	if restoreID != "" {
		sum := sha1.Sum([]byte("flightctl.dr/restore/" + restoreID))
		copy(b[:], sum[:16])
		b[6] = b[6]&0x0f | 0x50 // version 5 (name-based, SHA-1)
	} else {
		_, _ = rand.Read(b[:])
		b[6] = b[6]&0x0f | 0x40 // version 4 (random)
	}
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// EventMessage is the SystemRestored event's message, as upstream writes it.
func EventMessage(devicesUpdated int) string {
	return fmt.Sprintf("System restored successfully. Updated %d devices for post-restoration preparation.", devicesUpdated)
}

// KeyFor is the KV key the server checks before it handles a device's awaiting-reconnect
// annotation (UPSTREAM §4.4). orgID must be the canonical lowercase UUID, as PostgreSQL
// prints it.
func KeyFor(orgID, deviceName string) string {
	return "v1/" + orgID + "/device/" + deviceName + "/awaiting-reconnect"
}
