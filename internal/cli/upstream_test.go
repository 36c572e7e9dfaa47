package cli

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
)

// restoreLike has options named as flightctl_restore's, and fails with the engine's own
// refusals, worded with module option names.
type restoreLike struct {
	Path                 string `ansible:"path"`
	DBContainer          string `ansible:"db_container" default:"flightctl-db"`
	KVContainer          string `ansible:"kv_container" default:"flightctl-kv"`
	DeploymentType       string `ansible:"deployment_type" default:"auto"`
	ServerVersion        string `ansible:"server_version"`
	AllowVersionMismatch bool   `ansible:"allow_version_mismatch" default:"false"`
	Force                bool   `ansible:"force" default:"false"`
	Rollback             bool   `ansible:"rollback" default:"false"`
	DBPassword           string `ansible:"db_password,secret" env:"DB_PASSWORD"`
	DBPasswordSecret     string `ansible:"db_password_secret" default:"flightctl-postgresql-user-password"`
	SystemdScope         string `ansible:"systemd_scope" default:"system"`
	Refuse               string `ansible:"refuse"`
}

var refusals = map[string]string{
	"version":  `version mismatch: the archive was made by server version "a" but this server runs "b"; only same-version restore is supported: install version "a" first, or set allow_version_mismatch if you know the schemas match`,
	"unknown":  `cannot find the running server's version to compare with the archive's "a": boom; give server_version, or allow_version_mismatch to restore anyway`,
	"again":    `Nothing done: this server was already restored from this archive at 10:00 (restore 1234). Set force: true (--force on the command line) to restore it again.`,
	"detect":   `unable to detect deployment type: x; run on the Flight Control host, check systemd_scope (system or user), or set deployment_type (--deployment-type) to podman or kubernetes`,
	"journal":  `an unfinished restore (id 1) from archive a, is recorded in s: run the restore again with that archive to finish it, or with rollback to undo it, before restoring another archive`,
	"password": `database password: no such secret; set db_password, or create the podman secret flightctl-postgresql-user-password (see db_password_secret)`,
}

var restoreApp = App[restoreLike]{
	Module: ansiblemod.Module[restoreLike]{Name: "demo_restore", Run: func(ctx context.Context, env *ansiblemod.Env, o *restoreLike) (*ansiblemod.Result, error) {
		if o.Refuse != "" && !o.Force && !o.AllowVersionMismatch {
			env.Log.Warn(refusals[o.Refuse])
			return nil, &refusal{refusals[o.Refuse]}
		}
		return &ansiblemod.Result{Changed: true, Msg: "restored " + o.Path, Values: map[string]any{
			"force": o.Force, "allow": o.AllowVersionMismatch, "server_version": o.ServerVersion, "pw": len(o.DBPassword),
		}}, nil
	}},
	Positional: []string{"path"},
	Personalities: []Personality{{
		Name: "demo-restore", Use: "demo-restore [archive-path] [flags]", VersionLine: "Demo Restore Version: %s", Args: cobra.MaximumNArgs(1),
		Words: map[string]string{"path": "the archive argument"},
		Flags: func(fs *pflag.FlagSet) func([]string) (map[string]any, error) {
			shared := RegisterUpstreamFlags(fs)
			refuse := fs.String("refuse", "", "")
			return func(args []string) (map[string]any, error) {
				m := map[string]any{"kv_container": *shared.KVContainer, "refuse": *refuse}
				if len(args) == 1 {
					m["path"] = args[0]
				}
				return m, shared.Apply(m)
			}
		},
	}},
}

type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

var flagRE = regexp.MustCompile(`--[a-z0-9][a-z0-9-]*`)

// TestUpstreamRefusalsNameFlagsThatExist: every refusal under the upstream name names
// flags that this command line has, and no module option name is left in it; the flag
// it names then does what the message says.
func TestUpstreamRefusalsNameFlagsThatExist(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	cmd := personalityCommand(restoreApp, restoreApp.Personalities[0], nil, nil, new(int))
	fs.AddFlagSet(cmd.Flags())
	for name, msg := range refusals {
		var stdout, stderr bytes.Buffer
		code := Execute(restoreApp, "/usr/bin/demo-restore", []string{"a.tar.gz", "--refuse", name}, &stdout, &stderr)
		require.Equal(t, 1, code, name)
		got := stderr.String()
		require.NotEqual(t, "", got)
		for _, f := range flagRE.FindAllString(got, -1) {
			require.NotNil(t, fs.Lookup(f[2:]), "%s: the message names %s, which demo-restore does not have: %s", name, f, got)
		}
		specs, err := ansiblemod.Specs(new(restoreLike))
		require.NoError(t, err)
		left := []string{"force: true", "with rollback", "on the command line"}
		for _, s := range specs {
			if strings.Contains(s.Name, "_") {
				left = append(left, s.Name)
			}
		}
		for _, opt := range left {
			require.NotContains(t, got, opt, "%s: %s", name, got)
		}
		require.NotEqual(t, msg, got)
	}
	var stdout, stderr bytes.Buffer
	code := Execute(restoreApp, "demo-restore", []string{"a.tar.gz", "--refuse", "version"}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.Contains(t, stderr.String(), "or set --allow-version-mismatch if you know the schemas match")
	stdout.Reset()
	code = Execute(restoreApp, "demo-restore", []string{"a.tar.gz", "--refuse", "version", "--allow-version-mismatch", "--server-version", "v9", "--json"}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	require.Contains(t, stdout.String(), `"allow":true`)
	require.Contains(t, stdout.String(), `"server_version":"v9"`)
	stdout.Reset()
	code = Execute(restoreApp, "demo-restore", []string{"a.tar.gz", "--refuse", "again", "--force", "--json"}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	require.Contains(t, stdout.String(), `"force":true`)
}

func TestUpstreamWordingRewrites(t *testing.T) {
	w := newWording(map[string]string{"force": "--force", "rollback": "--rollback", "db_password": "$DB_PASSWORD (or --db-password-file)",
		"db_password_secret": "--db-password-secret", "deployment_type": "--deployment-type", "db_host": "--db-host", "db_port": "--db-port"})
	for in, want := range map[string]string{
		"Set force: true (--force on the command line) to restore it again.": "Set --force to restore it again.",
		"or set deployment_type (--deployment-type) to podman":               "or set --deployment-type to podman",
		"or with rollback to undo it":                                        "or with --rollback to undo it",
		"set db_password, or see db_password_secret":                         "set $DB_PASSWORD (or --db-password-file), or see --db-password-secret",
		"give db_host/db_port if these are wrong":                            "give --db-host/--db-port if these are wrong",
		"the force of habit; a rollback happened":                            "the force of habit; a rollback happened",
		"/var/lib/flightctl_dr/db_port_x":                                    "/var/lib/flightctl_dr/db_port_x",
	} {
		require.Equal(t, want, w.translate(in))
		require.Equal(t, want, w.translate(w.translate(in)), "translating twice changes nothing")
	}
}

func TestUpstreamPersonalityTakesSecretsFromEnvironment(t *testing.T) {
	t.Setenv("DB_PASSWORD", "from-the-runbook")
	var stdout, stderr bytes.Buffer
	code := Execute(restoreApp, "demo-restore", []string{"--json"}, &stdout, &stderr)
	require.Equal(t, 0, code, stderr.String())
	require.Contains(t, stdout.String(), `"pw":16`)
	require.NotContains(t, stdout.String(), "from-the-runbook")
}
