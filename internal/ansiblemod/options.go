package ansiblemod

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
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
	field    []int
}

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
			return paramErrorf("argument '%s' is of type %T and we were unable to convert to str: %v", s.Name, value, err)
		}
		if len(s.Choices) > 0 && !contains(s.Choices, str) {
			return paramErrorf("value of %s must be one of: %s, got: %s", s.Name, strings.Join(s.Choices, ", "), str)
		}
		field.SetString(str)
	case "bool":
		b, err := toBool(value)
		if err != nil {
			return paramErrorf("argument '%s' is of type %T and we were unable to convert to bool: %v", s.Name, value, err)
		}
		field.SetBool(b)
	case "int":
		n, err := toInt(value)
		if err != nil {
			return paramErrorf("argument '%s' is of type %T and we were unable to convert to int: %v", s.Name, value, err)
		}
		if len(s.Choices) > 0 && !contains(s.Choices, strconv.FormatInt(n, 10)) {
			return paramErrorf("value of %s must be one of: %s, got: %d", s.Name, strings.Join(s.Choices, ", "), n)
		}
		field.SetInt(n)
	case "duration":
		d, err := toDuration(value)
		if err != nil {
			return paramErrorf("argument '%s' is of type %T and we were unable to convert to a duration: %v (write it as 90s, 15m or 168h)", s.Name, value, err)
		}
		field.SetInt(int64(d))
	case "list":
		l, err := toList(value)
		if err != nil {
			return paramErrorf("argument '%s' is of type %T and we were unable to convert to list: %v", s.Name, value, err)
		}
		for _, item := range l {
			if len(s.Choices) > 0 && !contains(s.Choices, item) {
				return paramErrorf("value of %s must be one or more of: %s, got: %s", s.Name, strings.Join(s.Choices, ", "), item)
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
	return "", fmt.Errorf("a %T is not a string", v)
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
	return false, fmt.Errorf("%v is not a valid boolean (use true/false, yes/no, on/off or 1/0)", v)
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
			return 0, fmt.Errorf("%q is not a whole number", x)
		}
		return n, nil
	}
	return 0, fmt.Errorf("%v is not a whole number", v)
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
		return time.ParseDuration(s)
	}
	return 0, fmt.Errorf("%v is not a duration", v)
}

func toList(v any) ([]string, error) {
	switch x := v.(type) {
	case []any:
		out := make([]string, 0, len(x))
		for _, item := range x {
			s, err := toString(item)
			if err != nil {
				return nil, err
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
	return nil, fmt.Errorf("%v is not a list", v)
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
