// Package cli makes one binary serve both Ansible and people: given an arguments file it is
// an Ansible binary module; given flags it is a command for operators and timers, with
// human output by default, progress on stderr and --json for the module's result object.
// Invoked under an upstream name (flightctl-backup, flightctl-restore) it accepts upstream's
// flags and arguments, so existing runbooks, cron lines and CronJobs keep working.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/version"
)

// App describes one binary.
type App[T any] struct {
	Module ansiblemod.Module[T]
	Short  string
	Long   string
	// Positional names the options that positional arguments fill, in order; the last may
	// be left out.
	Positional []string
	// Human prints a successful result for people; nil prints msg and the values.
	Human func(w io.Writer, out ansiblemod.Output)
	// Personalities are upstream-compatible command lines chosen by the invoked name.
	Personalities []Personality
}

// Personality is an upstream command line: the binary behaves as it when invoked under
// Name (a link or a copy).
type Personality struct {
	Name        string // e.g. "flightctl-backup"
	Use         string
	VersionLine string // printf format with one %s, e.g. "Flight Control Backup Version: %s"
	Args        cobra.PositionalArgs
	// Flags registers upstream's flags on fs and returns the function that turns the parsed
	// flags and positional arguments into the module's options.
	Flags func(fs *pflag.FlagSet) func(args []string) (map[string]any, error)
}

// Main runs the binary with the process's arguments and exits.
func Main[T any](app App[T]) {
	os.Exit(Execute(app, os.Args[0], os.Args[1:], os.Stdout, os.Stderr))
}

// Execute runs the binary and returns its exit code.
func Execute[T any](app App[T], argv0 string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && isArgsFile(args[0]) {
		return ansiblemod.Main(app.Module, args[0], stdout, stderr)
	}
	invoked := filepath.Base(argv0)
	var cmd *cobra.Command
	code := 0
	for _, p := range app.Personalities {
		if p.Name == invoked {
			cmd = personalityCommand(app, p, stdout, stderr, &code)
		}
	}
	if cmd == nil {
		var err error
		cmd, err = nativeCommand(app, stdout, stderr, &code)
		if err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", err)
			return 2
		}
	}
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(stderr, "Error: %v\n", err)
		return 1
	}
	return code
}

// isArgsFile tells an Ansible arguments file (a JSON object) from anything an operator
// would pass, such as an archive (gzip) or a directory.
func isArgsFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	buf := make([]byte, 64)
	n, _ := f.Read(buf)
	return strings.HasPrefix(strings.TrimSpace(string(buf[:n])), "{")
}

type commonFlags struct {
	check     bool
	diff      bool
	json      bool
	verbosity int
}

func (c *commonFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&c.check, "check", false, "check mode: report what would change, change nothing")
	fs.BoolVar(&c.diff, "diff", false, "show what changes, before and after")
	fs.BoolVar(&c.json, "json", false, "print the result as the module's JSON object")
	fs.CountVarP(&c.verbosity, "verbose", "v", "more detail on stderr (repeat for more)")
}

func nativeCommand[T any](app App[T], stdout, stderr io.Writer, code *int) (*cobra.Command, error) {
	specs, err := ansiblemod.Specs(new(T))
	if err != nil {
		return nil, err
	}
	var common commonFlags
	values := map[string]flagValue{}
	use := app.Module.Name + " [flags]"
	if len(app.Positional) > 0 {
		use = app.Module.Name + " [" + strings.Join(app.Positional, "] [") + "] [flags]"
	}
	cmd := &cobra.Command{
		Use:           use,
		Short:         app.Short,
		Long:          app.Long,
		Args:          cobra.MaximumNArgs(len(app.Positional)),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			raw := map[string]any{}
			for i, a := range args {
				raw[app.Positional[i]] = a
			}
			for _, s := range specs {
				v, err := values[s.Name].get(cmd.Flags(), s)
				if err != nil {
					return err
				}
				if v != nil {
					raw[s.Name] = v
				}
			}
			*code = run(cmd.Context(), app, raw, common, stdout, stderr)
			return nil
		},
	}
	for _, s := range specs {
		values[s.Name] = registerOption(cmd.Flags(), s)
	}
	common.register(cmd.Flags())
	cmd.AddCommand(versionCommand(app.Module.Name+" version %s", stdout))
	return cmd, nil
}

func personalityCommand[T any](app App[T], p Personality, stdout, stderr io.Writer, code *int) *cobra.Command {
	var common commonFlags
	cmd := &cobra.Command{
		Use:           p.Use,
		Short:         app.Short,
		Args:          p.Args,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	build := p.Flags(cmd.Flags())
	common.register(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		raw, err := build(args)
		if err != nil {
			return err
		}
		*code = run(cmd.Context(), app, raw, common, stdout, stderr)
		return nil
	}
	cmd.AddCommand(versionCommand(p.VersionLine, stdout))
	return cmd
}

func versionCommand(format string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintf(stdout, format+"\n", version.Version)
		},
	}
}

func run[T any](parent context.Context, app App[T], options map[string]any, common commonFlags, stdout, stderr io.Writer) int {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	raw := map[string]json.RawMessage{}
	for k, v := range options {
		b, err := json.Marshal(v)
		if err != nil {
			fmt.Fprintf(stderr, "Error: option %s: %v\n", k, err)
			return 2
		}
		raw[k] = b
	}
	env := &ansiblemod.Env{
		CheckMode: common.check,
		Diff:      common.diff,
		// People and timers see progress (info) by default; -v adds detail.
		Verbosity:  1 + 2*common.verbosity,
		ModuleName: app.Module.Name,
	}
	out := ansiblemod.Invoke(ctx, app.Module, raw, env, stderr)
	if common.json {
		return ansiblemod.Print(out, stdout)
	}
	if failed, _ := out["failed"].(bool); failed {
		fmt.Fprintf(stderr, "Error: %v\n", out["msg"])
		return 1
	}
	for _, w := range asStrings(out["warnings"]) {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if app.Human != nil {
		app.Human(stdout, out)
	} else {
		PrintHuman(stdout, out)
	}
	return 0
}

// PrintHuman prints msg, then the result values one per line, nested ones as JSON.
func PrintHuman(w io.Writer, out ansiblemod.Output) {
	if msg, _ := out["msg"].(string); msg != "" {
		fmt.Fprintln(w, msg)
	}
	keys := make([]string, 0, len(out))
	for k := range out {
		switch k {
		case "msg", "warnings", "invocation", "failed", "diff":
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := out[k].(type) {
		case map[string]any, []any:
			b, _ := json.MarshalIndent(v, "  ", "  ")
			fmt.Fprintf(w, "%s:\n  %s\n", k, b)
		default:
			fmt.Fprintf(w, "%s: %v\n", k, v)
		}
	}
	if d, ok := out["diff"].(map[string]any); ok {
		b, _ := json.MarshalIndent(d, "", "  ")
		fmt.Fprintf(w, "diff:\n%s\n", b)
	}
}

func asStrings(v any) []string {
	var out []string
	if list, ok := v.([]any); ok {
		for _, x := range list {
			out = append(out, fmt.Sprint(x))
		}
	}
	if list, ok := v.([]string); ok {
		out = append(out, list...)
	}
	return out
}
