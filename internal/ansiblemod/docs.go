package ansiblemod

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// sidecarOption is one option as documented in plugins/modules/<module>.yml.
type sidecarOption struct {
	Type     string   `yaml:"type"`
	Required bool     `yaml:"required"`
	Default  any      `yaml:"default"`
	Choices  []any    `yaml:"choices"`
	Aliases  []string `yaml:"aliases"`
	Elements string   `yaml:"elements"`
	Desc     any      `yaml:"description"`
}

type sidecar struct {
	Documentation struct {
		Module  string                   `yaml:"module"`
		Options map[string]sidecarOption `yaml:"options"`
	} `yaml:"DOCUMENTATION"`
	Examples string         `yaml:"EXAMPLES"`
	Return   map[string]any `yaml:"RETURN"`
}

// CheckSidecar compares the sidecar documentation at path with the option specs of opts
// (a pointer to the module's options struct) and returns every difference: an option
// documented but not accepted or the reverse, a type, required flag, default, choices,
// aliases or secrecy that differs, a bounded option whose description does not state its
// bounds in the words of its out-of-range error ("1 to 65535", "1 or more", "15 or less"),
// or a missing description, EXAMPLES or RETURN.
func CheckSidecar(path, module string, opts any) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc sidecar
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	specs, err := Specs(opts)
	if err != nil {
		return nil, err
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if doc.Documentation.Module != module {
		add("DOCUMENTATION.module is %q, want %q", doc.Documentation.Module, module)
	}
	if strings.TrimSpace(doc.Examples) == "" {
		add("EXAMPLES is empty")
	}
	if len(doc.Return) == 0 {
		add("RETURN is empty")
	}
	seen := map[string]bool{}
	for _, s := range specs {
		seen[s.Name] = true
		d, ok := doc.Documentation.Options[s.Name]
		if !ok {
			add("option %s is accepted but not documented", s.Name)
			continue
		}
		wantType := s.Type
		if wantType == "duration" {
			wantType = "str"
		}
		if d.Type != wantType {
			add("option %s: documented type %q, accepted type %q", s.Name, d.Type, wantType)
		}
		if wantType == "list" && d.Elements != "str" {
			add("option %s: documented elements %q, want \"str\"", s.Name, d.Elements)
		}
		if d.Required != s.Required {
			add("option %s: documented required=%v, accepted required=%v", s.Name, d.Required, s.Required)
		}
		if d.Desc == nil {
			add("option %s has no description", s.Name)
		}
		// ansible-doc has no no_log key for options, so the description carries it.
		if marked := strings.Contains(descriptionText(d.Desc), SecretDocMarker); marked != s.Secret {
			add("option %s: secret=%v but its description %s %q", s.Name, s.Secret, map[bool]string{true: "says", false: "does not say"}[marked], SecretDocMarker)
		}
		if bounds := boundsText(&s); bounds != "" && !containsPhrase(descriptionText(d.Desc), bounds) {
			add("option %s accepts %s but its description does not say %q", s.Name, bounds, bounds)
		}
		docDefault, hasDocDefault := normalizeDefault(d.Default)
		if hasDocDefault != s.HasDef || (s.HasDef && !sameDefault(s, docDefault)) {
			add("option %s: documented default %q, accepted default %q", s.Name, docDefault, s.Default)
		}
		var docChoices []string
		for _, c := range d.Choices {
			docChoices = append(docChoices, fmt.Sprint(c))
		}
		if strings.Join(sorted(docChoices), ",") != strings.Join(sorted(s.Choices), ",") {
			add("option %s: documented choices %v, accepted choices %v", s.Name, docChoices, s.Choices)
		}
		if strings.Join(sorted(d.Aliases), ",") != strings.Join(sorted(s.Aliases), ",") {
			add("option %s: documented aliases %v, accepted aliases %v", s.Name, d.Aliases, s.Aliases)
		}
	}
	for name := range doc.Documentation.Options {
		if !seen[name] {
			add("option %s is documented but not accepted", name)
		}
	}
	sort.Strings(problems)
	return problems, nil
}

// SecretDocMarker is the sentence the description of every secret option holds, and no
// other option's.
const SecretDocMarker = "The value is never logged or returned."

func descriptionText(d any) string {
	switch x := d.(type) {
	case string:
		return x
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(d)
}

// containsPhrase reports whether text holds phrase as words of their own: "1 to 64" is in
// "use 1 to 64." but not in "11 to 64" nor in "1 to 640".
func containsPhrase(text, phrase string) bool {
	for i := 0; ; {
		j := strings.Index(text[i:], phrase)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(phrase)
		before := start == 0 || !strings.ContainsRune("0123456789-.", rune(text[start-1]))
		after := end == len(text) || !strings.ContainsRune("0123456789", rune(text[end])) &&
			!(text[end] == '.' && end+1 < len(text) && text[end+1] >= '0' && text[end+1] <= '9')
		if before && after {
			return true
		}
		i = start + 1
	}
}

func normalizeDefault(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", false
	case bool:
		return strconv.FormatBool(x), true
	case int:
		return strconv.Itoa(x), true
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = fmt.Sprint(p)
		}
		return strings.Join(parts, ","), true
	}
	return fmt.Sprint(v), true
}

func sameDefault(s OptionSpec, doc string) bool {
	if s.Type == "bool" {
		a, err1 := toBool(s.Default)
		b, err2 := toBool(doc)
		return err1 == nil && err2 == nil && a == b
	}
	return s.Default == doc
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
