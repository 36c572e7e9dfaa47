package estate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/runner"
)

// memorySink records what a backup writes, for tests that need no archive.
type memorySink struct {
	dirs  map[string]fs.FileMode
	files map[string][]byte
	modes map[string]fs.FileMode
	// failStream makes AddStream fail after reading this many bytes (0: never).
	failStream int
}

func newMemorySink() *memorySink {
	return &memorySink{dirs: map[string]fs.FileMode{}, files: map[string][]byte{}, modes: map[string]fs.FileMode{}}
}

func (m *memorySink) AddDir(name string, mode fs.FileMode, _ time.Time) error {
	m.dirs[name] = mode
	return nil
}

func (m *memorySink) AddFile(name string, mode fs.FileMode, _ time.Time, size int64, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if int64(len(b)) != size {
		return fmt.Errorf("%s: %d bytes, announced %d", name, len(b), size)
	}
	m.files[name], m.modes[name] = b, mode
	return nil
}

func (m *memorySink) AddStream(name string, mode fs.FileMode, _ time.Time, r io.Reader) (int64, error) {
	if m.failStream > 0 {
		b := make([]byte, m.failStream)
		n, _ := io.ReadFull(r, b)
		return int64(n), errors.New("no space left on device")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return int64(len(b)), err
	}
	m.files[name], m.modes[name] = b, mode
	return int64(len(b)), nil
}

func (m *memorySink) AddTree(prefix, dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		info, _ := d.Info()
		if d.IsDir() {
			m.dirs[name] = info.Mode().Perm()
			return nil
		}
		b, err := os.ReadFile(p)
		m.files[name], m.modes[name] = b, info.Mode().Perm()
		n++
		return err
	})
	return n, err
}

type hostFixture struct {
	pki, enc, config string
}

func newHostFixture(t *testing.T, configYAML string) hostFixture {
	root := t.TempDir()
	h := hostFixture{pki: filepath.Join(root, "pki"), enc: filepath.Join(root, "encryption"), config: filepath.Join(root, "service-config.yaml")}
	require.NoError(t, os.MkdirAll(filepath.Join(h.pki, "sub"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(h.pki, "ca.crt"), []byte("CA"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(h.pki, "sub", "server.key"), []byte("KEY"), 0o600))
	require.NoError(t, os.WriteFile(h.config, []byte(configYAML), 0o600))
	return h
}

const containerPassword = "pa'ss $(reboot) word"

// fakeContainerHost answers the commands of a container-access backup as a Podman host
// with a flightctl-db container would. It is a fake: no flightctl-db image exists here.
func fakeContainerHost(dump string) *runner.Fake {
	return &runner.Fake{Handle: func(c runner.Cmd, stdin []byte) (string, error) {
		args := strings.Join(c.Args, " ")
		switch {
		case c.Name == "podman" && strings.HasPrefix(args, "secret inspect --showsecret"):
			b, _ := json.Marshal([]map[string]string{{"SecretData": containerPassword + "\n"}})
			return string(b), nil
		case c.Name == "podman" && strings.HasPrefix(args, "volume exists"):
			return "", &runner.ExitError{Cmd: "podman volume exists", ExitCode: 1}
		case c.Name == "podman" && strings.Contains(args, "pg_dump --version && "):
			// The preflight in one exec: pg_dump's version, then one tagged line per query.
			out := "pg_dump (PostgreSQL) 16.4\n"
			if strings.Contains(args, tagSize) {
				out += tagSize + "8123456|16.4\n"
			}
			if strings.Contains(args, tagCounts) {
				out += tagCounts + "3|1|2\n"
			}
			return out, nil
		case c.Name == "podman" && args == "exec flightctl-db pg_dump --version":
			return "pg_dump (PostgreSQL) 16.4\n", nil
		case c.Name == "podman" && strings.Contains(args, "psql") && strings.Contains(args, "pg_database_size"):
			return "8123456|16.4\n", nil
		case c.Name == "podman" && strings.Contains(args, "psql") && strings.Contains(args, "count(*)"):
			return "3|1|2\n", nil
		case c.Name == "podman" && strings.Contains(args, "pg_dump --clean"):
			return dump, nil
		}
		return "", fmt.Errorf("fake podman host: unexpected command %s", c.String())
	}}
}

// TestContainerBackupFake checks the container access path's commands against upstream's
// exact argv, with runner.Fake standing in for podman and the flightctl-db container.
func TestContainerBackupFake(t *testing.T) {
	h := newHostFixture(t, "db:\n  name: fcdb\n")
	fake := fakeContainerHost("-- PostgreSQL database dump\nSELECT 1;\n")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile = h.pki, h.enc, h.config
	b := &PodmanBackup{Config: cfg, Runner: fake}
	ctx := context.Background()

	plan, err := b.Plan(ctx)
	require.NoError(t, err)
	require.NotNil(t, plan.Database)
	assert.Equal(t, "fcdb", plan.Database.Name, "db.name from the service config")
	assert.Equal(t, "podman secret "+SecretDBUserPassword, plan.Database.PasswordSource)
	assert.Equal(t, int64(8123456), plan.Database.Size)
	assert.Equal(t, "16.4", plan.Database.PgDumpVersion)
	assert.Equal(t, map[string]int64{"devices": 3, "fleets": 1, "enrollment_requests": 2}, plan.Database.Counts)
	assert.Contains(t, strings.Join(plan.Warnings, "\n"), "Encryption key directory not found")
	assert.Contains(t, strings.Join(plan.Warnings, "\n"), "PAM Issuer volume")

	sink := newMemorySink()
	out, err := b.WriteBackup(ctx, sink, plan)
	require.NoError(t, err)
	assert.True(t, out.DatabaseIncluded)
	assert.Equal(t, "-- PostgreSQL database dump\nSELECT 1;\n", string(sink.files[EntryDBDump]))
	assert.Equal(t, fs.FileMode(0o600), sink.modes[EntryDBDump])
	assert.Equal(t, []byte("KEY"), sink.files["pki/sub/server.key"])
	assert.Equal(t, fs.FileMode(0o600), sink.modes[EntryConfigFile])
	assert.Equal(t, "16.4", out.Extra["pg_dump_version"])
	assert.Equal(t, "3", out.Extra["count_devices"])

	var dumpCall *runner.FakeCall
	for i, c := range fake.Calls {
		// The password is never in any argv, and only goes to commands run in the container.
		for _, a := range c.Cmd.Args {
			assert.NotContains(t, a, "pa'ss", "password in argv of %s", c.Cmd.String())
		}
		for _, e := range c.Cmd.Env {
			assert.NotContains(t, e, "pa'ss")
		}
		if strings.Contains(strings.Join(c.Cmd.Args, " "), "pg_dump --clean") {
			dumpCall = &fake.Calls[i]
		}
	}
	require.NotNil(t, dumpCall)
	assert.Equal(t, "podman", dumpCall.Cmd.Name)
	assert.Equal(t, []string{"exec", "-i", "flightctl-db", "sh", "-c",
		"PGPASSWORD=$(cat -) pg_dump --clean --if-exists -h 127.0.0.1 -p 5432 -U 'flightctl_app' -d 'fcdb'"}, dumpCall.Cmd.Args,
		"upstream's exact command")
	assert.Equal(t, containerPassword, string(dumpCall.Stdin), "the password goes on stdin")
}

func TestContainerCommandQuoting(t *testing.T) {
	cl := dbClient{cfg: PodmanConfig{DBAccess: DBAccessContainer, DBContainer: "db", DBHost: "10.0.0.5", DBPort: 5433, DBUser: "o'brien"}, name: "my db"}
	assert.Equal(t, "pg_dump --clean --if-exists -h 10.0.0.5 -p 5433 -U 'o'\\''brien' -d 'my db'", cl.dumpScript())
	cl.cfg.DBHost = "host;rm -rf /"
	assert.Contains(t, cl.dumpScript(), "-h 'host;rm -rf /'")
}

func TestDirectCommandsKeepPasswordInEnv(t *testing.T) {
	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) { return "-- dump\n", nil }}
	cl := dbClient{run: fake, cfg: PodmanConfig{DBAccess: DBAccessDirect, DBHost: "127.0.0.1", DBPort: 5432, DBUser: "flightctl_app"}, name: "flightctl", password: "s3cret"}
	var out strings.Builder
	require.NoError(t, cl.dump(context.Background(), &out))
	assert.Equal(t, "-- dump\n", out.String())
	require.Len(t, fake.Calls, 1)
	c := fake.Calls[0].Cmd
	assert.Equal(t, "pg_dump", filepath.Base(c.Name))
	assert.Equal(t, []string{"--clean", "--if-exists", "--no-password", "-h", "127.0.0.1", "-p", "5432", "-U", "flightctl_app", "-d", "flightctl"}, c.Args)
	assert.Contains(t, c.Env, "PGPASSWORD=s3cret")
	assert.Nil(t, c.Stdin)
}

// TestDumpFailureAfterOutputFails: the dump's exit status, known only when its output
// ends, fails the backup even though every byte was streamed.
func TestDumpFailureAfterOutputFails(t *testing.T) {
	h := newHostFixture(t, "")
	fake := fakeContainerHost("")
	inner := fake.Handle
	fake.Handle = func(c runner.Cmd, stdin []byte) (string, error) {
		if strings.Contains(strings.Join(c.Args, " "), "pg_dump --clean") {
			return "-- partial dump\n", &runner.ExitError{Cmd: "podman exec", ExitCode: 1, Stderr: "pg_dump: error: connection lost"}
		}
		return inner(c, stdin)
	}
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.ConfigFile, cfg.PAMVolume = h.pki, h.config, ""
	b := &PodmanBackup{Config: cfg, Runner: fake}
	plan, err := b.Plan(context.Background())
	require.NoError(t, err)
	_, err = b.WriteBackup(context.Background(), newMemorySink(), plan)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection lost")
	assert.Contains(t, err.Error(), "pg_dump failed")
}

// TestSinkFailureStopsDump: when the archive cannot take more (full disk), the dump
// command is stopped and waited for.
func TestSinkFailureStopsDump(t *testing.T) {
	h := newHostFixture(t, "")
	cfg := DefaultPodmanConfig()
	cfg.PKIDir, cfg.ConfigFile, cfg.PAMVolume = h.pki, h.config, ""
	cfg.DBAccess, cfg.DBPassword = DBAccessDirect, "pw"
	run := &streamingRunner{}
	b := &PodmanBackup{Config: cfg, Runner: run}
	plan := &BackupPlan{DeploymentType: Podman, DatabaseIncluded: true, Database: &DatabasePlan{Access: DBAccessDirect, Name: "flightctl"}}
	sink := newMemorySink()
	sink.failStream = 1000
	_, err := b.WriteBackup(context.Background(), sink, plan)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "no space left on device")
	assert.True(t, run.ended, "the dump command must have ended before WriteBackup returns")
}

// streamingRunner writes an endless dump until its writer fails or it is cancelled, like
// a pg_dump of a huge database. It is a fake.
type streamingRunner struct{ ended bool }

func (s *streamingRunner) Run(ctx context.Context, c runner.Cmd) error {
	defer func() { s.ended = true }()
	line := []byte("INSERT INTO t VALUES (1);\n")
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := c.Stdout.Write(line); err != nil {
			return err
		}
	}
}

func TestPlanTreeRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ok"), []byte("x"), 0o600))
	require.NoError(t, os.Symlink("ok", filepath.Join(dir, "link")))
	_, err := planTree(ComponentPKI, dir, EntryPKIDir, true)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "symlinks not supported in backup directory: link")

	src, err := planTree(ComponentEncryption, filepath.Join(dir, "absent"), EntryEncryptDir, false)
	require.NoError(t, err, "an absent optional tree is no error")
	assert.False(t, src.Present)

	_, err = planTree(ComponentPKI, filepath.Join(dir, "ok"), EntryPKIDir, true)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is not a directory")
}

// TestPAMVolumeLargeExportStreamsFake: an export past the in-memory limit is streamed;
// one that fails early is only a warning. runner.Fake stands in for podman.
func TestPAMVolumeLargeExportStreamsFake(t *testing.T) {
	big := strings.Repeat("v", pamVolumeBufferLimit+12345)
	fake := &runner.Fake{Handle: func(c runner.Cmd, _ []byte) (string, error) {
		if strings.Join(c.Args, " ") == "volume export big" {
			return big, nil
		}
		return "", &runner.ExitError{Cmd: "podman volume export", ExitCode: 125, Stderr: "Error: no such volume broken"}
	}}
	b := &PodmanBackup{Config: PodmanConfig{PAMVolume: "big"}, Runner: fake}
	sink := newMemorySink()
	n, warn, err := b.writePAMVolume(context.Background(), sink, time.Now())
	require.NoError(t, err)
	assert.Empty(t, warn)
	assert.Equal(t, int64(len(big)), n)
	assert.Equal(t, len(big), len(sink.files[EntryPAMVolumeTar]))
	assert.Equal(t, fs.FileMode(0o700), sink.dirs[EntryVolumesDir])

	b.Config.PAMVolume = "broken"
	sink = newMemorySink()
	_, warn, err = b.writePAMVolume(context.Background(), sink, time.Now())
	require.NoError(t, err)
	assert.Contains(t, warn, "PAM Issuer volume export failed")
	assert.Empty(t, sink.files, "a failed export adds nothing")
	assert.Empty(t, sink.dirs)
}
