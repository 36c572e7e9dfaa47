package estate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/units"
)

// AutoDetect asks DetectType to find the deployment type from the host.
const AutoDetect = "auto"

// APIUnit is the unit whose activity marks a Podman / systemd install.
const APIUnit = "flightctl-api.service"

// UnitActiveFunc reports whether a systemd unit is active.
type UnitActiveFunc func(ctx context.Context, unit string) (bool, error)

// DetectOptions configure DetectType.
type DetectOptions struct {
	// Requested is "auto" (or ""), "podman" or "kubernetes".
	Requested string
	// UnitActive answers for the Podman indicator. Required for "auto".
	UnitActive UnitActiveFunc
	// Getenv and HomeDir locate a kubeconfig; nil means os.Getenv and os.UserHomeDir.
	Getenv  func(string) string
	HomeDir func() (string, error)
}

// DetectType returns the deployment type: the requested one, or for "auto" the one whose
// indicator is present (SPEC §3.1): flightctl-api.service active over D-Bus for Podman, a
// kubeconfig file ($KUBECONFIG, else ~/.kube/config) for Kubernetes. Both or neither is an
// error asking the operator to set the type.
func DetectType(ctx context.Context, opts DetectOptions) (Type, error) {
	switch strings.TrimSpace(opts.Requested) {
	case "", AutoDetect:
	default:
		return ParseType(strings.TrimSpace(opts.Requested))
	}
	if opts.UnitActive == nil {
		return "", errors.New("detect deployment type: no way to ask systemd: set deployment_type to podman or kubernetes")
	}
	podmanActive, unitErr := opts.UnitActive(ctx, APIUnit)
	kubeconfig := findKubeconfig(opts)
	switch {
	case podmanActive && kubeconfig != "":
		return "", fmt.Errorf("conflicting deployment indicators detected: %s is active and a kubeconfig was found at %s: set deployment_type (--deployment-type) to podman or kubernetes", APIUnit, kubeconfig)
	case podmanActive:
		return Podman, nil
	case kubeconfig != "":
		return Kubernetes, nil
	}
	why := APIUnit + " is not active"
	if unitErr != nil {
		why = fmt.Sprintf("systemd could not be asked about %s (%v)", APIUnit, unitErr)
	}
	return "", fmt.Errorf("unable to detect deployment type: %s and no kubeconfig was found ($KUBECONFIG or ~/.kube/config); run on the Flight Control host, check systemd_scope (system or user), or set deployment_type (--deployment-type) to podman or kubernetes", why)
}

// findKubeconfig returns the kubeconfig file upstream would use, or "".
func findKubeconfig(opts DetectOptions) string {
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	home := opts.HomeDir
	if home == nil {
		home = os.UserHomeDir
	}
	if p := getenv("KUBECONFIG"); p != "" {
		// KUBECONFIG may be a list; upstream treats it as one path, we accept the first file.
		for _, part := range filepath.SplitList(p) {
			if isFile(part) {
				return part
			}
		}
	}
	if h, err := home(); err == nil && h != "" {
		p := filepath.Join(h, ".kube", "config")
		if isFile(p) {
			return p
		}
	}
	return ""
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// SystemdUnitActive connects to systemd over D-Bus (scope "system" or "user"; busAddress
// overrides the bus, DBUS_*_BUS_ADDRESS form) and returns a UnitActiveFunc and the
// function that closes the connection.
func SystemdUnitActive(ctx context.Context, scope, busAddress string) (UnitActiveFunc, func(), error) {
	sc, err := units.ParseScope(scope)
	if err != nil {
		return nil, func() {}, err
	}
	m, err := units.Connect(ctx, units.ConnectOptions{Scope: sc, BusAddress: busAddress})
	if err != nil {
		return nil, func() {}, err
	}
	active := func(ctx context.Context, unit string) (bool, error) {
		st, err := m.State(ctx, unit)
		if err != nil {
			return false, fmt.Errorf("ask systemd about %s: %w", unit, err)
		}
		// "activating" counts too: the server is there, starting.
		return st.Active() || st.ActiveState == "activating", nil
	}
	return active, m.Close, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// DefaultAPIContainer is the container of the API server on a quadlet install; its image
// tag is the server's release.
const DefaultAPIContainer = "flightctl-api"

// ServicesPackage is the RPM that installs the quadlet units.
const ServicesPackage = "flightctl-services"

// VersionOptions configure DiscoverServerVersion.
type VersionOptions struct {
	// Explicit, when set, is returned as is.
	Explicit string
	Runner   runner.Runner
	// APIContainer defaults to DefaultAPIContainer.
	APIContainer string
	// VersionFile, when set, is a file whose first line is the release.
	VersionFile string
	Logger      *slog.Logger
}

// DiscoverServerVersion returns the Flight Control release running on this host, trying
// in order: the explicit value, the flightctl-api container's image tag, the installed
// flightctl-services package, a version file. It fails with what to set when none works.
func DiscoverServerVersion(ctx context.Context, opts VersionOptions) (string, error) {
	if v := strings.TrimSpace(opts.Explicit); v != "" {
		return v, nil
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var tried []string
	if opts.Runner != nil {
		container := orDefault(opts.APIContainer, DefaultAPIContainer)
		tag, err := (&podman.Client{Runner: opts.Runner, Logger: logger}).ContainerImageTag(ctx, container)
		if err == nil {
			logger.Debug("server version from the API container's image", "container", container, "version", tag)
			return tag, nil
		}
		tried = append(tried, firstLine(err.Error()))
		out, err := runner.Output(ctx, opts.Runner, runner.Cmd{Name: "rpm", Args: []string{"-q", "--queryformat", "%{VERSION}", ServicesPackage}})
		if v := strings.TrimSpace(string(out)); err == nil && v != "" && !strings.Contains(v, "not installed") {
			logger.Debug("server version from the installed package", "package", ServicesPackage, "version", v)
			return v, nil
		}
		tried = append(tried, fmt.Sprintf("package %s is not installed or rpm is missing", ServicesPackage))
	}
	if opts.VersionFile != "" {
		b, err := os.ReadFile(opts.VersionFile)
		if err == nil {
			if v := strings.TrimSpace(firstLine(string(b))); v != "" {
				return v, nil
			}
		}
		tried = append(tried, fmt.Sprintf("version file %s is missing or empty", opts.VersionFile))
	}
	return "", fmt.Errorf("cannot find the Flight Control server version (%s): set server_version to the release this server runs, e.g. the tag of its flightctl-api image", strings.Join(tried, "; "))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
