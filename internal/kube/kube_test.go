package kube_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/testbed"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

const kubeconfigText = `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://a.example:6443"}
- name: b
  cluster: {server: "https://b.example:6443"}
users:
- name: u
  user: {token: from-kubeconfig}
contexts:
- name: ctx-a
  context: {cluster: a, user: u}
- name: ctx-b
  context: {cluster: b, user: u}
current-context: ctx-a
`

func TestConfigResolution(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "config")
	require.NoError(t, os.WriteFile(kc, []byte(kubeconfigText), 0o600))
	noHome := func() (string, error) { return t.TempDir(), nil }

	// kubeconfig and context as options.
	rc, src, err := kube.Config{Kubeconfig: kc, Context: "ctx-b", Getenv: env(nil), HomeDir: noHome}.RESTConfig()
	require.NoError(t, err)
	assert.Equal(t, "https://b.example:6443", rc.Host)
	assert.Equal(t, "from-kubeconfig", rc.BearerToken)
	assert.Contains(t, src, "context ctx-b")

	// The K8S_AUTH_* environment when the options are not given.
	rc, _, err = kube.Config{Getenv: env(map[string]string{"K8S_AUTH_KUBECONFIG": kc, "K8S_AUTH_CONTEXT": "ctx-b", "K8S_AUTH_API_KEY": "env-token", "K8S_AUTH_VERIFY_SSL": "no"}), HomeDir: noHome}.RESTConfig()
	require.NoError(t, err)
	assert.Equal(t, "https://b.example:6443", rc.Host)
	assert.Equal(t, "env-token", rc.BearerToken, "api_key overrides the kubeconfig's credentials")
	assert.True(t, rc.Insecure)

	// Options win over the environment; host and ca_cert override the kubeconfig.
	valid := true
	rc, _, err = kube.Config{Kubeconfig: kc, Host: "https://c.example", CACert: "/etc/ca.pem", ValidateCerts: &valid,
		Getenv: env(map[string]string{"K8S_AUTH_HOST": "https://ignored", "K8S_AUTH_VERIFY_SSL": "false"}), HomeDir: noHome}.RESTConfig()
	require.NoError(t, err)
	assert.Equal(t, "https://c.example", rc.Host)
	assert.Equal(t, "/etc/ca.pem", rc.CAFile)
	assert.False(t, rc.Insecure)

	// host and api_key alone, no kubeconfig at all.
	rc, src, err = kube.Config{Host: "https://d.example:6443", APIKey: "tok", Getenv: env(nil), HomeDir: noHome}.RESTConfig()
	require.NoError(t, err)
	assert.Equal(t, "https://d.example:6443", rc.Host)
	assert.Equal(t, "tok", rc.BearerToken)
	assert.Equal(t, "host https://d.example:6443", src)

	// Nothing at all: a message naming the options.
	_, _, err = kube.Config{Getenv: env(nil), HomeDir: noHome}.RESTConfig()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "give kubeconfig")

	// A bad boolean in the environment is named.
	_, _, err = kube.Config{Kubeconfig: kc, Getenv: env(map[string]string{"K8S_AUTH_VERIFY_SSL": "maybe"}), HomeDir: noHome}.RESTConfig()
	require.ErrorContains(t, err, "K8S_AUTH_VERIFY_SSL")

	// A missing context is named.
	_, _, err = kube.Config{Kubeconfig: kc, Context: "nope", Getenv: env(nil), HomeDir: noHome}.RESTConfig()
	require.ErrorContains(t, err, "nope")
}

func TestPermissionString(t *testing.T) {
	assert.Equal(t, "create pods/exec in namespace fc", kube.Permission{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "fc"}.String())
	assert.Equal(t, "get deployments.apps in namespace fc", kube.Permission{Verb: "get", Group: "apps", Resource: "deployments", Namespace: "fc"}.String())
}

// TestExecRealCluster runs commands through a real kube-apiserver to the exec node
// (virtual-kubelet; its container runtime is a test fake running the command as a local
// process), over each protocol.
func TestExecRealCluster(t *testing.T) {
	k := testbed.KubeForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, k.EnsureNamespace(ctx, "exec"))
	pod, err := k.CreateDBPod(ctx, "exec", "", map[string]string{"FROM_POD_SPEC": "yes"}, nil)
	require.NoError(t, err)

	payload := make([]byte, 3<<20)
	_, err = rand.Read(payload)
	require.NoError(t, err)
	sum := sha256.Sum256(payload)

	for _, proto := range []string{kube.ProtocolAuto, kube.ProtocolWebSocket, kube.ProtocolSPDY} {
		t.Run(proto, func(t *testing.T) {
			// stdin to stdout, byte for byte, both ways at once.
			var out bytes.Buffer
			err := k.Client.Exec(ctx, kube.ExecRequest{Namespace: "exec", Pod: pod, Command: []string{"cat"}, Stdin: bytes.NewReader(payload), Stdout: &out, Protocol: proto})
			require.NoError(t, err)
			assert.Equal(t, sum, sha256.Sum256(out.Bytes()))

			// The remote exit status arrives, with stderr.
			var stderr bytes.Buffer
			err = k.Client.Exec(ctx, kube.ExecRequest{Namespace: "exec", Pod: pod, Command: []string{"sh", "-c", "echo oops >&2; echo $FROM_POD_SPEC; exit 7"}, Stdout: &out, Stderr: &stderr, Protocol: proto})
			var ee *kube.ExitError
			require.True(t, errors.As(err, &ee), "%v", err)
			assert.Equal(t, 7, ee.Code)
			assert.Equal(t, "oops\n", stderr.String())
			assert.True(t, strings.HasSuffix(out.String(), "yes\n"), "the container's environment reaches the command")
		})
	}

	// A cancelled exec ends the remote command and its children.
	cctx, ccancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- k.Client.Exec(cctx, kube.ExecRequest{Namespace: "exec", Pod: pod, Command: []string{"sh", "-c", "echo started; sleep 300 | cat"}, Stdout: pw})
	}()
	line := make([]byte, 8)
	_, err = io.ReadFull(pr, line)
	require.NoError(t, err)
	assert.Equal(t, "started\n", string(line))
	ccancel()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	select {
	case err := <-done:
		require.Error(t, err)
	case <-ctx.Done():
		t.Fatal("a cancelled exec did not return")
	}
	pw.Close()
}

func TestCheckAccessRealCluster(t *testing.T) {
	k := testbed.KubeForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	perms := []kube.Permission{
		{Verb: "get", Resource: "secrets", Namespace: "fc"},
		{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "fc"},
	}
	missing, err := k.Client.CheckAccess(ctx, perms)
	require.NoError(t, err)
	assert.Empty(t, missing, "the administrator may do everything")

	cfg, _, err := k.TokenKubeconfig(ctx, "fc", "nobody")
	require.NoError(t, err)
	c, err := kube.New(kube.Config{Kubeconfig: cfg})
	require.NoError(t, err)
	missing, err = c.CheckAccess(ctx, perms)
	require.NoError(t, err)
	assert.Equal(t, perms, missing)
	assert.Equal(t, "system:serviceaccount:fc:nobody", c.WhoAmI(ctx))
}
