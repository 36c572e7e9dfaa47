package devprep

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

// Connection failures, told apart so that the operator knows what to fix.
var (
	ErrDBAuth        = errors.New("the database refused the user or password")
	ErrDBUnreachable = errors.New("the database cannot be reached")
	ErrDBMissing     = errors.New("the database does not exist")
	ErrKVAuth        = errors.New("the KV store refused the password")
	ErrKVUnreachable = errors.New("the KV store cannot be reached")
)

// ConnOptions say how to reach the flightctl database and KV store.
type ConnOptions struct {
	DBHost     string
	DBPort     int
	DBName     string
	DBUser     string
	DBPassword string
	// DBSSLMode is a libpq sslmode (disable, prefer, require, verify-ca, verify-full);
	// empty means prefer.
	DBSSLMode  string
	KVHost     string
	KVPort     int
	KVPassword string
	KVDB       int
	// Timeout bounds each connection attempt (default 10s).
	Timeout time.Duration
}

// Validate checks the connection options.
func (c ConnOptions) Validate() error {
	var problems []string
	if c.DBHost == "" {
		problems = append(problems, "db_host is empty")
	}
	if c.DBPort <= 0 || c.DBPort > 65535 {
		problems = append(problems, fmt.Sprintf("db_port %d is not a TCP port", c.DBPort))
	}
	if c.DBName == "" {
		problems = append(problems, "db_name is empty")
	}
	if c.DBUser == "" {
		problems = append(problems, "db_user is empty")
	}
	switch c.DBSSLMode {
	case "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		problems = append(problems, fmt.Sprintf("db_sslmode %q is not one of disable, allow, prefer, require, verify-ca, verify-full", c.DBSSLMode))
	}
	if c.KVHost == "" {
		problems = append(problems, "kv_host is empty")
	}
	if c.KVPort <= 0 || c.KVPort > 65535 {
		problems = append(problems, fmt.Sprintf("kv_port %d is not a TCP port", c.KVPort))
	}
	if c.KVDB < 0 {
		problems = append(problems, fmt.Sprintf("kv_db %d is negative", c.KVDB))
	}
	if len(problems) > 0 {
		return fmt.Errorf("connection options: %s", strings.Join(problems, "; "))
	}
	return nil
}

func (c ConnOptions) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return 10 * time.Second
}

// quoteConnValue quotes a value for a libpq keyword/value connection string.
func quoteConnValue(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// Connect opens the database connection and the KV client and checks that both answer.
// Errors wrap ErrDBAuth, ErrDBUnreachable, ErrDBMissing, ErrKVAuth or ErrKVUnreachable.
// The password never goes into the connection string.
func (c ConnOptions) Connect(ctx context.Context) (*pgx.Conn, *redis.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	sslmode := c.DBSSLMode
	if sslmode == "" {
		sslmode = "prefer"
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=%s connect_timeout=%d",
		quoteConnValue(c.DBHost), c.DBPort, quoteConnValue(c.DBName), quoteConnValue(c.DBUser), sslmode, int(c.timeout().Seconds())))
	if err != nil {
		return nil, nil, fmt.Errorf("database connection options: %w", err)
	}
	cfg.Password = c.DBPassword
	db, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the database: %w", describeDBError(err, c.DBHost, c.DBPort, c.DBUser))
	}
	quietRedisOnce.Do(func() { redis.SetLogger(quietRedisLog{}) })
	kv := redis.NewClient(&redis.Options{
		Addr:        net.JoinHostPort(c.KVHost, strconv.Itoa(c.KVPort)),
		Password:    c.KVPassword,
		DB:          c.KVDB,
		DialTimeout: c.timeout(),
		// Big pipelines need more than the 3s default on a slow link.
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
	})
	if err := kv.Ping(ctx).Err(); err != nil {
		_ = kv.Close()
		_ = db.Close(context.Background())
		return nil, nil, fmt.Errorf("connect to the KV store: %w", describeKVError(err, kv.Options().Addr))
	}
	return db, kv, nil
}

// go-redis prints its own dial retries to stderr; the errors returned here already say
// what failed and what to do, so its logger is silenced once for the process.
var quietRedisOnce sync.Once

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

// describeDBError says which of wrong credentials, missing database or unreachable server
// an error is.
func describeDBError(err error, host string, port int, user string) error {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return fmt.Errorf("%w: user %q at %s (%s): check db_user and db_password", ErrDBAuth, user, addr, pgErr.Message)
		case "3D000":
			return fmt.Errorf("%w at %s (%s): check db_name", ErrDBMissing, addr, pgErr.Message)
		}
		return err
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	if errors.As(err, &netErr) || errors.As(err, &connectErr) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w at %s: %v: check db_host and db_port and that the database is running", ErrDBUnreachable, addr, err)
	}
	return err
}

// describeKVError says whether a KV error is a refused password or an unreachable server.
func describeKVError(err error, addr string) error {
	msg := err.Error()
	for _, auth := range []string{"WRONGPASS", "NOAUTH", "invalid password", "without any password configured", "invalid username-password"} {
		if strings.Contains(msg, auth) {
			return fmt.Errorf("%w at %s (%s): check kv_password", ErrKVAuth, addr, msg)
		}
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(msg, "connection refused") || strings.Contains(msg, "EOF") {
		return fmt.Errorf("%w at %s: %v: check kv_host and kv_port and that the KV store is running", ErrKVUnreachable, addr, err)
	}
	return err
}
