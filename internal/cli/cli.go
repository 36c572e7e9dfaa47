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
	"path/filepath"
	"sort"
	"strings"

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
	Long        string
	Args        cobra.PositionalArgs
	// Words maps module options to how they are given under this name ("output_dir":
	// "--output", "path": "the archive argument"); see UpstreamWords. Options without
	// words are offered as their own flags.
	Words map[string]string
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
	app.Module = withHostChecks(app.Module)
	if moduleMode(argv0, args) {
		if len(args) != 1 {
			return ansiblemod.Print(ansiblemod.Output{"failed": true, "changed": false, "msg": badModuleInvocation(args)}, stdout)
		}
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
			*code = run(cmd.Context(), app, raw, common, stdout, stderr, nil)
			return nil
		},
	}
	for _, s := range specs {
		values[s.Name] = registerOption(cmd.Flags(), s)
	}
	common.register(cmd.Flags())
	line := app.Module.Name + " version " + version.String()
	cmd.Version = version.String()
	// cobra's default version output is the same line; a version template would link
	// text/template, whose dynamic method calls keep every method of every type alive in the
	// binary (about a third of its size).
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[cobra.CommandDisplayNameAnnotation] = app.Module.Name
	cmd.AddCommand(versionCommand(line, stdout))
	return cmd, nil
}

// versionCommand prints line, the collection release and the build it was made from.
func versionCommand(line string, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, line)
		},
	}
}

// run runs the module with options; translate, when set, rewrites what people read
// (msg, warnings) into the words of the command line used.
func run[T any](parent context.Context, app App[T], options map[string]any, common commonFlags, stdout, stderr io.Writer, translate func(string) string) int {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := ansiblemod.SignalContext(parent)
	defer stop()
	absolutePaths[T](options)
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
	// Under an upstream name the messages speak of that command line's flags, in --json too.
	if translate != nil {
		if msg, ok := out["msg"].(string); ok {
			out["msg"] = translate(msg)
		}
		if ws := asStrings(out["warnings"]); ws != nil {
			for i := range ws {
				ws[i] = translate(ws[i])
			}
			out["warnings"] = ws
		}
	}
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
	PrintDiff(w, out)
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
