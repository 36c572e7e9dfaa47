package backup

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/signature"
)

// testOptions are a backup's options as a module has them: the estate's, which
// estate.OpenBackupSource turns into the Source (the one composition the module uses),
// and the engine's. The tests run the whole chain on real components.
type testOptions struct {
	// The estate's (estate.BackupSourceOptions).
	DeploymentType string
	Podman         estate.PodmanConfig
	Kubernetes     estate.KubernetesConfig
	ServerVersion  string
	EstateName     string
	Runner         runner.Runner
	UnitActive     estate.UnitActiveFunc
	Getenv         func(string) string
	HomeDir        func() (string, error)

	// The engine's (Options).
	OutputDir        string
	CompressionLevel int
	Compression      string
	Concurrency      int
	Signer           *signature.Signer
	Encryption       *encrypt.Recipients
	Now              func() time.Time

	// Both.
	Logger *slog.Logger

	ignoreFreeSpace bool
}

func (o testOptions) split() (estate.BackupSourceOptions, Options) {
	return estate.BackupSourceOptions{
			DeploymentType: o.DeploymentType,
			Podman:         o.Podman,
			Kubernetes:     o.Kubernetes,
			ServerVersion:  o.ServerVersion,
			EstateName:     o.EstateName,
			Runner:         o.Runner,
			Logger:         o.Logger,
			UnitActive:     o.UnitActive,
			Getenv:         o.Getenv,
			HomeDir:        o.HomeDir,
		}, Options{
			OutputDir:        o.OutputDir,
			CompressionLevel: o.CompressionLevel,
			Compression:      o.Compression,
			Concurrency:      o.Concurrency,
			Signer:           o.Signer,
			Encryption:       o.Encryption,
			Now:              o.Now,
			Logger:           o.Logger,
			ignoreFreeSpace:  o.ignoreFreeSpace,
		}
}

// runBackup opens the source the options name, as the module does, and runs the backup.
func runBackup(ctx context.Context, o testOptions) (*Result, error) {
	so, eo := o.split()
	src, closeSource, err := estate.OpenBackupSource(ctx, so)
	if err != nil {
		return nil, err
	}
	defer closeSource()
	return Run(ctx, src, eo)
}

// planBackup is runBackup in check mode.
func planBackup(ctx context.Context, o testOptions) (*Preview, error) {
	so, eo := o.split()
	src, closeSource, err := estate.OpenBackupSource(ctx, so)
	if err != nil {
		return nil, err
	}
	defer closeSource()
	return Plan(ctx, src, eo)
}

// TestBackupAnnouncesItselfBeforeDetection: the source resolves the deployment type when
// the engine first asks, after the backup's opening lines (upstream's order), also when
// detection fails; nothing is written then.
func TestBackupAnnouncesItselfBeforeDetection(t *testing.T) {
	var logs bytes.Buffer
	home, out := t.TempDir(), t.TempDir()
	o := testOptions{
		DeploymentType: "auto",
		OutputDir:      out,
		Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		// No indicator: flightctl-api.service inactive, no kubeconfig.
		UnitActive: func(context.Context, string) (bool, error) { return false, nil },
		Getenv:     func(string) string { return "" },
		HomeDir:    func() (string, error) { return home, nil },
	}
	_, err := runBackup(context.Background(), o)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "deployment type: unable to detect deployment type")
	text := logs.String()
	start := strings.Index(text, "Starting Flight Control backup operation")
	dir := strings.Index(text, "Output directory: "+out)
	assert.True(t, start >= 0 && dir > start, "the backup announces itself before detection: %s", text)
	assert.NotContains(t, text, "Deployment type:")
	assert.Empty(t, dirEntries(t, out))

	_, err = planBackup(context.Background(), o)
	assert.ErrorContains(t, err, "unable to detect deployment type", "check mode detects alike")
}

// TestBackupSourceOptionsChecked: the estate's options are checked before anything runs.
func TestBackupSourceOptionsChecked(t *testing.T) {
	for _, tc := range []struct {
		o    testOptions
		want string
	}{
		{testOptions{DeploymentType: "docker", OutputDir: t.TempDir()}, `invalid deployment type "docker": must be "auto", "kubernetes" or "podman"`},
		{testOptions{DeploymentType: "podman", OutputDir: t.TempDir(), Podman: estate.PodmanConfig{SystemdScope: "session"}}, `systemd_scope "session" is not valid: use system or user`},
	} {
		_, err := runBackup(context.Background(), tc.o)
		assert.EqualError(t, err, tc.want)
	}
}
