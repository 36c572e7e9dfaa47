package devprep

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// spareDB is the database a stage uses on the test bed's Redis (16 databases).
const spareDB = 15

// inDB is a client of e's KV store on database db.
func inDB(t testing.TB, e *env, db int) *redis.Client {
	t.Helper()
	o := *e.redis.Options()
	o.DB = db
	c := redis.NewClient(&o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// occupySpare puts someone else's key in the spare database, so that no stage is made.
func occupySpare(t testing.TB, e *env) {
	t.Helper()
	require.NoError(t, inDB(t, e, spareDB).Set(context.Background(), "someone/else", "x", 0).Err())
}

// syncBuffer is a log sink that the stage's goroutine and the test can share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func debugLog(opts *Options) *syncBuffer {
	buf := &syncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return buf
}

const (
	logStaged  = "staged awaiting-reconnect keys swapped in"
	logNoStage = "awaiting-reconnect keys are written after the commit"
)

// The worked example's 7 keys, as every other test expects them.
func workedKeys() map[string]string {
	keys := map[string]string{}
	for _, d := range []string{"dev-online", "dev-nostatus", "dev-typical", "dev-annot-false", "dev-already", "dev-jsonnull"} {
		keys[KeyFor(orgA, d)] = "true"
	}
	keys[KeyFor(orgBLower, "dev-b1")] = "true"
	return keys
}

// The staged keys end up as FLUSHALL and writing them would leave the store: exactly the
// keys in the server's database, every other database empty, no marker, the spare empty.
func TestStagedKeysReplaceTheWholeStore(t *testing.T) {
	for _, target := range []int{0, spareDB} {
		t.Run(fmt.Sprintf("server on database %d", target), func(t *testing.T) {
			e := newEnv(t)
			workedExample(t, e)
			ctx := context.Background()
			opts := e.options(t)
			opts.KV = inDB(t, e, target)
			require.NoError(t, opts.KV.Set(ctx, "v1/stale/cache", "x", 0).Err())
			require.NoError(t, opts.KV.Set(ctx, KeyFor(orgA, "dev-deleted"), "true", 0).Err())
			require.NoError(t, inDB(t, e, 3).Set(ctx, "other/db", "x", 0).Err())
			log := debugLog(&opts)

			res, err := Run(ctx, opts)
			require.NoError(t, err)
			assert.Contains(t, log.String(), logStaged)
			assert.True(t, res.KeysStaged)
			assert.Contains(t, log.String(), fmt.Sprintf("kv_database=%d", map[int]int{0: spareDB, spareDB: spareDB - 1}[target]))
			assert.True(t, res.KVFlushed)
			assert.Equal(t, 7, res.KeysWritten)
			assert.Equal(t, 7, res.KeysVerified)
			assert.Equal(t, 6, res.DevicesUpdated)

			got := map[string]string{}
			keys, err := opts.KV.Keys(ctx, "*").Result()
			require.NoError(t, err)
			for _, k := range keys {
				got[k] = opts.KV.Get(ctx, k).Val()
			}
			assert.Equal(t, workedKeys(), got)
			assert.Equal(t, map[int]int{target: 7}, e.kvDatabases(t))
		})
	}
}

// A spare database holding someone else's keys is not used; FLUSHALL then clears it, as
// upstream's FLUSHALL always did.
func TestStageLeavesAForeignSpareDatabaseToFlushAll(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	occupySpare(t, e)
	opts := e.options(t)
	log := debugLog(&opts)
	res, err := Run(context.Background(), opts)
	require.NoError(t, err)
	assert.Contains(t, log.String(), logNoStage)
	assert.Contains(t, log.String(), "KV database 15 holds 1 keys of something else")
	assert.NotContains(t, log.String(), logStaged)
	assert.False(t, res.KeysStaged)
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, workedKeys(), e.kvKeys(t))
	assert.Equal(t, map[int]int{0: 7}, e.kvDatabases(t))
}

// A stage a killed run left (its marker and some keys) is cleared and used again.
func TestStageLeftByAKilledRunIsUsedAgain(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	spare := inDB(t, e, spareDB)
	require.NoError(t, spare.Set(ctx, stageMarkerKey, "earlier", 0).Err())
	require.NoError(t, spare.Set(ctx, KeyFor(orgA, "dev-deleted"), "true", 0).Err())
	opts := e.options(t)
	log := debugLog(&opts)
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Contains(t, log.String(), logStaged)
	assert.True(t, res.KeysStaged)
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, workedKeys(), e.kvKeys(t))
	assert.Equal(t, map[int]int{0: 7}, e.kvDatabases(t))
}

// A KV server that refuses SWAPDB: the staged keys are dropped, the store is cleared with
// FLUSHALL and the keys are written after the commit, with the same end state.
func TestStagedKeysSwapRefusedFallsBack(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	ctx := context.Background()
	require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	require.NoError(t, e.redis.Do(ctx, "ACL", "SETUSER", "default", "-swapdb").Err())
	opts := e.options(t)
	log := debugLog(&opts)
	res, err := Run(ctx, opts)
	require.NoError(t, err)
	assert.Contains(t, log.String(), "staging them failed")
	assert.Contains(t, log.String(), "swapdb")
	assert.NotContains(t, log.String(), logStaged)
	assert.False(t, res.KeysStaged)
	assert.True(t, res.KVFlushed)
	assert.Equal(t, 7, res.KeysWritten)
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, workedKeys(), e.kvKeys(t))
	assert.Equal(t, map[int]int{0: 7}, e.kvDatabases(t))
}

// A KV store without room for the staged keys: the stage gives way, its keys are dropped
// before the commit, and the run goes on as without a stage (here, too full for the
// keys after the commit as well: the database part is committed, a second run with room
// finishes).
func TestStagedKeysOutOfMemoryFallsBack(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, err := e.admin.Exec(ctx, `INSERT INTO devices (org_id, name, status, resource_version)
		SELECT $1::uuid, 'device-' || i || '-' || repeat('x', 200), $2::jsonb, 1
		FROM generate_series(1, 4000) AS i`, orgA, typicalStatus)
	require.NoError(t, err)
	info, err := e.redis.Info(ctx, "memory").Result()
	require.NoError(t, err)
	var base int64
	_, err = fmt.Sscan(regexp.MustCompile(`used_memory:(\d+)`).FindStringSubmatch(info)[1], &base)
	require.NoError(t, err)
	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory", fmt.Sprint(base+400*1024)).Err())

	opts := e.options(t)
	opts.KeyBatchSize = 250
	log := debugLog(&opts)
	res, err := Run(ctx, opts)
	require.Error(t, err)
	assert.Contains(t, log.String(), "staging them failed")
	assert.Contains(t, log.String(), "OOM")
	assert.Contains(t, err.Error(), "the database part is committed")
	require.NotNil(t, res)
	assert.Equal(t, 4000, res.DevicesUpdated)
	assert.NotContains(t, e.kvDatabases(t), spareDB, "the staged keys were dropped")

	require.NoError(t, e.redis.ConfigSet(ctx, "maxmemory", "0").Err())
	res, err = Run(ctx, opts)
	require.NoError(t, err)
	assert.Zero(t, res.DevicesUpdated)
	assert.Equal(t, 4000, res.KeysVerified)
	assert.Equal(t, map[int]int{0: 4000}, e.kvDatabases(t))
}

// While the server runs (ServerRunning) a device it adds between the listing and the
// update would get no key, so the keys are written after the commit, from the rows as
// committed.
func TestNoStageWhileTheServerRuns(t *testing.T) {
	e := newEnv(t)
	workedExample(t, e)
	opts := e.options(t)
	opts.ServerRunning = true
	log := debugLog(&opts)
	res, err := Run(context.Background(), opts)
	require.NoError(t, err)
	assert.NotContains(t, log.String(), "staged")
	assert.False(t, res.KeysStaged)
	assert.Equal(t, 7, res.KeysVerified)
	assert.Equal(t, workedKeys(), e.kvKeys(t))
}

// A restore's keys staged ahead (StageKeys, before the units stop) are swapped in by Run
// with Prepared; a stage that lost a key (evicted, say) is dropped and the keys are
// written as without it. Both end with the keys Run alone gives.
func TestStagedKeysOfAPreparedDatabase(t *testing.T) {
	ctx := context.Background()
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged %v", damaged), func(t *testing.T) {
			e := newEnv(t)
			workedExample(t, e)
			require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
			opts := e.options(t)
			opts.RestoreID = "r-1"
			opts.Prepared = prepareAsRestore(t, e, opts.RestoreID)
			staged := StageKeys(ctx, opts)
			require.NotNil(t, staged)
			assert.Equal(t, StagedKeys{DB: spareDB, Token: staged.Token, Keys: 7}, *staged)
			assert.Equal(t, map[int]int{0: 1, spareDB: 8}, e.kvDatabases(t), "the server's database untouched; 7 keys and the marker in the spare")
			if damaged {
				require.NoError(t, inDB(t, e, spareDB).Del(ctx, KeyFor(orgA, "dev-online")).Err())
			}

			opts.Staged = staged
			log := debugLog(&opts)
			res, err := Run(ctx, opts)
			require.NoError(t, err)
			assert.Equal(t, !damaged, res.KeysStaged)
			if damaged {
				assert.Contains(t, log.String(), "no longer whole")
			}
			assert.Equal(t, 7, res.KeysVerified)
			assert.Equal(t, workedKeys(), e.kvKeys(t))
			assert.Equal(t, map[int]int{0: 7}, e.kvDatabases(t))
		})
	}
}

// Staged keys a restore did not use (it failed before its device preparation) are
// dropped; the server's database is left as it was.
func TestDiscardStagedKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	workedExample(t, e)
	require.NoError(t, e.redis.Set(ctx, "v1/stale/cache", "x", 0).Err())
	opts := e.options(t)
	opts.Prepared = prepareAsRestore(t, e, "r-1")
	staged := StageKeys(ctx, opts)
	require.NotNil(t, staged)
	DiscardStagedKeys(ctx, opts.KV, staged)
	assert.Equal(t, map[int]int{0: 1}, e.kvDatabases(t))
	// Someone else's keys in that database are never dropped.
	occupySpare(t, e)
	DiscardStagedKeys(ctx, opts.KV, staged)
	assert.Equal(t, map[int]int{0: 1, spareDB: 1}, e.kvDatabases(t))
}

// As the table's owner, on one session, the transaction locks devices against reads to
// build their indexes again; the stage lists the devices on a session of its own, so the
// lock waits for that listing (else each would wait for the other for ever).
func TestStagedKeysBesideAnIndexRebuild(t *testing.T) {
	rebuildAtAnySize(t)
	e := newEnv(t)
	generatedDevices(t, e, 2000)
	db, kv := e.connectWith(t, e.ownerConnOptions())
	res, err := Run(context.Background(), Options{DB: db, KV: kv, FlushKV: true, CreateEvent: true, Connections: 1})
	require.NoError(t, err)
	assert.Positive(t, res.IndexesRebuilt)
	assert.True(t, res.KeysStaged)
	assert.Equal(t, res.KeysExpected, res.KeysVerified)
	assert.Equal(t, map[int]int{0: res.KeysExpected}, e.kvDatabases(t))
}

// A stage taken over before the swap (another run cleared the spare database, as it does
// with a stage a killed run left) is not swapped in: the store would lose its keys.
func TestStageTakenOverBeforeTheSwapIsNotUsed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	workedExample(t, e)
	opts := e.options(t)
	opts.Prepared = prepareAsRestore(t, e, "r-1")
	staged := StageKeys(ctx, opts)
	require.NotNil(t, staged)
	s := resumedStage(&opts, staged)
	defer s.close()
	s.devs = opts.Prepared.After.devices
	require.NoError(t, inDB(t, e, spareDB).Set(ctx, stageMarkerKey, "another run", 0).Err())
	err := s.swapIn(ctx)
	require.ErrorContains(t, err, "no longer holds this run's stage")
	assert.Equal(t, map[int]int{spareDB: 8}, e.kvDatabases(t), "nothing swapped")
	s.discard()
	assert.Equal(t, map[int]int{spareDB: 8}, e.kvDatabases(t), "the other run's stage is not dropped")
}
