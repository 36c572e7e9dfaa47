package sandbox

import (
	"context"
	"fmt"
	"path/filepath"

	"flightctl.dr/internal/objstore"
	"flightctl.dr/internal/testbed"
)

// S3Bucket and S3Prefix are where the sandbox's bucket keeps off-host copies.
const (
	S3Bucket = "flightctl-dr"
	S3Prefix = "sandbox"
)

// S3State locates the sandbox's S3 server (MinIO on loopback): `hack/sandbox up --s3`.
type S3State struct {
	Endpoint  string `json:"endpoint"`
	Bucket    string `json:"bucket"`
	Prefix    string `json:"prefix"`
	AccessKey string `json:"access_key"`
	SecretKey string `json:"secret_key"`
	PID       int    `json:"pid"`
	Dir       string `json:"dir"`
}

// startS3 starts MinIO under dir/s3 and creates the bucket.
func startS3(ctx context.Context, st *State) error {
	m, err := testbed.StartMinIO(ctx, testbed.MinIOOptions{Dir: filepath.Join(st.Dir, "s3")})
	if err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	st.S3 = &S3State{Endpoint: m.URL, Bucket: S3Bucket, Prefix: S3Prefix, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PID: m.PID, Dir: m.Dir}
	s, err := objstore.Open(objstore.Config{Endpoint: m.URL, Bucket: S3Bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err == nil {
		err = s.EnsureBucket(ctx, "", false)
	}
	if err != nil {
		stopS3(st)
		return fmt.Errorf("sandbox: create bucket %s: %w", S3Bucket, err)
	}
	return nil
}

// stopS3 stops the sandbox's MinIO by its PID file.
func stopS3(st *State) {
	if st.S3 != nil && st.S3.Dir != "" {
		testbed.KillByPIDFile(filepath.Join(st.S3.Dir, "minio.pid"), st.S3.Dir)
	}
}

// s3Vars are the inventory variables that make dr_backup copy to the bucket and
// dr_restore able to restore from it.
func (s *State) s3Vars(v map[string]any) {
	if s.S3 == nil {
		return
	}
	v["flightctl_dr_s3_endpoint"] = s.S3.Endpoint
	v["flightctl_dr_s3_bucket"] = s.S3.Bucket
	v["flightctl_dr_s3_prefix"] = s.S3.Prefix
	v["flightctl_dr_s3_access_key"] = s.S3.AccessKey
	v["flightctl_dr_s3_secret_key"] = s.S3.SecretKey
}
