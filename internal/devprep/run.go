package devprep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// ErrNotFlightctlDatabase is returned when the database lacks the flightctl tables.
var ErrNotFlightctlDatabase = errors.New("not a flightctl database")

// MissingKeysError names devices whose awaiting-reconnect key is missing after writing.
// Such a device would stay AwaitingReconnect for ever.
type MissingKeysError struct {
	Count int
	// Devices holds up to maxNamedDevices "org/name" entries.
	Devices []string
}

const maxNamedDevices = 20

func (e *MissingKeysError) Error() string {
	more := ""
	if e.Count > len(e.Devices) {
		more = fmt.Sprintf(" and %d more", e.Count-len(e.Devices))
	}
	return fmt.Sprintf("%d awaiting-reconnect keys missing or not \"true\" in the KV store after writing (devices %s%s): these devices would stay AwaitingReconnect; check the KV store's memory limit and eviction policy, then run device preparation again",
		e.Count, strings.Join(e.Devices, ", "), more)
}

// querier is what both *pgx.Conn and pgx.Tx offer.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// verify checks, before anything changes, that the database is a flightctl database and
// that both stores answer with the given credentials.
func verify(ctx context.Context, opts *Options) error {
	if err := opts.DB.Ping(ctx); err != nil {
		return fmt.Errorf("device preparation: database: %w", describeDBError(err, opts.DB.Config().Host, int(opts.DB.Config().Port), opts.DB.Config().User))
	}
	var missing []string
	rows, err := opts.DB.Query(ctx, missingTablesSQL, requiredTables)
	if err == nil {
		missing, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return fmt.Errorf("device preparation: inspect database schema: %w", err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("device preparation: database %q: %w (tables missing: %s): point db_name at the flightctl database, or restore it first",
			opts.DB.Config().Database, ErrNotFlightctlDatabase, strings.Join(missing, ", "))
	}
	if opts.CreateEvent {
		var ok bool
		if err := opts.DB.QueryRow(ctx, defaultOrgExistsSQL, DefaultOrgID).Scan(&ok); err != nil {
			return fmt.Errorf("device preparation: read organizations: %w", err)
		}
		if !ok {
			return fmt.Errorf("device preparation: the default organization %s is missing, so the SystemRestored event has nowhere to go: the database looks incomplete; restore it again or turn event creation off", DefaultOrgID)
		}
	}
	if opts.KV == nil {
		return nil // Plan WithoutKV
	}
	if err := opts.KV.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("device preparation: KV store: %w", describeKVError(err, opts.KV.Options().Addr))
	}
	return nil
}

// readCounts counts what the updates will touch, with the same predicates they use.
func readCounts(ctx context.Context, q querier, c *Counts) (toUpdate, erToUpdate int, err error) {
	var awaiting, decommissioned, deleted, jsonDev, erAwaiting, erApproved, jsonER, orgs int
	if err := q.QueryRow(ctx, deviceCountsSQL).Scan(&toUpdate, &awaiting, &decommissioned, &deleted, &jsonDev); err != nil {
		return 0, 0, fmt.Errorf("count devices: %w", err)
	}
	if err := q.QueryRow(ctx, erCountsSQL).Scan(&erToUpdate, &erAwaiting, &erApproved, &jsonER); err != nil {
		return 0, 0, fmt.Errorf("count enrollment requests: %w", err)
	}
	if err := q.QueryRow(ctx, organizationsCountSQL).Scan(&orgs); err != nil {
		return 0, 0, fmt.Errorf("count organizations: %w", err)
	}
	fillCounts(c, toUpdate, awaiting, decommissioned, deleted, jsonDev, erToUpdate, erAwaiting, erApproved, jsonER, orgs)
	return toUpdate, erToUpdate, nil
}

// fillCounts sets what readCounts reads (deviceCountsSQL, erCountsSQL and
// organizationsCountSQL, in their column order) into c.
func fillCounts(c *Counts, toUpdate, awaiting, decommissioned, deleted, jsonDev, erToUpdate, erAwaiting, erApproved, jsonER, orgs int) {
	c.DevicesAlreadyAwaiting, c.DevicesSkippedDecommissioned, c.DevicesDeleted = awaiting, decommissioned, deleted
	c.EnrollmentRequestsAwaiting, c.EnrollmentRequestsApproved = erAwaiting, erApproved
	c.Organizations = orgs
	c.JSONRepaired = jsonDev + jsonER
	c.KeysExpected = awaiting + toUpdate
}

// Plan computes what Run would do, changing nothing: the counts, whether the event would
// be created and the KV store flushed, and the state before and after.
func Plan(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.logger()
	if err := verify(ctx, &opts); err != nil {
		return nil, err
	}
	tx, err := opts.DB.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("device preparation: begin read-only transaction: %w", err)
	}
	defer tx.Rollback(context.Background())

	res := &Result{}
	toUpdate, erToUpdate, err := readCounts(ctx, tx, &res.Counts)
	if err != nil {
		return nil, fmt.Errorf("device preparation: %w", err)
	}
	res.DevicesUpdated = toUpdate
	res.TimestampsCleared = toUpdate
	res.EnrollmentRequestsUpdated = erToUpdate

	eventRecorded := false
	if opts.CreateEvent {
		if opts.RestoreID != "" {
			res.EventName = eventName(opts.RestoreID)
			if err := tx.QueryRow(ctx, eventExistsSQL, DefaultOrgID, res.EventName).Scan(&eventRecorded); err != nil {
				return nil, fmt.Errorf("device preparation: look for the restore's event: %w", err)
			}
			res.EventCreated = !eventRecorded
		} else {
			res.EventCreated = toUpdate > 0
		}
	}
	res.KVFlushed = opts.FlushKV && (toUpdate > 0 || erToUpdate > 0 || res.EventCreated)

	present := 0
	if opts.KV != nil {
		if present, err = countPresentKeys(ctx, tx, &opts); err != nil {
			return nil, fmt.Errorf("device preparation: %w", err)
		}
	}
	if res.KVFlushed {
		res.KeysWritten = res.KeysExpected
	} else {
		res.KeysWritten = res.KeysExpected - present
	}
	res.Before = &State{
		DevicesAwaitingReconnect:            res.DevicesAlreadyAwaiting,
		DevicesToPrepare:                    toUpdate,
		EnrollmentRequestsAwaitingReconnect: res.EnrollmentRequestsAwaiting,
		EnrollmentRequestsToPrepare:         erToUpdate,
		KeysPresent:                         present,
		KeysMissing:                         res.KeysExpected - present,
		EventRecorded:                       eventRecorded,
	}
	res.After = &State{
		DevicesAwaitingReconnect:            res.DevicesAlreadyAwaiting + toUpdate,
		EnrollmentRequestsAwaitingReconnect: res.EnrollmentRequestsAwaiting + erToUpdate,
		KeysPresent:                         res.KeysExpected,
		EventRecorded:                       eventRecorded || res.EventCreated,
	}
	res.setChanged()
	log.Info("device preparation plan", "devices_to_update", toUpdate, "enrollment_requests_to_update", erToUpdate,
		"keys_expected", res.KeysExpected, "keys_present", present, "kv_flush", res.KVFlushed, "event", res.EventCreated)
	return res, nil
}

// PlanOrRun plans (dryRun) or runs device preparation, and says whether it changed anything.
func PlanOrRun(ctx context.Context, opts Options, dryRun bool) (*Result, bool, error) {
	run := Run
	if dryRun {
		run = Plan
	}
	res, err := run(ctx, opts)
	if err != nil {
		return res, false, err
	}
	return res, res.Changed, nil
}

// Run prepares the devices. The database part commits in one transaction (a split device
// update in its sessions' transactions, committed together: splitUpdate); the KV store is
// flushed (when it should be) before that commit, and the keys are written and checked
// after it. On error the returned Result (non-nil once the commit happened) says how far
// it got; running again converges.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.KV == nil {
		return nil, errors.New("device preparation: no KV client given: only a plan can do without the KV store")
	}
	log := opts.logger()
	log.Debug("device preparation starting")
	if err := verify(ctx, &opts); err != nil {
		return nil, err
	}
	log.Debug("database and KV store verified")
	var res *Result
	var err error
	staged := false
	if opts.Prepared != nil {
		res, staged, err = finishPrepared(ctx, &opts)
	} else {
		res, staged, err = runTransaction(ctx, &opts)
	}
	if err != nil {
		return nil, err
	}
	log.Info("database prepared", "devices_updated", res.DevicesUpdated, "timestamps_cleared", res.TimestampsCleared,
		"enrollment_requests_updated", res.EnrollmentRequestsUpdated, "event_created", res.EventCreated, "kv_flushed", res.KVFlushed)
	if staged {
		// Written and read back before the commit (keyStage).
		res.KeysWritten, res.KeysVerified, res.KeysStaged = res.KeysExpected, res.KeysExpected, true
		res.setChanged()
		logCompleted(log, res)
		return res, nil
	}

	written, err := writeKeys(ctx, opts.DB, &opts, res.KVFlushed)
	res.KeysWritten = written
	if err != nil {
		res.setChanged()
		return res, fmt.Errorf("device preparation: %w (the database part is committed; run device preparation again to finish the keys)", err)
	}
	verified, err := checkKeys(ctx, opts.DB, &opts)
	res.KeysVerified = verified
	res.setChanged()
	if err != nil {
		return res, fmt.Errorf("device preparation: %w", err)
	}
	logCompleted(log, res)
	return res, nil
}

// logCompleted logs upstream's closing line.
func logCompleted(log *slog.Logger, res *Result) {
	log.Info(fmt.Sprintf("Post-restoration device preparation completed successfully. Updated %d devices, %d enrollment requests. Added %d awaiting reconnection keys across %d organizations.",
		res.DevicesUpdated, res.EnrollmentRequestsUpdated, res.KeysWritten, res.Organizations),
		"keys_verified", res.KeysVerified, "devices_already_awaiting", res.DevicesAlreadyAwaiting,
		"devices_skipped_decommissioned", res.DevicesSkippedDecommissioned, "json_repaired", res.JSONRepaired)
}

// finishPrepared is Run's database step when DatabaseUpdateScript and EventScript
// already ran: the counts are the scripts', the rows are left alone, and the KV store is
// cleared (with FlushKV).
func finishPrepared(ctx context.Context, opts *Options) (_ *Result, staged bool, _ error) {
	log := opts.logger()
	p := opts.Prepared
	res := &Result{}
	if p.After != nil {
		// Read from the prepared database before it went live, which nothing has
		// written since.
		res.Counts = p.After.counts
	} else if _, _, err := readCounts(ctx, opts.DB, &res.Counts); err != nil {
		return nil, false, fmt.Errorf("device preparation: %w", err)
	}
	res.DevicesUpdated, res.TimestampsCleared, res.EnrollmentRequestsUpdated = p.DevicesUpdated, p.TimestampsCleared, p.EnrollmentRequestsUpdated
	// What was already awaiting before the database part ran.
	res.DevicesAlreadyAwaiting -= p.DevicesUpdated
	res.EnrollmentRequestsAwaiting -= p.EnrollmentRequestsUpdated
	res.JSONRepaired = p.JSONRepaired
	res.EventCreated = p.EventCreated
	if opts.CreateEvent {
		res.EventName = eventName(opts.RestoreID)
	}
	if opts.FlushKV {
		log.Info("Clearing KV store after restoration")
		staged = putStaged(ctx, opts)
		if !staged {
			if err := flushAll(ctx, opts.KV); err != nil {
				return nil, false, fmt.Errorf("device preparation: clear the KV store: %w", describeKVError(err, opts.KV.Options().Addr))
			}
		}
		res.KVFlushed = true
	} else if opts.Staged != nil {
		DiscardStagedKeys(ctx, opts.KV, opts.Staged)
	}
	return res, staged, nil
}

// flushAll clears the whole KV store (FLUSHALL, as upstream). The keyspace is empty when it
// returns, as with a plain FLUSHALL; ASYNC only leaves freeing the old keys' memory to
// the server's background thread, so a large store is not freed inside the downtime. A
// server too old for ASYNC (before Redis 4) gets the plain command.
func flushAll(ctx context.Context, kv *redis.Client) error {
	err := kv.FlushAllAsync(ctx).Err()
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "syntax") {
		err = kv.FlushAll(ctx).Err()
	}
	return err
}

// runTransaction updates devices, timestamps and enrollment requests and records the event
// in one transaction, flushing the KV store just before the commit. staged says the keys
// are in place too, written and read back while the rows were updated (keyStage).
func runTransaction(ctx context.Context, opts *Options) (_ *Result, staged bool, _ error) {
	log := opts.logger()
	tx, err := opts.DB.Begin(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("device preparation: begin transaction: %w", err)
	}
	defer tx.Rollback(context.Background())

	res := &Result{}
	toUpdate, _, err := readCounts(ctx, tx, &res.Counts)
	if err != nil {
		return nil, false, fmt.Errorf("device preparation: %w", err)
	}
	log.Debug("rows counted")
	c := &res.Counts
	stage := stageKeys(ctx, opts, toUpdate, c.KeysExpected)
	swapped := false
	if stage != nil {
		defer func() {
			if !swapped {
				stage.discard()
			}
			stage.close()
		}()
	}
	total := toUpdate + c.DevicesAlreadyAwaiting + c.DevicesSkippedDecommissioned + c.DevicesDeleted
	split, err := openSplitUpdate(ctx, tx, opts, toUpdate, total)
	if err != nil {
		return nil, false, fmt.Errorf("device preparation: %w", err)
	}
	if split != nil {
		defer split.close()
		res.DeviceUpdateSessions = len(split.ranges)
		if res.DevicesUpdated, res.TimestampsCleared, err = split.run(ctx, tx); err != nil {
			return nil, false, fmt.Errorf("device preparation: update devices (nothing was committed): %w", err)
		}
		log.Debug("devices updated", "sessions", res.DeviceUpdateSessions)
	} else if err := updateDevicesAlone(ctx, tx, opts, res, toUpdate, total, stage); err != nil {
		return nil, false, err
	}
	tag, err := tx.Exec(ctx, updateEnrollmentRequestsSQL)
	if err != nil {
		return nil, false, fmt.Errorf("device preparation: update enrollment requests: %w", err)
	}
	res.EnrollmentRequestsUpdated = int(tag.RowsAffected())
	log.Debug("rows updated")
	if res.DevicesUpdated != res.TimestampsCleared {
		log.Warn("some updated devices have no device_timestamps row", "devices_updated", res.DevicesUpdated, "timestamps_cleared", res.TimestampsCleared)
	}

	if opts.CreateEvent && (opts.RestoreID != "" || res.DevicesUpdated > 0) {
		name := eventName(opts.RestoreID)
		tag, err := tx.Exec(ctx, insertEventSQL, DefaultOrgID, name, EventMessage(res.DevicesUpdated))
		if err != nil {
			return nil, false, fmt.Errorf("device preparation: record the SystemRestored event: %w", err)
		}
		res.EventName = name
		res.EventCreated = tag.RowsAffected() == 1
	}

	// The KV store is touched only now, so that a failure above leaves it as it was; and a
	// KV failure here rolls the database back.
	if opts.FlushKV && (res.DevicesUpdated > 0 || res.EnrollmentRequestsUpdated > 0 || res.EventCreated) {
		log.Info("Clearing KV store after restoration")
		swapped = stage != nil && stage.put(ctx)
		if !swapped {
			if err := flushAll(ctx, opts.KV); err != nil {
				return nil, false, fmt.Errorf("device preparation: clear the KV store (nothing was committed): %w", describeKVError(err, opts.KV.Options().Addr))
			}
		}
		res.KVFlushed = true
	} else if err := opts.KV.Ping(ctx).Err(); err != nil {
		return nil, false, fmt.Errorf("device preparation: KV store (nothing was committed): %w", describeKVError(err, opts.KV.Options().Addr))
	}
	commit := tx.Commit
	if split != nil {
		commit = func(ctx context.Context) error { return split.commit(ctx, tx) }
	}
	if err := commit(ctx); err != nil {
		flushed := ""
		if res.KVFlushed {
			flushed = " (the KV store was already cleared)"
		}
		if split != nil {
			flushed += " (the device update ran in " + fmt.Sprint(len(split.ranges)) + " sessions, some of which may have committed)"
		}
		return nil, false, fmt.Errorf("device preparation: commit%s: %w: run device preparation again", flushed, err)
	}
	// The staged keys are those of the devices listed before the update; another writer
	// changing devices in between (none runs while the units are stopped) would show in
	// the count, and the keys are then written after the commit as well.
	return res, swapped && res.DevicesUpdated == toUpdate, nil
}

// updateDevicesAlone is the device update in the run's own transaction, with the btree
// indexes of devices built again instead of maintained row by row when that is cheaper
// and allowed (dropIndexes, which waits for stage, nil for none, to have listed the
// devices before it locks them).
func updateDevicesAlone(ctx context.Context, tx pgx.Tx, opts *Options, res *Result, toUpdate, total int, stage *keyStage) error {
	log := opts.logger()
	rebuild, err := dropIndexes(ctx, tx, opts, toUpdate, total, stage)
	if err != nil {
		return fmt.Errorf("device preparation: %w", err)
	}
	if err := tx.QueryRow(ctx, updateDevicesSQL).Scan(&res.DevicesUpdated, &res.TimestampsCleared); err != nil {
		return fmt.Errorf("device preparation: update devices: %w", err)
	}
	log.Debug("devices updated")
	if err := rebuild.buildIndexes(ctx, tx); err != nil {
		return fmt.Errorf("device preparation: %w", err)
	}
	res.IndexesRebuilt = len(rebuild.indexes)
	if res.IndexesRebuilt > 0 {
		log.Debug("btree indexes of devices built again", "indexes", res.IndexesRebuilt)
	}
	return nil
}
