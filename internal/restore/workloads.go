package restore

import (
	"context"
	"strings"
)

// startRecorded brings back the workloads the journal says were running: at their recorded
// scale when the manager keeps scales (Kubernetes), else simply started (systemd).
func (r *run) startRecorded(ctx context.Context, j *Journal) error {
	if len(j.ActiveUnits) == 0 {
		return nil
	}
	units := r.target.Units()
	if su, ok := units.(ScaledUnits); ok && len(j.Scales) > 0 {
		scales := map[string]int32{}
		for _, u := range j.ActiveUnits {
			scales[u] = j.Scales[u]
		}
		return su.StartScaled(ctx, scales)
	}
	return units.StartUnits(ctx, j.ActiveUnits)
}

// estatePreflight runs the target's own checks, when it has any.
func (r *run) estatePreflight(ctx context.Context, plan *Plan) error {
	pf, ok := r.target.(Preflighter)
	if !ok {
		return nil
	}
	notes, err := pf.Preflight(ctx)
	if err != nil {
		return err
	}
	for _, n := range notes {
		r.res.warn(r.logger, "%s", n)
	}
	plan.EstateChecks = notes
	return nil
}

// manualStart says how to bring the workloads back by hand.
func (r *run) manualStart(j *Journal) string {
	if su, ok := r.target.Units().(ScaledUnits); ok && len(j.Scales) > 0 {
		return su.ManualStart(j.Scales)
	}
	return "systemctl start " + strings.Join(j.ActiveUnits, " ")
}
