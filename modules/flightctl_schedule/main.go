// flightctl_schedule validates a backup schedule (a cron line, as the seed's
// backup_restore.schedule, or a systemd OnCalendar expression) and gives its OnCalendar
// form in UTC, its next runs and its shortest interval; it warns when the schedule fires
// faster than the last backup took. It changes nothing.
package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/schedule"
)

// Options are the module's options; the sidecar flightctl_schedule.yml documents them.
type Options struct {
	Schedule     string        `ansible:"schedule,required" help:"a cron line (0 2 * * *) or an OnCalendar expression (*-*-* 02:00:00), in UTC"`
	LastDuration time.Duration `ansible:"last_duration" default:"0s" help:"how long the last backup took (seconds, or 90s, 15m, 1h), to warn about a schedule that fires faster"`
	Iterations   int           `ansible:"iterations" default:"5" min:"1" max:"100" help:"how many next runs to list"`
}

func run(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	s, err := schedule.Parse(ctx, o.Schedule, schedule.Options{Iterations: o.Iterations})
	if err != nil {
		return nil, fmt.Errorf("schedule: %w", err)
	}
	for _, w := range s.Warnings(o.LastDuration) {
		env.Warn("%s", w)
	}
	next := make([]string, 0, len(s.Next))
	for _, t := range s.Next {
		next = append(next, t.Format(time.RFC3339))
	}
	msg := fmt.Sprintf("schedule %q runs as OnCalendar=%s", o.Schedule, s.OnCalendar)
	if s.Interval > 0 {
		msg += fmt.Sprintf(", at least %s apart", s.Interval)
	}
	return &ansiblemod.Result{Msg: msg, Values: map[string]any{
		"on_calendar": s.OnCalendar, "cron": s.Cron, "next": next, "interval": s.Interval.Seconds(),
	}}, nil
}

// App is the binary: an Ansible module, or a CLI for people.
var App = cli.App[Options]{
	Module:     ansiblemod.Module[Options]{Name: "flightctl_schedule", Run: run},
	Short:      "Validate a backup schedule (cron line or OnCalendar, UTC)",
	Long:       "Validates a backup schedule, a cron line or a systemd OnCalendar expression, in UTC, and prints its OnCalendar form, next runs and shortest interval. It changes nothing.",
	Positional: []string{"schedule"},
	Human: func(w io.Writer, out ansiblemod.Output) {
		fmt.Fprintln(w, out["msg"])
		if next, ok := out["next"].([]any); ok {
			for _, n := range next {
				fmt.Fprintf(w, "  next: %v\n", n)
			}
		}
	},
}

func main() { cli.Main(App) }
