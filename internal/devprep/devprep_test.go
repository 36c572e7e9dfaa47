package devprep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	orgA = DefaultOrgID
	// Inserted in upper case: keys must carry the canonical lowercase form.
	orgB      = "AAAAAAAA-AAAA-AAAA-AAAA-00000000000B"
	orgBLower = "aaaaaaaa-aaaa-aaaa-aaaa-00000000000b"
)

var wantSummary = map[string]any{"status": "AwaitingReconnect", "info": SummaryInfo}
var wantUpdated = map[string]any{"status": "Unknown"}

// workedExample loads the worked example of UPSTREAM §4.2, plus the rows the server
// writes (gorm-typical, JSON null) and the enrollment requests of §4.3.
func workedExample(t *testing.T, e *env) {
	e.addOrg(t, orgB, "org-b")
	e.addDevice(t, row{org: orgA, name: "dev-online", rv: i64(7), lastSeen: true,
		annotations: js(`{"device-controller/renderedVersion": "5", "x": "y"}`),
		status: js(statusWith(t, map[string]any{
			"summary":   map[string]any{"status": "Online", "info": "Device is up to date"},
			"updated":   map[string]any{"status": "UpToDate", "info": "Device was updated to the latest version"},
			"config":    map[string]any{"renderedVersion": "5"},
			"lifecycle": map[string]any{"status": "Enrolled"},
		}))})
	e.addDevice(t, row{org: orgA, name: "dev-nostatus", lastSeen: true})
	e.addDevice(t, row{org: orgA, name: "dev-typical", rv: i64(1), status: js(typicalStatus), lastSeen: true})
	e.addDevice(t, row{org: orgA, name: "dev-annot-false", rv: i64(3), lastSeen: true,
		annotations: js(`{"device-controller/awaitingReconnect": "false"}`), status: js(typicalStatus)})
	e.addDevice(t, row{org: orgA, name: "dev-already", rv: i64(4), lastSeen: true,
		annotations: js(`{"device-controller/awaitingReconnect": "true"}`), status: js(typicalStatus)})
	e.addDevice(t, row{org: orgA, name: "dev-decommissioned", rv: i64(2), lastSeen: true,
		status: js(statusWith(t, map[string]any{"lifecycle": map[string]any{"status": "Decommissioned"}}))})
	e.addDevice(t, row{org: orgA, name: "dev-decommissioning", rv: i64(2), lastSeen: true,
		status: js(statusWith(t, map[string]any{"lifecycle": map[string]any{"status": "Decommissioning"}}))})
	e.addDevice(t, row{org: orgA, name: "dev-deleted", rv: i64(2), lastSeen: true, deleted: true, status: js(typicalStatus)})
	e.addDevice(t, row{org: orgA, name: "dev-jsonnull", rv: i64(2), lastSeen: true, annotations: js("null"), status: js("null")})
	e.addDevice(t, row{org: orgB, name: "dev-b1", rv: i64(9), lastSeen: true,
		status: js(statusWith(t, map[string]any{"summary": map[string]any{"status": "Degraded", "info": "cpu"}}))})

	e.addER(t, row{org: orgA, name: "er-nostatus"})
	e.addER(t, row{org: orgA, name: "er-typical", rv: i64(1), status: js(`{"conditions": []}`)})
	e.addER(t, row{org: orgA, name: "er-approved-false", rv: i64(2), status: js(`{"approval": {"approved": false, "approvedBy": ""}, "conditions": []}`)})
	e.addER(t, row{org: orgA, name: "er-approved-bool", rv: i64(2), status: js(`{"approval": {"approved": true, "approvedAt": "2026-01-01T00:00:00Z", "approvedBy": "admin"}, "conditions": []}`)})
	e.addER(t, row{org: orgA, name: "er-approved-string", rv: i64(2), status: js(`{"approval": {"approved": "true", "approvedBy": "admin"}}`)})
	e.addER(t, row{org: orgA, name: "er-already", rv: i64(2), annotations: js(`{"device-controller/awaitingReconnect": "true"}`), status: js(`{"conditions": []}`)})
	e.addER(t, row{org: orgA, name: "er-deleted", rv: i64(2), deleted: true, status: js(`{"conditions": []}`)})
	e.addER(t, row{org: orgB, name: "er-jsonnull", rv: i64(2), annotations: js("null"), status: js("null")})
}

func TestWorkedExample(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())

	res, err := Run(ctx, e.options(t))
	require.NoError(t, err)

	assert.Equal(t, Counts{
		DevicesUpdated:               6, // online, nostatus, typical, annot-false, jsonnull, b1
		TimestampsCleared:            6,
		DevicesAlreadyAwaiting:       1,
		DevicesSkippedDecommissioned: 2,
		DevicesDeleted:               1,
		EnrollmentRequestsUpdated:    4, // nostatus, typical, approved-false, jsonnull
		EnrollmentRequestsAwaiting:   1,
		EnrollmentRequestsApproved:   2,
		JSONRepaired:                 2, // dev-jsonnull, er-jsonnull
		Organizations:                2,
		KeysExpected:                 7,
		KeysWritten:                  7,
		KeysVerified:                 7,
	}, res.Counts)
	assert.True(t, res.EventCreated)
	assert.True(t, res.KVFlushed)
	assert.True(t, res.Changed)

	// dev-online: annotation merged, summary and updated replaced, every other key kept.
	d := e.device(t, orgA, "dev-online")
	assert.Equal(t, map[string]any{"device-controller/renderedVersion": "5", "x": "y", AnnotationAwaitingReconnect: "true"}, decode(t, d.annotations))
	var want map[string]any
	require.NoError(t, json.Unmarshal([]byte(statusWith(t, map[string]any{
		"summary": wantSummary, "updated": wantUpdated,
		"config": map[string]any{"renderedVersion": "5"}, "lifecycle": map[string]any{"status": "Enrolled"},
	})), &want))
	assert.Equal(t, want, decode(t, d.status))
	assert.Equal(t, int64(8), *d.rv)
	assert.True(t, d.lastSeenNull)

	// dev-nostatus: SQL NULL status, annotations and resource_version.
	d = e.device(t, orgA, "dev-nostatus")
	assert.Equal(t, map[string]any{"summary": wantSummary, "updated": wantUpdated}, decode(t, d.status))
	assert.Equal(t, map[string]any{AnnotationAwaitingReconnect: "true"}, decode(t, d.annotations))
	assert.Equal(t, int64(1), *d.rv)
	assert.True(t, d.lastSeenNull)

	// A gorm-typical row (annotations SQL NULL, every status key present).
	d = e.device(t, orgA, "dev-typical")
	require.NoError(t, json.Unmarshal([]byte(statusWith(t, map[string]any{"summary": wantSummary, "updated": wantUpdated})), &want))
	assert.Equal(t, want, decode(t, d.status))
	assert.Equal(t, map[string]any{AnnotationAwaitingReconnect: "true"}, decode(t, d.annotations))
	assert.Equal(t, int64(2), *d.rv)

	d = e.device(t, orgA, "dev-annot-false")
	assert.Equal(t, map[string]any{AnnotationAwaitingReconnect: "true"}, decode(t, d.annotations))
	assert.Equal(t, int64(4), *d.rv)
	assert.True(t, d.lastSeenNull)

	// JSON null (not SQL NULL) is treated as {}: objects come out, not upstream's arrays.
	d = e.device(t, orgA, "dev-jsonnull")
	assert.Equal(t, map[string]any{"summary": wantSummary, "updated": wantUpdated}, decode(t, d.status))
	assert.Equal(t, map[string]any{AnnotationAwaitingReconnect: "true"}, decode(t, d.annotations))
	assert.Equal(t, int64(3), *d.rv)

	d = e.device(t, orgB, "dev-b1")
	assert.Equal(t, wantSummary, decode(t, d.status).(map[string]any)["summary"])
	assert.Equal(t, int64(10), *d.rv)
	assert.True(t, d.lastSeenNull)

	// Untouched rows keep everything, last_seen included.
	for _, name := range []string{"dev-already", "dev-decommissioned", "dev-decommissioning", "dev-deleted"} {
		d := e.device(t, orgA, name)
		assert.False(t, d.lastSeenNull, "%s keeps last_seen", name)
		st := decode(t, d.status).(map[string]any)
		assert.NotEqual(t, wantSummary, st["summary"], "%s keeps its summary", name)
	}
	assert.Equal(t, int64(4), *e.device(t, orgA, "dev-already").rv)
	assert.Equal(t, int64(2), *e.device(t, orgA, "dev-decommissioned").rv)
	assert.Nil(t, e.device(t, orgA, "dev-decommissioned").annotations)
	assert.Equal(t, int64(2), *e.device(t, orgA, "dev-deleted").rv)

	// Enrollment requests: annotation merged and rv bumped; status untouched.
	for _, c := range []struct {
		org, name string
		rv        int64
		status    any
	}{
		{orgA, "er-nostatus", 1, nil},
		{orgA, "er-typical", 2, map[string]any{"conditions": []any{}}},
		{orgA, "er-approved-false", 3, map[string]any{"approval": map[string]any{"approved": false, "approvedBy": ""}, "conditions": []any{}}},
		{orgB, "er-jsonnull", 3, nil},
	} {
		r := e.er(t, c.org, c.name)
		assert.Equal(t, map[string]any{AnnotationAwaitingReconnect: "true"}, decode(t, r.annotations), c.name)
		assert.Equal(t, c.rv, *r.rv, c.name)
		assert.Equal(t, c.status, decode(t, r.status), c.name)
	}
	for _, name := range []string{"er-approved-bool", "er-approved-string", "er-deleted"} {
		r := e.er(t, orgA, name)
		assert.Nil(t, r.annotations, name)
		assert.Equal(t, int64(2), *r.rv, name)
	}
	assert.Equal(t, int64(2), *e.er(t, orgA, "er-already").rv)

	// KV: exactly the annotated, non-deleted devices, value "true", no expiry; the stale
	// key is gone (flushed).
	wantKeys := map[string]string{}
	for _, n := range []string{"dev-online", "dev-nostatus", "dev-typical", "dev-annot-false", "dev-already", "dev-jsonnull"} {
		wantKeys[KeyFor(orgA, n)] = "true"
	}
	wantKeys["v1/"+orgBLower+"/device/dev-b1/awaiting-reconnect"] = "true"
	assert.Equal(t, wantKeys, e.kvKeys(t))
	ttl, err := e.redis.TTL(ctx, KeyFor(orgA, "dev-online")).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(-1), int64(ttl), "no expiry")

	// The event, as upstream writes it.
	var (
		org, name, reason, source, actor, typ, msg, objName, objKind, ann, details string
		labelsNull, ownerNull, genNull, rvNull, deletedNull, sameTimes             bool
	)
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT org_id::text, name, reason, source_component, actor, type, message, involved_object_name, involved_object_kind,
		annotations::text, details::text, labels IS NULL, owner IS NULL, generation IS NULL, resource_version IS NULL, deleted_at IS NULL, created_at = updated_at
		FROM events`).Scan(&org, &name, &reason, &source, &actor, &typ, &msg, &objName, &objKind, &ann, &details,
		&labelsNull, &ownerNull, &genNull, &rvNull, &deletedNull, &sameTimes))
	assert.Equal(t, DefaultOrgID, org)
	assert.Regexp(t, regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`), name)
	assert.Equal(t, name, res.EventName)
	assert.Equal(t, []string{"SystemRestored", "", "", "Normal", "System restored successfully. Updated 6 devices for post-restoration preparation.", "database", "System", "{}", "null"},
		[]string{reason, source, actor, typ, msg, objName, objKind, ann, details})
	assert.True(t, labelsNull && ownerNull && genNull && rvNull && deletedNull && sameTimes)
}

func TestPlanPredictsRunAndChangesNothing(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	opts := e.options(t)
	opts.RestoreID = "plan-test"
	require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	require.NoError(t, e.redis.Set(ctx, KeyFor(orgA, "dev-already"), "true", 0).Err())
	before := e.fingerprint(t)

	plan, err := Plan(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, before, e.fingerprint(t), "Plan must not change the database")
	assert.Equal(t, map[string]string{"v1/stale/cache": "x", KeyFor(orgA, "dev-already"): "true"}, e.kvKeys(t), "Plan must not change the KV store")
	assert.Equal(t, &State{DevicesAwaitingReconnect: 1, DevicesToPrepare: 6, EnrollmentRequestsAwaitingReconnect: 1, EnrollmentRequestsToPrepare: 4,
		KeysPresent: 1, KeysMissing: 6}, plan.Before)
	assert.Equal(t, &State{DevicesAwaitingReconnect: 7, EnrollmentRequestsAwaitingReconnect: 5, KeysPresent: 7, EventRecorded: true}, plan.After)
	assert.True(t, plan.Changed)

	res, err := Run(ctx, opts)
	require.NoError(t, err)
	plan.KeysVerified = res.KeysVerified // only a run reads keys back after writing
	assert.Equal(t, plan.Counts, res.Counts)
	assert.Equal(t, plan.EventCreated, res.EventCreated)
	assert.Equal(t, plan.KVFlushed, res.KVFlushed)

	after, err := Plan(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, plan.After, after.Before, "the state after the run is the one the plan predicted")
	assert.False(t, after.Changed)
}

func TestRerunChangesNothing(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	opts := e.options(t)
	_, err := Run(ctx, opts)
	require.NoError(t, err)
	// Something the server wrote since: a second run must not flush it away.
	require.NoError(t, e.redis.Set(ctx, "v1/server/cache", "x", 0).Err())
	fp := e.fingerprint(t)

	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.Changed)
	assert.False(t, res.KVFlushed)
	assert.False(t, res.EventCreated)
	assert.Zero(t, res.DevicesUpdated)
	assert.Zero(t, res.EnrollmentRequestsUpdated)
	assert.Zero(t, res.KeysWritten)
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, 7, res.DevicesAlreadyAwaiting)
	assert.Equal(t, fp, e.fingerprint(t))
	assert.Equal(t, 1, e.eventCount(t))
	assert.Equal(t, "x", e.redis.Get(ctx, "v1/server/cache").Val())
}

func TestRestoreIDRecordsOneEvent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	opts := e.options(t)
	opts.RestoreID = "restore-20260101T000000Z"

	// No devices at all: the restore is still recorded, once.
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.True(t, res.EventCreated)
	assert.True(t, res.KVFlushed)
	assert.Equal(t, eventName(opts.RestoreID), res.EventName)
	assert.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, res.EventName)

	e.addDevice(t, row{org: orgA, name: "late", status: js(typicalStatus)})
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.EventCreated, "the same restore is not recorded twice")
	assert.Equal(t, 1, res.DevicesUpdated)
	assert.Equal(t, 1, e.eventCount(t))

	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.Changed)

	opts.RestoreID = "another-restore"
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.True(t, res.EventCreated)
	assert.Equal(t, 2, e.eventCount(t))
}

func TestNoEventWithoutUpdatesAndNoRestoreID(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addDevice(t, row{org: orgA, name: "d", annotations: js(`{"device-controller/awaitingReconnect": "true"}`)})
	opts := e.options(t)
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.EventCreated)
	assert.False(t, res.KVFlushed)
	assert.Equal(t, 1, res.KeysWritten, "an annotated device without its key gets it")
	assert.True(t, res.Changed)
	assert.Equal(t, 0, e.eventCount(t))

	opts.CreateEvent = false
	e.addDevice(t, row{org: orgA, name: "d2"})
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, 1, res.DevicesUpdated)
	assert.False(t, res.EventCreated)
	assert.Equal(t, 0, e.eventCount(t))
}

func TestKeepKVWhenFlushIsOff(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	require.NoError(t, e.redis.Set(ctx, "v1/keep/me", "x", 0).Err())
	require.NoError(t, e.redis.Set(ctx, KeyFor(orgA, "dev-online"), "true", 0).Err())
	opts := e.options(t)
	opts.FlushKV = false
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.KVFlushed)
	assert.Equal(t, 6, res.KeysWritten, "SETNX: the existing key is not counted as written")
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, "x", e.redis.Get(ctx, "v1/keep/me").Val())
}

func TestWrongKeyValueIsNamed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addDevice(t, row{org: orgA, name: "good"})
	e.addDevice(t, row{org: orgA, name: "stuck"})
	require.NoError(t, e.redis.Set(ctx, KeyFor(orgA, "stuck"), "false", 0).Err())
	opts := e.options(t)
	opts.FlushKV = false
	res, err := Run(ctx, opts)
	var missing *MissingKeysError
	require.ErrorAs(t, err, &missing)
	assert.Equal(t, 1, missing.Count)
	assert.Equal(t, []string{orgA + "/stuck"}, missing.Devices)
	assert.Contains(t, err.Error(), orgA+"/stuck")
	require.NotNil(t, res)
	assert.Equal(t, 1, res.KeysVerified)
}

// A KV store that fills up half-way through the keys: the database part is committed, the
// error says so, and a second run writes the rest. The spare database holds someone
// else's key, so the keys are written after the commit (no stage, TestStaged*), as on a
// KV server with a single database.
func TestKVFailureHalfWayThenRerunRepairs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	occupySpare(t, e)
	e.addOrg(t, orgB, "org-b")
	_, err := e.admin.Exec(ctx, `INSERT INTO devices (org_id, name, status, resource_version)
		SELECT CASE WHEN i % 2 = 0 THEN $1::uuid ELSE $2::uuid END, 'device-' || i || '-' || repeat('x', 200), $3::jsonb, 1
		FROM generate_series(1, 4000) AS i`, orgA, orgB, typicalStatus)
	require.NoError(t, err)

	info, err := e.redis.Info(ctx, "memory").Result()
	require.NoError(t, err)
	m := regexp.MustCompile(`used_memory:(\d+)`).FindStringSubmatch(info)
	require.NotNil(t, m)
	var base int64
	fmt.Sscan(m[1], &base)
	// Room for a few hundred keys, not 4000, beside the clients of the run.
	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory", fmt.Sprint(base+400*1024)).Err())

	opts := e.options(t)
	opts.KeyBatchSize = 250
	res, err := Run(ctx, opts)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "OOM")
	assert.Contains(t, err.Error(), "the database part is committed")
	require.NotNil(t, res)
	assert.Equal(t, 4000, res.DevicesUpdated)
	assert.True(t, res.EventCreated)
	assert.Greater(t, res.KeysWritten, 0)
	assert.Less(t, res.KeysWritten, 4000)
	firstWritten := res.KeysWritten

	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory", "0").Err())
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.Zero(t, res.DevicesUpdated)
	assert.False(t, res.EventCreated)
	assert.False(t, res.KVFlushed, "a repair run must not flush the keys already written")
	assert.Equal(t, 4000-firstWritten, res.KeysWritten)
	assert.Equal(t, 4000, res.KeysVerified)
	assert.Len(t, e.kvKeys(t), 4000)
	assert.Equal(t, 1, e.eventCount(t))
}

// The KV store refuses FLUSHALL (and SWAPDB, which puts staged keys in place instead) after
// the rows were updated inside the transaction: the transaction rolls back, nothing is
// written, and the spare database the keys were staged in is empty again.
func TestKVFailureBeforeCommitRollsBack(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	fp := e.fingerprint(t)
	require.NoError(t, e.redis.Do(ctx, "ACL", "SETUSER", "default", "-flushall", "-swapdb").Err())
	opts := e.options(t)
	res, err := Run(ctx, opts)
	require.Error(t, err)
	assert.Nil(t, res)
	assert.Contains(t, err.Error(), "clear the KV store (nothing was committed)")
	assert.Equal(t, fp, e.fingerprint(t), "the database is unchanged")
	assert.Equal(t, 0, e.eventCount(t))
	assert.Empty(t, e.kvKeys(t))
	assert.Empty(t, e.kvDatabases(t), "no database of the KV store holds a key")

	require.NoError(t, e.redis.Do(ctx, "ACL", "SETUSER", "default", "+flushall", "+swapdb").Err())
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, 6, res.DevicesUpdated)
	assert.Equal(t, 7, res.KeysVerified)
}

func TestBadConnectionsSayWhich(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	fp := e.fingerprint(t)

	c := e.connOptions()
	c.DBPassword = "wrong"
	_, _, err := c.Connect(ctx)
	require.ErrorIs(t, err, ErrDBAuth)
	assert.Contains(t, err.Error(), "check db_user and db_password")
	assert.NotContains(t, err.Error(), "wrong")

	c = e.connOptions()
	c.DBName = "nope"
	_, _, err = c.Connect(ctx)
	require.ErrorIs(t, err, ErrDBMissing)

	c = e.connOptions()
	c.DBPort = closedPort(t)
	_, _, err = c.Connect(ctx)
	require.ErrorIs(t, err, ErrDBUnreachable)

	c = e.connOptions()
	c.KVPassword = "wrong"
	_, _, err = c.Connect(ctx)
	require.ErrorIs(t, err, ErrKVAuth)

	c = e.connOptions()
	c.KVPort = closedPort(t)
	_, _, err = c.Connect(ctx)
	require.ErrorIs(t, err, ErrKVUnreachable)

	// A KV store that goes away after connecting: Run refuses before any change.
	opts := e.options(t)
	require.NoError(t, e.kv.Stop())
	_, err = Run(ctx, opts)
	require.ErrorIs(t, err, ErrKVUnreachable)
	_, err = Plan(ctx, opts)
	require.ErrorIs(t, err, ErrKVUnreachable)
	assert.Equal(t, fp, e.fingerprint(t))
	assert.Equal(t, 0, e.eventCount(t))
}

func TestNotAFlightctlDatabase(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.connOptions()
	c.DBName = "postgres"
	db, kv, err := c.Connect(ctx)
	require.NoError(t, err)
	defer db.Close(ctx)
	defer kv.Close()
	require.NoError(t, e.redis.Set(ctx, "v1/keep", "x", 0).Err())
	_, err = Run(ctx, Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true})
	require.ErrorIs(t, err, ErrNotFlightctlDatabase)
	assert.Contains(t, err.Error(), "devices")
	assert.Equal(t, "x", e.redis.Get(ctx, "v1/keep").Val(), "the KV store is not flushed")
	_, err = Plan(ctx, Options{DB: db, KV: kv})
	require.ErrorIs(t, err, ErrNotFlightctlDatabase)
}

func TestMissingTimestampRowIsReported(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addDevice(t, row{org: orgA, name: "a"})
	e.addDevice(t, row{org: orgA, name: "b"})
	_, err := e.admin.Exec(ctx, `DELETE FROM device_timestamps WHERE name = 'b'`)
	require.NoError(t, err)
	res, err := Run(ctx, e.options(t))
	require.NoError(t, err)
	assert.Equal(t, 2, res.DevicesUpdated)
	assert.Equal(t, 1, res.TimestampsCleared)
	// The event message counts devices, not timestamp rows.
	var msg string
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT message FROM events`).Scan(&msg))
	assert.Equal(t, EventMessage(2), msg)
}

func TestEventNameAndKey(t *testing.T) {
	assert.Equal(t, eventName("r1"), eventName("r1"))
	assert.NotEqual(t, eventName("r1"), eventName("r2"))
	assert.NotEqual(t, eventName(""), eventName(""))
	assert.Equal(t, "v1/00000000-0000-0000-0000-000000000000/device/dev-1/awaiting-reconnect", KeyFor(DefaultOrgID, "dev-1"))
	assert.True(t, strings.HasPrefix(EventMessage(3), "System restored successfully. Updated 3 devices"))
}

func TestValidate(t *testing.T) {
	var o Options
	assert.Error(t, o.Validate())
	assert.Error(t, ConnOptions{}.Validate())
	err := ConnOptions{DBHost: "h", DBPort: 5432, DBName: "d", DBUser: "u", DBSSLMode: "bogus", KVHost: "k", KVPort: 6379}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "db_sslmode")
	assert.NoError(t, ConnOptions{DBHost: "h", DBPort: 5432, DBName: "d", DBUser: "u", KVHost: "k", KVPort: 6379}.Validate())
	assert.False(t, errors.Is(err, ErrDBAuth))
}

// Every combination of annotations, status and deletion, checked against a Go oracle of
// SPEC §5, and Plan's counts against Run's.
func TestEveryCombinationAgainstOracle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	annotations := []*string{nil, js("null"), js(`{}`), js(`{"device-controller/awaitingReconnect": "true"}`),
		js(`{"device-controller/awaitingReconnect": "false"}`), js(`{"device-controller/awaitingReconnect": "TRUE"}`),
		js(`{"device-controller/awaitingReconnect": true}`), js(`{"other": "x"}`), js(`[]`), js(`"text"`)}
	statuses := []*string{nil, js("null"), js(typicalStatus),
		js(statusWith(t, map[string]any{"lifecycle": map[string]any{"status": "Decommissioned"}})),
		js(statusWith(t, map[string]any{"lifecycle": map[string]any{"status": "Decommissioning"}})),
		js(statusWith(t, map[string]any{"lifecycle": map[string]any{"status": "Enrolled"}})),
		js(`{"lifecycle": {"status": "decommissioned"}}`), js(`[1, 2]`)}
	type dev struct {
		name      string
		ann, st   *string
		deleted   bool
		qualifies bool
		keyed     bool
	}
	var devs []dev
	wantDevices, wantKeys := 0, 0
	for i, a := range annotations {
		for j, s := range statuses {
			for _, del := range []bool{false, true} {
				d := dev{name: fmt.Sprintf("d-%d-%d-%v", i, j, del), ann: a, st: s, deleted: del}
				annotated := oracleAnnotation(t, a) == "true"
				d.qualifies = !del && !oracleDecommission(t, s) && !annotated
				d.keyed = !del && (annotated || d.qualifies)
				if d.qualifies {
					wantDevices++
				}
				if d.keyed {
					wantKeys++
				}
				devs = append(devs, d)
				e.addDevice(t, row{org: orgA, name: d.name, annotations: a, status: s, rv: i64(5), deleted: del, lastSeen: true})
			}
		}
	}
	opts := e.options(t)
	plan, err := Plan(ctx, opts)
	require.NoError(t, err)
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, wantDevices, res.DevicesUpdated)
	assert.Equal(t, wantKeys, res.KeysVerified)
	plan.KeysVerified = res.KeysVerified
	assert.Equal(t, plan.Counts, res.Counts)
	assert.Equal(t, len(devs), res.DevicesUpdated+res.DevicesAlreadyAwaiting+res.DevicesSkippedDecommissioned+res.DevicesDeleted,
		"every device is counted once")

	keys := e.kvKeys(t)
	for _, d := range devs {
		got := e.device(t, orgA, d.name)
		_, hasKey := keys[KeyFor(orgA, d.name)]
		assert.Equal(t, d.keyed, hasKey, "%s key", d.name)
		if !d.qualifies {
			assert.Equal(t, int64(5), *got.rv, "%s untouched", d.name)
			assert.False(t, got.lastSeenNull, "%s keeps last_seen", d.name)
			continue
		}
		assert.Equal(t, int64(6), *got.rv, d.name)
		assert.True(t, got.lastSeenNull, d.name)
		wantAnn := oracleObject(t, d.ann)
		wantAnn[AnnotationAwaitingReconnect] = "true"
		assert.Equal(t, wantAnn, decode(t, got.annotations), "%s annotations", d.name)
		wantSt := oracleObject(t, d.st)
		wantSt["summary"], wantSt["updated"] = wantSummary, wantUpdated
		assert.Equal(t, wantSt, decode(t, got.status), "%s status", d.name)
	}
}

// oracleObject is the JSON object in s, or an empty one for anything else.
func oracleObject(t *testing.T, s *string) map[string]any {
	if s == nil {
		return map[string]any{}
	}
	var v any
	require.NoError(t, json.Unmarshal([]byte(*s), &v))
	if m, ok := v.(map[string]any); ok {
		return m
	}
	return map[string]any{}
}

// oracleAnnotation is the annotation's text as PostgreSQL's ->> gives it ("" when absent).
func oracleAnnotation(t *testing.T, s *string) string {
	switch v := oracleObject(t, s)[AnnotationAwaitingReconnect].(type) {
	case string:
		return v
	case bool:
		return fmt.Sprint(v)
	}
	return ""
}

func oracleDecommission(t *testing.T, s *string) bool {
	lc, _ := oracleObject(t, s)["lifecycle"].(map[string]any)
	st, _ := lc["status"].(string)
	return st == "Decommissioned" || st == "Decommissioning"
}
