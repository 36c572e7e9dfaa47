// Package units reads the state of systemd units and stops and starts them over D-Bus
// (go-systemd), waiting for each job's result. It talks to the system manager (a quadlet
// install) or to a user manager (rootless installs and tests).
package units

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Scope says which systemd manager to talk to.
type Scope string

const (
	ScopeSystem Scope = "system"
	ScopeUser   Scope = "user"
)

// ParseScope accepts "system", "user", or "" (system).
func ParseScope(s string) (Scope, error) {
	switch Scope(s) {
	case "", ScopeSystem:
		return ScopeSystem, nil
	case ScopeUser:
		return ScopeUser, nil
	}
	return "", fmt.Errorf("invalid systemd scope %q: must be \"system\" or \"user\"", s)
}

// ConnectOptions configures Connect.
type ConnectOptions struct {
	Scope Scope
	// BusAddress overrides the D-Bus address (a DBUS_SESSION_BUS_ADDRESS-style value such as
	// unix:path=/run/user/0/bus). An address ending in /systemd/private is systemd's own
	// peer-to-peer socket.
	BusAddress string
	Logger     *slog.Logger
}

// Validate checks the options.
func (o ConnectOptions) Validate() error {
	if _, err := ParseScope(string(o.Scope)); err != nil {
		return err
	}
	if o.BusAddress != "" && !strings.Contains(o.BusAddress, ":") {
		return fmt.Errorf("invalid D-Bus address %q: expected a form like unix:path=/run/user/0/bus", o.BusAddress)
	}
	return nil
}

// UnitState is what systemd says about one unit. A unit that does not exist has LoadState
// "not-found"; that is a state, not an error.
type UnitState struct {
	Name        string `json:"name"`
	LoadState   string `json:"load_state"`
	ActiveState string `json:"active_state"`
	SubState    string `json:"sub_state"`
}

// Exists reports whether systemd knows a unit file for it.
func (s UnitState) Exists() bool { return s.LoadState != "" && s.LoadState != "not-found" }

// Active reports whether the unit is active (or reloading).
func (s UnitState) Active() bool { return s.ActiveState == "active" || s.ActiveState == "reloading" }

// Manager is a connection to one systemd manager.
type Manager struct {
	conn    *sdbus.Conn
	scope   Scope
	address string
	logger  *slog.Logger
}

// Connect connects to the systemd manager of the given scope. It fails with an error that
// names the addresses tried when no manager answers.
func Connect(ctx context.Context, opts ConnectOptions) (*Manager, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	scope, _ := ParseScope(string(opts.Scope))
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	candidates := busCandidates(scope, opts.BusAddress)
	if len(candidates) == 0 {
		return nil, noManagerError(scope, nil)
	}
	var tried []string
	for _, addr := range candidates {
		conn, err := dial(ctx, addr)
		if err == nil {
			m := &Manager{conn: conn, scope: scope, address: addr, logger: logger}
			// A bus without systemd on it (a plain session bus) is not a manager.
			if _, err = m.conn.GetManagerProperty("Version"); err == nil {
				logger.Debug("connected to systemd", "scope", scope, "address", addr)
				return m, nil
			}
			conn.Close()
		}
		tried = append(tried, fmt.Sprintf("%s (%v)", addr, err))
		if opts.BusAddress != "" {
			break
		}
	}
	return nil, noManagerError(scope, tried)
}

func noManagerError(scope Scope, tried []string) error {
	hint := "run it on the Flight Control host as root, or set systemd_scope: user with a user manager"
	if scope == ScopeUser {
		hint = "set DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR to the user manager's, or pass its bus address"
	}
	if len(tried) == 0 {
		return fmt.Errorf("no systemd %s manager reachable (no D-Bus socket found): %s", scope, hint)
	}
	return fmt.Errorf("no systemd %s manager reachable (tried %s): %s", scope, strings.Join(tried, "; "), hint)
}

// busCandidates lists the addresses to try, in order, without starting anything: godbus's
// own session-bus lookup may autolaunch a bus daemon, which must never happen here.
func busCandidates(scope Scope, override string) []string {
	if override != "" {
		return []string{override}
	}
	var out []string
	addIfSocket := func(p string) {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			out = append(out, "unix:path="+p)
		}
	}
	if scope == ScopeSystem {
		if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			out = append(out, a)
		}
		addIfSocket("/run/dbus/system_bus_socket")
		if os.Geteuid() == 0 {
			addIfSocket("/run/systemd/private")
		}
		return out
	}
	if a := os.Getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
		out = append(out, a)
	}
	rt := os.Getenv("XDG_RUNTIME_DIR")
	if rt == "" {
		rt = "/run/user/" + strconv.Itoa(os.Getuid())
	}
	addIfSocket(filepath.Join(rt, "bus"))
	addIfSocket(filepath.Join(rt, "systemd", "private"))
	return out
}

// isPeerAddress reports whether addr is systemd's private socket, where there is no bus
// daemon and no Hello.
func isPeerAddress(addr string) bool {
	return strings.HasSuffix(addr, "/systemd/private")
}

func dial(ctx context.Context, addr string) (*sdbus.Conn, error) {
	return sdbus.NewConnection(func() (*dbus.Conn, error) {
		// godbus closes a connection when its context ends: the connection must outlive
		// Connect's context, which only bounds the handshake below.
		conn, err := dbus.Dial(addr, dbus.WithContext(context.WithoutCancel(ctx)))
		if err != nil {
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			conn.Close()
			return nil, err
		}
		if !isPeerAddress(addr) {
			if err := conn.Hello(); err != nil {
				conn.Close()
				return nil, err
			}
		}
		if !stop() {
			return nil, fmt.Errorf("connect to %s: %w", addr, ctx.Err())
		}
		return conn, nil
	})
}

// Scope is the scope this manager was connected with.
func (m *Manager) Scope() Scope { return m.scope }

// Address is the D-Bus address in use.
func (m *Manager) Address() string { return m.address }

// Close closes the connection.
func (m *Manager) Close() {
	if m != nil && m.conn != nil {
		m.conn.Close()
	}
}

// State returns the state of one unit. A unit that does not exist is reported with
// LoadState "not-found", not as an error.
func (m *Manager) State(ctx context.Context, unit string) (UnitState, error) {
	states, err := m.States(ctx, []string{unit})
	if err != nil {
		return UnitState{}, err
	}
	return states[0], nil
}

// States returns the states of several units, in the order given.
func (m *Manager) States(ctx context.Context, units []string) ([]UnitState, error) {
	if len(units) == 0 {
		return nil, nil
	}
	list, err := m.conn.ListUnitsByNamesContext(ctx, units)
	if err != nil {
		return nil, fmt.Errorf("read state of units %s: %w", strings.Join(units, ", "), err)
	}
	byName := make(map[string]sdbus.UnitStatus, len(list))
	for _, u := range list {
		byName[u.Name] = u
	}
	out := make([]UnitState, len(units))
	for i, name := range units {
		u, ok := byName[name]
		if !ok {
			out[i] = UnitState{Name: name, LoadState: "not-found", ActiveState: "inactive", SubState: "dead"}
			continue
		}
		out[i] = UnitState{Name: name, LoadState: u.LoadState, ActiveState: u.ActiveState, SubState: u.SubState}
	}
	return out, nil
}

// JobError reports the units whose job did not finish with "done".
type JobError struct {
	Op string
	// Results maps each failed unit to systemd's job result (failed, timeout, canceled,
	// dependency, skipped) or to the error that prevented queueing the job.
	Results map[string]string
}

func (e *JobError) Error() string {
	names := make([]string, 0, len(e.Results))
	for n := range e.Results {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + e.Results[n]
	}
	return fmt.Sprintf("%s units failed (%s): see systemctl status <unit> and the unit's log", e.Op, strings.Join(parts, "; "))
}

// Failed lists the units that failed, sorted.
func (e *JobError) Failed() []string {
	names := make([]string, 0, len(e.Results))
	for n := range e.Results {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Stop stops the units and waits until every job has finished. Units are stopped all at
// once, as systemctl stop a b c does.
func (m *Manager) Stop(ctx context.Context, units []string) error {
	return m.run(ctx, "stop", units, m.conn.StopUnitContext)
}

// Start starts the units and waits until every job has finished.
func (m *Manager) Start(ctx context.Context, units []string) error {
	return m.run(ctx, "start", units, m.conn.StartUnitContext)
}

type jobFunc func(ctx context.Context, name, mode string, ch chan<- string) (int, error)

func (m *Manager) run(ctx context.Context, op string, units []string, job jobFunc) error {
	failed := map[string]string{}
	type pending struct {
		unit string
		ch   chan string
	}
	var waiting []pending
	for _, u := range units {
		ch := make(chan string, 1)
		if _, err := job(ctx, u, "replace", ch); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return fmt.Errorf("%s units: %w", op, ctxErr)
			}
			failed[u] = err.Error()
			continue
		}
		waiting = append(waiting, pending{u, ch})
	}
	for _, p := range waiting {
		select {
		case res := <-p.ch:
			m.logger.Debug("unit job finished", "op", op, "unit", p.unit, "result", res)
			if res != "done" {
				failed[p.unit] = res
			}
		case <-ctx.Done():
			return fmt.Errorf("%s units: waiting for %s: %w", op, p.unit, ctx.Err())
		}
	}
	if len(failed) > 0 {
		return &JobError{Op: op, Results: failed}
	}
	m.logger.Info("unit jobs done", "op", op, "units", units)
	return nil
}

// AsJobError returns the JobError inside err, if any.
func AsJobError(err error) (*JobError, bool) {
	var je *JobError
	ok := errors.As(err, &je)
	return je, ok
}
