package devprep

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// The keys of a fresh preparation replace the whole KV store (FLUSHALL, then one key per
// device). Written after the commit they cost a third of a second at 100,000 devices on
// top of the device update. So, while the update runs, they are written into a spare
// logical database of the same KV server, which the server never reads, and read back
// there; once the database part succeeded, SWAPDB puts them in place of the store in one
// step, and the old contents and every other logical database are cleared, as FLUSHALL
// would. The store the server reads is not touched before that step: a failure before it
// leaves the KV store as it was, and the spare database is emptied again.
//
// Any step of it that the KV server refuses (no spare database, one holding someone
// else's keys, SWAPDB not allowed, keys evicted) falls back to FLUSHALL and writing the
// keys after the commit.

// stageMarkerKey marks a spare database as this tool's: a stage left by a killed run is
// cleared and used again, a database holding anything else is left alone.
const stageMarkerKey = "flightctl-dr:staged-awaiting-reconnect-keys"

// maxStagedKeys bounds the devices held in memory for a stage; a larger fleet writes its
// keys after the commit, streamed from the database.
const maxStagedKeys = 2_000_000

// keyStage is the awaiting-reconnect keys staged in a spare database.
type keyStage struct {
	opts   *Options
	spare  *redis.Client // the spare database
	db     int           // its number
	target int           // the database the server reads (Options.KV's)
	token  string        // the marker's value
	// expected is the number of keys the run counted; devs are those listed.
	expected int
	devs     []device
	// listed is closed once the devices are listed (or the listing failed); done when
	// write has returned, err is its result.
	listed    chan struct{}
	done      chan struct{}
	err       error
	discarded bool
}

// stageKeys starts staging the keys of a run that will clear the KV store (FlushKV, rows to
// update), keysExpected of them. The devices are listed on a session of their own while
// the update runs: what it reads is the rows before the update, which the update's count
// confirms afterwards (runTransaction). It gives nil when the keys are written after the
// commit: the server runs (a device it adds between the listing and the update would get
// no key), or the KV server has no spare database to give.
func stageKeys(ctx context.Context, opts *Options, toUpdate, keysExpected int) *keyStage {
	if !opts.FlushKV || toUpdate == 0 || opts.ServerRunning {
		return nil
	}
	log := opts.logger()
	if keysExpected > maxStagedKeys {
		log.Debug("awaiting-reconnect keys are written after the commit", "reason", fmt.Sprintf("more than %d devices", maxStagedKeys))
		return nil
	}
	s, reason := openKeyStage(ctx, opts, keysExpected)
	if s == nil {
		log.Debug("awaiting-reconnect keys are written after the commit", "reason", reason)
		return nil
	}
	log.Debug("awaiting-reconnect keys staged in a spare KV database while the rows are updated", "kv_database", s.db, "devices", keysExpected)
	s.start(ctx)
	return s
}

// openKeyStage finds a spare database and claims it, or says (nil, reason) why the keys
// are written after the commit instead.
func openKeyStage(ctx context.Context, opts *Options, keysExpected int) (*keyStage, string) {
	target := opts.KV.Options().DB
	cfg, err := opts.KV.ConfigGet(ctx, "databases").Result()
	if err != nil {
		return nil, "the KV store does not tell its number of databases: " + err.Error()
	}
	n, err := strconv.Atoi(cfg["databases"])
	if err != nil {
		return nil, fmt.Sprintf("the KV store answered %q for its number of databases", cfg["databases"])
	}
	spare := n - 1
	if spare == target {
		spare--
	}
	if spare < 0 {
		return nil, "the KV store has no second database"
	}
	s := newKeyStage(opts, spare, keysExpected)
	if reason := s.claim(ctx); reason != "" {
		_ = s.spare.Close()
		return nil, reason
	}
	return s, ""
}

func newKeyStage(opts *Options, spare, keysExpected int) *keyStage {
	return &keyStage{opts: opts, spare: clientOn(opts.KV, spare), db: spare, target: opts.KV.Options().DB,
		expected: keysExpected, listed: make(chan struct{}), done: make(chan struct{})}
}

// clientOn is a client of the server kv talks to, on database db, with one connection.
func clientOn(kv *redis.Client, db int) *redis.Client {
	o := *kv.Options()
	o.DB, o.PoolSize, o.MinIdleConns, o.MaxIdleConns = db, 1, 0, 1
	return redis.NewClient(&o)
}

// claim makes the spare database this stage's: empty, or left by an earlier stage.
func (s *keyStage) claim(ctx context.Context) string {
	size, err := s.spare.DBSize(ctx).Result()
	if err != nil {
		return fmt.Sprintf("KV database %d cannot be used: %v", s.db, err)
	}
	if size > 0 {
		if err := s.spare.Get(ctx, stageMarkerKey).Err(); err != nil {
			return fmt.Sprintf("KV database %d holds %d keys of something else", s.db, size)
		}
		// A stage a killed run left.
		if err := s.spare.FlushDB(ctx).Err(); err != nil {
			return fmt.Sprintf("KV database %d cannot be cleared: %v", s.db, err)
		}
	}
	token := make([]byte, 8)
	_, _ = rand.Read(token)
	s.token = hex.EncodeToString(token)
	if err := s.spare.Set(ctx, stageMarkerKey, s.token, 0).Err(); err != nil {
		return fmt.Sprintf("KV database %d cannot be written: %v", s.db, err)
	}
	return ""
}

// start lists the devices, writes their keys and reads them back in the background; put
// gives the result.
func (s *keyStage) start(ctx context.Context) {
	go func() {
		defer close(s.done)
		s.err = s.write(ctx)
	}()
}

func (s *keyStage) write(ctx context.Context) error {
	err := s.list(ctx)
	close(s.listed)
	if err != nil {
		return err
	}
	if len(s.devs) != s.expected {
		return fmt.Errorf("listed %d devices awaiting reconnect, counted %d: devices changed meanwhile", len(s.devs), s.expected)
	}
	return s.writeListed(ctx)
}

func (s *keyStage) list(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, s.opts.DB.Config())
	if err != nil {
		return fmt.Errorf("open a database session to list the devices: %w", err)
	}
	defer conn.Close(context.Background())
	s.devs, err = listDevices(ctx, conn, s.expected)
	return err
}

// waitListed returns once the devices are listed: a transaction about to lock devices
// against reads (an index rebuild) waits for it, else the two would wait for each other.
func (s *keyStage) waitListed() {
	if s != nil {
		<-s.listed
	}
}

// writeListed writes the keys of s.devs and reads them back.
func (s *keyStage) writeListed(ctx context.Context) error {
	if _, err := msetListed(ctx, s.spare, s.opts, s.devs); err != nil {
		return err
	}
	missing := 0
	if _, err := readBackListed(ctx, s.spare, s.opts, s.devs, func(device) { missing++ }); err != nil {
		return err
	}
	if missing > 0 {
		return fmt.Errorf("%d staged keys were not read back (evicted?)", missing)
	}
	return nil
}

// put waits for the staged keys and swaps them in (swapIn). false: they are not in place,
// and the caller clears the store and writes them the usual way.
func (s *keyStage) put(ctx context.Context) bool {
	<-s.done
	err := s.err
	if err == nil {
		err = s.swapIn(ctx)
	}
	if err != nil {
		s.opts.logger().Info("awaiting-reconnect keys are written after the commit: staging them failed", "error", err)
		// Now, not after the commit: the staged keys' memory must be free before the
		// keys are written again.
		s.discard()
		return false
	}
	s.opts.logger().Debug("staged awaiting-reconnect keys swapped in", "kv_database", s.target, "keys", len(s.devs))
	return true
}

// swapIn puts the staged keys in place of the store's contents and clears every other
// database, which is FLUSHALL and the keys in one step for the server.
func (s *keyStage) swapIn(ctx context.Context) error {
	// Still this stage's, whole: another run may have taken the spare database for a
	// stage left behind, or the server evicted keys.
	if got := s.spare.Get(ctx, stageMarkerKey).Val(); got != s.token {
		return fmt.Errorf("KV database %d no longer holds this run's stage", s.db)
	}
	if n := s.spare.DBSize(ctx).Val(); n != int64(len(s.devs))+1 {
		return fmt.Errorf("KV database %d is no longer whole: it holds %d keys, the stage wrote %d", s.db, n, len(s.devs)+1)
	}
	info, err := s.opts.KV.Info(ctx, "keyspace").Result()
	if err != nil {
		return fmt.Errorf("list the KV store's databases: %w", err)
	}
	for _, db := range databasesWithKeys(info) {
		if db == s.target || db == s.db {
			continue
		}
		if err := flushDatabase(ctx, s.opts.KV, db); err != nil {
			return fmt.Errorf("clear KV database %d: %w", db, err)
		}
	}
	if err := s.opts.KV.Do(ctx, "swapdb", s.target, s.db).Err(); err != nil {
		return fmt.Errorf("swap KV databases %d and %d: %w", s.target, s.db, err)
	}
	// The marker came along; the spare now holds the old contents.
	if err := s.opts.KV.Del(ctx, stageMarkerKey).Err(); err != nil {
		return fmt.Errorf("remove the stage's marker: %w", err)
	}
	if err := s.spare.FlushDBAsync(ctx).Err(); err != nil {
		return fmt.Errorf("clear KV database %d: %w", s.db, err)
	}
	return nil
}

// discard empties the spare database again (the stage was not swapped in), once, while it
// holds this stage: another run's, which took it over, is left alone.
func (s *keyStage) discard() {
	<-s.done
	if s.discarded {
		return
	}
	s.discarded = true
	ctx := context.Background()
	if s.spare.Get(ctx, stageMarkerKey).Val() == s.token {
		_ = s.spare.FlushDB(ctx).Err()
	}
}

func (s *keyStage) close() { _ = s.spare.Close() }

// databasesWithKeys reads the numbers of the databases INFO keyspace lists
// ("db3:keys=5,expires=0,avg_ttl=0").
func databasesWithKeys(info string) []int {
	var dbs []int
	for _, line := range strings.Split(info, "\n") {
		name, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "db") {
			continue
		}
		if n, err := strconv.Atoi(name[2:]); err == nil {
			dbs = append(dbs, n)
		}
	}
	return dbs
}

// flushDatabase clears database db of the server kv talks to.
func flushDatabase(ctx context.Context, kv *redis.Client, db int) error {
	c := clientOn(kv, db)
	defer c.Close()
	return c.FlushDBAsync(ctx).Err()
}

// StagedKeys are the awaiting-reconnect keys of a prepared database (Options.Prepared)
// written and read back in a spare database of the KV store ahead of Run, by StageKeys: a
// restore does it before the units stop. Run with them as Options.Staged puts them in
// place with SWAPDB, instead of clearing the store and writing the keys in the downtime.
type StagedKeys struct {
	DB    int
	Token string
	Keys  int
}

// StageKeys stages the keys of opts.Prepared's devices (FlushKV set), or gives nil when it
// cannot (logged; Run then writes them as without a stage).
func StageKeys(ctx context.Context, opts Options) *StagedKeys {
	if opts.KV == nil || !opts.FlushKV || opts.Prepared == nil || opts.Prepared.After == nil {
		return nil
	}
	log := opts.logger()
	devs := opts.Prepared.After.devices
	s, reason := openKeyStage(ctx, &opts, len(devs))
	if s == nil {
		log.Info("awaiting-reconnect keys are written when the units are stopped", "reason", reason)
		return nil
	}
	defer s.close()
	s.devs = devs
	close(s.listed)
	close(s.done)
	if s.err = s.writeListed(ctx); s.err != nil {
		log.Info("awaiting-reconnect keys are written when the units are stopped: staging them failed", "error", s.err)
		s.discard()
		return nil
	}
	log.Info("awaiting-reconnect keys staged in a spare KV database", "kv_database", s.db, "keys", len(devs))
	return &StagedKeys{DB: s.db, Token: s.token, Keys: len(devs)}
}

// DiscardStagedKeys empties the spare database of keys StageKeys staged and Run did not
// use (a restore that failed before its device preparation).
func DiscardStagedKeys(ctx context.Context, kv *redis.Client, staged *StagedKeys) {
	if staged == nil {
		return
	}
	s := resumedStage(&Options{KV: kv}, staged)
	s.discard()
	s.close()
}

// resumedStage is the stage staged describes, settled: swapIn and discard check that the
// spare database still holds it.
func resumedStage(opts *Options, staged *StagedKeys) *keyStage {
	s := newKeyStage(opts, staged.DB, staged.Keys)
	s.token = staged.Token
	close(s.listed)
	close(s.done)
	return s
}

// putStaged swaps in the keys StageKeys staged (Options.Staged), checked first to be those
// of the prepared database's devices; false: they are not in place, and the caller clears
// the store and writes them the usual way.
func putStaged(ctx context.Context, opts *Options) bool {
	log := opts.logger()
	staged := opts.Staged
	if staged == nil || opts.Prepared == nil || opts.Prepared.After == nil {
		return false
	}
	if staged.Keys != opts.Prepared.After.Keys() {
		log.Info("the staged awaiting-reconnect keys are not this database's; writing them now", "staged", staged.Keys, "devices", opts.Prepared.After.Keys())
		DiscardStagedKeys(ctx, opts.KV, staged)
		return false
	}
	s := resumedStage(opts, staged)
	defer s.close()
	s.devs = opts.Prepared.After.devices
	return s.put(ctx)
}
