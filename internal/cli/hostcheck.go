package cli

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/restore"
)

// restoreModule is the module that owns the restore journal: it reports (and finishes or
// rolls back) an unfinished restore itself.
const restoreModule = "flightctl_restore"

// journalDir is where the restore journal is looked for by the other modules: the
// restore's default state directory, beside the module's own state_dir when it has one.
// A variable so that tests can point it elsewhere.
var journalDir = restore.DefaultStateDir

// withHostChecks wraps a module's Run so that every module run on a host first reports
// what an earlier run left behind there: an unfinished restore (interrupted by SIGKILL or
// a power cut) whose application units are still stopped.
func withHostChecks[T any](m ansiblemod.Module[T]) ansiblemod.Module[T] {
	if m.Name == restoreModule || m.Run == nil {
		return m
	}
	run := m.Run
	m.Run = func(ctx context.Context, env *ansiblemod.Env, opts *T) (*ansiblemod.Result, error) {
		// The configured state directory (a module with a state_dir option), and the default.
		dirs := []string{journalDir}
		if d := stateDirOption(opts); d != "" && filepath.Clean(d) != filepath.Clean(journalDir) {
			dirs = append([]string{d}, dirs...)
		}
		for _, dir := range dirs {
			if w := UnfinishedRestoreWarning(dir); w != "" {
				env.Warn("%s", w)
			}
		}
		return run(ctx, env, opts)
	}
	return m
}

// stateDirOption is the value of the module's state_dir option, "" when it has none.
func stateDirOption(opts any) string {
	v := reflect.ValueOf(opts)
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return ""
	}
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous {
			if d := stateDirOption(v.Field(i).Addr().Interface()); d != "" {
				return d
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("ansible"), ",")
		if name == "state_dir" && f.Type.Kind() == reflect.String {
			return v.Field(i).String()
		}
	}
	return ""
}

// UnfinishedRestoreWarning returns the warning for an unfinished restore recorded in the
// journal under stateDir, or "" when there is none (or no journal can be read).
func UnfinishedRestoreWarning(stateDir string) string {
	j, err := restore.ReadJournal(stateDir)
	if err != nil {
		return ""
	}
	return restore.UnfinishedWarning(j, stateDir)
}
