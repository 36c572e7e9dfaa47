package cli

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/version"
)

// UpstreamFlags are the flags upstream's flightctl-backup and flightctl-restore share
// (UPSTREAM §1.1, §1.2). The Kubernetes ones are accepted so that existing command lines
// keep working.
type UpstreamFlags struct {
	deploymentType *string
	dbContainer    *string
	dbName         *string
	config         *string
	// KVContainer is --kv-container-name; only restore uses it.
	KVContainer *string
}

// UpstreamWords are the module options the shared upstream flags stand for, and how an
// operator gives them under an upstream name. Personalities add their own.
var UpstreamWords = map[string]string{
	"deployment_type": "--deployment-type",
	"db_container":    "--db-container-name",
	"db_name":         "--db-name",
	"config_file":     "--config",
	"kv_container":    "--kv-container-name",
}

// RegisterUpstreamFlags adds the shared upstream flags to fs.
func RegisterUpstreamFlags(fs *pflag.FlagSet) *UpstreamFlags {
	u := &UpstreamFlags{}
	u.deploymentType = fs.String("deployment-type", "", "deployment type: kubernetes or podman (default: auto-detect)")
	fs.String("namespace", "flightctl", "Kubernetes namespace (Kubernetes only)")
	fs.String("internal-namespace", "", "Kubernetes internal namespace (Kubernetes only)")
	u.dbContainer = fs.String("db-container-name", "flightctl-db", "database container (podman)")
	u.dbName = fs.String("db-name", "", "database name (default: db.name from service-config.yaml)")
	u.KVContainer = fs.String("kv-container-name", "flightctl-kv", "KV container (podman)")
	// The Red Hat runbooks give --config (flightctl-backup --output DIR --config FILE);
	// upstream's binary rejects it. The runbooks win.
	u.config = fs.String("config", "", "the service configuration (default /etc/flightctl/service-config.yaml)")
	return u
}

// Apply sets the module options the shared flags stand for.
func (u *UpstreamFlags) Apply(opts map[string]any) error {
	opts["db_container"] = *u.dbContainer
	if t := *u.deploymentType; t != "" {
		if t != "kubernetes" && t != "podman" {
			return fmt.Errorf("invalid --deployment-type %q: must be \"kubernetes\" or \"podman\"", t)
		}
		opts["deployment_type"] = t
	}
	if *u.dbName != "" {
		opts["db_name"] = *u.dbName
	}
	if *u.config != "" {
		opts["config_file"] = *u.config
	}
	return nil
}

// personalityCommand is the binary under an upstream name: upstream's flags and
// arguments, then every option of the module that upstream has no flag for, as our own
// flag (--force, --allow-version-mismatch, --server-version...), so that whatever a
// message asks for can be given under that name. Messages, warnings and logs name the
// flags of this command line, never the module's option names.
func personalityCommand[T any](app App[T], p Personality, stdout, stderr io.Writer, code *int) *cobra.Command {
	var common commonFlags
	var showVersion bool
	versionLine := func() string { return fmt.Sprintf(p.VersionLine, version.Upstream()) }
	cmd := &cobra.Command{
		Use:   p.Use,
		Short: app.Short,
		Long:  p.Long,
		// --version needs none of the arguments the command otherwise wants.
		Args: func(cmd *cobra.Command, args []string) error {
			if showVersion || p.Args == nil {
				return nil
			}
			return p.Args(cmd, args)
		},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	fs := cmd.Flags()
	build := p.Flags(fs)
	// Not cobra's own --version: its output cannot be this line without a template.
	if fs.Lookup("version") == nil {
		fs.BoolVar(&showVersion, "version", false, "print the server release this build is for, and its own version")
	}
	words := map[string]string{}
	for k, v := range UpstreamWords {
		words[k] = v
	}
	for k, v := range p.Words {
		words[k] = v
	}
	specs, err := ansiblemod.Specs(new(T))
	if err != nil {
		cmd.RunE = func(*cobra.Command, []string) error { return err }
		return cmd
	}
	values := map[string]flagValue{}
	var extra []ansiblemod.OptionSpec
	for _, s := range specs {
		if _, upstream := words[s.Name]; upstream {
			continue
		}
		name := FlagName(s.Name)
		if s.Secret {
			name += "-file"
		}
		if fs.Lookup(name) != nil {
			continue
		}
		values[s.Name] = registerOption(fs, s)
		extra = append(extra, s)
		words[s.Name] = optionWords(s)
	}
	common.register(fs)
	translate := newWording(words).translate
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if showVersion {
			fmt.Fprintln(stdout, versionLine())
			return nil
		}
		raw, err := build(args)
		if err != nil {
			return err
		}
		for _, s := range extra {
			v, err := values[s.Name].get(cmd.Flags(), s)
			if err != nil {
				return err
			}
			if v != nil {
				raw[s.Name] = v
			}
		}
		*code = run(cmd.Context(), app, raw, common, stdout, &translatingWriter{w: stderr, translate: translate}, translate)
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "print the server release this build is for, and its own version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, versionLine())
		},
	})
	return cmd
}

// optionWords is how an option of the module is given under an upstream name.
func optionWords(s ansiblemod.OptionSpec) string {
	if s.Secret {
		env := s.Env
		if env == "" {
			env = SecretEnv(s.Name)
		}
		return "$" + env + " (or --" + FlagName(s.Name) + "-file)"
	}
	return "--" + FlagName(s.Name)
}

// wording rewrites a message written with module option names into the words of one
// command line.
type wording struct {
	words map[string]string
	// withFlag: "force: true (--force on the command line)", "deployment_type
	// (--deployment-type)", "allow_version_mismatch: true".
	withFlag *regexp.Regexp
	// bare: multi-word option names on their own ("give server_version").
	bare *regexp.Regexp
	// verbs: one-word options after a verb ("with rollback", "set force").
	verbs *regexp.Regexp
}

func newWording(words map[string]string) *wording {
	names := make([]string, 0, len(words))
	var multi, single []string
	for k := range words {
		names = append(names, k)
	}
	// Longest first, so that db_password_secret wins over db_password.
	sort.Slice(names, func(i, j int) bool {
		return len(names[i]) > len(names[j]) || (len(names[i]) == len(names[j]) && names[i] < names[j])
	})
	for _, n := range names {
		if strings.Contains(n, "_") {
			multi = append(multi, regexp.QuoteMeta(n))
		} else {
			single = append(single, regexp.QuoteMeta(n))
		}
	}
	all := append(append([]string{}, multi...), single...)
	w := &wording{words: words}
	w.withFlag = regexp.MustCompile(`\b(` + strings.Join(all, "|") + `)(?:: (?:true|yes))?(?: \(--[a-z0-9-]+(?: on the command line)?\))`)
	if len(multi) > 0 {
		w.bare = regexp.MustCompile(`\b(` + strings.Join(multi, "|") + `)(?:: (?:true|yes))?\b`)
	}
	if len(single) > 0 {
		w.verbs = regexp.MustCompile(`\b(with|set|give|use) (` + strings.Join(single, "|") + `)(?:: (?:true|yes))?\b`)
	}
	return w
}

func (w *wording) translate(msg string) string {
	msg = w.withFlag.ReplaceAllStringFunc(msg, func(m string) string {
		return w.words[w.withFlag.FindStringSubmatch(m)[1]]
	})
	if w.bare != nil {
		msg = w.bare.ReplaceAllStringFunc(msg, func(m string) string {
			return w.words[w.bare.FindStringSubmatch(m)[1]]
		})
	}
	if w.verbs != nil {
		msg = w.verbs.ReplaceAllStringFunc(msg, func(m string) string {
			sub := w.verbs.FindStringSubmatch(m)
			return sub[1] + " " + w.words[sub[2]]
		})
	}
	return msg
}

// translatingWriter rewrites each log record (one Write per line, as slog writes them).
type translatingWriter struct {
	w         io.Writer
	translate func(string) string
	buf       bytes.Buffer
}

func (t *translatingWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	for {
		line, err := t.buf.ReadString('\n')
		if err != nil {
			// An unfinished line waits for its end.
			t.buf.Reset()
			t.buf.WriteString(line)
			return len(p), nil
		}
		if _, err := io.WriteString(t.w, t.translate(line)); err != nil {
			return len(p), err
		}
	}
}
