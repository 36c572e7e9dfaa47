// Package runner runs external commands (pg_dump, psql, podman, systemctl) behind one
// small interface, so that engines can be tested with a fake and run for real in
// integration tests.
//
// Secrets never travel in argv: a command that needs a password gets it on Stdin or in
// Env, where other users of the machine cannot read it from the process list.
package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
)

// Cmd is one external command.
type Cmd struct {
	Name string
	Args []string
	// Env is added to the runner's environment (KEY=VALUE). Secrets belong here or on Stdin.
	Env    []string
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer
	// Stderr, when nil, is captured and its tail is put in the error.
	Stderr io.Writer
}

// String shows the command as an operator would type it. It holds no secret because
// argv never does.
func (c Cmd) String() string {
	parts := append([]string{c.Name}, c.Args...)
	for i, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t\n'\"$`\\|&;<>()*?") {
			parts[i] = "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
		}
	}
	return strings.Join(parts, " ")
}

// Brief is String for error messages: a shell script handed to sh -c (the form that reads
// a password from stdin, `sh -c 'PGPASSWORD=$(cat -) pg_dump ...'`, or any long one) is
// shown as the program it runs, so that an error reads "podman exec -i flightctl-db sh -c
// 'pg_dump …': exit status 1: pg_dump: password authentication failed" rather than quoting
// the whole escaped script.
func (c Cmd) Brief() string {
	args := append([]string(nil), c.Args...)
	prog := c.Name
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "-c" {
			continue
		}
		shell := prog
		if i > 0 {
			shell = args[i-1]
		}
		if base := shell[strings.LastIndexByte(shell, '/')+1:]; base != "sh" && base != "bash" {
			continue
		}
		if p, ok := scriptProgram(args[i+1]); ok {
			args[i+1] = p + " …"
		}
		break
	}
	return Cmd{Name: c.Name, Args: args}.String()
}

// leadingAssignments matches the VAR=value words before a script's command.
var leadingAssignments = regexp.MustCompile(`^\s*(?:[A-Za-z_][A-Za-z0-9_]*=(?:\$\([^)]*\)|'[^']*'|"[^"]*"|\S*)\s+)+`)

// scriptProgram is the program a script runs, when the script is worth abbreviating.
func scriptProgram(script string) (string, bool) {
	rest := leadingAssignments.ReplaceAllString(script, "")
	if rest == script && len(script) <= 80 {
		return "", false
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", false
	}
	return fields[0], true
}

// Runner runs commands.
type Runner interface {
	Run(ctx context.Context, c Cmd) error
}

// ExitError is returned when a command ran and failed.
type ExitError struct {
	Cmd      string
	ExitCode int
	Stderr   string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s: exit status %d", e.Cmd, e.ExitCode)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

// NotFoundError is returned when the program is not installed.
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("%s not found in PATH: install it or fix PATH", e.Name)
}

// Exec runs commands on this machine.
type Exec struct {
	// BaseEnv replaces os.Environ() when set.
	BaseEnv []string
}

// maxStderr bounds how much of a failing command's stderr is kept for its error message.
const maxStderr = 4096

// Run runs c and waits. On cancellation the process gets SIGTERM, then SIGKILL.
func (r Exec) Run(ctx context.Context, c Cmd) error {
	path, err := exec.LookPath(c.Name)
	if err != nil {
		return &NotFoundError{Name: c.Name}
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = waitDelay
	base := r.BaseEnv
	if base == nil {
		base = os.Environ()
	}
	cmd.Env = append(append([]string{}, base...), c.Env...)
	cmd.Dir = c.Dir
	cmd.Stdin = c.Stdin
	cmd.Stdout = c.Stdout
	tail := &tailBuffer{max: maxStderr}
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(c.Stderr, tail)
	} else {
		cmd.Stderr = tail
	}
	err = cmd.Run()
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("%s: %w", c.Brief(), ctxErr)
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &ExitError{Cmd: c.Brief(), ExitCode: exitErr.ExitCode(), Stderr: strings.TrimSpace(tail.String())}
	}
	return fmt.Errorf("%s: %w", c.Brief(), err)
}

// Output runs c and returns its stdout.
func Output(ctx context.Context, r Runner, c Cmd) ([]byte, error) {
	var out bytes.Buffer
	c.Stdout = &out
	err := r.Run(ctx, c)
	return out.Bytes(), err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte{}, t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }
