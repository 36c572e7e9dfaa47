package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"flightctl.dr/internal/objstore"
	"flightctl.dr/internal/sandbox"
	"flightctl.dr/internal/testbed"
)

// up --s3: an S3 server with its bucket, in sandbox.json and in the inventory, stopped by down.
func TestSandboxS3(t *testing.T) {
	needSandbox(t, false)
	if _, err := testbed.MinIOBinary(); err != nil {
		testbed.Unavailable(t, err.Error())
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Devices: 3, NoPodman: true, S3: true})
	t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir, nil) })
	require.NoError(t, err)
	require.NotNil(t, st.S3)

	loaded, err := sandbox.Load(dir)
	require.NoError(t, err)
	require.NotNil(t, loaded.S3, "sandbox.json holds the s3 object")
	assert.Equal(t, st.S3.Endpoint, loaded.S3.Endpoint)
	assert.Equal(t, sandbox.S3Bucket, loaded.S3.Bucket)

	raw, err := os.ReadFile(filepath.Join(dir, sandbox.InventoryFile))
	require.NoError(t, err)
	var inv map[string]any
	require.NoError(t, yaml.Unmarshal(raw, &inv))
	host := inv["all"].(map[string]any)["children"].(map[string]any)["flightctl_servers"].(map[string]any)["hosts"].(map[string]any)["sandbox"].(map[string]any)
	assert.Equal(t, st.S3.Endpoint, host["flightctl_dr_s3_endpoint"])
	assert.Equal(t, sandbox.S3Bucket, host["flightctl_dr_s3_bucket"])
	assert.Equal(t, st.S3.SecretKey, host["flightctl_dr_s3_secret_key"])

	s, err := objstore.Open(objstore.Config{Endpoint: st.S3.Endpoint, Bucket: st.S3.Bucket, AccessKey: st.S3.AccessKey, SecretKey: st.S3.SecretKey})
	require.NoError(t, err)
	ok, err := s.Client().BucketExists(ctx, st.S3.Bucket)
	require.NoError(t, err)
	assert.True(t, ok)

	require.NoError(t, sandbox.Down(ctx, dir, nil))
	require.True(t, testbed.WaitGone(st.S3.PID, time.Minute), "down stops the S3 server")
}
