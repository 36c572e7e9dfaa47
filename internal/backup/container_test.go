package backup

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/testbed"
)

// TestBackupContainerRealPodman takes upstream's path for real: pg_dump runs inside a
// podman container running PostgreSQL, the password comes from a podman secret and goes
// on stdin, the server version from the image tag of an API container, and the PAM
// issuer volume is exported with podman.
func TestBackupContainerRealPodman(t *testing.T) {
	pm := testbed.PodmanForTest(t)
	db := testbed.PodmanPostgresForTest(t, pm, testbed.PodmanName("flightctl-db"))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, db.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: appPassword}))
	seedRows(t, db.Postgres, "flightctl", 12, 3, 5)

	secret := testbed.PodmanName("flightctl-postgresql-user-password")
	require.NoError(t, pm.CreateSecret(ctx, secret, appPassword))
	volume := testbed.PodmanName("flightctl-pam-issuer-etc")
	require.NoError(t, pm.CreateVolume(ctx, volume, map[string]string{"pam.d/flightctl": "auth required pam_unix.so\n", "group": "flightctl-admin:x:1001:operator\n"}))
	api := testbed.PodmanName("flightctl-api")
	image := "quay.io/flightctl/flightctl-api:0.10.3-test"
	_, err := pm.Podman(ctx, "tag", testbed.PodmanBusyboxImage, image)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = pm.Podman(context.Background(), "rmi", "--ignore", image) })
	require.NoError(t, pm.RunContainer(ctx, testbed.PodmanContainerOptions{Name: api, CreateOnly: true, Image: image, Command: []string{"sleep", "60"}}))

	root := t.TempDir()
	pki := filepath.Join(root, "pki")
	writePKI(t, pki)
	config := filepath.Join(root, "service-config.yaml")
	require.NoError(t, os.WriteFile(config, []byte("db:\n  name: flightctl\n"), 0o600))
	out := filepath.Join(root, "out")

	cfg := estate.DefaultPodmanConfig()
	cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile = pki, filepath.Join(root, "no-encryption"), config
	cfg.DBContainer, cfg.DBPasswordSecret, cfg.PAMVolume, cfg.APIContainer = db.Container, secret, volume, api
	opts := testOptions{
		DeploymentType: "podman",
		Podman:         cfg,
		OutputDir:      out,
		Runner:         runner.Exec{BaseEnv: append(os.Environ(), pm.Env...)},
	}

	// Check mode sees everything for real and writes nothing.
	p, err := planBackup(ctx, opts)
	require.NoError(t, err)
	assert.NoDirExists(t, out)
	assert.Equal(t, "0.10.3-test", p.ServerVersion)
	assert.Equal(t, "podman secret "+secret, p.Estate.Database.PasswordSource)
	assert.Equal(t, map[string]int64{"devices": 12, "fleets": 3, "enrollment_requests": 5}, p.Estate.Database.Counts)
	assert.True(t, p.Components.Volumes)

	res, err := runBackup(ctx, opts)
	require.NoError(t, err)
	assert.Equal(t, "0.10.3-test", res.Metadata.Version)
	assert.Equal(t, archive.Components{Database: true, PKI: true, Encryption: false, Config: true, Volumes: true}, res.Components)
	rep, err := archive.Verify(ctx, res.Archive, archive.VerifyOptions{RequireChecksum: true, ExpectedVersion: "0.10.3-test", ExpectedDeploymentType: "podman"})
	require.NoError(t, err)
	assert.True(t, rep.Components.Volumes)

	entries := listArchive(t, res.Archive)
	assert.Equal(t, "drwx------", entries["volumes"].mode)
	assert.Equal(t, "-rw-------", entries["volumes/pam-issuer-etc.tar"].mode)
	volTar := extractEntry(t, res.Archive, "volumes/pam-issuer-etc.tar")
	list := exec.Command("tar", "-tf", "-")
	list.Stdin = bytes.NewReader(volTar)
	names, err := list.Output()
	require.NoError(t, err, "the volume export is a tar")
	assert.Contains(t, string(names), "pam.d/flightctl")

	// The dump taken in the container restores with the same rows.
	dump := extractEntry(t, res.Archive, "db/dump.sql")
	conn, err := db.SuperuserConn(ctx, "postgres")
	require.NoError(t, err)
	_, err = conn.Exec(ctx, "CREATE DATABASE restored OWNER admin")
	require.NoError(t, err)
	conn.Close(ctx)
	require.NoError(t, db.Psql(ctx, "restored", bytes.NewReader(dump)))
	assert.Equal(t, tableCounts(t, db.Postgres, "flightctl"), tableCounts(t, db.Postgres, "restored"))
	assert.Equal(t, sampleRows(t, db.Postgres, "flightctl"), sampleRows(t, db.Postgres, "restored"))

	// A wrong secret value fails before anything is written.
	bad := testbed.PodmanName("flightctl-postgresql-user-password")
	require.NoError(t, pm.CreateSecret(ctx, bad, "wrong-password"))
	opts.Podman.DBPasswordSecret = bad
	before := dirEntries(t, out)
	_, err = runBackup(ctx, opts)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "password authentication failed")
	assert.Contains(t, err.Error(), "in container "+db.Container)
	assert.Equal(t, before, dirEntries(t, out))

	// A missing PAM volume is a warning, as upstream.
	opts.Podman.DBPasswordSecret = secret
	opts.Podman.PAMVolume = testbed.PodmanName("no-such-volume")
	res, err = runBackup(ctx, opts)
	require.NoError(t, err)
	assert.False(t, res.Components.Volumes)
	assert.True(t, strings.Contains(strings.Join(res.Warnings, "\n"), "PAM Issuer volume"))
}
