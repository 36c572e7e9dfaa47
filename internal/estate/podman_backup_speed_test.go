package estate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
)

// podmanExecs returns the podman exec commands among calls, in order.
func podmanExecs(calls []runner.FakeCall) []string {
	var out []string
	for _, c := range calls {
		if c.Cmd.Name == "podman" && len(c.Cmd.Args) > 0 && c.Cmd.Args[0] == "exec" {
			out = append(out, strings.Join(c.Cmd.Args, " "))
		}
	}
	return out
}

// TestContainerPreflightIsOneExecFake: the checks before a container dump (pg_dump's
// version, the size, the row counts, the owner and grants) take one podman exec, not one
// each: every exec costs a podman, conmon and runtime start. runner.Fake stands in for
// podman and the flightctl-db container.
func TestContainerPreflightIsOneExecFake(t *testing.T) {
	h := newHostFixture(t, "")
	fake := fakeContainerHost("-- dump\n")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile = h.pki, h.enc, h.config
	b := &PodmanBackup{Config: cfg, Runner: fake}
	plan, err := b.Plan(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(8123456), plan.Database.Size)
	assert.Equal(t, "16.4", plan.Database.ServerVersion)
	assert.Equal(t, "16.4", plan.Database.PgDumpVersion)
	assert.Equal(t, map[string]int64{"devices": 3, "fleets": 1, "enrollment_requests": 2}, plan.Database.Counts)
	execs := podmanExecs(fake.Calls)
	require.Len(t, execs, 1, "one podman exec for every check: %q", execs)
	assert.NotContains(t, execs[0], "pg_dump --clean", "a check-mode plan dumps nothing")
	for _, c := range fake.Calls {
		for _, a := range c.Cmd.Args {
			assert.NotContains(t, a, "pa'ss", "password in argv of %s", c.Cmd.String())
		}
	}
}

// TestContainerPreflightOptionalAnswersFake: row counts and grants the user may not read
// are left out; a failing size query fails the plan with what to check.
func TestContainerPreflightOptionalAnswersFake(t *testing.T) {
	h := newHostFixture(t, "")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile, cfg.PAMVolume = h.pki, h.enc, h.config, ""
	answer := "pg_dump (PostgreSQL) 16.4\n" + tagSize + "77|16.4\n" + tagGrants + `{"owner" : "admin", "acl" : ["admin=CTc/admin"]}` + "\n"
	var fail error
	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		args := strings.Join(c.Args, " ")
		switch {
		case strings.HasPrefix(args, "secret inspect --showsecret"):
			return `[{"SecretData": "pw"}]`, nil
		case strings.Contains(args, "pg_dump --version && "):
			if fail != nil {
				return "pg_dump (PostgreSQL) 16.4\n", fail
			}
			return answer, nil
		}
		return "", errors.New("unexpected " + args)
	}}
	b := &PodmanBackup{Config: cfg, Runner: fake}
	plan, err := b.Plan(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(77), plan.Database.Size)
	assert.Nil(t, plan.Database.Counts, "counts the user may not read are left out")
	assert.Equal(t, "admin", plan.Database.Owner)
	assert.Equal(t, []string{"admin=CTc/admin"}, plan.Database.ACL)

	fail = &runner.ExitError{Cmd: "podman exec -i flightctl-db sh -c 'psql …'", ExitCode: 2, Stderr: "psql: error: FATAL:  password authentication failed"}
	b = &PodmanBackup{Config: cfg, Runner: fake}
	_, err = b.Plan(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "database: cannot connect (database flightctl as flightctl_app in container flightctl-db)")
	assert.Contains(t, err.Error(), "password authentication failed")
	assert.Contains(t, err.Error(), "check that the database runs and that db_user/db_password")
}

// gatedRunner holds the secret lookup until the dump has started (or a generous limit
// passed, which fails the test), answering everything else like fakeContainerHost.
type gatedRunner struct {
	fake        *runner.Fake
	dumpStarted chan struct{}
	once        sync.Once
	dumpStdout  any
}

func (g *gatedRunner) Run(ctx context.Context, c runner.Cmd) error {
	args := strings.Join(c.Args, " ")
	switch {
	case strings.Contains(args, "pg_dump --clean"):
		g.dumpStdout = c.Stdout
		g.once.Do(func() { close(g.dumpStarted) })
	case strings.HasPrefix(args, "secret inspect"):
		select {
		case <-g.dumpStarted:
		case <-time.After(30 * time.Second):
			return errors.New("the dump did not start before the password was looked up")
		}
	}
	return g.fake.Run(ctx, c)
}

// TestContainerDumpStartsBeforeChecksFake: with DumpEarly, the dump's podman exec starts
// before the password lookup and the preflight are done (their cost overlaps podman's
// exec set-up instead of delaying it), gets the password on stdin when it is known, and
// writes into an OS pipe that the archive reads directly.
func TestContainerDumpStartsBeforeChecksFake(t *testing.T) {
	h := newHostFixture(t, "")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile = h.pki, h.enc, h.config
	g := &gatedRunner{fake: fakeContainerHost("-- PostgreSQL database dump\nSELECT 1;\n"), dumpStarted: make(chan struct{})}
	b := &PodmanBackup{Config: cfg, Runner: g, DumpEarly: true}
	ctx := context.Background()
	plan, err := b.Plan(ctx)
	require.NoError(t, err)
	sink := newMemorySink()
	_, err = b.WriteBackup(ctx, sink, plan)
	require.NoError(t, err)
	assert.Equal(t, "-- PostgreSQL database dump\nSELECT 1;\n", string(sink.files[EntryDBDump]))
	_, isFile := g.dumpStdout.(*os.File)
	assert.True(t, isFile, "the dump's stdout is the pipe itself, not a writer a goroutine copies into")

	var dumps []runner.FakeCall
	for _, c := range g.fake.Calls {
		if strings.Contains(strings.Join(c.Cmd.Args, " "), "pg_dump --clean") {
			dumps = append(dumps, c)
		}
	}
	require.Len(t, dumps, 1, "the early dump is the one written")
	args := dumps[0].Cmd.Args
	require.Len(t, args, 6)
	assert.Equal(t, []string{"exec", "-i", "flightctl-db", "sh", "-c"}, args[:5])
	assert.Contains(t, args[5], "exec pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U 'flightctl_app' -d 'flightctl'", "upstream's pg_dump command")
	// The fake cannot give the container's process: the dump goes to stdout.
	assert.Equal(t, containerPassword+"\nstdout\n", string(dumps[0].Stdin), "the password, then where the dump goes, on stdin")
	assert.Len(t, podmanExecs(g.fake.Calls), 2, "the preflight and the dump")
}

// TestPasswordWithLineBreakRestartsDumpFake: the early container dump reads the password
// as one line of stdin; a password holding a line break makes the backup run upstream's
// command instead, with the whole password on stdin.
func TestPasswordWithLineBreakRestartsDumpFake(t *testing.T) {
	h := newHostFixture(t, "")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile, cfg.PAMVolume = h.pki, h.enc, h.config, ""
	cfg.DBPassword = "two\nlines"
	fake := fakeContainerHost("-- dump\n")
	b := &PodmanBackup{Config: cfg, Runner: fake, DumpEarly: true}
	plan, err := b.Plan(context.Background())
	require.NoError(t, err)
	sink := newMemorySink()
	_, err = b.WriteBackup(context.Background(), sink, plan)
	require.NoError(t, err)
	assert.Equal(t, "-- dump\n", string(sink.files[EntryDBDump]))
	var last runner.FakeCall
	for _, c := range fake.Calls {
		if strings.Contains(strings.Join(c.Cmd.Args, " "), "pg_dump --clean") {
			last = c
		}
	}
	assert.Equal(t, "PGPASSWORD=$(cat -) pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U 'flightctl_app' -d 'flightctl'", last.Cmd.Args[len(last.Cmd.Args)-1])
	assert.Equal(t, "two\nlines", string(last.Stdin))
}

// TestEarlyDumpStoppedFake: a dump started early is stopped by Close when the backup does
// not go on, and by Plan itself when a check fails.
func TestEarlyDumpStoppedFake(t *testing.T) {
	h := newHostFixture(t, "")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.ConfigFile, cfg.PAMVolume = h.pki, h.config, ""
	cfg.DBAccess, cfg.DBPassword = DBAccessDirect, "pw"
	run := &earlyRunner{answers: map[string]string{"pg_dump --version": "pg_dump (PostgreSQL) 16.4\n"}, started: make(chan struct{})}
	run.answers["size"] = "5|16.4\n"
	b := &PodmanBackup{Config: cfg, Runner: run, DumpEarly: true}
	_, err := b.Plan(context.Background())
	require.NoError(t, err)
	<-run.started
	require.NoError(t, b.Close())
	assert.True(t, run.dumpEnded(), "Close waits for the dump it stops")

	run = &earlyRunner{answers: map[string]string{"pg_dump --version": "pg_dump (PostgreSQL) 16.4\n"}, started: make(chan struct{}), failQuery: true}
	b = &PodmanBackup{Config: cfg, Runner: run, DumpEarly: true}
	_, err = b.Plan(context.Background())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot connect")
	<-run.started
	assert.True(t, run.dumpEnded(), "a failed plan stops its dump")
}

// earlyRunner answers the direct-access checks and runs an endless pg_dump until it is
// stopped. It is a fake.
type earlyRunner struct {
	answers   map[string]string
	failQuery bool
	started   chan struct{}
	mu        sync.Mutex
	ended     bool
}

func (e *earlyRunner) dumpEnded() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ended
}

func (e *earlyRunner) Run(ctx context.Context, c runner.Cmd) error {
	args := strings.Join(c.Args, " ")
	switch {
	case filepath.Base(c.Name) == "pg_dump" && strings.Contains(args, "--clean"):
		close(e.started)
		defer func() { e.mu.Lock(); e.ended = true; e.mu.Unlock() }()
		line := []byte("INSERT INTO t VALUES (1);\n")
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			if _, err := c.Stdout.Write(line); err != nil {
				return err
			}
		}
	case filepath.Base(c.Name) == "pg_dump":
		_, err := c.Stdout.Write([]byte(e.answers["pg_dump --version"]))
		return err
	case filepath.Base(c.Name) == "psql" && strings.Contains(args, "pg_database_size"):
		if e.failQuery {
			return &runner.ExitError{Cmd: "psql", ExitCode: 2, Stderr: "psql: error: connection refused"}
		}
		_, err := c.Stdout.Write([]byte(e.answers["size"]))
		return err
	case filepath.Base(c.Name) == "psql":
		return &runner.ExitError{Cmd: "psql", ExitCode: 1, Stderr: "permission denied"}
	}
	return errors.New("unexpected " + c.String())
}
