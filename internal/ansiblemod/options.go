package ansiblemod

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// OptionSpec describes one module option, read from the struct tags of a module's options
// struct:
//
//	Path     string        `ansible:"path,required"`
//	Password string        `ansible:"db_password,secret" env:"DB_PASSWORD"`
//	Type     string        `ansible:"deployment_type" default:"auto" choices:"auto,podman,kubernetes"`
//	Keep     bool          `ansible:"keep_old_db" default:"false"`
//	Units    []string      `ansible:"units"`
//	Timeout  time.Duration `ansible:"timeout" default:"10m"`
//	Dir      string        `ansible:"output_dir,abspath"`
//	Port     int           `ansible:"db_port" default:"5432" min:"1" max:"65535"`
//	Units    []string      `ansible:"units" items:"unit"`
//
// Every string refuses NUL and line breaks and is bounded in length (MaxStringLen,
// MaxSecretLen); abspath refuses a relative path (Ansible runs a module in a temporary
// directory, so a relative one means nothing an operator could predict); min and max
// bound an int; list items must be non-empty strings, and items:"unit" holds each to a
// systemd unit name (name.suffix, no path).
//
// The tags are the one source of truth: decoding, the CLI flags and the check that keeps the
// sidecar documentation in step all read them.
type OptionSpec struct {
	Name     string
	Type     string // str, bool, int, list, duration (documented as str)
	Required bool
	Secret   bool
	Default  string
	HasDef   bool
	Choices  []string
	Aliases  []string
	Env      string // CLI mode: environment variable that may carry the value
	Help     string
	AbsPath  bool // a non-empty value must be an absolute path
	// Multiline values may hold line breaks (a private key, allowed_signers lines); NUL
	// never.
	Multiline bool
	Min, Max  *int64 // bounds of an int option
	Items     string // list items: "" (non-empty strings) or "unit" (systemd unit names)
	field     []int
}

// MaxStringLen bounds a string option (PATH_MAX on Linux); MaxSecretLen a secret one.
const (
	MaxStringLen = 4096
	MaxSecretLen = 65536
)

var durationType = reflect.TypeOf(time.Duration(0))

// Specs returns the option specs of the struct that dst points to.
func Specs(dst any) ([]OptionSpec, error) {
	t := reflect.TypeOf(dst)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("ansiblemod: options must be a pointer to a struct, got %T", dst)
	}
	return specsOf(t.Elem())
}

func specsOf(t reflect.Type) ([]OptionSpec, error) {
	var specs []OptionSpec
	seen := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("ansible")
		if !ok && f.Anonymous && f.Type.Kind() == reflect.Struct {
			// An embedded struct without a tag lends its options, so that modules sharing
			// a set of options declare it once.
			inner, err := specsOf(f.Type)
			if err != nil {
				return nil, err
			}
			for _, s := range inner {
				s.field = append(append([]int(nil), f.Index...), s.field...)
				for _, n := range append([]string{s.Name}, s.Aliases...) {
					if seen[n] {
						return nil, fmt.Errorf("ansiblemod: option %q declared twice", n)
					}
					seen[n] = true
				}
				specs = append(specs, s)
			}
			continue
		}
		if !ok || tag == "-" {
			continue
		}
		parts := strings.Split(tag, ",")
		s := OptionSpec{Name: parts[0], field: f.Index, Env: f.Tag.Get("env"), Help: f.Tag.Get("help")}
		for _, p := range parts[1:] {
			switch p {
			case "required":
				s.Required = true
			case "secret":
				s.Secret = true
			case "abspath":
				s.AbsPath = true
			case "multiline":
				s.Multiline = true
			default:
				return nil, fmt.Errorf("ansiblemod: field %s: unknown tag flag %q", f.Name, p)
			}
		}
		if d, ok := f.Tag.Lookup("default"); ok {
			s.Default, s.HasDef = d, true
		}
		if c := f.Tag.Get("choices"); c != "" {
			s.Choices = strings.Split(c, ",")
		}
		if a := f.Tag.Get("aliases"); a != "" {
			s.Aliases = strings.Split(a, ",")
		}
		for _, b := range []struct {
			tag string
			dst **int64
		}{{"min", &s.Min}, {"max", &s.Max}} {
			if v, ok := f.Tag.Lookup(b.tag); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("ansiblemod: field %s: %s %q is not an integer", f.Name, b.tag, v)
				}
				*b.dst = &n
			}
		}
		switch s.Items = f.Tag.Get("items"); s.Items {
		case "", "unit":
		default:
			return nil, fmt.Errorf("ansiblemod: field %s: unknown items %q", f.Name, s.Items)
		}
		switch {
		case f.Type == durationType:
			s.Type = "duration"
		case f.Type.Kind() == reflect.String:
			s.Type = "str"
		case f.Type.Kind() == reflect.Bool:
			s.Type = "bool"
		case f.Type.Kind() == reflect.Int || f.Type.Kind() == reflect.Int64:
			s.Type = "int"
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
			s.Type = "list"
		default:
			return nil, fmt.Errorf("ansiblemod: field %s: unsupported type %s", f.Name, f.Type)
		}
		for _, n := range append([]string{s.Name}, s.Aliases...) {
			if seen[n] {
				return nil, fmt.Errorf("ansiblemod: option %q declared twice", n)
			}
			seen[n] = true
		}
		specs = append(specs, s)
	}
	return specs, nil
}

// ParamError is a problem with the task's parameters: the message says what to change.
type ParamError struct{ Msg string }

func (e *ParamError) Error() string { return e.Msg }

func paramErrorf(format string, args ...any) error {
	return &ParamError{Msg: fmt.Sprintf(format, args...)}
}

// Decode fills the struct dst points to from raw, the module's own parameters (the
// `_ansible_*` keys already removed). Unknown options, wrong types, missing required
// options and values outside the choices fail with a message naming the option.
// Values are coerced as Ansible's Python modules coerce them: "yes"/"no"/"on"/"1" for
// booleans, "5" for integers, "168h" or "30" (seconds) for durations, "a,b" for lists.
func Decode(raw map[string]json.RawMessage, dst any) error {
	specs, err := Specs(dst)
	if err != nil {
		return err
	}
	byName := map[string]*OptionSpec{}
	var accepted []string
	for i := range specs {
		byName[specs[i].Name] = &specs[i]
		accepted = append(accepted, specs[i].Name)
		for _, a := range specs[i].Aliases {
			byName[a] = &specs[i]
		}
	}
	sort.Strings(accepted)
	var unknown []string
	for k := range raw {
		if byName[k] == nil {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return paramErrorf("Unsupported parameters: %s. Supported parameters include: %s.",
			strings.Join(unknown, ", "), strings.Join(accepted, ", "))
	}
	v := reflect.ValueOf(dst).Elem()
	given := map[string]string{} // canonical name -> the key it was given under
	for k := range raw {
		s := byName[k]
		if prev, dup := given[s.Name]; dup {
			return paramErrorf("parameters are mutually exclusive: %s and %s name the same option", prev, k)
		}
		given[s.Name] = k
	}
	var missing []string
	for i := range specs {
		s := &specs[i]
		field := v.FieldByIndex(s.field)
		key, ok := given[s.Name]
		var value any
		if ok {
			if err := json.Unmarshal(raw[key], &value); err != nil {
				return paramErrorf("argument '%s' is not valid JSON: %v", s.Name, err)
			}
		}
		if value == nil {
			if s.Required {
				missing = append(missing, s.Name)
				continue
			}
			if !s.HasDef {
				field.Set(reflect.Zero(field.Type()))
				continue
			}
			value = s.Default
		}
		if err := setField(field, s, value); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return paramErrorf("missing required arguments: %s", strings.Join(missing, ", "))
	}
	return nil
}

func setField(field reflect.Value, s *OptionSpec, value any) error {
	switch s.Type {
	case "str":
		str, err := toString(value)
		if err != nil {
			return paramErrorf("argument '%s' is %s and we were unable to convert it to str: %v", s.Name, jsonType(value), err)
		}
		if err := checkString(s, str); err != nil {
			return err
		}
		if len(s.Choices) > 0 && !contains(s.Choices, str) {
			return paramErrorf("value of %s must be one of: %s, got: %s", s.Name, strings.Join(s.Choices, ", "), Quote(str))
		}
		if s.AbsPath && str != "" && !filepath.IsAbs(str) {
			return paramErrorf("%s must be an absolute path, got %s: the module runs in a temporary directory on the target, so a relative path has no meaning there", s.Name, Quote(str))
		}
		field.SetString(str)
	case "bool":
		b, err := toBool(value)
		if err != nil {
			return paramErrorf("argument '%s' is %s and we were unable to convert it to bool: %v", s.Name, jsonType(value), err)
		}
		field.SetBool(b)
	case "int":
		n, err := toInt(value)
		if err != nil {
			return paramErrorf("argument '%s' is %s and we were unable to convert it to int: %v", s.Name, jsonType(value), err)
		}
		if len(s.Choices) > 0 && !contains(s.Choices, strconv.FormatInt(n, 10)) {
			return paramErrorf("value of %s must be one of: %s, got: %d", s.Name, strings.Join(s.Choices, ", "), n)
		}
		if (s.Min != nil && n < *s.Min) || (s.Max != nil && n > *s.Max) {
			return paramErrorf("%s %d is out of range: %s", s.Name, n, rangeText(s))
		}
		field.SetInt(n)
	case "duration":
		d, err := toDuration(value)
		if err != nil {
			return paramErrorf("argument '%s' is %s and we were unable to convert it to a duration: %v (write it as 90s, 15m or 168h)", s.Name, jsonType(value), err)
		}
		field.SetInt(int64(d))
	case "list":
		l, err := toList(value)
		if err != nil {
			return paramErrorf("argument '%s' is %s and we were unable to convert it to list: %v", s.Name, jsonType(value), err)
		}
		for i, item := range l {
			if err := checkItem(s, i, item); err != nil {
				return err
			}
			if len(s.Choices) > 0 && !contains(s.Choices, item) {
				return paramErrorf("value of %s must be one or more of: %s, got: %s", s.Name, strings.Join(s.Choices, ", "), Quote(item))
			}
		}
		field.Set(reflect.ValueOf(l))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func toString(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	}
	return "", fmt.Errorf("%s is not a string", jsonType(v))
}

func toBool(v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case float64:
		if x == 1 {
			return true, nil
		}
		if x == 0 {
			return false, nil
		}
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "y", "yes", "on", "1", "true", "t":
			return true, nil
		case "n", "no", "off", "0", "false", "f", "":
			return false, nil
		}
	}
	return false, fmt.Errorf("%s is not a valid boolean (use true/false, yes/no, on/off or 1/0)", echo(v))
}

func toInt(v any) (int64, error) {
	switch x := v.(type) {
	case float64:
		if x != float64(int64(x)) {
			return 0, fmt.Errorf("%v is not a whole number", x)
		}
		return int64(x), nil
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s is not a whole number", Quote(x))
		}
		return n, nil
	}
	return 0, fmt.Errorf("%s is not a whole number", echo(v))
}

func toDuration(v any) (time.Duration, error) {
	switch x := v.(type) {
	case float64:
		return time.Duration(x * float64(time.Second)), nil
	case string:
		s := strings.TrimSpace(x)
		if n, err := strconv.ParseFloat(s, 64); err == nil {
			return time.Duration(n * float64(time.Second)), nil
		}
		if strings.HasSuffix(s, "d") {
			if n, err := strconv.ParseFloat(strings.TrimSuffix(s, "d"), 64); err == nil {
				return time.Duration(n * 24 * float64(time.Hour)), nil
			}
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("%s is not a duration", Quote(s))
		}
		return d, nil
	}
	return 0, fmt.Errorf("%s is not a duration", echo(v))
}

func toList(v any) ([]string, error) {
	switch x := v.(type) {
	case []any:
		out := make([]string, 0, len(x))
		for i, item := range x {
			s, ok := item.(string)
			if !ok {
				return nil, fmt.Errorf("item %d is %s: every item must be a string", i+1, jsonType(item))
			}
			out = append(out, s)
		}
		return out, nil
	case string:
		if strings.TrimSpace(x) == "" {
			return []string{}, nil
		}
		var out []string
		for _, p := range strings.Split(x, ",") {
			out = append(out, strings.TrimSpace(p))
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s is not a list", echo(v))
}

// Values returns the decoded options as Ansible shows them in invocation.module_args:
// every option with its effective value, secrets replaced.
func Values(opts any) map[string]any {
	specs, err := Specs(opts)
	if err != nil {
		return nil
	}
	v := reflect.ValueOf(opts).Elem()
	out := map[string]any{}
	for _, s := range specs {
		f := v.FieldByIndex(s.field)
		switch {
		case s.Secret && !f.IsZero():
			out[s.Name] = NoLogValue
		case s.Secret:
			out[s.Name] = nil
		case s.Type == "duration":
			out[s.Name] = time.Duration(f.Int()).String()
		case s.Type == "str":
			out[s.Name] = Bound(f.String())
		case s.Type == "list":
			items := f.Interface().([]string)
			if items == nil {
				out[s.Name] = nil
				continue
			}
			shown := make([]string, len(items))
			for i, item := range items {
				shown[i] = Bound(item)
			}
			out[s.Name] = shown
		default:
			out[s.Name] = f.Interface()
		}
	}
	return out
}

// SecretValues returns the non-empty values of the secret options, for masking.
func SecretValues(opts any) []string {
	specs, err := Specs(opts)
	if err != nil {
		return nil
	}
	v := reflect.ValueOf(opts).Elem()
	var out []string
	for _, s := range specs {
		if s.Secret {
			if str := v.FieldByIndex(s.field).String(); str != "" {
				out = append(out, str)
			}
		}
	}
	return out
}

// checkString refuses what no option value may hold: NUL and line breaks (they end a value
// early or forge a line in a file, a log or a command's input) and sizes no path, name or
// password has. The message never quotes a secret.
func checkString(s *OptionSpec, str string) error {
	max := MaxStringLen
	if s.Secret {
		max = MaxSecretLen
	}
	if len(str) > max {
		return paramErrorf("%s is %d bytes long; the limit is %d", s.Name, len(str), max)
	}
	refused := "\x00\r\n"
	if s.Multiline {
		refused = "\x00"
	}
	if i := strings.IndexAny(str, refused); i >= 0 {
		what := map[byte]string{0: "a NUL byte", '\r': "a carriage return", '\n': "a newline"}[str[i]]
		if s.Secret {
			return paramErrorf("%s contains %s: give the value on one line, without the trailing newline of a file", s.Name, what)
		}
		return paramErrorf("%s contains %s at byte %d (%s): give the value on one line", s.Name, what, i, Quote(str))
	}
	return nil
}

// checkItem checks one list item (index i, from 0).
func checkItem(s *OptionSpec, i int, item string) error {
	if strings.TrimSpace(item) == "" {
		return paramErrorf("%s: item %d is empty: remove it, or give a name", s.Name, i+1)
	}
	if err := checkString(&OptionSpec{Name: fmt.Sprintf("%s item %d", s.Name, i+1), Secret: s.Secret}, item); err != nil {
		return err
	}
	if s.Items == "unit" {
		if err := CheckUnitName(item); err != nil {
			return paramErrorf("%s: item %d: %v", s.Name, i+1, err)
		}
	}
	return nil
}

// unitSuffixes are the systemd unit types.
var unitSuffixes = []string{".service", ".socket", ".target", ".timer", ".path", ".mount", ".automount", ".swap", ".slice", ".scope", ".device"}

// CheckUnitName accepts a systemd unit name (systemd's unit_name_is_valid): at most 255
// bytes of letters, digits and ":-_.\@", ending in a unit type such as .service; never a
// path.
func CheckUnitName(name string) error {
	if strings.ContainsRune(name, '/') {
		return fmt.Errorf("%s is a path, not a unit name: give the name only, such as flightctl-api.service", Quote(name))
	}
	if len(name) > 255 {
		return fmt.Errorf("a unit name is at most 255 bytes; this one is %d", len(name))
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":-_.\\@", r)) {
			return fmt.Errorf("%s is not a systemd unit name (%q is not allowed in one)", Quote(name), r)
		}
	}
	dot := strings.LastIndexByte(name, '.')
	if dot <= 0 || !contains(unitSuffixes, name[dot:]) {
		return fmt.Errorf("%s is not a systemd unit name: write it with its type, such as %s.service", Quote(name), strings.TrimSuffix(name, "."))
	}
	return nil
}

func rangeText(s *OptionSpec) string {
	return "use " + boundsText(s)
}

// boundsText says the values a bounded option accepts ("1 to 65535", "1 or more", "15 or
// less"), in the words of its out-of-range error; "" for an option without bounds. The
// sidecar documentation of a bounded option says the same words (CheckSidecar).
func boundsText(s *OptionSpec) string {
	switch {
	case s.Min != nil && s.Max != nil:
		return fmt.Sprintf("%d to %d", *s.Min, *s.Max)
	case s.Min != nil:
		return fmt.Sprintf("%d or more", *s.Min)
	case s.Max != nil:
		return fmt.Sprintf("%d or less", *s.Max)
	}
	return ""
}

// jsonType names a decoded JSON value's type as the task author wrote it.
func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "a dictionary"
	}
	return fmt.Sprintf("%T", v)
}

// MaxEcho bounds how much of one value a result or message repeats.
const MaxEcho = 256

// Bound returns s, or when it is longer than MaxEcho its start and its size, so that a
// huge value is never repeated in full in a result.
func Bound(s string) string {
	if len(s) <= MaxEcho {
		return s
	}
	cut := MaxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes in all)", s[:cut], len(s))
}

// Quote is Bound in quotes, for messages.
func Quote(s string) string { return strconv.Quote(Bound(s)) }

// echo shows a decoded JSON value in a message, bounded.
func echo(v any) string {
	if s, ok := v.(string); ok {
		return Quote(s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return jsonType(v)
	}
	return Bound(string(b))
}
