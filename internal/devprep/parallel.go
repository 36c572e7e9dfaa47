package devprep

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/jackc/pgx/v5"

	"flightctl.dr/internal/pgload"
)

// On a large fleet the device update is bound by one backend's CPU: every new row version
// enters each index of devices (17 in the server's schema, GIN over whole JSON columns
// among them), and PostgreSQL runs an UPDATE on one backend. So the update is split by
// ranges of the primary key over several sessions, one transaction each, which the server
// runs on as many CPUs. The ranges hold different rows (of devices and of
// device_timestamps), so the sessions never wait for each other.
//
// The sessions commit together, after every update succeeded and the KV store was
// cleared; a failure before that rolls every one back. A commit that fails, or a kill
// between the commits, can leave some ranges prepared and others not: running device
// preparation again finishes the others (their devices still qualify, the prepared ones
// count as already awaiting), as it finishes the keys after any failure once the
// database part is committed.

var (
	// parallelMinDevices is the fewest devices to update per session: below it one
	// session costs less than opening others.
	parallelMinDevices = 20000
)

// updateSessions is the number of sessions the device update of toUpdate rows uses: the
// requested number (0: pgload.DefaultConnections from this machine's CPUs and the
// server's free connections), no more than one per parallelMinDevices rows.
func updateSessions(ctx context.Context, q querier, requested, toUpdate int) (int, error) {
	n := requested
	if n == 0 {
		free := -1
		if err := q.QueryRow(ctx, pgload.FreeConnectionsSQL).Scan(&free); err != nil {
			return 0, fmt.Errorf("count the database server's free connections: %w", err)
		}
		n = pgload.DefaultConnections(runtime.NumCPU(), free)
	}
	return max(min(n, toUpdate/parallelMinDevices), 1), nil
}

// deviceRange is one session's share of devices: from (fromOrg, fromName) up to
// (toOrg, toName), an empty org leaving that end open.
type deviceRange struct{ fromOrg, fromName, toOrg, toName string }

func (r deviceRange) args() []any {
	bound := func(org, name string) (any, any) {
		if org == "" {
			return nil, nil
		}
		return org, name
	}
	a, b := bound(r.fromOrg, r.fromName)
	c, d := bound(r.toOrg, r.toName)
	return []any{a, b, c, d}
}

// splitDevices cuts the total rows of devices, in key order, into n ranges of about the
// same number of rows.
func splitDevices(ctx context.Context, q querier, n, total int) ([]deviceRange, error) {
	ranges := make([]deviceRange, n)
	for i := 1; i < n; i++ {
		var org, name string
		if err := q.QueryRow(ctx, deviceKeyAtSQL, i*total/n).Scan(&org, &name); err != nil {
			return nil, fmt.Errorf("split devices over %d sessions: %w", n, err)
		}
		ranges[i-1].toOrg, ranges[i-1].toName = org, name
		ranges[i].fromOrg, ranges[i].fromName = org, name
	}
	return ranges, nil
}

// updateSession is one extra session of a split device update, in its own transaction.
type updateSession struct {
	conn *pgx.Conn
	tx   pgx.Tx
}

// splitUpdate is a device update split over the run's transaction and others.
type splitUpdate struct {
	ranges []deviceRange
	// extra[i] updates ranges[i+1]; the run's own transaction updates ranges[0].
	extra []*updateSession
}

// openSplitUpdate opens the sessions that share the update of toUpdate of the total rows
// of devices (updateSessions), or says (nil) that the run's own transaction does it
// alone: on a small fleet, with Options.Connections 1, or when a session cannot be opened.
func openSplitUpdate(ctx context.Context, tx pgx.Tx, opts *Options, toUpdate, total int) (*splitUpdate, error) {
	n, err := updateSessions(ctx, tx, opts.Connections, toUpdate)
	if err != nil || n < 2 {
		return nil, err
	}
	ranges, err := splitDevices(ctx, tx, n, total)
	if err != nil {
		return nil, err
	}
	s := &splitUpdate{ranges: ranges}
	for range ranges[1:] {
		conn, err := pgx.ConnectConfig(ctx, opts.DB.Config())
		if err == nil {
			var stx pgx.Tx
			if stx, err = conn.Begin(ctx); err == nil {
				s.extra = append(s.extra, &updateSession{conn: conn, tx: stx})
				continue
			}
			_ = conn.Close(context.Background())
		}
		s.close()
		opts.logger().Info("the device update runs in one session: another database session could not be opened", "error", err)
		return nil, nil
	}
	return s, nil
}

// close ends the extra sessions; what they did not commit is rolled back.
func (s *splitUpdate) close() {
	for _, e := range s.extra {
		_ = e.conn.Close(context.Background())
	}
	s.extra = nil
}

// run updates every range at once, ranges[0] in tx, and adds up what they changed.
func (s *splitUpdate) run(ctx context.Context, tx pgx.Tx) (devices, timestamps int, err error) {
	counts := make([][2]int, len(s.ranges))
	errs := make([]error, len(s.ranges))
	extraCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	update := func(i int, q pgx.Tx, ctx context.Context) {
		errs[i] = q.QueryRow(ctx, updateDeviceRangeSQL, s.ranges[i].args()...).Scan(&counts[i][0], &counts[i][1])
		if errs[i] != nil {
			cancel() // the others are rolled back anyway
		}
	}
	for i, e := range s.extra {
		wg.Add(1)
		go func() { defer wg.Done(); update(i+1, e.tx, extraCtx) }()
	}
	// The run's own session is not cancelled: it stays usable for the rollback.
	update(0, tx, ctx)
	wg.Wait()
	if err := firstCause(ctx, errs); err != nil {
		return 0, 0, err
	}
	for _, c := range counts {
		devices += c[0]
		timestamps += c[1]
	}
	return devices, timestamps, nil
}

// firstCause is the first of errs that is not the cancellation run caused after it.
func firstCause(ctx context.Context, errs []error) error {
	var cancelled error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, context.Canceled) && ctx.Err() == nil:
			cancelled = cmp.Or(cancelled, err)
		default:
			return err
		}
	}
	return cancelled
}

// commit commits the extra sessions and tx at once.
func (s *splitUpdate) commit(ctx context.Context, tx pgx.Tx) error {
	errs := make([]error, len(s.extra)+1)
	var wg sync.WaitGroup
	for i, e := range s.extra {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i+1] = e.tx.Commit(ctx) }()
	}
	errs[0] = tx.Commit(ctx)
	wg.Wait()
	return errors.Join(errs...)
}
