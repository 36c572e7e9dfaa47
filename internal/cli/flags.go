package cli

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"flightctl.dr/internal/ansiblemod"
)

// flagValue reads one option back from the flag set.
type flagValue struct {
	str   *string
	i     *int64
	b     *bool
	list  *[]string
	file  *string // secrets: a file holding the value
	isSet func(fs *pflag.FlagSet) bool
}

// FlagName is the CLI flag for an option: db_password → --db-password.
func FlagName(option string) string { return strings.ReplaceAll(option, "_", "-") }

// SecretEnv is the environment variable a secret option is read from in CLI mode when its
// spec names none: db_password → FLIGHTCTL_DR_DB_PASSWORD.
func SecretEnv(option string) string { return "FLIGHTCTL_DR_" + strings.ToUpper(option) }

func registerOption(fs *pflag.FlagSet, s ansiblemod.OptionSpec) flagValue {
	name := FlagName(s.Name)
	help := s.Help
	if help == "" {
		help = s.Name
	}
	if s.HasDef && s.Type != "bool" && s.Type != "int" {
		help += fmt.Sprintf(" (default %q)", s.Default)
	}
	if len(s.Choices) > 0 {
		help += " (one of " + strings.Join(s.Choices, ", ") + ")"
	}
	if s.Required {
		help += " (required)"
	}
	var v flagValue
	switch {
	case s.Secret:
		// A secret never goes on the command line, where the process list shows it.
		env := s.Env
		if env == "" {
			env = SecretEnv(s.Name)
		}
		v.file = fs.String(name+"-file", "", help+" — read from this file, or from $"+env)
	case s.Type == "bool":
		def := false
		if s.HasDef {
			def = s.Default == "true" || s.Default == "yes"
		}
		v.b = fs.Bool(name, def, help)
	case s.Type == "list":
		v.list = fs.StringSlice(name, nil, help+" (comma-separated or repeated)")
	case s.Type == "int":
		// An int flag, so that help shows "int" and pflag refuses "abc" itself; the
		// default is shown by pflag (when not 0).
		def, _ := strconv.ParseInt(s.Default, 10, 64)
		v.i = fs.Int64(name, def, help)
	default:
		v.str = fs.String(name, "", help)
	}
	return v
}

// get returns the option's value if the flag (or, for secrets, the file or environment
// variable) was given, or nil to leave the option's default in place.
func (v flagValue) get(fs *pflag.FlagSet, s ansiblemod.OptionSpec) (any, error) {
	name := FlagName(s.Name)
	switch {
	case v.file != nil:
		if fs.Changed(name + "-file") {
			b, err := os.ReadFile(*v.file)
			if err != nil {
				return nil, fmt.Errorf("read --%s-file: %w", name, err)
			}
			return strings.TrimRight(string(b), "\r\n"), nil
		}
		env := s.Env
		if env == "" {
			env = SecretEnv(s.Name)
		}
		if val, ok := os.LookupEnv(env); ok {
			return val, nil
		}
		return nil, nil
	case !fs.Changed(name):
		return nil, nil
	case v.b != nil:
		return *v.b, nil
	case v.list != nil:
		return *v.list, nil
	case v.i != nil:
		return *v.i, nil
	default:
		return *v.str, nil
	}
}
