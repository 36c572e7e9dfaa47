package podman_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

func TestImageTag(t *testing.T) {
	for ref, want := range map[string]string{
		"quay.io/flightctl/flightctl-api:0.9.2":             "0.9.2",
		"quay.io/flightctl/flightctl-api:v1.4.0-main-35-g0": "v1.4.0-main-35-g0",
		"localhost:5000/flightctl-api:1.2":                  "1.2",
		"localhost:5000/flightctl-api":                      "",
		"flightctl-api":                                     "",
		"quay.io/flightctl/flightctl-api:1.0@sha256:abcd":   "1.0",
		"quay.io/flightctl/flightctl-api@sha256:abcd":       "",
	} {
		assert.Equal(t, want, podman.ImageTag(ref), ref)
	}
}

func TestExecWithStdinOnRealContainer(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	name := testbed.PodmanName("fdr-exec")
	require.NoError(t, tb.RunContainer(ctx, testbed.PodmanContainerOptions{Name: name, Command: []string{"sleep", "3600"}}))
	c := tb.Client()

	var out bytes.Buffer
	err := c.Exec(ctx, podman.ExecOptions{
		Container: name,
		// The secret is read from stdin inside the container, never from argv.
		Command: []string{"sh", "-c", `pw=$(cat -); echo "len=${#pw}"`},
		Stdin:   strings.NewReader("s3cr3t-value"),
		Stdout:  &out,
	})
	require.NoError(t, err)
	assert.Equal(t, "len=12\n", out.String())

	// A large stream passes through intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	out.Reset()
	require.NoError(t, c.Exec(ctx, podman.ExecOptions{Container: name, Command: []string{"cat"}, Stdin: bytes.NewReader(big), Stdout: &out}))
	assert.Equal(t, len(big), out.Len())

	err = c.Exec(ctx, podman.ExecOptions{Container: name, Command: []string{"sh", "-c", "exit 3"}})
	var ee *runner.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 3, ee.ExitCode)

	err = c.Exec(ctx, podman.ExecOptions{Container: name + "-missing", Command: []string{"true"}})
	assert.ErrorIs(t, err, podman.ErrNotFound)
}

func TestReadSecretOnRealPodman(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	c := tb.Client()
	name := testbed.PodmanName("fdr-secret")
	require.NoError(t, tb.CreateSecret(ctx, name, "pa'ss w\"ord$1\n"))
	got, err := c.ReadSecret(ctx, name)
	require.NoError(t, err)
	assert.Equal(t, `pa'ss w"ord$1`, got, "trimmed as upstream does")

	_, err = c.ReadSecret(ctx, name+"-missing")
	assert.ErrorIs(t, err, podman.ErrNotFound)
}

// TestReadSecretWithShowsecret checks the podman ≥ 4.4 path with a fake runner (podman
// here is 4.3.1, which lacks --showsecret).
func TestReadSecretWithShowsecretFake(t *testing.T) {
	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		return `[{"ID":"abc","SecretData":"from-showsecret\n"}]`, nil
	}}
	c := &podman.Client{Runner: fake}
	got, err := c.ReadSecret(context.Background(), "flightctl-postgresql-user-password")
	require.NoError(t, err)
	assert.Equal(t, "from-showsecret", got)
	require.Len(t, fake.Calls, 1)
	assert.Equal(t, []string{"secret", "inspect", "--showsecret", "flightctl-postgresql-user-password"}, fake.Calls[0].Cmd.Args)
}

func TestCreateSecretKeepsValueOutOfArgvFake(t *testing.T) {
	fake := &runner.Fake{}
	c := &podman.Client{Runner: fake}
	require.NoError(t, c.CreateSecret(context.Background(), "s", "topsecret", false))
	require.Len(t, fake.Calls, 1)
	assert.NotContains(t, strings.Join(fake.Calls[0].Cmd.Args, " "), "topsecret")
	assert.Equal(t, "topsecret", string(fake.Calls[0].Stdin))
}

func TestVolumeExportReplaceOnRealPodman(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	c := tb.Client()
	name := testbed.PodmanName("fdr-vol")
	require.NoError(t, tb.CreateVolume(ctx, name, map[string]string{"a.txt": "A", "sub/b.txt": "B"}))

	ok, err := c.VolumeExists(ctx, name)
	require.NoError(t, err)
	assert.True(t, ok)

	var buf bytes.Buffer
	require.NoError(t, c.VolumeExport(ctx, name, &buf))
	assert.Equal(t, map[string]string{"a.txt": "A", "sub/b.txt": "B"}, tarFiles(t, buf.Bytes()))

	// Replace: the old files disappear (podman's plain import would keep them).
	var repl bytes.Buffer
	tw := tar.NewWriter(&repl)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "c.txt", Mode: 0o600, Size: 1, Typeflag: tar.TypeReg}))
	_, _ = tw.Write([]byte("C"))
	require.NoError(t, tw.Close())
	require.NoError(t, c.VolumeReplace(ctx, name, bytes.NewReader(repl.Bytes())))
	buf.Reset()
	require.NoError(t, c.VolumeExport(ctx, name, &buf))
	assert.Equal(t, map[string]string{"c.txt": "C"}, tarFiles(t, buf.Bytes()))

	err = c.VolumeExport(ctx, name+"-missing", io.Discard)
	assert.ErrorIs(t, err, podman.ErrNotFound)
	ok, err = c.VolumeExists(ctx, name+"-missing")
	require.NoError(t, err)
	assert.False(t, ok)
}

func TestContainerImageTagOnRealPodman(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	c := tb.Client()
	image := "localhost/" + testbed.PodmanName("flightctl-api") + ":0.9.2"
	_, err := tb.Podman(ctx, "tag", testbed.PodmanBusyboxImage, image)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = tb.Podman(context.Background(), "rmi", image) })
	name := testbed.PodmanName("flightctl-api")
	require.NoError(t, tb.RunContainer(ctx, testbed.PodmanContainerOptions{Name: name, Image: image, Command: []string{"sleep", "3600"}}))

	info, err := c.InspectContainer(ctx, name)
	require.NoError(t, err)
	assert.Equal(t, image, info.Image)
	assert.True(t, info.Running)
	assert.Equal(t, "running", info.State)

	tag, err := c.ContainerImageTag(ctx, name)
	require.NoError(t, err)
	assert.Equal(t, "0.9.2", tag)

	_, err = c.InspectContainer(ctx, name+"-missing")
	assert.True(t, errors.Is(err, podman.ErrNotFound), "%v", err)
	ok, err := c.ContainerExists(ctx, name)
	require.NoError(t, err)
	assert.True(t, ok)
}

func tarFiles(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		require.NoError(t, err)
		name := strings.TrimPrefix(h.Name, "./")
		names = append(names, name)
		out[name] = string(data)
	}
	sort.Strings(names)
	return out
}

// Port reads `podman port` as upstream does, and ContainerIP the address an unpublished
// container has on its network, on real containers.
func TestPortAndContainerIPOnRealPodman(t *testing.T) {
	tb := testbed.PodmanForTest(t)
	ctx := context.Background()
	c := tb.Client()
	loopback, err := testbed.FreePort()
	require.NoError(t, err)
	wildcard, err := testbed.FreePort()
	require.NoError(t, err)
	published := testbed.PodmanName("fdr-port")
	require.NoError(t, tb.RunContainer(ctx, testbed.PodmanContainerOptions{Name: published, Command: []string{"sleep", "3600"},
		Publish: []string{fmt.Sprintf("127.0.0.1:%d:5432", loopback), fmt.Sprintf("%d:6379", wildcard)}}))
	host, port, err := c.Port(ctx, published, "5432/tcp")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)
	assert.Equal(t, loopback, port)
	host, port, err = c.Port(ctx, published, "6379/tcp")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host, "a port published on every address is reached on loopback")
	assert.Equal(t, wildcard, port)
	_, _, err = c.Port(ctx, published, "8080/tcp")
	assert.ErrorIs(t, err, podman.ErrNotPublished)

	unpublished := testbed.PodmanName("fdr-noport")
	require.NoError(t, tb.RunContainer(ctx, testbed.PodmanContainerOptions{Name: unpublished, Command: []string{"sleep", "3600"}}))
	_, _, err = c.Port(ctx, unpublished, "5432/tcp")
	assert.ErrorIs(t, err, podman.ErrNotPublished)
	ip, err := c.ContainerIP(ctx, unpublished)
	require.NoError(t, err)
	require.NotNil(t, net.ParseIP(ip), "container IP %q", ip)

	_, _, err = c.Port(ctx, unpublished+"-missing", "5432/tcp")
	assert.ErrorIs(t, err, podman.ErrNotFound)
	_, err = c.ContainerIP(ctx, unpublished+"-missing")
	assert.ErrorIs(t, err, podman.ErrNotFound)
}

// The forms of `podman port` output across releases (runner.Fake: podman's output only).
func TestPortParsesOutputFake(t *testing.T) {
	for out, want := range map[string]string{
		"127.0.0.1:40001\n":           "127.0.0.1:40001",
		"0.0.0.0:40002\n[::]:40002\n": "127.0.0.1:40002",
		"[::]:40003\n":                "127.0.0.1:40003",
		":40004\n":                    "127.0.0.1:40004",
		"192.168.1.5:40005\n":         "192.168.1.5:40005",
		"[fd00::1]:40006\n":           "fd00::1:40006",
		"":                            "not published",
		"garbage\n":                   "unexpected output",
		"127.0.0.1:99999\n":           "unexpected output",
	} {
		fake := &runner.Fake{Handle: func(cmd runner.Cmd, _ []byte) (string, error) {
			assert.Equal(t, []string{"port", "flightctl-db", "5432/tcp"}, cmd.Args)
			return out, nil
		}}
		host, port, err := (&podman.Client{Runner: fake}).Port(context.Background(), "flightctl-db", "5432/tcp")
		if err != nil {
			assert.Contains(t, err.Error(), want, "output %q", out)
			continue
		}
		assert.Equal(t, want, fmt.Sprintf("%s:%d", host, port), "output %q", out)
	}
}
