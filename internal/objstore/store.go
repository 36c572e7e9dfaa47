// Package objstore keeps off-host copies of backup archives in an
// S3-compatible object store (AWS S3, MinIO, Ceph RGW...), under
// <prefix>/<estate>/<archive>.
//
// An archive is uploaded in parts of a measured size, resumably (an
// interrupted upload is found again by its key and only its missing parts
// are sent), with a CRC32C checksum per part (CRC64NVME on request) that the
// store combines into a whole-object checksum, and the archive's sha256 in the
// object's metadata.
// After the upload the object is checked against both; only then is the
// `.sha256` object written, last, as the marker that the archive is complete:
// an archive without it is never listed as a backup. Nothing is ever
// overwritten (conditional writes with If-None-Match, and a check before
// starting), so buckets with Object Lock or versioning work as they are.
package objstore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultPartSize is the upload part size, measured on loopback MinIO with a
// 1 GiB archive (bench/RESULTS.md, "Off-host copies"): 8 to 32 MiB parts were
// alike, 64 MiB slower; 16 MiB keeps the parts in flight within 64 MiB.
const DefaultPartSize = 16 << 20

// DefaultConcurrency is how many parts are in flight at once: on a quiet 2-core
// machine 16 MiB × 2 was the only setting within 1.2× of a plain PUT with margin
// (bench/RESULTS.md); a link with a long round trip may want 4 or more.
const DefaultConcurrency = 2

// Metadata keys the store keeps with each archive object (x-amz-meta-...).
const (
	MetaSHA256   = "Flightctl-Dr-Sha256"
	MetaProducer = "Flightctl-Dr-Producer"
)

// Config says which store, bucket and prefix, and how to authenticate.
type Config struct {
	// Endpoint is host:port or a URL (https://s3.example.com:9000). Empty:
	// AWS S3 (s3.amazonaws.com), or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.
	Endpoint string
	Bucket   string
	Prefix   string
	Region   string
	// Insecure uses http for a host:port endpoint (a URL says it itself).
	Insecure bool
	// CACertFile adds a CA to trust for https.
	CACertFile string

	// Credentials: the keys given here, else AWS_ACCESS_KEY_ID /
	// AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) from the environment, else
	// the shared credentials file (CredentialsFile, else
	// AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials) and Profile (else
	// AWS_PROFILE, else default). They are never logged nor put in argv.
	AccessKey       string
	SecretKey       string
	SessionToken    string
	CredentialsFile string
	Profile         string

	PartSize    int64
	Concurrency int
	// ChecksumAlgorithm of the parts and of the whole object: "crc32c" (default) or
	// "crc64nvme".
	ChecksumAlgorithm string
	// Producer is recorded in each object's metadata.
	Producer string
	// Transport replaces the HTTP transport (tests).
	Transport http.RoundTripper
}

// Store is one bucket and prefix.
type Store struct {
	client      *minio.Client
	core        minio.Core
	bucket      string
	prefix      string
	partSize    int64
	concurrency int
	producer    string
	checksum    minio.ChecksumType
	// listWorkers replaces ListConcurrency (benchmarks); pageSize the listing page
	// of 1,000 keys (tests, to list a small folder in many ranges).
	listWorkers, pageSize int
	// hashInline hashes on the reading goroutine, as before the hash had its own
	// (benchmarks compare the two).
	hashInline bool
	// CredentialSource says where the credentials came from (never what they are).
	CredentialSource string
}

// Open connects to the store; it does not contact it.
func Open(cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("no bucket given: set the bucket")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = firstEnv("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
	}
	if endpoint == "" {
		endpoint = "https://s3.amazonaws.com"
	}
	host, secure, err := parseEndpoint(endpoint, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	creds, source, err := resolveCredentials(cfg)
	if err != nil {
		return nil, err
	}
	region := cfg.Region
	if region == "" {
		region = firstEnv("AWS_REGION", "AWS_DEFAULT_REGION")
	}
	opts := &minio.Options{Creds: creds, Secure: secure, Region: region, Transport: cfg.Transport}
	if cfg.CACertFile != "" && opts.Transport == nil {
		tr, err := transportWithCA(cfg.CACertFile)
		if err != nil {
			return nil, err
		}
		opts.Transport = tr
	}
	c, err := minio.New(host, opts)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", endpoint, err)
	}
	s := &Store{
		client: c, core: minio.Core{Client: c}, bucket: cfg.Bucket,
		prefix: strings.Trim(cfg.Prefix, "/"), partSize: cfg.PartSize, concurrency: cfg.Concurrency,
		producer: cfg.Producer, CredentialSource: source,
	}
	if s.partSize <= 0 {
		s.partSize = DefaultPartSize
	}
	if s.partSize < 5<<20 {
		return nil, fmt.Errorf("part size %d is below the 5 MiB S3 minimum: give 5 MiB or more", s.partSize)
	}
	if s.concurrency <= 0 {
		s.concurrency = DefaultConcurrency
	}
	switch strings.ToLower(cfg.ChecksumAlgorithm) {
	case "", "crc32c":
		s.checksum = DefaultChecksum
	case "crc64nvme":
		s.checksum = minio.ChecksumCRC64NVME
	default:
		return nil, fmt.Errorf("checksum algorithm %q: give crc32c or crc64nvme", cfg.ChecksumAlgorithm)
	}
	return s, nil
}

// Bucket and Prefix are where the store keeps archives.
func (s *Store) Bucket() string { return s.bucket }
func (s *Store) Prefix() string { return s.prefix }

// Client is the underlying client (tests and the sandbox create buckets with it).
func (s *Store) Client() *minio.Client { return s.client }

func parseEndpoint(endpoint string, insecure bool) (host string, secure bool, err error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, !insecure, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return "", false, fmt.Errorf("endpoint %q is not host:port nor a URL: give it as https://host:port", endpoint)
	}
	if u.Path != "" && u.Path != "/" {
		return "", false, fmt.Errorf("endpoint %q has a path: give the bucket as bucket and the folder as prefix", endpoint)
	}
	switch u.Scheme {
	case "https":
		return u.Host, true, nil
	case "http":
		return u.Host, false, nil
	}
	return "", false, fmt.Errorf("endpoint %q: scheme must be http or https", endpoint)
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

func resolveCredentials(cfg Config) (*credentials.Credentials, string, error) {
	switch {
	case cfg.AccessKey != "" || cfg.SecretKey != "":
		if cfg.AccessKey == "" || cfg.SecretKey == "" {
			return nil, "", errors.New("only one of access_key and secret_key is given: give both, or neither to use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file")
		}
		return credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken), "options", nil
	case os.Getenv("AWS_ACCESS_KEY_ID") != "" || os.Getenv("AWS_SECRET_ACCESS_KEY") != "":
		if os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
			return nil, "", errors.New("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set in the environment: set both")
		}
		token := firstEnv("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
		return credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), token), "environment", nil
	}
	file := cfg.CredentialsFile
	if file == "" {
		file = os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	}
	if file == "" {
		if home, err := os.UserHomeDir(); err == nil {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	profile := cfg.Profile
	if profile == "" {
		profile = firstEnv("AWS_PROFILE")
	}
	if profile == "" {
		profile = "default"
	}
	if file != "" {
		if _, err := os.Stat(file); err == nil {
			c := credentials.NewFileAWSCredentials(file, profile)
			v, err := c.Get()
			if err != nil || v.AccessKeyID == "" {
				return nil, "", fmt.Errorf("credentials file %s has no usable profile %q (aws_access_key_id, aws_secret_access_key): fix the file or give another profile", file, profile)
			}
			return credentials.NewStaticV4(v.AccessKeyID, v.SecretAccessKey, v.SessionToken), "file " + file, nil
		} else if cfg.CredentialsFile != "" {
			return nil, "", fmt.Errorf("credentials file %s: %w", file, err)
		}
	}
	return nil, "", errors.New("no object store credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (an AAP Amazon Web Services credential does), give a credentials file, or give access_key and secret_key")
}

// Key is where an archive (or its marker) of an estate lives.
func (s *Store) Key(estate, name string) string {
	return s.estatePrefix(estate) + name
}

func (s *Store) estatePrefix(estate string) string {
	if s.prefix == "" {
		return estate + "/"
	}
	return s.prefix + "/" + estate + "/"
}

// ValidEstate refuses estate names that would escape their folder.
func ValidEstate(estate string) error {
	if estate == "" {
		return errors.New("no estate given: name the server whose archives these are (the inventory host name by default)")
	}
	if strings.ContainsAny(estate, "/\\") || estate == "." || estate == ".." || strings.ContainsRune(estate, 0) {
		return fmt.Errorf("estate %q is not a plain name: it must not hold '/' nor be '.' or '..'", estate)
	}
	return nil
}

// EnsureBucket creates the bucket when it does not exist (objectLock: with
// Object Lock enabled, which also enables versioning).
func (s *Store) EnsureBucket(ctx context.Context, region string, objectLock bool) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", s.bucket, err)
	}
	if ok {
		return nil
	}
	if err := s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: region, ObjectLocking: objectLock}); err != nil {
		return fmt.Errorf("create bucket %s: %w", s.bucket, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r.StatusCode == http.StatusNotFound || r.Code == "NoSuchKey" || r.Code == "NoSuchUpload"
	}
	return false
}

func isPreconditionFailed(err error) bool {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed"
	}
	return false
}

// stopwatch measures a step.
func stopwatch() func() time.Duration {
	t := time.Now()
	return func() time.Duration { return time.Since(t) }
}
