package drill

import (
	"context"
	"errors"
	"fmt"

	"flightctl.dr/internal/restore"
)

// Where a drill loads the dump.
const (
	// ServerEstate: a scratch database beside the live one on the estate's own server.
	ServerEstate = "estate"
	// ServerThrowaway: a PostgreSQL the drill starts for itself and removes afterwards.
	ServerThrowaway = "throwaway"
)

// Server is the PostgreSQL server that holds the scratch database.
type Server interface {
	// Kind is ServerEstate or ServerThrowaway.
	Kind() string
	// Database administers the server as a superuser (the loader a restore uses).
	Database() restore.Database
	// LiveDatabase is the live database on this server; "" when there is none.
	LiveDatabase() string
	// Devices plans device preparation on database db of this server.
	Devices(db string) restore.DevicePreparer
	// Close releases the server (a throwaway one is stopped and removed).
	Close(ctx context.Context) error
}

// EstateTarget is what a drill needs of the estate's restore target: its database
// administration, the live database's name, device preparation on another database of the
// same server, and its release. The Podman restore target (estate.PodmanRestore) is one;
// the drill module builds it with a unit manager that refuses every unit (NoUnits).
type EstateTarget interface {
	Database() restore.Database
	DatabaseName() string
	DevicesIn(db string) restore.DevicePreparer
	Close()
}

// EstateServer is the estate's own PostgreSQL server, reached as a restore reaches it
// (the Podman restore target: psql in the database container or direct, the same
// credentials). The drill never stops a unit: the target's unit manager refuses to.
type EstateServer struct {
	Target EstateTarget
}

var _ Server = (*EstateServer)(nil)

func (e *EstateServer) Kind() string { return ServerEstate }

func (e *EstateServer) Database() restore.Database { return e.Target.Database() }

func (e *EstateServer) LiveDatabase() string { return e.Target.DatabaseName() }

func (e *EstateServer) Devices(db string) restore.DevicePreparer { return e.Target.DevicesIn(db) }

func (e *EstateServer) Close(context.Context) error {
	e.Target.Close()
	return nil
}

// NoUnits is the unit manager of a drill's restore target: a drill stops and starts
// nothing, and would fail rather than touch a unit.
type NoUnits struct{}

func (NoUnits) UnitState(context.Context, string) (restore.UnitState, error) {
	return restore.UnitState{}, errors.New("a restore drill does not look at units")
}

func (NoUnits) StopUnits(_ context.Context, units []string) error {
	return fmt.Errorf("a restore drill never stops units (asked to stop %v)", units)
}

func (NoUnits) StartUnits(_ context.Context, units []string) error {
	return fmt.Errorf("a restore drill never starts units (asked to start %v)", units)
}
