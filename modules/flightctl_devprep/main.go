// flightctl_devprep prepares devices after a Flight Control database restore (SPEC §5):
// every device is told to reconnect and report its real state. The database part commits
// in one transaction (a large fleet's device update in several sessions' transactions,
// committed together); the KV keys are derived from the database, written in pipelined
// batches and checked. Running it again converges.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/cli"
	"flightctl.dr/internal/devprep"
	"flightctl.dr/internal/wrap"
)

// Options are the module's options; the sidecar flightctl_devprep.yml documents them.
type Options struct {
	DBHost      string `ansible:"db_host" default:"localhost" help:"database host"`
	DBPort      int    `ansible:"db_port" default:"5432" min:"1" max:"65535" help:"database port"`
	DBName      string `ansible:"db_name" default:"flightctl" help:"database name"`
	DBUser      string `ansible:"db_user" default:"flightctl_app" help:"database user"`
	DBPassword  string `ansible:"db_password,secret" env:"DB_PASSWORD" help:"database password"`
	DBSSLMode   string `ansible:"db_sslmode" default:"prefer" choices:"disable,allow,prefer,require,verify-ca,verify-full" help:"database TLS mode"`
	KVHost      string `ansible:"kv_host" default:"localhost" help:"KV store host"`
	KVPort      int    `ansible:"kv_port" default:"6379" min:"1" max:"65535" help:"KV store port"`
	KVPassword  string `ansible:"kv_password,secret" env:"KV_PASSWORD" help:"KV store password"`
	KVDB        int    `ansible:"kv_db" default:"0" min:"0" max:"15" help:"KV store database number"`
	FlushKV     bool   `ansible:"flush_kv" default:"true" help:"clear the KV store before writing the keys, as upstream does"`
	CreateEvent bool   `ansible:"create_event" default:"true" help:"record a SystemRestored event"`
	RestoreID   string `ansible:"restore_id" help:"names the restore; a re-run never records a second event for it"`
	Connections int    `ansible:"db_connections" default:"0" min:"0" max:"64" help:"database sessions a large fleet's device update is split over (0: one per CPU, 2 to 8, within half the server's free connections; 1: one transaction)"`
}

func (o *Options) conn() devprep.ConnOptions {
	return devprep.ConnOptions{
		DBHost: o.DBHost, DBPort: o.DBPort, DBName: o.DBName, DBUser: o.DBUser, DBPassword: o.DBPassword, DBSSLMode: o.DBSSLMode,
		KVHost: o.KVHost, KVPort: o.KVPort, KVPassword: o.KVPassword, KVDB: o.KVDB,
	}
}

// Validate checks what the tags cannot.
func (o *Options) Validate() error {
	return o.conn().Validate()
}

func prepare(ctx context.Context, env *ansiblemod.Env, o *Options) (*ansiblemod.Result, error) {
	db, kv, err := o.conn().Connect(ctx)
	if err != nil {
		return nil, wrap.Prefix("device preparation", err)
	}
	defer db.Close(context.Background())
	defer kv.Close()
	opts := devprep.Options{DB: db, KV: kv, FlushKV: o.FlushKV, CreateEvent: o.CreateEvent, RestoreID: o.RestoreID, Connections: o.Connections, Logger: env.Log}

	// Check mode is the plan; diff mode also reads the state before and after.
	var plan *devprep.Result
	if env.CheckMode || env.Diff {
		if plan, err = devprep.Plan(ctx, opts); err != nil {
			return nil, err
		}
	}
	if env.CheckMode {
		return result(plan, plan.Before, plan.After, true), nil
	}
	res, runErr := devprep.Run(ctx, opts)
	if res == nil {
		return nil, runErr
	}
	var before, after *devprep.State
	if env.Diff {
		before, after = plan.Before, plan.After
		// The state afterwards, measured rather than predicted.
		if measured, err := devprep.Plan(ctx, opts); err == nil {
			after = measured.Before
		} else if runErr == nil {
			env.Warn("could not read the state after device preparation: %v", err)
		}
	}
	return result(res, before, after, false), runErr
}

func result(r *devprep.Result, before, after *devprep.State, check bool) *ansiblemod.Result {
	values := map[string]any{}
	flat := *r
	flat.Before, flat.After = nil, nil
	b, _ := json.Marshal(flat)
	_ = json.Unmarshal(b, &values)
	delete(values, "changed")

	var msg string
	switch {
	case !r.Changed && check:
		msg = fmt.Sprintf("nothing to do: %d devices already awaiting reconnect, all %d keys present", r.DevicesAlreadyAwaiting, r.KeysExpected)
	case !r.Changed:
		msg = fmt.Sprintf("nothing needed doing: %d devices already awaiting reconnect, all %d keys present", r.DevicesAlreadyAwaiting, r.KeysVerified)
	case check:
		msg = fmt.Sprintf("would prepare %d devices and %d enrollment requests and write %d awaiting-reconnect keys across %d organizations",
			r.DevicesUpdated, r.EnrollmentRequestsUpdated, r.KeysWritten, r.Organizations)
	default:
		msg = fmt.Sprintf("prepared %d devices and %d enrollment requests; wrote %d awaiting-reconnect keys across %d organizations (%d checked)",
			r.DevicesUpdated, r.EnrollmentRequestsUpdated, r.KeysWritten, r.Organizations, r.KeysVerified)
	}
	out := &ansiblemod.Result{Changed: r.Changed, Msg: msg, Values: values}
	if before != nil && after != nil {
		out.Diff = &ansiblemod.Diff{Before: before, After: after}
	}
	return out
}

// App is the binary: an Ansible module, or a CLI for people.
var App = cli.App[Options]{
	Module: ansiblemod.Module[Options]{Name: "flightctl_devprep", Run: prepare},
	Short:  "Prepare devices after a Flight Control database restore",
	Long: "Marks every device of a restored Flight Control database as awaiting reconnection (a large fleet's update split over " +
		"several database sessions that commit together, --db-connections 1 for one transaction), " +
		"and writes the KV keys the server needs to act on it, pipelined and checked. Use it after a database was " +
		"restored by other means (pg_restore, a volume snapshot). Passwords come from DB_PASSWORD and KV_PASSWORD " +
		"(or --db-password-file / --kv-password-file). Running it again converges; --check shows what it would do.",
	Human: human,
}

func human(w io.Writer, out ansiblemod.Output) {
	fmt.Fprintln(w, out["msg"])
	fmt.Fprintf(w, "devices:             updated=%v already-awaiting=%v skipped-decommissioned=%v deleted=%v\n",
		out["devices_updated"], out["devices_already_awaiting"], out["devices_skipped_decommissioned"], out["devices_deleted"])
	fmt.Fprintf(w, "enrollment requests: updated=%v already-awaiting=%v skipped-approved=%v\n",
		out["enrollment_requests_updated"], out["enrollment_requests_already_awaiting"], out["enrollment_requests_skipped_approved"])
	fmt.Fprintf(w, "keys:                expected=%v written=%v checked=%v organizations=%v\n",
		out["keys_expected"], out["keys_written"], out["keys_verified"], out["organizations"])
	fmt.Fprintf(w, "kv flushed:          %v\nevent created:       %v %v\n", out["kv_flushed"], out["event_created"], out["event_name"])
}

func main() { cli.Main(App) }
