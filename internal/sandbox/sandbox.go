// Package sandbox starts a Flight Control-shaped estate on this machine: PostgreSQL with
// the flightctl schema and seeded rows, Redis with cache keys, a root directory with PKI,
// an encryption key and service-config.yaml, Podman secrets and the PAM issuer volume, and
// systemd units named as flightctl's under a systemd user manager started safely. The
// demo, the molecule scenario and integration tests use it; Down stops everything by PID
// and name.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/testbed"
)

// StateFile, EnvFile and InventoryFile are written into Dir by Up.
const (
	StateFile     = "sandbox.json"
	EnvFile       = "sandbox.env"
	InventoryFile = "inventory.yml"
)

// DefaultVersion is the server version the sandbox pretends to run.
const DefaultVersion = "0.10.0"

// ApplicationUnits are the application units of the sandbox (no imagebuilder: a host
// without it).
var ApplicationUnits = []string{
	"flightctl-api.service",
	"flightctl-worker.service",
	"flightctl-periodic.service",
	"flightctl-alert-exporter.service",
	"flightctl-alertmanager-proxy.service",
	"flightctl-gateway.service",
}

// Options configures Up.
type Options struct {
	// Dir holds everything of the sandbox. Required.
	Dir string
	// Devices is the number of seeded devices; 0 is 30.
	Devices int
	// Version is the server version (image tag of flightctl-api); "" is DefaultVersion.
	Version string
	// Prefix is put before container, secret and volume names so that sandboxes can run
	// side by side; "" keeps upstream's names (flightctl-db, ...).
	Prefix string
	// NoPodman runs PostgreSQL and Redis as plain processes under their units, with no
	// containers, secrets or volumes (for machines without podman).
	NoPodman bool
	// S3 also starts an S3 server (MinIO on loopback) with a bucket for off-host copies.
	S3     bool
	Logger *slog.Logger
}

// Validate checks the options and fills in defaults.
func (o *Options) Validate() error {
	if o.Dir == "" {
		return errors.New("sandbox: Dir is required")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Devices < 0 {
		return errors.New("sandbox: Devices must not be negative")
	}
	if o.Devices == 0 {
		o.Devices = 30
	}
	if o.Version == "" {
		o.Version = DefaultVersion
	}
	if strings.ContainsAny(o.Prefix, " /:") {
		return fmt.Errorf("sandbox: invalid prefix %q", o.Prefix)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// State is what Up started, as written to sandbox.json. It holds the sandbox's test
// credentials: the file is 0600.
type State struct {
	Dir           string    `json:"dir"`
	Created       time.Time `json:"created"`
	ServerVersion string    `json:"server_version"`
	// VersionSource says where the backup can discover the version.
	VersionSource string `json:"version_source"`
	Podman        bool   `json:"podman"`

	Root          string `json:"root"`
	PKIDir        string `json:"pki_dir"`
	EncryptionDir string `json:"encryption_dir"`
	ConfigFile    string `json:"config_file"`
	LogDir        string `json:"log_dir"`

	DB DBState `json:"db"`
	KV KVState `json:"kv"`

	Systemd SystemdState `json:"systemd"`
	Units   []string     `json:"units"`

	ContainersConf string   `json:"containers_conf,omitempty"`
	APIContainer   string   `json:"api_container,omitempty"`
	APIImage       string   `json:"api_image,omitempty"`
	Containers     []string `json:"containers,omitempty"`
	Secrets        []string `json:"secrets,omitempty"`
	PAMVolume      string   `json:"pam_volume,omitempty"`

	Seed SeedCounts `json:"seed"`

	// Kubernetes is set for the Kubernetes form (UpKubernetes).
	Kubernetes *KubeState `json:"kubernetes,omitempty"`

	// S3 is set when the sandbox has an S3 server (Options.S3).
	S3 *S3State `json:"s3,omitempty"`
}

// DBState locates the database.
type DBState struct {
	// Access is "container" (pg_dump/psql through podman exec) or "direct".
	Access    string `json:"access"`
	Container string `json:"container,omitempty"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	SocketDir string `json:"socket_dir"`
	DataDir   string `json:"data_dir"`
	Name      string `json:"name"`
	User      string `json:"user"`
	Password  string `json:"password"`
	// AdminUser/AdminPassword: the admin superuser role (TCP); postgres is trusted on the socket.
	AdminUser         string `json:"admin_user"`
	AdminPassword     string `json:"admin_password"`
	MigratorPassword  string `json:"migrator_password"`
	UserSecret        string `json:"user_secret,omitempty"`
	MasterSecret      string `json:"master_secret,omitempty"`
	InContainerPort   int    `json:"in_container_port,omitempty"`
	InContainerSocket string `json:"in_container_socket,omitempty"`
}

// KVState locates Redis.
type KVState struct {
	Container string `json:"container,omitempty"`
	Host      string `json:"host"`
	Port      int    `json:"port"`
	Password  string `json:"password"`
	Secret    string `json:"secret,omitempty"`
}

// SystemdState locates the user manager.
type SystemdState struct {
	Scope      string `json:"scope"`
	Dir        string `json:"dir"`
	PID        int    `json:"pid"`
	RuntimeDir string `json:"runtime_dir"`
	BusAddress string `json:"bus_address"`
	// HostNamespacePID keeps the caller's mount namespace, where podman must run.
	HostNamespacePID int `json:"host_namespace_pid"`
}

// hostCommand runs a unit's command in the caller's mount namespace (see
// testbed.Systemd.HostCommand): container root filesystems must be mounted where the rest
// of the machine (podman exec, volume export) sees them.
func (s *State) hostCommand(args ...string) string {
	return (&testbed.Systemd{HostNamespacePID: s.Systemd.HostNamespacePID}).HostCommand(args...)
}

// Env is the environment a client needs to reach the sandbox's systemd manager.
func (s *State) Env() []string {
	if s.Kubernetes != nil {
		return []string{"K8S_AUTH_KUBECONFIG=" + s.Kubernetes.Kubeconfig}
	}
	env := []string{"XDG_RUNTIME_DIR=" + s.Systemd.RuntimeDir, "DBUS_SESSION_BUS_ADDRESS=" + s.Systemd.BusAddress}
	if s.ContainersConf != "" {
		env = append(env, "CONTAINERS_CONF="+s.ContainersConf)
	}
	return env
}

// Load reads sandbox.json from dir.
func Load(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no sandbox in %s (no %s): run sandbox up first", dir, StateFile)
		}
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, StateFile), err)
	}
	return &s, nil
}

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.Dir, StateFile), append(b, '\n'), 0o600)
}

// Up starts the sandbox and writes sandbox.json, sandbox.env and inventory.yml. On failure
// it stops what it had started.
func Up(ctx context.Context, opts Options) (st *State, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if prev, lerr := Load(opts.Dir); lerr == nil {
		if sd, aerr := testbed.AttachSystemd(prev.Systemd.Dir, nil); aerr == nil && sd.Running() {
			return nil, fmt.Errorf("sandbox in %s is already up: run sandbox down --dir %s first", opts.Dir, opts.Dir)
		}
	}
	if err := prepareDir(opts.Dir, "root", "systemd", "pg", "kv", "podman", "logs"); err != nil {
		return nil, err
	}
	start := time.Now()
	etc := filepath.Join(opts.Dir, "root", "etc", "flightctl")
	st = newState(opts)
	st.Podman = !opts.NoPodman
	st.Root = filepath.Join(opts.Dir, "root")
	st.PKIDir = filepath.Join(etc, "pki")
	st.EncryptionDir = filepath.Join(etc, "encryption")
	st.ConfigFile = filepath.Join(etc, "service-config.yaml")
	st.Units = append([]string{"flightctl-db.service", "flightctl-kv.service"}, ApplicationUnits...)
	// Whatever happens next, sandbox.json says what to stop.
	defer stopOnFailure(st, log, &err)
	if err := os.MkdirAll(st.LogDir, 0o755); err != nil {
		return st, err
	}

	// Files of the quadlet install.
	if _, err := writePKI(st.PKIDir); err != nil {
		return st, fmt.Errorf("sandbox: PKI: %w", err)
	}
	if err := writeEncryptionKey(st.EncryptionDir); err != nil {
		return st, fmt.Errorf("sandbox: encryption key: %w", err)
	}

	if st.DB.Port, err = testbed.FreePort(); err != nil {
		return st, err
	}
	if st.KV.Port, err = testbed.FreePort(); err != nil {
		return st, err
	}
	if err := os.WriteFile(st.ConfigFile, []byte(serviceConfig(st)), 0o600); err != nil {
		return st, fmt.Errorf("sandbox: service config: %w", err)
	}

	var pm *testbed.Podman
	var pgc *testbed.PodmanPostgres
	systemdEnv := []string{}
	if !opts.NoPodman {
		pm, pgc, err = upPodman(ctx, st, opts)
		if err != nil {
			return st, err
		}
		systemdEnv = append(systemdEnv, pm.Env...)
	} else if err := upPlainProcesses(ctx, st, opts); err != nil {
		return st, err
	}
	if err := st.save(); err != nil {
		return st, err
	}

	sd, err := testbed.StartSystemd(ctx, testbed.SystemdOptions{Dir: filepath.Join(opts.Dir, "systemd"), Env: systemdEnv, Logger: log})
	if err != nil {
		return st, fmt.Errorf("sandbox: %w", err)
	}
	st.Systemd = SystemdState{Scope: "user", Dir: sd.Dir, PID: sd.PID, RuntimeDir: sd.RuntimeDir, BusAddress: sd.BusAddress, HostNamespacePID: sd.HostNamespacePID}
	if err := st.save(); err != nil {
		return st, err
	}
	for name, content := range unitFiles(st) {
		if err := sd.WriteUnit(name, content); err != nil {
			return st, err
		}
	}
	if err := sd.DaemonReload(ctx); err != nil {
		return st, err
	}
	if _, err := sd.Systemctl(ctx, "start", "flightctl.target"); err != nil {
		return st, fmt.Errorf("sandbox: start units: %w", err)
	}

	// The database and KV are up under their units: create the schema and seed.
	var pg *testbed.Postgres
	if pgc != nil {
		if err := pgc.WaitReady(ctx); err != nil {
			return st, err
		}
		pg = pgc.Postgres
	} else if pg, err = waitPlainPostgres(ctx, st); err != nil {
		return st, err
	}
	if err := st.createAndSeedDB(ctx, pg, opts.Devices); err != nil {
		return st, err
	}
	kv := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("%s:%d", st.KV.Host, st.KV.Port), Password: st.KV.Password})
	defer kv.Close()
	if err := waitRedis(ctx, kv); err != nil {
		return st, err
	}
	if st.Seed.KVKeys, err = seedKV(ctx, kv); err != nil {
		return st, fmt.Errorf("sandbox: seed KV: %w", err)
	}

	// Every unit must be active.
	for _, u := range st.Units {
		out, err := sd.Systemctl(ctx, "is-active", u)
		if err != nil || strings.TrimSpace(out) != "active" {
			return st, fmt.Errorf("sandbox: unit %s is %q after start (logs in %s): %v", u, strings.TrimSpace(out), st.LogDir, err)
		}
	}
	if pm != nil {
		pm.ForgetCleanup() // Down removes them by name from sandbox.json.
	}
	if opts.S3 {
		if err := startS3(ctx, st); err != nil {
			return st, err
		}
	}
	if err := st.record(); err != nil {
		return st, err
	}
	log.Info("sandbox up", "dir", st.Dir, "took", time.Since(start).Round(time.Millisecond), "devices", st.Seed.Devices)
	return st, nil
}

// prepareDir refuses a sandbox directory in which any of subs exists (another sandbox's)
// and creates it.
func prepareDir(dir string, subs ...string) error {
	for _, sub := range subs {
		p := filepath.Join(dir, sub)
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("sandbox: %s already exists: use an empty directory or run sandbox down --dir %s", p, dir)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// newState is where both forms start: the directory, the version, and fresh credentials
// for the database and the KV store.
func newState(opts Options) *State {
	return &State{
		Dir:           opts.Dir,
		Created:       time.Now().UTC(),
		ServerVersion: opts.Version,
		LogDir:        filepath.Join(opts.Dir, "logs"),
		DB: DBState{
			Host: "127.0.0.1", Name: "flightctl", User: "flightctl_app", Password: testbed.RandomPassword(),
			AdminUser: "admin", AdminPassword: testbed.RandomPassword(), MigratorPassword: testbed.RandomPassword(),
		},
		KV: KVState{Host: "127.0.0.1", Password: testbed.RandomPassword()},
	}
}

// stopOnFailure is deferred by both forms' up: when *err is set, sandbox.json records what
// was started and Down stops it.
func stopOnFailure(st *State, log *slog.Logger, err *error) {
	if *err == nil {
		return
	}
	_ = st.save()
	log.Error("sandbox up failed; stopping what was started", "err", *err)
	if derr := Down(context.Background(), st.Dir, log); derr != nil {
		*err = errors.Join(*err, derr)
	}
}

// createAndSeedDB creates the flightctl database with its roles on pg and seeds devices.
func (s *State) createAndSeedDB(ctx context.Context, pg *testbed.Postgres, devices int) error {
	if err := pg.CreateFlightctlDB(ctx, s.DB.Name, testbed.FlightctlPasswords{Admin: s.DB.AdminPassword, Migrator: s.DB.MigratorPassword, App: s.DB.Password}); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	conn, err := pg.SuperuserConn(ctx, s.DB.Name)
	if err != nil {
		return fmt.Errorf("sandbox: connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	if s.Seed, err = seedDatabase(ctx, conn, devices); err != nil {
		return fmt.Errorf("sandbox: seed database: %w", err)
	}
	return nil
}

// record writes sandbox.json, sandbox.env and inventory.yml.
func (s *State) record() error {
	if err := s.save(); err != nil {
		return err
	}
	if err := writeEnvFile(s); err != nil {
		return err
	}
	return writeInventory(s)
}

// upPodman prepares the containers (created, started by their units), secrets, volume
// and the flightctl-api image carrying the version tag.
func upPodman(ctx context.Context, st *State, opts Options) (*testbed.Podman, *testbed.PodmanPostgres, error) {
	pm, err := testbed.StartPodman(ctx, testbed.PodmanOptions{Dir: filepath.Join(opts.Dir, "podman"), Logger: opts.Logger})
	if err != nil {
		return nil, nil, fmt.Errorf("sandbox: %w (use --no-podman on a machine without podman)", err)
	}
	st.ContainersConf = pm.ConfFile
	cli := pm.Client()
	names := map[string]*string{"flightctl-db": &st.DB.Container, "flightctl-kv": &st.KV.Container, "flightctl-api": &st.APIContainer}
	for base, dst := range names {
		*dst = opts.Prefix + base
		exists, err := cli.ContainerExists(ctx, *dst)
		if err != nil {
			return pm, nil, err
		}
		if exists {
			return pm, nil, fmt.Errorf("sandbox: a container %s already exists: remove it (podman rm -f %s) or use a prefix", *dst, *dst)
		}
	}
	// Recorded before creation so that Down removes them even after a failed Up.
	st.Containers = []string{st.DB.Container, st.KV.Container, st.APIContainer}
	st.DB.Access = "container"
	st.DB.InContainerPort = 5432
	st.DB.InContainerSocket = "/var/run/postgresql"

	pgc, err := testbed.StartPodmanPostgres(ctx, pm, testbed.PodmanPostgresOptions{
		Name: st.DB.Container, Dir: filepath.Join(opts.Dir, "pg"), Port: st.DB.Port, CreateOnly: true, Logger: opts.Logger,
	})
	if err != nil {
		return pm, nil, fmt.Errorf("sandbox: %w", err)
	}
	st.DB.SocketDir = filepath.Join(opts.Dir, "pg", "sock")
	st.DB.DataDir = filepath.Join(opts.Dir, "pg", "data")
	if err := trustLoopback(filepath.Join(st.DB.DataDir, "pg_hba.conf")); err != nil {
		return pm, nil, fmt.Errorf("sandbox: %w", err)
	}

	kvDir := filepath.Join(opts.Dir, "kv")
	if err := os.MkdirAll(kvDir, 0o700); err != nil {
		return pm, nil, err
	}
	conf := filepath.Join(kvDir, "redis.conf")
	if err := os.WriteFile(conf, []byte(redisConf(6379, "0.0.0.0", st.KV.Password, "")), 0o600); err != nil {
		return pm, nil, err
	}
	if err := pm.RunContainer(ctx, testbed.PodmanContainerOptions{
		Name: st.KV.Container, CreateOnly: true, Image: testbed.PodmanHostUsrImage,
		Volumes: []string{"/usr:/usr:ro", conf + ":/etc/redis/redis.conf:ro"},
		Publish: []string{fmt.Sprintf("127.0.0.1:%d:6379", st.KV.Port)},
		Command: []string{"/usr/bin/redis-server", "/etc/redis/redis.conf"},
	}); err != nil {
		return pm, nil, fmt.Errorf("sandbox: %w", err)
	}

	st.APIImage = "quay.io/flightctl/flightctl-api:" + opts.Version
	if _, err := pm.Podman(ctx, "tag", testbed.PodmanBusyboxImage, st.APIImage); err != nil {
		return pm, nil, fmt.Errorf("sandbox: tag the api image: %w", err)
	}
	if err := pm.RunContainer(ctx, testbed.PodmanContainerOptions{
		Name: st.APIContainer, CreateOnly: true, Image: st.APIImage, Command: []string{"sleep", "2147483647"},
	}); err != nil {
		return pm, nil, fmt.Errorf("sandbox: %w", err)
	}
	st.VersionSource = "image tag of container " + st.APIContainer

	st.DB.UserSecret = opts.Prefix + "flightctl-postgresql-user-password"
	st.DB.MasterSecret = opts.Prefix + "flightctl-postgresql-master-password"
	st.KV.Secret = opts.Prefix + "flightctl-kv-password"
	st.Secrets = []string{st.DB.UserSecret, st.DB.MasterSecret, st.KV.Secret}
	for name, value := range map[string]string{st.DB.UserSecret: st.DB.Password, st.DB.MasterSecret: st.DB.AdminPassword, st.KV.Secret: st.KV.Password} {
		if err := cli.CreateSecret(ctx, name, value, true); err != nil {
			return pm, nil, fmt.Errorf("sandbox: %w", err)
		}
	}
	st.PAMVolume = opts.Prefix + "flightctl-pam-issuer-etc"
	if err := pm.CreateVolume(ctx, st.PAMVolume, map[string]string{
		"pam.d/flightctl-pam-issuer": "auth required pam_unix.so\naccount required pam_unix.so\n",
		"passwd":                     "root:x:0:0:root:/root:/bin/sh\noperator:x:1001:1001::/home/operator:/bin/sh\n",
		"group":                      "root:x:0:\nflightctl-admin:x:1001:operator\n",
	}); err != nil {
		return pm, nil, fmt.Errorf("sandbox: PAM issuer volume: %w", err)
	}
	return pm, pgc, nil
}

// upPlainProcesses initialises a PostgreSQL cluster (run later by flightctl-db.service)
// and writes the Redis config (run by flightctl-kv.service).
func upPlainProcesses(ctx context.Context, st *State, opts Options) error {
	st.DB.Access = "direct"
	pg, err := testbed.StartPostgres(ctx, testbed.PostgresOptions{Dir: filepath.Join(opts.Dir, "pg"), Port: st.DB.Port, Logger: opts.Logger})
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	st.DB.SocketDir, st.DB.DataDir = pg.SocketDir, pg.DataDir
	// Initialised; from now on the unit runs it.
	if err := pg.Stop(); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	kvDir := filepath.Join(opts.Dir, "kv")
	if err := os.MkdirAll(kvDir, 0o700); err != nil {
		return err
	}
	st.VersionSource = "sandbox.json (no podman)"
	return os.WriteFile(filepath.Join(kvDir, "redis.conf"), []byte(redisConf(st.KV.Port, "127.0.0.1", st.KV.Password, kvDir)), 0o600)
}

func waitPlainPostgres(ctx context.Context, st *State) (*testbed.Postgres, error) {
	pg, err := testbed.AttachPostgres(ctx, "127.0.0.1", st.DB.Port, st.DB.SocketDir)
	if err != nil {
		return nil, err
	}
	// The socket appears before the server accepts connections: wait for a real session.
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pg.SuperuserConn(ctx, "postgres")
		if err == nil {
			conn.Close(context.Background())
			return pg, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sandbox: PostgreSQL did not start under flightctl-db.service (see %s): %w", st.LogDir, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func waitRedis(ctx context.Context, c *redis.Client) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("sandbox: Redis not reachable: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func redisConf(port int, bind, password, dir string) string {
	q := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	conf := fmt.Sprintf("port %d\nbind %s\nrequirepass %s\nsave \"\"\nappendonly no\nprotected-mode no\n", port, bind, q(password))
	if dir != "" {
		conf += "dir " + q(dir) + "\n"
	}
	return conf
}

// serviceConfig is service-config.yaml as the quadlet install has it: a top-level db
// section (name flightctl), kv, and the service's own settings.
func serviceConfig(st *State) string {
	return fmt.Sprintf(`# Flight Control service configuration (sandbox)
global:
  baseDomain: flightctl.sandbox.local
  auth:
    type: none
    insecureSkipTlsVerify: false
service:
  address: :3443
  agentEndpointAddress: :7443
  baseUrl: https://api.flightctl.sandbox.local:3443/
  baseAgentEndpointUrl: https://agent-api.flightctl.sandbox.local:7443/
  certStore: /etc/flightctl/pki
db:
  type: builtin
  name: %s
  hostname: flightctl-db
  port: 5432
  user: %s
  migrationUser: flightctl_migrator
kv:
  hostname: flightctl-kv
  port: 6379
alertmanager:
  hostname: flightctl-alertmanager
  port: 9093
`, st.DB.Name, st.DB.User)
}

// unitFiles returns the units: flightctl-db and flightctl-kv wrap the database and KV,
// flightctl-api runs the versioned container, the other application units idle, and
// flightctl.target pulls them all in.
func unitFiles(st *State) map[string]string {
	logOut := func(unit string) string {
		l := filepath.Join(st.LogDir, unit+".log")
		return "StandardOutput=append:" + l + "\nStandardError=append:" + l + "\n"
	}
	units := map[string]string{}
	if st.Podman {
		// ExecStartPost makes the unit active only once its container runs, as quadlet's
		// units are (Type=notify, --sdnotify=conmon): a start job that returns means a
		// running container, not a podman process that will start one soon.
		container := func(desc, name, deps string) string {
			return "[Unit]\nDescription=" + desc + " (sandbox)\n" + deps + "\n[Service]\n" +
				"ExecStart=" + st.hostCommand("/usr/bin/podman", "start", "-a", name) + "\n" +
				"ExecStartPost=" + st.hostCommand("/usr/bin/podman", "wait", "--condition=running", name) + "\n" +
				"ExecStop=" + st.hostCommand("/usr/bin/podman", "stop", "-t", "10", name) + "\n" +
				"SuccessExitStatus=137 143\n" + logOut(name)
		}
		units["flightctl-db.service"] = container("Flight Control database", st.DB.Container, "")
		units["flightctl-kv.service"] = container("Flight Control KV store", st.KV.Container, "")
		units["flightctl-api.service"] = container("Flight Control API server", st.APIContainer,
			"Requires=flightctl-db.service flightctl-kv.service\nAfter=flightctl-db.service flightctl-kv.service\n")
	} else {
		units["flightctl-db.service"] = fmt.Sprintf("[Unit]\nDescription=Flight Control database (sandbox)\n\n[Service]\nExecStart=/usr/sbin/runuser -u postgres -- %s/postgres -D %s -c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off\nKillSignal=SIGINT\n%s",
			testbed.PostgresBinDir, st.DB.DataDir, st.DB.Port, st.DB.SocketDir, logOut("flightctl-db"))
		units["flightctl-kv.service"] = fmt.Sprintf("[Unit]\nDescription=Flight Control KV store (sandbox)\n\n[Service]\nExecStart=/usr/bin/redis-server %s\n%s", filepath.Join(st.Dir, "kv", "redis.conf"), logOut("flightctl-kv"))
		units["flightctl-api.service"] = "[Unit]\nDescription=Flight Control API server (sandbox)\nRequires=flightctl-db.service flightctl-kv.service\nAfter=flightctl-db.service flightctl-kv.service\n\n[Service]\nExecStartPre=/bin/echo flightctl-api " + st.ServerVersion + " starting\nExecStart=/bin/sleep infinity\n" + logOut("flightctl-api")
	}
	for _, u := range ApplicationUnits {
		if u == "flightctl-api.service" {
			continue
		}
		name := strings.TrimSuffix(u, ".service")
		deps := "After=flightctl-db.service flightctl-kv.service\n"
		if u == "flightctl-gateway.service" {
			// As upstream: stopping the API stops the gateway, starting it does not start it.
			deps = "Requires=flightctl-api.service\nAfter=flightctl-api.service\n"
		}
		units[u] = "[Unit]\nDescription=" + name + " (sandbox)\n" + deps + "\n[Service]\nExecStartPre=/bin/echo " + name + " starting\nExecStart=/bin/sleep infinity\n" + logOut(name)
	}
	wants := strings.Join(st.Units, " ")
	units["flightctl.target"] = "[Unit]\nDescription=Flight Control (sandbox)\nWants=" + wants + "\nAfter=" + wants + "\n"
	return units
}

// removeImageNameUnlessUsed removes the api image's version name, unless a container of
// another sandbox on this machine (the podman storage is the machine's) was created from
// that name: its Down removes it. Removing it under that sandbox would let a sandbox being
// started beside it find no image to create its api container from.
func removeImageNameUnlessUsed(ctx context.Context, pm *testbed.Podman, image string) error {
	out, err := pm.Podman(ctx, "ps", "-a", "--format", "{{.Image}}")
	if err != nil {
		return fmt.Errorf("list the containers using image name %s: %w", image, err)
	}
	for _, name := range strings.Fields(out) {
		if name == image {
			return nil
		}
	}
	// rmi of one name of an image with several names only removes that name (untag
	// without names would strip every name, the shared busybox one included).
	if _, err := pm.Podman(ctx, "rmi", image); err != nil && !strings.Contains(err.Error(), "image not known") {
		return fmt.Errorf("remove image name %s: %w", image, err)
	}
	return nil
}

// Down stops everything the sandbox in dir started: the systemd manager (and with it
// every unit and container process), then removes containers, secrets, the volume and the
// api image tag, and kills any process left in the sandbox's directories' servers by PID.
func Down(ctx context.Context, dir string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	st, err := Load(dir)
	if err != nil {
		return err
	}
	var errs []error
	if st.Systemd.Dir != "" {
		if sd, err := testbed.AttachSystemd(st.Systemd.Dir, logger); err == nil {
			if err := sd.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if st.Podman {
		cli := &podman.Client{Env: envIf(st.ContainersConf != "", "CONTAINERS_CONF="+st.ContainersConf), Logger: logger}
		pm := &testbed.Podman{ConfFile: st.ContainersConf, Env: cli.Env}
		for _, c := range st.Containers {
			if err := pm.RemoveContainer(ctx, c); err != nil {
				errs = append(errs, err)
			}
		}
		for _, s := range st.Secrets {
			if err := cli.RemoveSecret(ctx, s); err != nil {
				errs = append(errs, err)
			}
		}
		if st.PAMVolume != "" {
			if err := cli.VolumeRemove(ctx, st.PAMVolume); err != nil {
				errs = append(errs, err)
			}
		}
		if st.APIImage != "" {
			if err := removeImageNameUnlessUsed(ctx, pm, st.APIImage); err != nil {
				errs = append(errs, err)
			}
		}
	}
	downKubernetes(st)
	stopS3(st)
	// Servers that a failed Up may have left outside systemd (by their pid files).
	if st.DB.DataDir != "" {
		testbed.KillByPIDFile(filepath.Join(st.DB.DataDir, "postmaster.pid"), filepath.Join(st.Dir, "pg"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sandbox down: %w", err)
	}
	logger.Info("sandbox down", "dir", dir)
	return nil
}

func envIf(cond bool, kv string) []string {
	if cond {
		return []string{kv}
	}
	return nil
}
