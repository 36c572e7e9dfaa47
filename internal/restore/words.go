package restore

import "strings"

// WorkloadWords is a UnitManager that names its workloads, and how an operator stops them
// by hand, in its estate's words (Deployments and kubectl on Kubernetes). Without it the
// workloads are systemd units, stopped with systemctl.
type WorkloadWords interface {
	// WorkloadKind names the workloads in the plural: "Deployments".
	WorkloadKind() string
	// ManualStop is the command that stops units by hand.
	ManualStop(units []string) string
}

// workloadKind is "units", or the target's own word for its workloads.
func (r *run) workloadKind() string {
	if w, ok := r.target.Units().(WorkloadWords); ok {
		return w.WorkloadKind()
	}
	return "units"
}

// manualStop says how to stop units by hand.
func (r *run) manualStop(units []string) string {
	if w, ok := r.target.Units().(WorkloadWords); ok {
		return w.ManualStop(units)
	}
	return "systemctl stop " + strings.Join(units, " ")
}
