package ansiblemod

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type boundedOptions struct {
	Port    int    `ansible:"port" default:"5432" min:"1" max:"65535"`
	Keep    int    `ansible:"keep" default:"0" min:"-1"`
	DB      int    `ansible:"db" default:"0" max:"15"`
	Workers int    `ansible:"workers" default:"0" min:"0" max:"64"`
	Name    string `ansible:"name"`
}

// writeSidecar writes a sidecar documentation of boundedOptions with the given description
// for each option (a name missing from descs gets a neutral one) and returns its path.
func writeSidecar(t *testing.T, descs map[string]string) string {
	t.Helper()
	opt := func(name, typ, def string) string {
		desc, ok := descs[name]
		if !ok {
			desc = "The " + name + "."
		}
		s := fmt.Sprintf("    %s:\n      description:\n        - %q\n      type: %s\n", name, desc, typ)
		if def != "" {
			s += "      default: " + def + "\n"
		}
		return s
	}
	doc := "---\nDOCUMENTATION:\n  module: bounded\n  short_description: Test\n  options:\n" +
		opt("port", "int", "5432") + opt("keep", "int", "0") + opt("db", "int", "0") +
		opt("workers", "int", "0") + opt("name", "str", "") +
		"EXAMPLES: |\n  - name: Run\n    bounded: {}\nRETURN:\n  msg:\n    description: What was done.\n    type: str\n    returned: always\n"
	path := filepath.Join(t.TempDir(), "bounded.yml")
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o644))
	return path
}

func boundProblems(t *testing.T, descs map[string]string) []string {
	t.Helper()
	problems, err := CheckSidecar(writeSidecar(t, descs), "bounded", &boundedOptions{})
	require.NoError(t, err)
	return problems
}

// The sidecar check compared types, defaults and choices but not value limits: a port
// documented with no bounds, or with other bounds than the module enforces, passed.
func TestCheckSidecarRequiresBoundsInDescriptions(t *testing.T) {
	good := map[string]string{
		"port":    "Database port, 1 to 65535.",
		"keep":    "Keep the n newest (-1: all); -1 or more.",
		"db":      "Database number, 15 or less.",
		"workers": "Sessions (0: one per CPU); 0 to 64.",
	}
	require.Empty(t, boundProblems(t, good))

	for name, tc := range map[string]struct {
		option, desc, want string
	}{
		"missing":             {"port", "Database port.", `option port accepts 1 to 65535 but its description does not say "1 to 65535"`},
		"wrong upper bound":   {"port", "Database port, 1 to 65536.", `option port accepts 1 to 65535`},
		"wrong lower bound":   {"workers", "Sessions, 1 to 64.", `option workers accepts 0 to 64`},
		"inside a number":     {"workers", "Sessions, 10 to 64.", `option workers accepts 0 to 64`},
		"min only, missing":   {"keep", "Keep the n newest (-1: all).", `option keep accepts -1 or more`},
		"min only, wrong":     {"keep", "Keep the n newest, 1 or more.", `option keep accepts -1 or more`},
		"max only, other way": {"db", "Database number, 0 to 15.", `option db accepts 15 or less`},
		"markup around bound": {"port", "Database port, C(1) to C(65535).", `option port accepts 1 to 65535`},
	} {
		t.Run(name, func(t *testing.T) {
			descs := map[string]string{}
			for k, v := range good {
				descs[k] = v
			}
			descs[tc.option] = tc.desc
			problems := boundProblems(t, descs)
			require.Len(t, problems, 1, "%v", problems)
			require.Contains(t, problems[0], tc.want)
		})
	}
}

// The words the description must hold are the out-of-range error's.
func TestBoundsTextIsTheRangeErrorsWording(t *testing.T) {
	specs, err := Specs(&boundedOptions{})
	require.NoError(t, err)
	want := map[string]string{"port": "1 to 65535", "keep": "-1 or more", "db": "15 or less", "workers": "0 to 64", "name": ""}
	for _, s := range specs {
		require.Equal(t, want[s.Name], boundsText(&s), s.Name)
		if want[s.Name] != "" {
			require.Equal(t, "use "+want[s.Name], rangeText(&s))
			var out int64
			if s.Max != nil {
				out = *s.Max + 1
			} else {
				out = *s.Min - 1
			}
			var dst boundedOptions
			err := Decode(map[string]json.RawMessage{s.Name: json.RawMessage(strconv.FormatInt(out, 10))}, &dst)
			require.Error(t, err, s.Name)
			require.True(t, strings.HasSuffix(err.Error(), "use "+want[s.Name]), err.Error())
		}
	}
}

func TestContainsPhrase(t *testing.T) {
	for text, want := range map[string]bool{
		"use 1 to 64.":       true,
		"1 to 64":            true,
		"(1 to 64)":          true,
		"11 to 64":           false,
		"1 to 640":           false,
		"1 to 64.5":          false,
		"-1 to 64":           false,
		"a 1 to 64 b 1 to 6": true,
		"21 to 64, 1 to 64":  true,
	} {
		require.Equal(t, want, containsPhrase(text, "1 to 64"), text)
	}
}
