package devprep

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// device is one row of keyedDevicesSQL.
type device struct{ org, name string }

func (d device) key() string { return KeyFor(d.org, d.name) }

// eachDeviceBatch is forEachDeviceBatch over the devices the prepared database listed
// before it went live (Options.Prepared.After), when they are known: no row is read.
func (o *Options) eachDeviceBatch(ctx context.Context, q querier, fn func([]device) error) error {
	size := o.batchSize()
	if o.Prepared == nil || o.Prepared.After == nil {
		return forEachDeviceBatch(ctx, q, size, fn)
	}
	devs := o.Prepared.After.devices
	for len(devs) > 0 {
		n := min(size, len(devs))
		if err := fn(devs[:n:n]); err != nil {
			return err
		}
		devs = devs[n:]
	}
	return nil
}

// forEachDeviceBatch streams the devices that must have a key, in batches of size, so that
// 100,000 devices never sit in memory at once. A goroutine reads the next batches from the
// database while fn works on the current one (the KV round trips), so the two overlap.
func forEachDeviceBatch(ctx context.Context, q querier, size int, fn func([]device) error) error {
	batches := make(chan []device, 2)
	stop := make(chan struct{})
	scanErr := make(chan error, 1)
	go func() {
		defer close(batches)
		scanErr <- scanDevices(ctx, q, size, batches, stop)
	}()
	var fnErr error
	for batch := range batches {
		if fnErr != nil {
			continue // drain until the scanner has stopped
		}
		if fnErr = fn(batch); fnErr != nil {
			// Stop the scan without cancelling the query, so the connection stays usable.
			close(stop)
		}
	}
	err := <-scanErr
	if fnErr != nil {
		return fnErr
	}
	return err
}

// listDevices is every device that must have a key (keyedDevicesSQL), in memory.
func listDevices(ctx context.Context, q querier, expected int) ([]device, error) {
	devs := make([]device, 0, expected)
	orgs := map[string]string{}
	err := forEachDeviceBatch(ctx, q, DefaultKeyBatchSize, func(batch []device) error {
		for _, d := range batch {
			// One string per organization, not one per device.
			if o, ok := orgs[d.org]; ok {
				d.org = o
			} else {
				orgs[d.org] = d.org
			}
			devs = append(devs, d)
		}
		return nil
	})
	return devs, err
}

func scanDevices(ctx context.Context, q querier, size int, out chan<- []device, stop <-chan struct{}) error {
	rows, err := q.Query(ctx, keyedDevicesSQL)
	if err != nil {
		return fmt.Errorf("list devices awaiting reconnect: %w", err)
	}
	defer rows.Close()
	send := func(b []device) bool {
		select {
		case out <- b:
			return true
		case <-stop:
			return false
		}
	}
	batch := make([]device, 0, size)
	for rows.Next() {
		var d device
		if err := rows.Scan(&d.org, &d.name); err != nil {
			return fmt.Errorf("list devices awaiting reconnect: %w", err)
		}
		batch = append(batch, d)
		if len(batch) == size {
			if !send(batch) {
				return nil
			}
			batch = make([]device, 0, size)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list devices awaiting reconnect: %w", err)
	}
	if len(batch) > 0 {
		send(batch)
	}
	return nil
}

// writeKeys sets each device's key to "true" unless it exists (SETNX, no expiry), one
// pipeline per batch. It returns how many keys it created. With empty (this run cleared
// the KV store, and nothing else writes these keys while the server is stopped) each batch
// is one MSET instead: no key exists, so setting it is what SETNX would do, and the only
// value any writer gives these keys is "true"; Redis then runs one command per batch, not
// one per key, and the client reads one reply.
func writeKeys(ctx context.Context, q querier, opts *Options, empty bool) (int, error) {
	if empty {
		return msetKeys(ctx, q, opts)
	}
	log := opts.logger()
	written, sent := 0, 0
	cmds := make([]*redis.BoolCmd, 0, opts.batchSize())
	err := opts.eachDeviceBatch(ctx, q, func(batch []device) error {
		pipe := opts.KV.Pipeline()
		cmds = cmds[:0]
		for _, d := range batch {
			cmds = append(cmds, pipe.SetNX(ctx, d.key(), "true", 0))
		}
		_, execErr := pipe.Exec(ctx)
		for _, c := range cmds {
			if c.Err() == nil && c.Val() {
				written++
			}
		}
		if execErr != nil {
			return fmt.Errorf("write awaiting-reconnect keys (%d written, failed in a batch of %d after %d devices): %w",
				written, len(batch), sent, describeKVError(execErr, opts.KV.Options().Addr))
		}
		sent += len(batch)
		log.Debug("awaiting-reconnect keys written", "devices", sent, "created", written)
		return nil
	})
	return written, err
}

// listed is the devices the prepared database listed before it went live, or nil.
func (o *Options) listed() []device {
	if o.Prepared == nil || o.Prepared.After == nil {
		return nil
	}
	return o.Prepared.After.devices
}

// batches cuts devs into batches of the key batch size.
func (o *Options) batches(devs []device) [][]device {
	var out [][]device
	for size := o.batchSize(); len(devs) > 0; {
		n := min(size, len(devs))
		out = append(out, devs[:n:n])
		devs = devs[n:]
	}
	return out
}

// msetKeys is writeKeys into an empty store: one MSET per batch (msetListed when the
// devices are listed in memory).
func msetKeys(ctx context.Context, q querier, opts *Options) (int, error) {
	if devs := opts.listed(); devs != nil {
		return msetListed(ctx, opts.KV, opts, devs)
	}
	log := opts.logger()
	written := 0
	args := make([]any, 0, 1+2*opts.batchSize())
	err := opts.eachDeviceBatch(ctx, q, func(batch []device) error {
		args = append(args[:0], "mset")
		for _, d := range batch {
			args = append(args, d.key(), "true")
		}
		if err := opts.KV.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("write awaiting-reconnect keys (%d written, failed in a batch of %d): %w",
				written, len(batch), describeKVError(err, opts.KV.Options().Addr))
		}
		written += len(batch)
		log.Debug("awaiting-reconnect keys written", "devices", written, "created", written)
		return nil
	})
	return written, err
}

// msetListed is msetKeys of devs, known in memory, into kv: every batch in one
// pipeline, one round trip (on a loaded machine each round trip waits for the KV server
// and this process to be scheduled again).
func msetListed(ctx context.Context, kv *redis.Client, opts *Options, devs []device) (int, error) {
	log := opts.logger()
	batches := opts.batches(devs)
	pipe := kv.Pipeline()
	for _, batch := range batches {
		args := make([]any, 0, 1+2*len(batch))
		args = append(args, "mset")
		for _, d := range batch {
			args = append(args, d.key(), "true")
		}
		pipe.Do(ctx, args...)
	}
	cmds, err := pipe.Exec(ctx)
	written := 0
	for i, c := range cmds {
		if c.Err() != nil {
			break
		}
		written += len(batches[i])
	}
	if err != nil {
		return written, fmt.Errorf("write awaiting-reconnect keys (%d of %d written): %w",
			written, len(devs), describeKVError(err, kv.Options().Addr))
	}
	log.Debug("awaiting-reconnect keys written", "devices", written, "created", written)
	return written, nil
}

// readBack reads each batch's keys with MGET and reports those not holding "true". With
// the devices listed in memory every MGET goes in one pipeline.
func readBack(ctx context.Context, q querier, opts *Options, missing func(device)) (present int, err error) {
	if devs := opts.listed(); devs != nil {
		return readBackListed(ctx, opts.KV, opts, devs, missing)
	}
	keys := make([]string, 0, opts.batchSize())
	err = opts.eachDeviceBatch(ctx, q, func(batch []device) error {
		keys = keys[:0]
		for _, d := range batch {
			keys = append(keys, d.key())
		}
		vals, err := opts.KV.MGet(ctx, keys...).Result()
		if err != nil {
			return fmt.Errorf("read awaiting-reconnect keys back: %w", describeKVError(err, opts.KV.Options().Addr))
		}
		for i, v := range vals {
			if s, ok := v.(string); ok && s == "true" {
				present++
			} else {
				missing(batch[i])
			}
		}
		return nil
	})
	return present, err
}

// readBackListed is readBack of devs, known in memory, from kv: every MGET in one
// pipeline.
func readBackListed(ctx context.Context, kv *redis.Client, opts *Options, devs []device, missing func(device)) (present int, err error) {
	batches := opts.batches(devs)
	pipe := kv.Pipeline()
	cmds := make([]*redis.SliceCmd, len(batches))
	for i, batch := range batches {
		keys := make([]string, len(batch))
		for j, d := range batch {
			keys[j] = d.key()
		}
		cmds[i] = pipe.MGet(ctx, keys...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("read awaiting-reconnect keys back: %w", describeKVError(err, kv.Options().Addr))
	}
	for i, c := range cmds {
		for j, v := range c.Val() {
			if s, ok := v.(string); ok && s == "true" {
				present++
			} else {
				missing(batches[i][j])
			}
		}
	}
	return present, nil
}

// checkKeys reads every key back after writing; any key not holding "true" is an error
// naming its device.
func checkKeys(ctx context.Context, q querier, opts *Options) (int, error) {
	missing := &MissingKeysError{}
	present, err := readBack(ctx, q, opts, func(d device) {
		missing.Count++
		if len(missing.Devices) < maxNamedDevices {
			missing.Devices = append(missing.Devices, d.org+"/"+d.name)
		}
	})
	if err != nil {
		return present, err
	}
	if missing.Count > 0 {
		return present, missing
	}
	return present, nil
}

// countPresentKeys counts the keys that already hold "true".
func countPresentKeys(ctx context.Context, q querier, opts *Options) (int, error) {
	return readBack(ctx, q, opts, func(device) {})
}
