package restore

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The refusal of device preparation alone speaks the estate's words. The estates' real
// workloads are tested in internal/estate and modules/flightctl_restore; here fakeUnits
// (running workloads) and fakeDevices (a dry run without counts) stand in for them, so that the
// message alone is checked for both vocabularies.

type fakeUnits struct{ running map[string]bool }

func (f fakeUnits) UnitState(_ context.Context, u string) (UnitState, error) {
	return UnitState{Exists: true, Active: f.running[u]}, nil
}
func (fakeUnits) StopUnits(context.Context, []string) error  { return nil }
func (fakeUnits) StartUnits(context.Context, []string) error { return nil }

// fakeDeployments speaks as the Kubernetes estate's workloads do.
type fakeDeployments struct{ fakeUnits }

func (fakeDeployments) WorkloadKind() string { return "Deployments" }
func (fakeDeployments) ManualStop(units []string) string {
	return "kubectl scale deployment -n fc " + strings.Join(units, " ") + " --replicas=0"
}

type fakeDevices struct{}

func (fakeDevices) Check(context.Context) error { return nil }
func (fakeDevices) Prepare(context.Context, DevicePrepRequest) (any, bool, error) {
	return nil, false, nil
}

type fakeTarget struct {
	units UnitManager
	names []string
}

func (fakeTarget) DeploymentType() string                        { return "fake" }
func (fakeTarget) ServerVersion(context.Context) (string, error) { return "", nil }
func (f fakeTarget) Units() UnitManager                          { return f.units }
func (f fakeTarget) UnitNames() []string                         { return f.names }
func (fakeTarget) Database() Database                            { return nil }
func (fakeTarget) Files() []FileTarget                           { return nil }
func (fakeTarget) Volume() VolumeManager                         { return nil }
func (fakeTarget) Devices() DevicePreparer                       { return fakeDevices{} }

func TestDevicesOnlyRefusalWords(t *testing.T) {
	ctx := context.Background()
	run := func(tg Target) string {
		_, err := Run(ctx, Options{Target: tg, StateDir: t.TempDir(), FlushKV: true})
		require.Error(t, err)
		return err.Error()
	}
	podman := run(fakeTarget{units: fakeUnits{map[string]bool{"flightctl-api.service": true}}, names: []string{"flightctl-api.service", "flightctl-worker.service"}})
	require.Contains(t, podman, "device preparation refused: the application units flightctl-api.service are running")
	require.Contains(t, podman, "Stop them first (systemctl stop flightctl-api.service)")

	kube := run(fakeTarget{units: fakeDeployments{fakeUnits{map[string]bool{"fc/flightctl-api": true, "fc/flightctl-worker": true}}}, names: []string{"fc/flightctl-api", "fc/flightctl-worker"}})
	require.Contains(t, kube, "device preparation refused: the application Deployments fc/flightctl-api, fc/flightctl-worker are running")
	require.Contains(t, kube, "(kubectl scale deployment -n fc fc/flightctl-api fc/flightctl-worker --replicas=0)")
	require.NotContains(t, kube, "systemctl")
	require.NotContains(t, kube, "application units")
}

// A journal that no longer runs keeps no object content; a running one keeps it for the
// rollback.
func TestJournalPersistedDropsObjects(t *testing.T) {
	obj := json.RawMessage(`{"data":{"tls.key":"c2VjcmV0"}}`)
	j := &Journal{ID: "x", State: StateRunning, Items: &JournalItems{
		Staged: []Item{{Kind: "Secret", Namespace: "fc", Name: "ca", Object: obj}},
		Before: []Item{{Kind: "Secret", Namespace: "fc", Name: "ca", Object: obj}}, BeforeRecorded: true}}
	require.Same(t, j, Persisted(j))
	for _, st := range []string{StateDone, StateRolledBack} {
		j.State = st
		p := Persisted(j)
		require.Empty(t, p.Items.Staged[0].Object)
		require.Empty(t, p.Items.Before[0].Object)
		require.Equal(t, "Secret fc/ca", p.Items.Staged[0].Ref())
		require.Equal(t, obj, j.Items.Staged[0].Object, "the run's own journal keeps it")
	}

	dir := filepath.Join(t.TempDir(), "state")
	s := newJournalStore(NewFileJournal(dir))
	require.NoError(t, s.save(j))
	out, err := s.load()
	require.NoError(t, err)
	require.Empty(t, out.Items.Before[0].Object)
	require.NotContains(t, mustJSON(t, out), "c2VjcmV0")
}

// Two restores on one state directory: the second is refused while the first holds it.
func TestFileJournalLock(t *testing.T) {
	fj := NewFileJournal(t.TempDir())
	unlock, err := fj.Lock(context.Background(), false)
	require.NoError(t, err)
	_, err = NewFileJournal(fj.Dir).Lock(context.Background(), false)
	require.ErrorContains(t, err, "another restore is running")
	unlock()
	unlock2, err := NewFileJournal(fj.Dir).Lock(context.Background(), false)
	require.NoError(t, err)
	unlock2()
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// recordingDevices is a fake DevicePreparer that keeps the requests it gets, so that what
// the restore asks of the estate's device preparation can be checked (the estates'
// preparers hand these fields to devprep.Options, tested in internal/devprep).
type recordingDevices struct{ requests *[]DevicePrepRequest }

func (recordingDevices) Check(context.Context) error { return nil }
func (d recordingDevices) Prepare(_ context.Context, req DevicePrepRequest) (any, bool, error) {
	*d.requests = append(*d.requests, req)
	return nil, false, nil
}

type recordingTarget struct {
	fakeTarget
	devices recordingDevices
}

func (r recordingTarget) Devices() DevicePreparer { return r.devices }

// Device preparation alone hands the estate db_load_connections, and says whether
// application units run (allow_running_units), so that nothing locks devices against them.
func TestDevicesOnlyRequest(t *testing.T) {
	ctx := context.Background()
	for _, running := range []bool{false, true} {
		var reqs []DevicePrepRequest
		tg := recordingTarget{fakeTarget: fakeTarget{units: fakeUnits{map[string]bool{"flightctl-api.service": running}}, names: []string{"flightctl-api.service"}},
			devices: recordingDevices{&reqs}}
		_, err := Run(ctx, Options{Target: tg, StateDir: t.TempDir(), FlushKV: true, AllowRunningUnits: true, LoadConnections: 3})
		require.NoError(t, err)
		require.Len(t, reqs, 2, "the plan, then the run")
		require.True(t, reqs[0].DryRun)
		run := reqs[1]
		require.False(t, run.DryRun)
		require.Equal(t, 3, run.Connections)
		require.Equal(t, running, run.ServerRunning, "units running: %v", running)
	}
}
