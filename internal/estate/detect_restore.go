package estate

import (
	"context"
	"fmt"
	"log/slog"

	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/units"
)

// DetectRestoreType is DetectType for a restore. The runbooks stop the application units
// before they run flightctl-restore (with an archive, or without one for device
// preparation), so an installed but stopped flightctl-api.service marks a Podman install
// too, when no kubeconfig says otherwise. installed reports whether systemd has the unit.
func DetectRestoreType(ctx context.Context, opts DetectOptions, installed UnitActiveFunc) (Type, bool, error) {
	t, err := DetectType(ctx, opts)
	if err == nil || installed == nil || findKubeconfig(opts) != "" {
		return t, false, err
	}
	if ok, ierr := installed(ctx, APIUnit); ierr == nil && ok {
		return Podman, true, nil
	}
	return t, false, err
}

// SystemdUnitState connects to the scope's manager and returns two questions about a
// unit: is it active (the detection's indicator), is it installed (loaded, whatever its
// state). close releases the connection.
func SystemdUnitState(ctx context.Context, scope, busAddress string) (active, installed UnitActiveFunc, close func(), err error) {
	sc, err := units.ParseScope(scope)
	if err != nil {
		return nil, nil, func() {}, err
	}
	m, err := units.Connect(ctx, units.ConnectOptions{Scope: sc, BusAddress: busAddress})
	if err != nil {
		return nil, nil, func() {}, err
	}
	active = func(ctx context.Context, unit string) (bool, error) {
		st, err := m.State(ctx, unit)
		if err != nil {
			return false, fmt.Errorf("ask systemd about %s: %w", unit, err)
		}
		return st.Active() || st.ActiveState == "activating", nil
	}
	installed = func(ctx context.Context, unit string) (bool, error) {
		st, err := m.State(ctx, unit)
		if err != nil {
			return false, fmt.Errorf("ask systemd about %s: %w", unit, err)
		}
		return st.Exists(), nil
	}
	return active, installed, m.Close, nil
}

// RestoreTargetOptions say which estate a restore writes to and how to reach it: the one
// place where a restore's target is built from options.
type RestoreTargetOptions struct {
	Type              Type
	Podman            PodmanConfig
	Kubernetes        KubernetesConfig
	KubernetesRestore KubernetesRestoreConfig
	Runner            runner.Runner
	// RunningVersion, when set, is the running release (else discovered).
	RunningVersion string
	// JournalLocation says where the restore journal is kept: JournalAuto ("": in the
	// cluster when a Kubernetes restore runs there, else the state directory),
	// JournalStateDir, or JournalCluster (Kubernetes only).
	JournalLocation string
	Logger          *slog.Logger
}

// OpenRestoreTarget builds the estate's restore target and opens it; close releases it.
func OpenRestoreTarget(ctx context.Context, o RestoreTargetOptions) (restore.Target, func(), error) {
	switch o.Type {
	case Podman:
		if o.JournalLocation == JournalCluster {
			return nil, nil, fmt.Errorf("journal_location cluster keeps the journal in a Kubernetes Secret: it needs deployment_type kubernetes; use state_dir (or auto) on a Podman host")
		}
		t := &PodmanRestore{Config: o.Podman, Runner: o.Runner, RunningVersion: o.RunningVersion, Logger: o.Logger}
		if err := t.Open(ctx); err != nil {
			return nil, nil, err
		}
		return t, t.Close, nil
	case Kubernetes:
		kr := o.KubernetesRestore
		if o.JournalLocation != "" {
			kr.JournalLocation = o.JournalLocation
		}
		t := &KubernetesRestore{Config: o.Kubernetes, Restore: kr, Runner: o.Runner, RunningVersion: o.RunningVersion, Logger: o.Logger}
		if err := t.Open(ctx); err != nil {
			return nil, nil, err
		}
		return t, t.Close, nil
	}
	return nil, nil, fmt.Errorf("deployment type %q: must be %q or %q", o.Type, Podman, Kubernetes)
}
