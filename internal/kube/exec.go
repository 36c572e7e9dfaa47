package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
	"k8s.io/streaming/pkg/httpstream"
)

// Exec protocols.
const (
	ProtocolAuto      = "auto"      // WebSocket, falling back to SPDY (kubectl's way)
	ProtocolWebSocket = "websocket" // WebSocket only
	ProtocolSPDY      = "spdy"      // SPDY only (upstream flightctl-backup's way)
)

// ExecRequest is one command run in a container through pods/exec.
type ExecRequest struct {
	Namespace string
	Pod       string
	Container string // "" = the Pod's only (or default) container
	Command   []string
	Stdin     io.Reader // nil: no stdin stream
	Stdout    io.Writer
	Stderr    io.Writer
	Protocol  string // "" = ProtocolAuto
}

// ExitError is a command that ran in the container and exited non-zero.
type ExitError struct {
	Pod    string
	Code   int
	Reason error
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("command in pod %s exited with status %d", e.Pod, e.Code)
}

func (e *ExitError) Unwrap() error { return e.Reason }

// Exec runs r through the API server and waits for it. It returns nil only when the
// remote command exited 0 (as the server reports it); an *ExitError when it exited
// otherwise; any other error when the stream failed.
func (c *Client) Exec(ctx context.Context, r ExecRequest) error {
	if len(r.Command) == 0 {
		return errors.New("exec: no command")
	}
	opts := &corev1.PodExecOptions{
		Container: r.Container,
		Command:   r.Command,
		Stdin:     r.Stdin != nil,
		Stdout:    r.Stdout != nil,
		Stderr:    r.Stderr != nil,
	}
	req := c.rc.Post().
		Resource("pods").Namespace(r.Namespace).Name(r.Pod).SubResource("exec").
		VersionedParams(opts, parameterCodec())
	u := req.URL()

	var ex remotecommand.Executor
	var err error
	switch r.Protocol {
	case ProtocolSPDY:
		ex, err = remotecommand.NewSPDYExecutor(c.REST, http.MethodPost, u)
	case ProtocolWebSocket:
		ex, err = remotecommand.NewWebSocketExecutor(c.REST, http.MethodGet, u.String())
	case "", ProtocolAuto:
		var ws, spdy remotecommand.Executor
		if ws, err = remotecommand.NewWebSocketExecutor(c.REST, http.MethodGet, u.String()); err != nil {
			break
		}
		if spdy, err = remotecommand.NewSPDYExecutor(c.REST, http.MethodPost, u); err != nil {
			break
		}
		ex, err = remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	default:
		return fmt.Errorf("exec protocol %q is not valid: use auto, websocket or spdy", r.Protocol)
	}
	if err != nil {
		return fmt.Errorf("exec in pod %s/%s: %w", r.Namespace, r.Pod, err)
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr})
	if err == nil {
		return nil
	}
	var ee utilexec.ExitError
	if errors.As(err, &ee) && ee.Exited() {
		return &ExitError{Pod: r.Namespace + "/" + r.Pod, Code: ee.ExitStatus(), Reason: err}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("exec in pod %s/%s: %w", r.Namespace, r.Pod, ctx.Err())
	}
	return fmt.Errorf("exec in pod %s/%s: %w", r.Namespace, r.Pod, err)
}
