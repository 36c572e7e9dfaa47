// Package s3opts holds the module options that reach an S3-compatible bucket, embedded by
// flightctl_archive_store and flightctl_archive_prune so that both take the same endpoint
// and credentials in the same words.
package s3opts

import (
	"flightctl.dr/internal/objstore"
	"flightctl.dr/internal/version"
)

// Connection is embedded in a module's options; the sidecar docs document each option.
type Connection struct {
	Endpoint        string `ansible:"endpoint" help:"the S3 endpoint, https://host:port (default: AWS_ENDPOINT_URL, then AWS S3)"`
	Prefix          string `ansible:"prefix" help:"the folder in the bucket above the estates' folders"`
	Region          string `ansible:"region" help:"the bucket's region (default: AWS_REGION)"`
	CACertFile      string `ansible:"ca_cert_file,abspath" help:"a CA certificate (PEM) to trust for an https endpoint"`
	AccessKey       string `ansible:"access_key,secret" help:"access key (default: AWS_ACCESS_KEY_ID, then the credentials file)"`
	SecretKey       string `ansible:"secret_key,secret" help:"secret key (default: AWS_SECRET_ACCESS_KEY, then the credentials file)"`
	SessionToken    string `ansible:"session_token,secret" help:"session token for temporary credentials"`
	CredentialsFile string `ansible:"credentials_file,abspath" help:"an AWS shared credentials file (default: AWS_SHARED_CREDENTIALS_FILE, then ~/.aws/credentials)"`
	Profile         string `ansible:"profile" help:"the profile in the credentials file (default: AWS_PROFILE, then default)"`
}

// Config is the object store configuration for bucket with these options.
func (c *Connection) Config(bucket string) objstore.Config {
	return objstore.Config{
		Endpoint: c.Endpoint, Bucket: bucket, Prefix: c.Prefix, Region: c.Region, CACertFile: c.CACertFile,
		AccessKey: c.AccessKey, SecretKey: c.SecretKey, SessionToken: c.SessionToken,
		CredentialsFile: c.CredentialsFile, Profile: c.Profile, Producer: "flightctl.dr " + version.Version,
	}
}
