// Package ansiblemod implements the Ansible binary-module contract once, for every module
// of the collection (SPEC §6): read the arguments file, decode the module's options strictly
// with Ansible's lenient coercion, hand check and diff mode to the module, mask secrets in
// everything returned or logged, and print exactly one JSON object on stdout, even on a
// panic. Logs go to stderr. SIGINT, SIGTERM and SIGHUP cancel the module's context so that
// it can clean up.
package ansiblemod

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

// NoLogValue replaces a secret in invocation.module_args, as Ansible does.
const NoLogValue = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"

// maskedText replaces a secret found inside msg, warnings or logs.
const maskedText = "********"

// Env is what Ansible (or the CLI) hands a module besides its options.
type Env struct {
	CheckMode  bool
	Diff       bool
	NoLog      bool
	Verbosity  int
	Version    string // ansible-core version, "" in CLI mode
	ModuleName string
	TmpDir     string
	RemoteTmp  string
	// Log writes to stderr with secrets masked; more detail with higher verbosity.
	Log *slog.Logger

	warnings []string
}

// Warn adds a warning to the result.
func (e *Env) Warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	e.warnings = append(e.warnings, msg)
	if e.Log != nil {
		e.Log.Warn(msg)
	}
}

// Warnings returns the warnings added so far.
func (e *Env) Warnings() []string { return append([]string(nil), e.warnings...) }

// Diff is the before/after shown with --diff.
type Diff struct {
	Before any `json:"before"`
	After  any `json:"after"`
}

// Result is what a module returns. Values holds the module's own return values.
type Result struct {
	Changed bool
	Skipped bool
	Msg     string
	Diff    *Diff
	Values  map[string]any
}

// Module is one module: its name and the function that does the work. T is its options
// struct (see OptionSpec). If *T has a Validate() error method it runs after decoding.
type Module[T any] struct {
	Name string
	Run  func(ctx context.Context, env *Env, opts *T) (*Result, error)
}

// internal keys of the arguments file; unknown _ansible_* keys are ignored because new
// Ansible releases add them.
type ansibleKeys struct {
	CheckMode bool   `json:"_ansible_check_mode"`
	Diff      bool   `json:"_ansible_diff"`
	NoLog     bool   `json:"_ansible_no_log"`
	Verbosity int    `json:"_ansible_verbosity"`
	Version   string `json:"_ansible_version"`
	Module    string `json:"_ansible_module_name"`
	TmpDir    string `json:"_ansible_tmpdir"`
	RemoteTmp string `json:"_ansible_remote_tmp"`
}

// ParseArgs splits an arguments file into the module's own options and the Env. It accepts
// the flat object Ansible writes and the {"ANSIBLE_MODULE_ARGS": {...}} form. Anything
// else (an empty file, a UTF-8 byte order mark, a JSON array, number or string, text that
// is not JSON) is a ParamError saying what the file holds.
func ParseArgs(data []byte) (map[string]json.RawMessage, *Env, error) {
	if err := checkArgsText(data); err != nil {
		return nil, nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, nil, &ParamError{Msg: fmt.Sprintf("the arguments file is not a JSON object: %v", err)}
	}
	if inner, ok := raw["ANSIBLE_MODULE_ARGS"]; ok {
		// The wrapped form; _ansible_* keys beside the wrapper (as the collection's action
		// plugins add _ansible_module_name) still count, and those inside win.
		var params map[string]json.RawMessage
		if err := json.Unmarshal(inner, &params); err != nil || params == nil {
			return nil, nil, &ParamError{Msg: fmt.Sprintf("ANSIBLE_MODULE_ARGS is %s, not a JSON object of the module's parameters", describeJSON(inner))}
		}
		delete(raw, "ANSIBLE_MODULE_ARGS")
		for k := range raw {
			if !strings.HasPrefix(k, "_ansible_") {
				return nil, nil, &ParamError{Msg: fmt.Sprintf("the arguments file has %s beside ANSIBLE_MODULE_ARGS: put every parameter inside it, or write them all without it", k)}
			}
		}
		for k, v := range params {
			raw[k] = v
		}
	}
	env := &Env{}
	own := map[string]json.RawMessage{}
	for k, v := range raw {
		if !strings.HasPrefix(k, "_ansible_") {
			own[k] = v
			continue
		}
		if err := applyAnsibleKey(env, k, v); err != nil {
			return nil, nil, err
		}
	}
	return own, env, nil
}

// checkArgsText explains an arguments file that cannot be a JSON object.
func checkArgsText(data []byte) error {
	const what = "the arguments file "
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(data) == 0:
		return &ParamError{Msg: what + "is empty: it must hold one JSON object of the module's parameters, as Ansible writes it"}
	case bytes.HasPrefix(data, []byte("\xef\xbb\xbf")):
		return &ParamError{Msg: what + "starts with a UTF-8 byte order mark: write the JSON object without it (Ansible never writes one)"}
	case len(trimmed) == 0:
		return &ParamError{Msg: what + "holds only white space: it must hold one JSON object of the module's parameters"}
	case trimmed[0] != '{':
		return &ParamError{Msg: fmt.Sprintf(what+"holds %s, not a JSON object of the module's parameters", describeJSON(trimmed))}
	}
	return nil
}

// describeJSON says what a piece of text holds, without repeating it at length.
func describeJSON(b []byte) string {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		start := string(b)
		if len(start) > 40 {
			start = start[:40]
		}
		return fmt.Sprintf("text that is not JSON (it starts with %q)", start)
	}
	return jsonType(v)
}

// strictBools are the _ansible_* keys that decide what the module may do: a value that is
// not a boolean fails the task rather than being read as false (a real run where check
// mode was meant).
var strictBools = map[string]bool{"_ansible_check_mode": true, "_ansible_diff": true, "_ansible_no_log": true}

// applyAnsibleKey decodes the _ansible_* keys: null means unset; the mode switches must be
// booleans (with Ansible's lenient spellings); another key's value of an unexpected type is
// ignored rather than failing the task.
func applyAnsibleKey(env *Env, k string, v json.RawMessage) error {
	var x any
	if err := json.Unmarshal(v, &x); err != nil || x == nil {
		return nil
	}
	if strictBools[k] {
		b, err := toBool(x)
		if err != nil {
			return &ParamError{Msg: fmt.Sprintf("%s: %v; refusing to guess whether to change anything", k, err)}
		}
		switch k {
		case "_ansible_check_mode":
			env.CheckMode = b
		case "_ansible_diff":
			env.Diff = b
		case "_ansible_no_log":
			env.NoLog = b
		}
		return nil
	}
	str := func() string { s, _ := toString(x); return s }
	switch k {
	case "_ansible_verbosity":
		n, _ := toInt(x)
		env.Verbosity = int(n)
	case "_ansible_version":
		env.Version = str()
	case "_ansible_module_name":
		env.ModuleName = str()
	case "_ansible_tmpdir":
		env.TmpDir = str()
	case "_ansible_remote_tmp":
		env.RemoteTmp = str()
	}
	return nil
}

// Output is the one JSON object a module prints.
type Output map[string]any

// Invoke decodes raw into a fresh T, runs the module, and returns the output object with
// every secret masked. It never panics: a panic in the module becomes failed: true.
func Invoke[T any](ctx context.Context, m Module[T], raw map[string]json.RawMessage, env *Env, logOut io.Writer) (out Output) {
	opts := new(T)
	masker := &Masker{}
	if env.ModuleName == "" {
		env.ModuleName = m.Name
	}
	env.Log = NewLogger(masker.Writer(logOut), env.Verbosity)
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(masker.Writer(logOut), "module %s panicked: %v\n%s\n", m.Name, r, debug.Stack())
			out = failure(fmt.Sprintf("internal error in module %s: %v (this is a bug; the stack trace is on stderr)", m.Name, r), env, opts)
		}
		out = masker.MaskOutput(out)
	}()
	// Secrets are collected before validation so that even an error message that quotes a
	// parameter cannot reveal one.
	masker.AddFromRaw(raw, opts)
	if err := Decode(raw, opts); err != nil {
		return failure(err.Error(), env, nil)
	}
	masker.Add(SecretValues(opts)...)
	if v, ok := any(opts).(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return failure(err.Error(), env, opts)
		}
	}
	res, err := m.Run(ctx, env, opts)
	if err != nil {
		o := failure(err.Error(), env, opts)
		if res != nil {
			mergeResult(o, res, env)
			o["failed"] = true
			o["msg"] = err.Error()
		}
		return o
	}
	if res == nil {
		res = &Result{}
	}
	o := Output{"changed": res.Changed, "warnings": nonNil(env.Warnings())}
	mergeResult(o, res, env)
	if opts != nil {
		o["invocation"] = map[string]any{"module_args": Values(opts)}
	}
	return o
}

func mergeResult(o Output, res *Result, env *Env) {
	for k, v := range res.Values {
		o[k] = v
	}
	o["changed"] = res.Changed
	if res.Msg != "" {
		o["msg"] = res.Msg
	}
	if res.Skipped {
		o["skipped"] = true
	}
	if res.Diff != nil && env.Diff {
		o["diff"] = res.Diff
	}
}

func failure(msg string, env *Env, opts any) Output {
	o := Output{"failed": true, "changed": false, "msg": msg, "warnings": nonNil(env.Warnings())}
	if opts != nil {
		o["invocation"] = map[string]any{"module_args": Values(opts)}
	}
	return o
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Main is a module's entry point when Ansible runs it: argsPath is the arguments file.
// It prints one JSON object on stdout and returns the exit code (0, or 1 when failed).
func Main[T any](m Module[T], argsPath string, stdout, stderr io.Writer) int {
	ctx, stop := SignalContext(context.Background())
	defer stop()
	var out Output
	data, err := os.ReadFile(argsPath)
	if err != nil {
		out = Output{"failed": true, "changed": false, "msg": fmt.Sprintf("read the module arguments file: %v", err)}
	} else if raw, env, perr := ParseArgs(data); perr != nil {
		out = Output{"failed": true, "changed": false, "msg": perr.Error()}
	} else {
		out = Invoke(ctx, m, raw, env, stderr)
	}
	return Print(out, stdout)
}

// SignalContext returns a context cancelled by SIGINT, SIGTERM or SIGHUP. SIGHUP is what a
// dropped SSH session sends: like the others it makes the module clean up (a restore
// rolls back or starts its units again) instead of dying half-way. SIGPIPE is ignored for
// the same reason: once the session is gone, a write to its stdout or stderr fails with
// EPIPE rather than killing the process.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	signal.Ignore(syscall.SIGPIPE)
	return signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
}

// Print writes out as one JSON object and returns the exit code it implies.
func Print(out Output, stdout io.Writer) int {
	b, err := json.Marshal(out)
	if err != nil {
		b, _ = json.Marshal(Output{"failed": true, "msg": fmt.Sprintf("encode module result: %v", err)})
	}
	_, _ = stdout.Write(append(b, '\n'))
	if f, _ := out["failed"].(bool); f {
		return 1
	}
	return 0
}

// NewLogger returns a text logger on w: warnings and errors at verbosity 0, info from 1
// (-v), debug from 3 (-vvv).
func NewLogger(w io.Writer, verbosity int) *slog.Logger {
	level := slog.LevelWarn
	switch {
	case verbosity >= 3:
		level = slog.LevelDebug
	case verbosity >= 1:
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// IsParamError reports whether err is about the task's parameters.
func IsParamError(err error) bool {
	var p *ParamError
	return errors.As(err, &p)
}

// sortedKeys is used where output order must be stable.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
