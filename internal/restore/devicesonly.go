package restore

import (
	"context"
	"fmt"
	"strings"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/wrap"
)

// devicesOnlyGuard runs before device preparation without an archive (upstream's older
// flightctl-restore, the runbooks' step after a database restored by other means). It
// says what the preparation will do, and refuses while application units are running:
// the KV store would be flushed and every device marked AwaitingReconnect under a live
// server, whose caches and queues would then be gone while it works. It says whether
// application units run (allowed by allow_running_units).
func (r *run) devicesOnlyGuard(ctx context.Context, dev DevicePreparer) (bool, error) {
	running, err := r.runningUnits(ctx)
	if err != nil {
		return false, err
	}
	counts, _, err := dev.Prepare(ctx, DevicePrepRequest{FlushKV: r.opts.FlushKV, DryRun: true})
	if err != nil {
		return false, wrap.Prefix("device preparation", err)
	}
	what := announce(counts, r.opts.FlushKV)
	if len(running) > 0 {
		kind := r.workloadKind()
		if !r.opts.AllowRunningUnits {
			return false, fmt.Errorf("device preparation refused: the application %s %s are running, and device preparation would %s under a live server. Stop them first (%s), as the runbooks do before device preparation, then run this again; or set allow_running_units to prepare the devices while they run",
				kind, strings.Join(running, ", "), what, r.manualStop(running))
		}
		r.res.warn(r.logger, "application %s %s are running: device preparation goes ahead because allow_running_units is set", kind, strings.Join(running, ", "))
	}
	if r.opts.CheckMode {
		r.res.Message = "Check mode, nothing changed. Device preparation would " + what + "."
		return len(running) > 0, nil
	}
	r.logger.Info("device preparation will " + what)
	return len(running) > 0, nil
}

// runningUnits are the target's application units that are active now.
func (r *run) runningUnits(ctx context.Context) ([]string, error) {
	units := r.target.Units()
	if units == nil {
		return nil, nil
	}
	var running []string
	for _, u := range r.target.UnitNames() {
		st, err := units.UnitState(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("check unit %s before device preparation: %w", u, err)
		}
		if st.Exists && st.Active {
			running = append(running, u)
		}
	}
	return running, nil
}

// announce says what device preparation does, from its plan's counts.
func announce(counts any, flush bool) string {
	var parts []string
	if flush {
		parts = append(parts, "flush the KV store (its caches, queues and checkpoints)")
	}
	res, ok := counts.(*devprep.Result)
	if !ok || res == nil {
		return strings.Join(append(parts, "mark every device AwaitingReconnect"), ", ")
	}
	if !res.KVFlushed {
		// Nothing to mark: the engine keeps the KV store and only checks the keys.
		parts = []string{"keep the KV store"}
	}
	mark := fmt.Sprintf("mark %d devices AwaitingReconnect", res.DevicesUpdated)
	if res.DevicesAlreadyAwaiting > 0 {
		mark += fmt.Sprintf(" (%d more already are)", res.DevicesAlreadyAwaiting)
	}
	parts = append(parts, mark,
		fmt.Sprintf("annotate %d enrollment requests", res.EnrollmentRequestsUpdated),
		fmt.Sprintf("write %d awaiting-reconnect keys", res.KeysExpected))
	return strings.Join(parts, ", ")
}

// devicesOnlyDone is the message after device preparation alone.
func devicesOnlyDone(counts any) string {
	res, ok := counts.(*devprep.Result)
	if !ok || res == nil {
		return "Device preparation done."
	}
	msg := "Device preparation done: "
	if res.KVFlushed {
		msg += "KV store flushed, "
	}
	return msg + fmt.Sprintf("%d devices marked AwaitingReconnect (%d already were), %d enrollment requests annotated, %d awaiting-reconnect keys in place (%d written).",
		res.DevicesUpdated, res.DevicesAlreadyAwaiting, res.EnrollmentRequestsUpdated, res.KeysVerified, res.KeysWritten)
}
