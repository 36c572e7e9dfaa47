// Package podman drives the podman CLI for what backup and restore need on a quadlet host:
// running a command inside a container with data on stdin, reading Podman secrets,
// exporting and importing volumes, and discovering the server version from a container's
// image. Every command goes through runner; no secret ever appears in argv.
package podman

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/wrap"
)

// ErrNotFound is wrapped by errors about a container, secret or volume that does not exist.
var ErrNotFound = errors.New("not found")

// ErrNotPublished is wrapped by Port's error when the container does not publish the port
// on this host (not published, host network, or the container is not running).
var ErrNotPublished = errors.New("port not published")

// DefaultSecretsStore is where podman's file secret driver keeps values by default.
const DefaultSecretsStore = "/var/lib/containers/storage/secrets/filedriver"

// Client runs podman. The zero value runs "podman" from PATH with runner.Exec.
type Client struct {
	Runner runner.Runner
	// Binary is the podman program; "" is "podman".
	Binary string
	// Env is added to every command (for example CONTAINERS_CONF=...).
	Env    []string
	Logger *slog.Logger
}

func (c *Client) runner() runner.Runner {
	if c.Runner == nil {
		return runner.Exec{}
	}
	return c.Runner
}

func (c *Client) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

func (c *Client) cmd(args ...string) runner.Cmd {
	bin := c.Binary
	if bin == "" {
		bin = "podman"
	}
	return runner.Cmd{Name: bin, Args: args, Env: c.Env}
}

func (c *Client) output(ctx context.Context, args ...string) ([]byte, error) {
	return runner.Output(ctx, c.runner(), c.cmd(args...))
}

// isNoSuch reports whether podman failed because the object of that kind (container,
// secret, volume) does not exist. podman says "no such volume X", "no container with name
// or ID X found" or "no such object".
func isNoSuch(err error, kind string) bool {
	var ee *runner.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	s := strings.ToLower(ee.Stderr)
	return strings.Contains(s, "no such "+kind) || strings.Contains(s, "no "+kind+" with name") ||
		strings.Contains(s, "no such object")
}

// ExecOptions is one command run inside a running container.
type ExecOptions struct {
	Container string
	// Command is the program and its arguments. Never put a secret here: pass it on Stdin
	// (for example sh -c 'PGPASSWORD=$(cat) pg_dump ...').
	Command []string
	// User runs the command as this user (podman exec --user); "" is the container's.
	User   string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Validate checks the options.
func (o ExecOptions) Validate() error {
	if o.Container == "" {
		return errors.New("podman exec: container name is required")
	}
	if len(o.Command) == 0 {
		return errors.New("podman exec: command is required")
	}
	return nil
}

// Exec runs a command in a running container, streaming stdin and stdout.
func (c *Client) Exec(ctx context.Context, opts ExecOptions) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	args := []string{"exec"}
	if opts.Stdin != nil {
		args = append(args, "-i")
	}
	if opts.User != "" {
		args = append(args, "--user", opts.User)
	}
	args = append(args, opts.Container)
	args = append(args, opts.Command...)
	cmd := c.cmd(args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	if err := c.runner().Run(ctx, cmd); err != nil {
		if isNoSuch(err, "container") {
			return fmt.Errorf("container %s %w (is its unit running?): %v", opts.Container, ErrNotFound, err)
		}
		// The runner's error names the command already ("podman exec -i <container> psql …:
		// exit status 2: …"); only an error that does not (podman missing) gets the prefix.
		return wrap.Prefix(cmd.Name+" exec", err)
	}
	return nil
}

// ContainerInfo is what backup and restore need from podman inspect.
type ContainerInfo struct {
	ID      string
	Name    string
	Image   string // the image name the container was created from, with its tag
	ImageID string
	State   string // running, exited, stopped, ...
	Running bool
}

// InspectContainer returns the container's image and state. A missing container gives an
// error wrapping ErrNotFound.
func (c *Client) InspectContainer(ctx context.Context, name string) (ContainerInfo, error) {
	out, err := c.output(ctx, "container", "inspect", name)
	if err != nil {
		if isNoSuch(err, "container") {
			return ContainerInfo{}, fmt.Errorf("inspect container %s: %w", name, ErrNotFound)
		}
		return ContainerInfo{}, fmt.Errorf("inspect container %s: %w", name, err)
	}
	var raw []struct {
		ID        string `json:"Id"`
		Name      string `json:"Name"`
		ImageName string `json:"ImageName"`
		Image     string `json:"Image"`
		Config    struct {
			Image string `json:"Image"`
		} `json:"Config"`
		State struct {
			Status  string `json:"Status"`
			Running bool   `json:"Running"`
		} `json:"State"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		return ContainerInfo{}, fmt.Errorf("inspect container %s: unexpected output: %w", name, err)
	}
	if len(raw) == 0 {
		return ContainerInfo{}, fmt.Errorf("inspect container %s: %w", name, ErrNotFound)
	}
	r := raw[0]
	info := ContainerInfo{ID: r.ID, Name: r.Name, Image: r.ImageName, ImageID: r.Image, State: r.State.Status, Running: r.State.Running}
	if info.Image == "" {
		info.Image = r.Config.Image
	}
	return info, nil
}

// ContainerImageTag returns the tag of the image a container runs (the server version of a
// quadlet install: quay.io/flightctl/flightctl-api:0.9.2 gives 0.9.2).
func (c *Client) ContainerImageTag(ctx context.Context, name string) (string, error) {
	info, err := c.InspectContainer(ctx, name)
	if err != nil {
		return "", err
	}
	tag := ImageTag(info.Image)
	if tag == "" || tag == "latest" {
		return "", fmt.Errorf("container %s runs image %q, which carries no version tag: pass the server version explicitly", name, info.Image)
	}
	return tag, nil
}

// ImageTag returns the tag of an image reference ("" when there is none). A registry port
// is not a tag, and a digest is ignored.
func ImageTag(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	last := ref[strings.LastIndex(ref, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 {
		return last[i+1:]
	}
	return ""
}

// Port returns the host address where a running container publishes containerPort
// ("5432/tcp"), from the first line of `podman port` as upstream reads it. An empty or
// wildcard host (0.0.0.0, ::) becomes 127.0.0.1: the service is reached from this host.
// A port that is not published gives an error wrapping ErrNotPublished; a missing
// container one wrapping ErrNotFound.
func (c *Client) Port(ctx context.Context, container, containerPort string) (string, int, error) {
	out, err := c.output(ctx, "port", container, containerPort)
	if err != nil {
		var ee *runner.ExitError
		switch {
		case isNoSuch(err, "container"):
			return "", 0, fmt.Errorf("find where container %s publishes %s: container %w", container, containerPort, ErrNotFound)
		case errors.As(err, &ee) && strings.Contains(ee.Stderr, "failed to find published port"):
			// A container that publishes other ports, but not this one.
			return "", 0, fmt.Errorf("find where container %s publishes %s: %w", container, containerPort, ErrNotPublished)
		}
		return "", 0, fmt.Errorf("find where container %s publishes %s: %w", container, containerPort, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return "", 0, fmt.Errorf("find where container %s publishes %s: %w", container, containerPort, ErrNotPublished)
	}
	host, portText, err := net.SplitHostPort(line)
	if err != nil {
		// "podman port" of old releases may print ":PORT" or "PORT" alone.
		host, portText = "", strings.TrimPrefix(line, ":")
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port <= 0 || port > 65535 {
		return "", 0, fmt.Errorf("find where container %s publishes %s: unexpected output of podman port: %q", container, containerPort, line)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return host, port, nil
}

// ContainerIP returns the container's first IP address on its networks, "" when it has
// none (host network, or not running). A missing container gives an error wrapping
// ErrNotFound.
func (c *Client) ContainerIP(ctx context.Context, name string) (string, error) {
	out, err := c.output(ctx, "container", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", name)
	if err != nil {
		if isNoSuch(err, "container") {
			return "", fmt.Errorf("inspect container %s: %w", name, ErrNotFound)
		}
		return "", fmt.Errorf("inspect container %s: %w", name, err)
	}
	for _, f := range strings.Fields(string(out)) {
		if net.ParseIP(f) != nil {
			return f, nil
		}
	}
	return "", nil
}

// ContainerExists reports whether a container of that name exists (in any state).
func (c *Client) ContainerExists(ctx context.Context, name string) (bool, error) {
	return c.exists(ctx, "container", name)
}

// VolumeExists reports whether a volume exists.
func (c *Client) VolumeExists(ctx context.Context, name string) (bool, error) {
	return c.exists(ctx, "volume", name)
}

func (c *Client) exists(ctx context.Context, kind, name string) (bool, error) {
	err := c.runner().Run(ctx, c.cmd(kind, "exists", name))
	if err == nil {
		return true, nil
	}
	var ee *runner.ExitError
	if errors.As(err, &ee) && ee.ExitCode == 1 {
		return false, nil
	}
	return false, fmt.Errorf("podman %s exists %s: %w", kind, name, err)
}

// ReadSecret returns the value of a Podman secret, trimmed of surrounding white space as
// upstream does. It uses `secret inspect --showsecret` (podman ≥ 4.4) and, when podman is
// older, reads the file driver's store. The value never passes through argv.
func (c *Client) ReadSecret(ctx context.Context, name string) (string, error) {
	out, err := c.output(ctx, "secret", "inspect", "--showsecret", name)
	if err == nil {
		var v []struct {
			SecretData string `json:"SecretData"`
		}
		if jerr := json.Unmarshal(out, &v); jerr != nil || len(v) == 0 {
			return "", fmt.Errorf("read podman secret %s: unexpected output of secret inspect", name)
		}
		return strings.TrimSpace(v[0].SecretData), nil
	}
	if isNoSuch(err, "secret") {
		return "", fmt.Errorf("read podman secret %s: secret %w: create it or pass the credential explicitly", name, ErrNotFound)
	}
	var ee *runner.ExitError
	if !errors.As(err, &ee) || !strings.Contains(ee.Stderr, "--showsecret") {
		return "", fmt.Errorf("read podman secret %s: %w", name, err)
	}
	c.logger().Debug("podman has no --showsecret; reading the file driver's store", "secret", name)
	return c.readSecretFromStore(ctx, name)
}

// readSecretFromStore finds the secret's ID and driver with secret inspect, then reads the
// base64 value kept under that ID in the file driver's secretsdata.json.
func (c *Client) readSecretFromStore(ctx context.Context, name string) (string, error) {
	out, err := c.output(ctx, "secret", "inspect", name)
	if err != nil {
		if isNoSuch(err, "secret") {
			return "", fmt.Errorf("read podman secret %s: secret %w: create it or pass the credential explicitly", name, ErrNotFound)
		}
		return "", fmt.Errorf("read podman secret %s: %w", name, err)
	}
	var meta []struct {
		ID   string `json:"ID"`
		Spec struct {
			Driver struct {
				Name    string            `json:"Name"`
				Options map[string]string `json:"Options"`
			} `json:"Driver"`
		} `json:"Spec"`
	}
	if err := json.Unmarshal(out, &meta); err != nil || len(meta) == 0 || meta[0].ID == "" {
		return "", fmt.Errorf("read podman secret %s: unexpected output of secret inspect", name)
	}
	m := meta[0]
	if m.Spec.Driver.Name != "" && m.Spec.Driver.Name != "file" {
		return "", fmt.Errorf("read podman secret %s: driver %q cannot be read without podman ≥ 4.4 (secret inspect --showsecret): upgrade podman or pass the credential explicitly", name, m.Spec.Driver.Name)
	}
	store := m.Spec.Driver.Options["path"]
	if store == "" {
		store = DefaultSecretsStore
	}
	data, err := os.ReadFile(filepath.Join(store, "secretsdata.json"))
	if err != nil {
		return "", fmt.Errorf("read podman secret %s from the file driver's store (needs root): %w", name, err)
	}
	var values map[string]string
	if err := json.Unmarshal(data, &values); err != nil {
		return "", fmt.Errorf("read podman secret %s: %s is not valid JSON", name, filepath.Join(store, "secretsdata.json"))
	}
	enc, ok := values[m.ID]
	if !ok {
		return "", fmt.Errorf("read podman secret %s: no value for ID %s in the file driver's store", name, m.ID)
	}
	dec, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return "", fmt.Errorf("read podman secret %s: value is not base64", name)
	}
	return strings.TrimSpace(string(dec)), nil
}

// CreateSecret creates a secret from value, passed on stdin. replace removes an existing
// secret of that name first.
func (c *Client) CreateSecret(ctx context.Context, name, value string, replace bool) error {
	if replace {
		if err := c.RemoveSecret(ctx, name); err != nil {
			return err
		}
	}
	cmd := c.cmd("secret", "create", name, "-")
	cmd.Stdin = strings.NewReader(value)
	if err := c.runner().Run(ctx, cmd); err != nil {
		return fmt.Errorf("create podman secret %s: %w", name, err)
	}
	return nil
}

// RemoveSecret removes a secret; a missing one is not an error.
func (c *Client) RemoveSecret(ctx context.Context, name string) error {
	if err := c.runner().Run(ctx, c.cmd("secret", "rm", name)); err != nil && !isNoSuch(err, "secret") {
		return fmt.Errorf("remove podman secret %s: %w", name, err)
	}
	return nil
}

// VolumeExport writes the volume's content as a tar stream to w.
func (c *Client) VolumeExport(ctx context.Context, name string, w io.Writer) error {
	cmd := c.cmd("volume", "export", name)
	cmd.Stdout = w
	if err := c.runner().Run(ctx, cmd); err != nil {
		if isNoSuch(err, "volume") {
			return fmt.Errorf("export volume %s: volume %w", name, ErrNotFound)
		}
		return fmt.Errorf("export volume %s: %w", name, err)
	}
	return nil
}

// VolumeImport unpacks a tar stream into the volume, over what it holds (podman's import
// adds to the content; use VolumeReplace to replace it).
func (c *Client) VolumeImport(ctx context.Context, name string, r io.Reader) error {
	cmd := c.cmd("volume", "import", name, "-")
	cmd.Stdin = r
	if err := c.runner().Run(ctx, cmd); err != nil {
		if isNoSuch(err, "volume") {
			return fmt.Errorf("import volume %s: volume %w", name, ErrNotFound)
		}
		return fmt.Errorf("import volume %s: %w", name, err)
	}
	return nil
}

// VolumeReplace makes the volume hold exactly the tar stream's content: it removes the
// volume (a volume in use by a container makes this fail: stop its unit first), creates it
// again and imports r.
func (c *Client) VolumeReplace(ctx context.Context, name string, r io.Reader) error {
	if err := c.VolumeRemove(ctx, name); err != nil {
		return fmt.Errorf("replace volume %s: %w", name, err)
	}
	if err := c.VolumeCreate(ctx, name); err != nil {
		return fmt.Errorf("replace volume %s: %w", name, err)
	}
	if err := c.VolumeImport(ctx, name, r); err != nil {
		return fmt.Errorf("replace volume %s: %w", name, err)
	}
	return nil
}

// VolumeCreate creates a volume.
func (c *Client) VolumeCreate(ctx context.Context, name string) error {
	if err := c.runner().Run(ctx, c.cmd("volume", "create", name)); err != nil {
		return fmt.Errorf("create volume %s: %w", name, err)
	}
	return nil
}

// VolumeRemove removes a volume; a missing one is not an error.
func (c *Client) VolumeRemove(ctx context.Context, name string) error {
	if err := c.runner().Run(ctx, c.cmd("volume", "rm", name)); err != nil && !isNoSuch(err, "volume") {
		return fmt.Errorf("remove volume %s (is a container using it? stop its unit first): %w", name, err)
	}
	return nil
}

// Version returns the podman client version (podman version --format).
func (c *Client) Version(ctx context.Context) (string, error) {
	out, err := c.output(ctx, "version", "--format", "{{.Client.Version}}")
	if err != nil {
		return "", fmt.Errorf("podman version: %w", err)
	}
	return string(bytes.TrimSpace(out)), nil
}

// ContainerPID returns the host PID of a running container's main process (0 when the
// container is not running). A missing container gives an error wrapping ErrNotFound.
func (c *Client) ContainerPID(ctx context.Context, name string) (int, error) {
	out, err := c.output(ctx, "container", "inspect", "--format", "{{.State.Pid}}", name)
	if err != nil {
		if isNoSuch(err, "container") {
			return 0, fmt.Errorf("inspect container %s: %w", name, ErrNotFound)
		}
		return 0, fmt.Errorf("inspect container %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid < 0 {
		return 0, fmt.Errorf("inspect container %s: unexpected process id %q", name, strings.TrimSpace(string(out)))
	}
	return pid, nil
}
