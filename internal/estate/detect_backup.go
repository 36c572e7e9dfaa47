package estate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/backup/source"
	"flightctl.dr/internal/runner"
)

// BackupSourceOptions say which estate a backup reads and how to reach it: the one place
// where a backup's source is built from options.
type BackupSourceOptions struct {
	// DeploymentType is "auto" (or ""), "podman" or "kubernetes".
	DeploymentType string
	// Podman locates the state of a Podman host; zero fields take upstream's defaults
	// (PAMVolume stays as given: start from DefaultPodmanConfig for upstream's volume).
	Podman PodmanConfig
	// Kubernetes locates the state of a Helm install; zero fields take upstream's defaults.
	Kubernetes KubernetesConfig
	// ServerVersion is recorded in metadata.json; "" discovers it from the estate.
	ServerVersion string
	// EstateName names the installation in metadata.json (estate.name); "" is the host name.
	EstateName string

	// Runner runs the estate's commands (default runner.Exec).
	Runner runner.Runner
	Logger *slog.Logger
	// UnitActive answers deployment-type detection; nil asks systemd over D-Bus with
	// Podman.SystemdScope and Podman.SystemdBusAddress.
	UnitActive UnitActiveFunc
	// Getenv and HomeDir locate a kubeconfig during detection (nil: the process's).
	Getenv  func(string) string
	HomeDir func() (string, error)
}

// validate checks the options and fills their defaults.
func (o *BackupSourceOptions) validate() error {
	switch strings.TrimSpace(o.DeploymentType) {
	case "", AutoDetect, string(Podman), string(Kubernetes):
	default:
		return fmt.Errorf("invalid deployment type %q: must be \"auto\", \"kubernetes\" or \"podman\"", o.DeploymentType)
	}
	switch o.Podman.SystemdScope {
	case "", "system", "user":
	default:
		return fmt.Errorf("systemd_scope %q is not valid: use system or user", o.Podman.SystemdScope)
	}
	o.Podman = withPodmanDefaults(o.Podman)
	if o.Runner == nil {
		o.Runner = runner.Exec{}
	}
	return nil
}

func (o *BackupSourceOptions) log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// withPodmanDefaults fills empty fields with upstream's values. PAMVolume stays as given:
// the caller that wants upstream's volume starts from DefaultPodmanConfig.
func withPodmanDefaults(c PodmanConfig) PodmanConfig {
	d := DefaultPodmanConfig()
	set := func(dst *string, def string) {
		if *dst == "" {
			*dst = def
		}
	}
	set(&c.PKIDir, d.PKIDir)
	set(&c.EncryptionDir, d.EncryptionDir)
	set(&c.ConfigFile, d.ConfigFile)
	set(&c.DBContainer, d.DBContainer)
	set(&c.KVContainer, d.KVContainer)
	set(&c.DBHost, d.DBHost)
	set(&c.DBUser, d.DBUser)
	set(&c.SystemdScope, d.SystemdScope)
	if c.DBAccess == "" {
		c.DBAccess = d.DBAccess
	}
	if c.DBPort == 0 {
		c.DBPort = d.DBPort
	}
	return c
}

// OpenBackupSource is the backup source the options name: it resolves the deployment type
// (the requested one, or detected: DetectType asking systemd over D-Bus and looking for a
// kubeconfig), builds that estate's backup, and discovers the server version and the
// identity the archive records. The options are checked at once; the type is resolved when
// the backup first asks (Source.DeploymentType), after it has announced itself, as
// upstream's backup does. close stops what the source left running (its Close).
func OpenBackupSource(_ context.Context, o BackupSourceOptions) (source.Source, func(), error) {
	if err := o.validate(); err != nil {
		return nil, nil, err
	}
	s := &backupSource{opts: o}
	return s, func() { _ = s.Close() }, nil
}

// estateBackup is an estate's backup as a source, once its type is known.
type estateBackup interface {
	ServerVersion(ctx context.Context) (string, error)
	Plan(ctx context.Context) (*BackupPlan, error)
	WriteBackup(ctx context.Context, sink BackupSink, plan *BackupPlan) (*BackupOutcome, error)
	Identity() (*archive.Estate, []string)
	Close() error
}

// backupSource resolves the deployment type on the first question and hands every other to
// the estate's backup it then builds.
type backupSource struct {
	opts BackupSourceOptions

	once  sync.Once
	typ   Type
	err   error
	inner estateBackup

	mu    sync.Mutex
	early bool
}

var (
	_ source.Source      = (*backupSource)(nil)
	_ source.EarlyReader = (*backupSource)(nil)
)

func (s *backupSource) DeploymentType(ctx context.Context) (Type, error) {
	s.once.Do(func() {
		s.typ, s.err = detectBackupType(ctx, &s.opts)
		if s.err != nil {
			return
		}
		o := s.opts
		s.mu.Lock()
		defer s.mu.Unlock()
		switch s.typ {
		case Podman:
			s.inner = &podmanSource{
				PodmanBackup:  &PodmanBackup{Config: o.Podman, Runner: o.Runner, Logger: o.Logger, DumpEarly: s.early},
				serverVersion: o.ServerVersion,
				estateName:    o.EstateName,
			}
		case Kubernetes:
			s.inner = &kubernetesSource{
				KubernetesBackup: &KubernetesBackup{Config: o.Kubernetes, Runner: o.Runner, Logger: o.Logger},
				serverVersion:    o.ServerVersion,
				estateName:       o.EstateName,
			}
		default:
			s.err = fmt.Errorf("deployment type %q is not supported", s.typ)
		}
	})
	return s.typ, s.err
}

// resolved is the estate's backup, the type resolved first when nothing asked yet.
func (s *backupSource) resolved(ctx context.Context) (estateBackup, error) {
	if _, err := s.DeploymentType(ctx); err != nil {
		return nil, err
	}
	return s.inner, nil
}

// ReadEarly makes a Podman host's Plan start the database dump beside its checks.
func (s *backupSource) ReadEarly() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.early = true
	if p, ok := s.inner.(*podmanSource); ok {
		p.DumpEarly = true
	}
}

func (s *backupSource) ServerVersion(ctx context.Context) (string, error) {
	in, err := s.resolved(ctx)
	if err != nil {
		return "", err
	}
	return in.ServerVersion(ctx)
}

func (s *backupSource) Plan(ctx context.Context) (*BackupPlan, error) {
	in, err := s.resolved(ctx)
	if err != nil {
		return nil, err
	}
	return in.Plan(ctx)
}

func (s *backupSource) WriteBackup(ctx context.Context, sink BackupSink, plan *BackupPlan) (*BackupOutcome, error) {
	in, err := s.resolved(ctx)
	if err != nil {
		return nil, err
	}
	return in.WriteBackup(ctx, sink, plan)
}

// Identity is the resolved estate's; before the type is resolved, the estate's name alone.
func (s *backupSource) Identity() (*archive.Estate, []string) {
	s.mu.Lock()
	in := s.inner
	s.mu.Unlock()
	if in == nil {
		id, _ := Identity(s.opts.EstateName, "", "")
		return id, nil
	}
	return in.Identity()
}

func (s *backupSource) Close() error {
	s.mu.Lock()
	in := s.inner
	s.mu.Unlock()
	if in == nil {
		return nil
	}
	return in.Close()
}

// detectBackupType is DetectType for a backup, asking systemd when the type is detected
// and no UnitActive is given; without a systemd to ask, detection falls back on the
// kubeconfig alone.
func detectBackupType(ctx context.Context, o *BackupSourceOptions) (Type, error) {
	requested := strings.TrimSpace(o.DeploymentType)
	detect := DetectOptions{Requested: requested, UnitActive: o.UnitActive, Getenv: o.Getenv, HomeDir: o.HomeDir}
	if (requested == "" || requested == AutoDetect) && detect.UnitActive == nil {
		active, closeConn, err := SystemdUnitActive(ctx, o.Podman.SystemdScope, o.Podman.SystemdBusAddress)
		if err != nil {
			o.log().Debug("systemd unreachable for detection", "err", err)
			detect.UnitActive = func(context.Context, string) (bool, error) { return false, err }
		} else {
			defer closeConn()
			detect.UnitActive = active
		}
	}
	typ, err := DetectType(ctx, detect)
	if err != nil {
		return "", fmt.Errorf("deployment type: %w", err)
	}
	return typ, nil
}

// podmanSource is a Podman host as a backup source: its server version is the explicit
// one or the API container's image tag (DiscoverServerVersion), its identity the service
// configuration's API endpoint and the PKI's CA fingerprint.
type podmanSource struct {
	*PodmanBackup
	serverVersion string
	estateName    string
}

func (s *podmanSource) ServerVersion(ctx context.Context) (string, error) {
	return DiscoverServerVersion(ctx, VersionOptions{Explicit: s.serverVersion, Runner: s.Runner, APIContainer: s.Config.APIContainer, Logger: s.log()})
}

func (s *podmanSource) Identity() (*archive.Estate, []string) {
	return Identity(s.estateName, s.Config.ConfigFile, s.Config.PKIDir)
}

// kubernetesSource is a Helm install as a backup source: its server version is the explicit
// one or the release's chart appVersion, which Plan reads.
type kubernetesSource struct {
	*KubernetesBackup
	serverVersion string
	estateName    string
}

// ServerVersion is the explicit version; "" lets the backup take the plan's (the chart's
// appVersion).
func (s *kubernetesSource) ServerVersion(context.Context) (string, error) {
	return strings.TrimSpace(s.serverVersion), nil
}

// Plan is the Helm install's plan, refused when neither the options nor the release's
// chart give the server version.
func (s *kubernetesSource) Plan(ctx context.Context) (*BackupPlan, error) {
	plan, err := s.KubernetesBackup.Plan(ctx)
	if err != nil {
		return plan, err
	}
	if strings.TrimSpace(s.serverVersion) == "" && plan.ServerVersion == "" {
		return nil, errors.New("cannot find the Flight Control server version: the Helm release's chart has no appVersion: set server_version to the release this server runs")
	}
	return plan, nil
}

// Identity is the estate's name alone: the release's configuration is no local file.
func (s *kubernetesSource) Identity() (*archive.Estate, []string) {
	id, _ := Identity(s.estateName, "", "")
	return id, nil
}

// Close has nothing to stop: Plan leaves nothing running.
func (s *kubernetesSource) Close() error { return nil }
