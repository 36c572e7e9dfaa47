package estate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/serviceconfig"
	"flightctl.dr/internal/units"
)

// PodmanRestore is the restore target of a quadlet install: systemd units over D-Bus, the
// database through psql (inside the database container, or direct), files under
// /etc/flightctl, the PAM issuer volume, and device preparation through the devprep engine.
//
// With container access psql runs inside the database container over its own socket, and
// device preparation connects from this host. An empty DBHost and a zero DBPort (likewise
// KVHost/KVPort) then mean "find it out": the address podman publishes the container's
// 5432/tcp (6379/tcp) on, else the container's IP, as upstream's ExposeService does. With
// direct access they default to 127.0.0.1:5432 and 127.0.0.1:6379.
type PodmanRestore struct {
	Config PodmanConfig
	Runner runner.Runner
	// RunningVersion, when set, is the running release; else it is discovered as the
	// backup does (flightctl-api image tag, installed package).
	RunningVersion string
	// UnitManager, when set, replaces the D-Bus connection.
	UnitManager restore.UnitManager
	Logger      *slog.Logger

	dbName   string
	external bool
	manager  *units.Manager

	secretsOnce sync.Once
	dbPassword  string
	kvPassword  string
	secretsErr  error

	endpointsMu sync.Mutex
	dbEndpoint  *Endpoint
	kvEndpoint  *Endpoint
}

// Endpoint is where this host reaches the database or the KV store for device
// preparation, and how that address was found (for the log and the operator).
type Endpoint struct {
	Host string
	Port int
	// Source says where the address comes from: "configured", "published port of
	// container flightctl-db", "IP of container flightctl-db", ...
	Source string
}

func (e Endpoint) String() string { return net.JoinHostPort(e.Host, strconv.Itoa(e.Port)) }

var _ restore.Target = (*PodmanRestore)(nil)

// Open validates the configuration, reads the live service config (database name,
// external database) and connects to systemd. Close releases the connection.
func (p *PodmanRestore) Open(ctx context.Context) error {
	c := &p.Config
	if p.Runner == nil {
		p.Runner = runner.Exec{}
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	switch c.DBAccess {
	case DBAccessContainer, DBAccessDirect:
	default:
		return fmt.Errorf("db_access %q: must be %q or %q", c.DBAccess, DBAccessContainer, DBAccessDirect)
	}
	if c.DBAccess == DBAccessDirect {
		if c.DBHost == "" {
			c.DBHost = "127.0.0.1"
		}
		if c.DBPort == 0 {
			c.DBPort = 5432
		}
	}
	if c.DBContainer == "" {
		c.DBContainer = "flightctl-db"
	}
	if c.KVContainer == "" {
		c.KVContainer = "flightctl-kv"
	}
	if c.PKIDir == "" || c.ConfigFile == "" {
		return errors.New("pki_dir and config_file must be set")
	}
	p.dbName = c.DBName
	if svc, err := serviceconfig.Load(c.ConfigFile); err == nil {
		p.external = svc.DB.IsExternal()
		if p.dbName == "" {
			p.dbName = svc.DB.Name
		}
	} else {
		p.Logger.Warn("cannot read the live service configuration; assuming a built-in database", "err", err)
	}
	if p.dbName == "" {
		p.dbName = "flightctl"
	}
	if p.UnitManager == nil {
		scope, err := units.ParseScope(c.SystemdScope)
		if err != nil {
			return err
		}
		m, err := units.Connect(ctx, units.ConnectOptions{Scope: scope, BusAddress: c.SystemdBusAddress, Logger: p.Logger})
		if err != nil {
			return fmt.Errorf("connect to systemd: %w", err)
		}
		p.manager = m
		p.UnitManager = unitAdapter{m}
	}
	return nil
}

// Close releases the systemd connection.
func (p *PodmanRestore) Close() {
	if p.manager != nil {
		p.manager.Close()
	}
}

func (p *PodmanRestore) DeploymentType() string { return string(Podman) }

func (p *PodmanRestore) ServerVersion(ctx context.Context) (string, error) {
	return DiscoverServerVersion(ctx, VersionOptions{Explicit: p.RunningVersion, Runner: p.Runner, Logger: p.Logger})
}

func (p *PodmanRestore) UnitNames() []string { return p.Config.Units }

func (p *PodmanRestore) Units() restore.UnitManager { return p.UnitManager }

// DatabaseName is the live database the restore replaces.
func (p *PodmanRestore) DatabaseName() string { return p.dbName }

func (p *PodmanRestore) Database() restore.Database {
	if p.external {
		return nil
	}
	return &restore.PsqlDatabase{DBName: p.dbName, Runner: p.Runner, Command: p.psqlCommand,
		FreeSpaceOf: p.freeSpace, Logger: p.Logger}
}

// psqlCommand runs psql as the admin user: inside the container over its unix socket (as
// upstream), or locally against DBHost:DBPort. The password, if any, only ever travels
// in the environment (podman exec -e NAME copies it from podman's own environment).
func (p *PodmanRestore) psqlCommand(psqlArgs, env []string) runner.Cmd {
	c := p.Config
	if c.DBAdminPassword != "" {
		env = append(env, "PGPASSWORD="+c.DBAdminPassword)
	}
	if c.DBAccess == DBAccessContainer {
		args := []string{"exec", "-i"}
		for _, kv := range env {
			name, _, _ := strings.Cut(kv, "=")
			args = append(args, "-e", name)
		}
		args = append(args, c.DBContainer, "psql", "-U", c.DBAdminUser)
		return runner.Cmd{Name: "podman", Args: append(args, psqlArgs...), Env: env}
	}
	args := []string{"-h", c.DBHost, "-p", strconv.Itoa(c.DBPort), "-U", c.DBAdminUser, "-w"}
	return runner.Cmd{Name: clientProgram("psql"), Args: append(args, psqlArgs...), Env: append(env, "PGCONNECT_TIMEOUT=15")}
}

// freeSpace asks df inside the container, or statfs here for a direct database.
func (p *PodmanRestore) freeSpace(ctx context.Context, dir string) (int64, bool, error) {
	if p.Config.DBAccess != DBAccessContainer {
		return restore.LocalFreeSpace(dir)
	}
	out, err := runner.Output(ctx, p.Runner, runner.Cmd{Name: "podman", Args: []string{"exec", p.Config.DBContainer, "df", "-Pk", dir}})
	if err != nil {
		return 0, false, nil
	}
	return parseDF(string(out))
}

// parseDF reads the "Available" column (KiB) of `df -Pk` output.
func parseDF(out string) (int64, bool, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		return 0, false, nil
	}
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 4 {
		return 0, false, nil
	}
	kib, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return 0, false, nil
	}
	return kib * 1024, true, nil
}

func (p *PodmanRestore) Files() []restore.FileTarget {
	c := p.Config
	files := []restore.FileTarget{{Name: "pki", Entry: "pki", Kind: restore.KindDir, Path: c.PKIDir, Required: true}}
	if c.EncryptionDir != "" {
		files = append(files, restore.FileTarget{Name: "encryption", Entry: "encryption", Kind: restore.KindDir, Path: c.EncryptionDir})
	}
	return append(files, restore.FileTarget{Name: "config", Entry: "config/service-config.yaml", Kind: restore.KindFile, Path: c.ConfigFile, Required: true})
}

func (p *PodmanRestore) Volume() restore.VolumeManager {
	if p.Config.PAMVolume == "" {
		return nil
	}
	return &podmanVolume{name: p.Config.PAMVolume, client: p.podman(), run: p.Runner}
}

func (p *PodmanRestore) podman() *podman.Client {
	return &podman.Client{Runner: p.Runner, Logger: p.Logger}
}

func (p *PodmanRestore) Devices() restore.DevicePreparer { return &podmanDevices{p: p} }

// DevicesIn is device preparation against database db of the same server instead of the
// live one (a restore drill's scratch database), with the same users and endpoints.
func (p *PodmanRestore) DevicesIn(db string) restore.DevicePreparer {
	return &podmanDevices{p: p, db: db}
}

// unitAdapter puts internal/units behind restore.UnitManager.
type unitAdapter struct{ m *units.Manager }

func (u unitAdapter) UnitState(ctx context.Context, unit string) (restore.UnitState, error) {
	st, err := u.m.State(ctx, unit)
	if err != nil {
		return restore.UnitState{}, err
	}
	return restore.UnitState{Exists: st.Exists(), Active: st.Active()}, nil
}

func (u unitAdapter) StopUnits(ctx context.Context, names []string) error {
	return u.m.Stop(ctx, names)
}

func (u unitAdapter) StartUnits(ctx context.Context, names []string) error {
	return u.m.Start(ctx, names)
}

// podmanVolume saves and replaces a volume with podman volume export/import. The content
// is replaced by emptying the volume's directory rather than removing the volume, so that
// a container using it (flightctl-pam-issuer) is never removed.
type podmanVolume struct {
	name   string
	client *podman.Client
	run    runner.Runner
}

func (v *podmanVolume) VolumeName() string { return v.name }

func (v *podmanVolume) VolumeExists(ctx context.Context) (bool, error) {
	return v.client.VolumeExists(ctx, v.name)
}

func (v *podmanVolume) ExportVolume(ctx context.Context, w io.Writer) error {
	return v.client.VolumeExport(ctx, v.name, w)
}

func (v *podmanVolume) ReplaceVolume(ctx context.Context, r io.Reader) error {
	exists, err := v.VolumeExists(ctx)
	if err != nil {
		return err
	}
	if !exists {
		if err := v.client.VolumeCreate(ctx, v.name); err != nil {
			return err
		}
	} else if err := v.empty(ctx); err != nil {
		return err
	}
	return v.client.VolumeImport(ctx, v.name, r)
}

// empty removes the volume's content (local driver: its mountpoint on this host).
func (v *podmanVolume) empty(ctx context.Context) error {
	out, err := runner.Output(ctx, v.run, runner.Cmd{Name: "podman", Args: []string{"volume", "inspect", "--format", "{{.Mountpoint}}", v.name}})
	if err != nil {
		return fmt.Errorf("find the content of volume %s: %w", v.name, err)
	}
	dir := strings.TrimSpace(string(out))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("empty volume %s at %s before the import (an import alone would only overlay it): %w", v.name, dir, err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("empty volume %s: %w", v.name, err)
		}
	}
	return nil
}

// podmanDevices runs device preparation as the application user against the database
// and the KV store of the host.
type podmanDevices struct {
	p  *PodmanRestore
	db string // "": the live database
}

// secrets reads the passwords once: the options, else the Podman secrets.
func (p *PodmanRestore) secrets(ctx context.Context) (string, string, error) {
	p.secretsOnce.Do(func() {
		p.dbPassword, p.kvPassword = p.Config.DBPassword, p.Config.KVPassword
		if p.dbPassword == "" {
			name := orDefault(p.Config.DBPasswordSecret, SecretDBUserPassword)
			pw, err := p.podman().ReadSecret(ctx, name)
			if err != nil {
				p.secretsErr = fmt.Errorf("database password: %w; set db_password, or db_password_secret to the podman secret that holds it (now %s)", err, name)
				return
			}
			p.dbPassword = pw
		}
		if p.kvPassword == "" {
			name := orDefault(p.Config.KVPasswordSecret, SecretKVPassword)
			pw, err := p.podman().ReadSecret(ctx, name)
			if err != nil {
				p.secretsErr = fmt.Errorf("KV password: %w; set kv_password, or kv_password_secret to the podman secret that holds it (now %s)", err, name)
				return
			}
			p.kvPassword = pw
		}
	})
	return p.dbPassword, p.kvPassword, p.secretsErr
}

// Endpoints returns where this host reaches the database and the KV store for device
// preparation (see PodmanRestore). The answer is kept for the rest of the restore.
func (p *PodmanRestore) Endpoints(ctx context.Context) (db, kv Endpoint, err error) {
	p.endpointsMu.Lock()
	defer p.endpointsMu.Unlock()
	c := p.Config
	if p.dbEndpoint == nil {
		e, err := p.resolveEndpoint(ctx, "database", c.DBContainer, "5432/tcp", c.DBHost, c.DBPort, 5432, "db_host and db_port")
		if err != nil {
			return Endpoint{}, Endpoint{}, err
		}
		p.dbEndpoint = &e
	}
	if p.kvEndpoint == nil {
		e, err := p.resolveEndpoint(ctx, "KV store", c.KVContainer, "6379/tcp", c.KVHost, c.KVPort, 6379, "kv_host and kv_port")
		if err != nil {
			return Endpoint{}, Endpoint{}, err
		}
		p.kvEndpoint = &e
	}
	return *p.dbEndpoint, *p.kvEndpoint, nil
}

// resolveEndpoint finds one service's address: the configured one when given (or with
// direct access), else the port podman publishes for the container, else the container's
// IP on its network, else (host network) loopback.
func (p *PodmanRestore) resolveEndpoint(ctx context.Context, what, container, containerPort, host string, port, defaultPort int, options string) (Endpoint, error) {
	if p.Config.DBAccess != DBAccessContainer || host != "" || port != 0 {
		if host == "" {
			host = "127.0.0.1"
		}
		if port == 0 {
			port = defaultPort
		}
		return Endpoint{Host: host, Port: port, Source: "configured"}, nil
	}
	cli := p.podman()
	h, pt, err := cli.Port(ctx, container, containerPort)
	if err == nil {
		e := Endpoint{Host: h, Port: pt, Source: "published port of container " + container}
		p.Logger.Info("device preparation reaches the "+what+" at "+e.String(), "container", container, "how", "podman port "+containerPort)
		return e, nil
	}
	if errors.Is(err, podman.ErrNotFound) {
		return Endpoint{}, fmt.Errorf("find the %s for device preparation: container %s does not exist: start its unit, or give %s", what, container, options)
	}
	if !errors.Is(err, podman.ErrNotPublished) {
		p.Logger.Warn("cannot ask podman where the "+what+" is published; trying the container's address", "container", container, "err", err)
	}
	ip, ierr := cli.ContainerIP(ctx, container)
	if ierr != nil {
		return Endpoint{}, fmt.Errorf("find the %s for device preparation: %w; give %s", what, ierr, options)
	}
	e := Endpoint{Host: ip, Port: defaultPort, Source: "IP of container " + container}
	if ip == "" {
		// No address of its own: the container shares this host's network.
		e = Endpoint{Host: "127.0.0.1", Port: defaultPort, Source: "host network of container " + container}
	}
	p.Logger.Info("device preparation reaches the "+what+" at "+e.String(), "container", container, "how", e.Source)
	return e, nil
}

func (d *podmanDevices) connect(ctx context.Context) (*devprepConns, error) {
	dbpw, kvpw, err := d.p.secrets(ctx)
	if err != nil {
		return nil, err
	}
	dbAt, kvAt, err := d.p.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	c := d.p.Config
	dbName := d.p.dbName
	if d.db != "" {
		dbName = d.db
	}
	co := devprep.ConnOptions{DBHost: dbAt.Host, DBPort: dbAt.Port, DBName: dbName, DBUser: c.DBUser, DBPassword: dbpw,
		KVHost: kvAt.Host, KVPort: kvAt.Port, KVPassword: kvpw}
	db, kv, err := co.Connect(ctx)
	if err != nil {
		if dbAt.Source != "configured" || kvAt.Source != "configured" {
			return nil, fmt.Errorf("%w (database at %s: %s; KV store at %s: %s; give db_host/db_port or kv_host/kv_port if these are wrong)",
				err, dbAt, dbAt.Source, kvAt, kvAt.Source)
		}
		return nil, err
	}
	return &devprepConns{opts: devprep.Options{DB: db, KV: kv}}, nil
}

type devprepConns struct{ opts devprep.Options }

// stageKeys is devprep.StageKeys of req's prepared database over opts' connections.
func stageKeys(ctx context.Context, opts devprep.Options, req restore.DevicePrepRequest, log *slog.Logger) *devprep.StagedKeys {
	opts.FlushKV, opts.RestoreID, opts.Prepared, opts.Logger = req.FlushKV, req.RestoreID, req.DatabasePrepared, log
	return devprep.StageKeys(ctx, opts)
}

func (c *devprepConns) close() {
	_ = c.opts.DB.Close(context.Background())
	_ = c.opts.KV.Close()
}

func (d *podmanDevices) Check(ctx context.Context) error {
	c, err := d.connect(ctx)
	if err != nil {
		return err
	}
	c.close()
	return nil
}

// FinishesPreparedDatabase: Prepare honours DevicePrepRequest.DatabasePrepared.
func (d *podmanDevices) FinishesPreparedDatabase() bool { return true }

func (d *podmanDevices) Prepare(ctx context.Context, req restore.DevicePrepRequest) (any, bool, error) {
	c, err := d.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	defer c.close()
	opts := c.opts
	opts.FlushKV, opts.CreateEvent, opts.RestoreID, opts.Logger = req.FlushKV, true, req.RestoreID, d.p.Logger
	opts.Prepared, opts.Connections, opts.ServerRunning = req.DatabasePrepared, req.Connections, req.ServerRunning
	opts.Staged = req.StagedKeys
	return devprep.PlanOrRun(ctx, opts, req.DryRun)
}

var _ restore.KeyStager = (*podmanDevices)(nil)

// StageKeys: the keys go into a spare database of the KV store before the units stop.
func (d *podmanDevices) StageKeys(ctx context.Context, req restore.DevicePrepRequest) *devprep.StagedKeys {
	c, err := d.connect(ctx)
	if err != nil {
		d.p.Logger.Info("awaiting-reconnect keys are written when the units are stopped", "reason", err)
		return nil
	}
	defer c.close()
	return stageKeys(ctx, c.opts, req, d.p.Logger)
}

func (d *podmanDevices) DiscardStagedKeys(ctx context.Context, staged *devprep.StagedKeys) {
	if c, err := d.connect(ctx); err == nil {
		devprep.DiscardStagedKeys(ctx, c.opts.KV, staged)
		c.close()
	}
}
