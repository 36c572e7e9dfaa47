package estate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/backup/source"
	"flightctl.dr/internal/pgdump"
	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/runner"
	"flightctl.dr/internal/serviceconfig"
)

// Archive entry names of a Podman backup (SPEC §2).
const (
	EntryDBDir        = "db"
	EntryDBDump       = "db/dump.sql"
	EntryPKIDir       = "pki"
	EntryEncryptDir   = "encryption"
	EntryConfigDir    = "config"
	EntryConfigFile   = "config/service-config.yaml"
	EntryVolumesDir   = "volumes"
	EntryPAMVolumeTar = "volumes/pam-issuer-etc.tar"
)

// Component names reported by backups.
const (
	ComponentDatabase   = source.ComponentDatabase
	ComponentPKI        = source.ComponentPKI
	ComponentEncryption = source.ComponentEncryption
	ComponentConfig     = source.ComponentConfig
	ComponentVolumes    = source.ComponentVolumes
)

// ExternalDatabaseLog is upstream's log line for a skipped external database.
const ExternalDatabaseLog = "External database detected - database backup skipped"

// ExternalDatabaseGuidance tells the operator what the archive lacks.
const ExternalDatabaseGuidance = "the service configuration declares an external database (db.type: external): this archive holds no database dump; back the database up with your database administrator's tools (pg_dump or a managed-service snapshot) at the same time as this backup, and keep both together"

// defaultDBName is used when neither the options nor the service config name the database.
const defaultDBName = "flightctl"

// pamVolumeBufferLimit is how much of the PAM volume export is held in memory before
// it is streamed: within it, a failing export is only a warning (as upstream); past it,
// the archive is already being written and a failure fails the backup.
const pamVolumeBufferLimit = 16 << 20

// The backup engine's types (internal/backup/source), which the estates' backups speak in.
type (
	BackupSink        = source.Sink
	BackupPlan        = source.Plan
	DatabasePlan      = source.DatabasePlan
	PlannedSource     = source.PlannedSource
	CapturedComponent = source.CapturedComponent
	BackupOutcome     = source.Outcome
)

// PodmanBackup gathers the state of a Podman / systemd host into a backup.
type PodmanBackup struct {
	Config PodmanConfig
	Runner runner.Runner
	Logger *slog.Logger
	// DumpEarly makes Plan start the database dump at once, beside its own checks (the
	// password lookup, the preflight queries, the volume check), instead of after them:
	// WriteBackup then reads a dump that is already running, and the checks cost no time
	// before it. Close stops that dump when WriteBackup is not called. A backup sets it; a
	// check-mode plan does not, and then nothing is dumped.
	DumpEarly bool

	once     sync.Once
	password string
	pwSource string
	pwErr    error

	mu      sync.Mutex
	pending *cmdStream // the dump Plan started (DumpEarly), until WriteBackup takes it
}

// Type is Podman.
func (b *PodmanBackup) Type() Type { return Podman }

func (b *PodmanBackup) log() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger
}

// Validate checks the configuration before anything runs.
func (b *PodmanBackup) Validate() error {
	c := b.Config
	if b.Runner == nil {
		return errors.New("podman backup: no command runner")
	}
	switch c.DBAccess {
	case DBAccessContainer:
		if c.DBContainer == "" {
			return errors.New("db_container is empty: name the database container (flightctl-db)")
		}
	case DBAccessDirect:
	default:
		return fmt.Errorf("db_access %q is not valid: use container or direct", c.DBAccess)
	}
	if c.DBHost == "" {
		return errors.New("db_host is empty: set it (127.0.0.1 as upstream)")
	}
	if c.DBPort <= 0 || c.DBPort > 65535 {
		return fmt.Errorf("db_port %d is not a TCP port", c.DBPort)
	}
	if c.DBUser == "" {
		return errors.New("db_user is empty: set it (flightctl_app as upstream)")
	}
	if c.PKIDir == "" || c.ConfigFile == "" {
		return errors.New("pki_dir and config_file must be set")
	}
	return nil
}

// Plan checks every precondition of a backup (service configuration readable and valid,
// PKI and config present and readable, database reachable with the credentials, pg_dump
// available) and reports what would be captured. It writes nothing.
func (b *PodmanBackup) Plan(ctx context.Context) (*BackupPlan, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	c := b.Config
	plan := &BackupPlan{DeploymentType: Podman, Warnings: []string{}}

	// The service config is required, and says whether the database is external.
	cfgSrc, err := planFile(ComponentConfig, c.ConfigFile, EntryConfigFile, true)
	if err != nil {
		return nil, fmt.Errorf("back up service configuration: %w", err)
	}
	svc, err := serviceconfig.Load(c.ConfigFile)
	if err != nil {
		return nil, err
	}

	pki, err := planTree(ComponentPKI, c.PKIDir, EntryPKIDir, true)
	if err != nil {
		return nil, fmt.Errorf("back up PKI: %w", err)
	}
	enc, err := planTree(ComponentEncryption, c.EncryptionDir, EntryEncryptDir, false)
	if err != nil {
		return nil, fmt.Errorf("back up encryption keys: %w", err)
	}
	if !enc.Present {
		plan.Warnings = append(plan.Warnings, encryptionMissingWarning(c.EncryptionDir))
	}
	plan.Sources = append(plan.Sources, pki, enc, cfgSrc)

	// The podman calls below each cost a process start (about 0.1 s of CPU): they run side
	// by side, and the dump, when it starts early, beside them.
	if !svc.DB.IsExternal() && b.DumpEarly {
		b.startEarlyDump(ctx, b.dbName(svc))
	}
	var volExists bool
	var volErr error
	var db *DatabasePlan
	var dbErr error
	runner.Concurrently(func() {
		if !svc.DB.IsExternal() {
			db, dbErr = b.planDatabase(ctx, svc)
		}
	}, func() {
		if c.PAMVolume != "" {
			volExists, volErr = b.podman().VolumeExists(ctx, c.PAMVolume)
		}
	})
	if dbErr != nil {
		_ = b.Close()
		return nil, dbErr
	}

	if c.PAMVolume != "" {
		vol := PlannedSource{Component: ComponentVolumes, Source: "podman volume " + c.PAMVolume, ArchivePath: EntryPAMVolumeTar}
		exists, err := volExists, volErr
		switch {
		case err != nil:
			plan.Warnings = append(plan.Warnings, pamVolumeWarning(firstLine(err.Error())))
		case !exists:
			plan.Warnings = append(plan.Warnings, pamVolumeWarning("volume "+c.PAMVolume+" does not exist"))
		default:
			vol.Present = true
		}
		plan.Sources = append(plan.Sources, vol)
	}

	if svc.DB.IsExternal() {
		plan.Warnings = append(plan.Warnings, ExternalDatabaseGuidance)
	} else {
		plan.DatabaseIncluded = true
		plan.Database = db
		plan.EstimatedSize += db.Size
	}
	for _, s := range plan.Sources {
		plan.EstimatedSize += s.Size
	}
	return plan, nil
}

// pamVolumeWarning is upstream's warning for a PAM issuer volume left out.
func pamVolumeWarning(why string) string {
	return "PAM Issuer volume export failed (volume may not exist or podman unavailable): " + why + "; continuing backup without PAM Issuer volume"
}

func encryptionMissingWarning(dir string) string {
	return fmt.Sprintf("Encryption key directory not found at %s — skipping. If this deployment uses data-at-rest encryption, encrypted database fields will be unrecoverable from this backup.", dir)
}

// planTree checks a directory tree: regular files and directories only, all readable.
func planTree(component, dir, entry string, required bool) (PlannedSource, error) {
	src := PlannedSource{Component: component, Source: dir, ArchivePath: entry + "/", Required: required}
	if dir == "" {
		if required {
			return src, fmt.Errorf("no %s directory configured", component)
		}
		return src, nil
	}
	st, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if required {
			return src, fmt.Errorf("%s directory not found: %s: point %s at the server's %s directory", treeLabel(component), dir, treeOption(component), treeLabel(component))
		}
		return src, nil
	}
	if err != nil {
		return src, fmt.Errorf("%s directory %s: %w", treeLabel(component), dir, err)
	}
	if !st.IsDir() {
		return src, fmt.Errorf("%s directory %s is not a directory (%s): point %s at a directory", treeLabel(component), dir, st.Mode().Type(), treeOption(component))
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, walkErr error) error {
		if walkErr != nil {
			return fmt.Errorf("cannot read %s: %w", p, walkErr)
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			return fmt.Errorf("symlinks not supported in backup directory: %s (%s): replace it with the file it points to", rel, p)
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("%s is not a regular file: only regular files and directories can be backed up", p)
		}
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("cannot read %s: %w", p, err)
		}
		st, err := f.Stat()
		f.Close()
		if err != nil {
			return fmt.Errorf("cannot read %s: %w", p, err)
		}
		src.Files++
		src.Size += st.Size()
		return nil
	})
	if err != nil {
		return src, err
	}
	src.Present = true
	return src, nil
}

func treeLabel(component string) string {
	if component == ComponentPKI {
		return "PKI"
	}
	return "Encryption key"
}

func treeOption(component string) string {
	if component == ComponentPKI {
		return "pki_dir"
	}
	return "encryption_dir"
}

// planFile checks a single regular file is there and readable.
func planFile(component, path, entry string, required bool) (PlannedSource, error) {
	src := PlannedSource{Component: component, Source: path, ArchivePath: entry, Required: required}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return src, fmt.Errorf("required service configuration file does not exist: %s: point config_file at the server's service-config.yaml", path)
	}
	if err != nil {
		return src, fmt.Errorf("cannot read %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return src, fmt.Errorf("cannot read %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return src, fmt.Errorf("%s is not a regular file", path)
	}
	src.Present, src.Files, src.Size = true, 1, st.Size()
	return src, nil
}

// dbName is the database to dump: the option, else db.name of the service config, else
// flightctl.
func (b *PodmanBackup) dbName(svc *serviceconfig.Config) string {
	if b.Config.DBName != "" {
		return b.Config.DBName
	}
	if svc != nil && svc.DB.Name != "" {
		return svc.DB.Name
	}
	return defaultDBName
}

func (b *PodmanBackup) planDatabase(ctx context.Context, svc *serviceconfig.Config) (*DatabasePlan, error) {
	c := b.Config
	db := &DatabasePlan{Access: c.DBAccess, Host: c.DBHost, Port: c.DBPort, Name: b.dbName(svc), User: c.DBUser}
	if c.DBAccess == DBAccessContainer {
		db.Container = c.DBContainer
	}
	password, source, err := b.dbPassword(ctx)
	if err != nil {
		return nil, err
	}
	db.PasswordSource = source
	cl := b.dbClient(db.Name, password)

	var pf preflight
	if c.DBAccess == DBAccessContainer {
		pf, err = cl.containerPreflight(ctx)
	} else {
		pf, err = cl.localPreflight(ctx)
	}
	switch {
	case err != nil && pf.pgDumpVersion == "":
		return nil, fmt.Errorf("database: pg_dump is not usable %s: %w", cl.where(), err)
	case err != nil:
		return nil, fmt.Errorf("database: cannot connect %s: %w; check that the database runs and that db_user/db_password (or the podman secret %s) are right", cl.where(), err, orDefault(c.DBPasswordSecret, SecretDBUserPassword))
	}
	db.PgDumpVersion = pf.pgDumpVersion
	fields := strings.Split(pf.size, "|")
	if len(fields) != 2 {
		return nil, fmt.Errorf("database: unexpected answer %q to the size query %s", pf.size, cl.where())
	}
	if db.Size, err = strconv.ParseInt(fields[0], 10, 64); err != nil {
		return nil, fmt.Errorf("database: unexpected size %q %s", fields[0], cl.where())
	}
	db.ServerVersion = fields[1]
	// Row counts go into the metadata when the user may read the tables; they are a
	// convenience, never a reason to fail.
	if pf.counts != "" {
		if n := strings.Split(pf.counts, "|"); len(n) == 3 {
			db.Counts = map[string]int64{}
			for i, k := range []string{"devices", "fleets", "enrollment_requests"} {
				if v, err := strconv.ParseInt(n[i], 10, 64); err == nil {
					db.Counts[k] = v
				}
			}
		}
	} else {
		b.log().Debug("row counts unavailable", "err", firstLine(pf.countsErr))
	}
	// Owner and database-level grants: pg_dump without --create does not carry them.
	if pf.grants != "" {
		var g struct {
			Owner string   `json:"owner"`
			ACL   []string `json:"acl"`
		}
		if json.Unmarshal([]byte(pf.grants), &g) == nil {
			db.Owner, db.ACL = g.Owner, g.ACL
		}
	} else {
		b.log().Debug("database owner and grants unavailable", "err", firstLine(pf.grantsErr))
	}
	return db, nil
}

// The preflight's questions: the database's size and server version (required), its row
// counts and its owner and grants (both optional: the user may lack the rights).
const (
	sizeQuery   = "select pg_database_size(current_database()), current_setting('server_version')"
	countsQuery = "select (select count(*) from devices), (select count(*) from fleets), (select count(*) from enrollment_requests)"
	grantsQuery = "select json_build_object('owner', pg_get_userbyid(datdba), 'acl', datacl::text[]) from pg_database where datname = current_database()"
)

// preflight is what the checks before a dump learnt. pgDumpVersion is "" when pg_dump
// itself could not run.
type preflight struct {
	pgDumpVersion string
	size          string // "<bytes>|<server_version>"
	counts        string // "<devices>|<fleets>|<enrollment_requests>", "" when unreadable
	grants        string // JSON {"owner", "acl"}, "" when unreadable
	countsErr     string
	grantsErr     string
}

// localPreflight runs the host's pg_dump and psql, one short process per question, all
// at once (each is a process start and a connection: one after the other they held the
// dump's start by a tenth of a second).
func (d dbClient) localPreflight(ctx context.Context) (preflight, error) {
	var pf preflight
	var ver, size string
	var verErr, sizeErr error
	runner.Concurrently(
		func() { ver, verErr = d.pgDumpVersion(ctx) },
		func() { size, sizeErr = d.query(ctx, sizeQuery) },
		func() {
			if out, err := d.query(ctx, countsQuery); err == nil {
				pf.counts = strings.TrimSpace(out)
			} else {
				pf.countsErr = err.Error()
			}
		},
		func() {
			if out, err := d.query(ctx, grantsQuery); err == nil {
				pf.grants = strings.TrimSpace(out)
			} else {
				pf.grantsErr = err.Error()
			}
		})
	if verErr != nil {
		return pf, verErr
	}
	pf.pgDumpVersion = ver
	if sizeErr != nil {
		return pf, sizeErr
	}
	pf.size = strings.TrimSpace(size)
	return pf, nil
}

// Tags of the preflight's answers in the container: each answer is one line that starts
// with its tag, so that nothing else psql prints is taken for one.
const (
	tagSize   = "flightctl-dr-size|"
	tagCounts = "flightctl-dr-counts|"
	tagGrants = "flightctl-dr-grants|"
)

// The same questions, each answer one tagged line with its fields separated by |.
const (
	taggedSizeQuery   = "select '" + tagSize + "' || pg_database_size(current_database()) || '|' || current_setting('server_version')"
	taggedCountsQuery = "select '" + tagCounts + "' || (select count(*) from devices) || '|' || (select count(*) from fleets) || '|' || (select count(*) from enrollment_requests)"
	taggedGrantsQuery = "select '" + tagGrants + "' || json_build_object('owner', pg_get_userbyid(datdba), 'acl', datacl::text[])::text from pg_database where datname = current_database()"
)

// containerPreflight asks every question in one podman exec (each exec costs a process
// start of podman, conmon and the runtime: about 0.1 s of CPU and more of wall time):
// pg_dump --version, then psql for the size (required, ON_ERROR_STOP), then one more
// psql for the optional answers, whose failure does not fail the script.
func (d dbClient) containerPreflight(ctx context.Context) (preflight, error) {
	var pf preflight
	psql := "PGCONNECT_TIMEOUT=15 psql -X -w -A -t -q "
	script := "export PGPASSWORD; pg_dump --version && " +
		psql + "-v ON_ERROR_STOP=1 " + d.containerConn() + " -c " + shellQuote(taggedSizeQuery) + " && { " +
		psql + d.containerConn() + " -c " + shellQuote(taggedCountsQuery) + " -c " + shellQuote(taggedGrantsQuery) + " || true; }"
	var out bytes.Buffer
	stderr := &limitedBuffer{max: 4096}
	err := d.podman.Exec(ctx, podman.ExecOptions{
		Container: d.cfg.DBContainer,
		Command:   []string{"sh", "-c", "PGPASSWORD=$(cat -) " + script},
		Stdin:     strings.NewReader(d.password),
		Stdout:    &out,
		Stderr:    stderr,
	})
	for _, line := range strings.Split(out.String(), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case pf.pgDumpVersion == "" && strings.HasPrefix(line, "pg_dump"):
			pf.pgDumpVersion = line
			if m := versionRE.FindString(line); m != "" {
				pf.pgDumpVersion = m
			}
		case strings.HasPrefix(line, tagSize):
			pf.size = strings.TrimPrefix(line, tagSize)
		case strings.HasPrefix(line, tagCounts):
			pf.counts = strings.TrimPrefix(line, tagCounts)
		case strings.HasPrefix(line, tagGrants):
			pf.grants = strings.TrimPrefix(line, tagGrants)
		}
	}
	if err != nil {
		return pf, err
	}
	if pf.pgDumpVersion == "" {
		return pf, fmt.Errorf("pg_dump --version printed %q", firstLine(out.String()))
	}
	if pf.counts == "" {
		pf.countsErr = stderr.String()
	}
	if pf.grants == "" {
		pf.grantsErr = stderr.String()
	}
	return pf, nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	max int
	buf bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		l.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return l.buf.String() }

// WriteBackup streams the state into sink, following plan (from Plan). On error the
// caller aborts the archive; nothing is ever staged on disk.
func (b *PodmanBackup) WriteBackup(ctx context.Context, sink BackupSink, plan *BackupPlan) (*BackupOutcome, error) {
	if plan == nil {
		return nil, errors.New("podman backup: no plan: call Plan first")
	}
	c := b.Config
	log := b.log()
	out := &BackupOutcome{Warnings: []string{}, Extra: map[string]string{}}
	now := time.Now()

	if plan.DatabaseIncluded {
		n, st, err := b.writeDump(ctx, sink, plan.Database, now)
		if err != nil {
			return nil, err
		}
		recordDump(out, plan.Database, st)
		out.DatabaseIncluded = true
		out.Components = append(out.Components, CapturedComponent{Component: ComponentDatabase, ArchivePath: EntryDBDump, Source: describeDatabase(plan.Database), Files: 1, Bytes: n})
		out.Extra["pg_dump_version"] = plan.Database.PgDumpVersion
		out.Extra["db_server_version"] = plan.Database.ServerVersion
		out.Extra["db_name"] = plan.Database.Name
		for k, v := range plan.Database.Counts {
			out.Extra["count_"+k] = strconv.FormatInt(v, 10)
		}
		log.Info(fmt.Sprintf("Database backup completed. Dump file size: %d bytes", n))
	} else {
		log.Info(ExternalDatabaseLog)
		out.Warnings = append(out.Warnings, ExternalDatabaseGuidance)
	}

	// PKI (required), then encryption keys (optional), then config, as upstream.
	n, err := sink.AddTree(EntryPKIDir, c.PKIDir)
	if err != nil {
		return nil, fmt.Errorf("back up PKI from %s: %w", c.PKIDir, err)
	}
	out.Components = append(out.Components, CapturedComponent{Component: ComponentPKI, ArchivePath: EntryPKIDir + "/", Source: c.PKIDir, Files: n, Bytes: sourceSize(plan, ComponentPKI)})
	log.Info(fmt.Sprintf("PKI backup completed. Backed up %d files from %s", n, c.PKIDir))

	if enc := findSource(plan, ComponentEncryption); enc != nil && enc.Present {
		n, err := sink.AddTree(EntryEncryptDir, c.EncryptionDir)
		if err != nil {
			return nil, fmt.Errorf("back up encryption keys from %s: %w", c.EncryptionDir, err)
		}
		out.Components = append(out.Components, CapturedComponent{Component: ComponentEncryption, ArchivePath: EntryEncryptDir + "/", Source: c.EncryptionDir, Files: n, Bytes: enc.Size})
		log.Info(fmt.Sprintf("Encryption key backup completed. Backed up %d files from %s", n, c.EncryptionDir))
	} else {
		// Returned, not logged: the caller reports warnings once.
		out.Warnings = append(out.Warnings, encryptionMissingWarning(c.EncryptionDir))
	}

	size, err := b.writeConfig(sink)
	if err != nil {
		return nil, err
	}
	out.Components = append(out.Components, CapturedComponent{Component: ComponentConfig, ArchivePath: EntryConfigFile, Source: c.ConfigFile, Files: 1, Bytes: size})
	log.Info("Service configuration backed up: " + c.ConfigFile)

	// A volume found missing by Plan was already reported there.
	if vol := findSource(plan, ComponentVolumes); vol != nil && vol.Present {
		n, warn, err := b.writePAMVolume(ctx, sink, now)
		if err != nil {
			return nil, err
		}
		if warn != "" {
			log.Info("Continuing backup without PAM Issuer volume")
			out.Warnings = append(out.Warnings, warn)
		} else {
			out.Components = append(out.Components, CapturedComponent{Component: ComponentVolumes, ArchivePath: EntryPAMVolumeTar, Source: vol.Source, Files: 1, Bytes: n})
			log.Info(fmt.Sprintf("PAM Issuer volume backed up: %s (%d bytes)", c.PAMVolume, n))
		}
	}
	return out, nil
}

func describeDatabase(d *DatabasePlan) string {
	if d.Access == DBAccessContainer {
		return fmt.Sprintf("database %s in container %s", d.Name, d.Container)
	}
	return fmt.Sprintf("database %s on %s:%d", d.Name, d.Host, d.Port)
}

func findSource(plan *BackupPlan, component string) *PlannedSource {
	for i := range plan.Sources {
		if plan.Sources[i].Component == component {
			return &plan.Sources[i]
		}
	}
	return nil
}

func sourceSize(plan *BackupPlan, component string) int64 {
	if s := findSource(plan, component); s != nil {
		return s.Size
	}
	return 0
}

// writeDump streams pg_dump's stdout into db/dump.sql. pg_dump's exit status is known
// only when its output ends: a failing dump makes the stream fail, and the caller aborts
// the whole archive.
func (b *PodmanBackup) writeDump(ctx context.Context, sink BackupSink, db *DatabasePlan, now time.Time) (int64, *pgdump.Stats, error) {
	password, _, err := b.dbPassword(ctx)
	if err != nil {
		return 0, nil, err
	}
	cl := b.dbClient(db.Name, password)
	if err := sink.AddDir(EntryDBDir, 0o755, now); err != nil {
		return 0, nil, fmt.Errorf("back up database: %w", err)
	}
	b.log().Info("Dumping database " + cl.where())
	b.mu.Lock()
	stream := b.pending
	b.pending = nil
	b.mu.Unlock()
	if stream != nil && stream.out != nil {
		<-stream.out.decided
		if stream.out.restart {
			_ = stream.Close()
			stream = nil
		}
	}
	if stream == nil {
		stream = startStream(ctx, cl.dump)
	}
	// The dump is read as a restore reads it, beside the archive writer: its rows per
	// table go into the metadata, and a dump that a restore would refuse is reported now.
	watch := pgdump.Watch()
	// The check gets the dump in the writer's blocks, not in the small pieces pg_dump
	// writes into the pipe (archive.TappedStream).
	n, err := sink.AddStream(EntryDBDump, 0o600, now, archive.TappedStream{Reader: stream, Tap: watch})
	st := watch.Close()
	// Read before Close: an error here is pg_dump's own, not the stop Close causes.
	cmdErr := stream.CommandErr()
	closeErr := stream.Close()
	if err != nil {
		if cmdErr != nil {
			return n, nil, fmt.Errorf("back up database: pg_dump failed %s after %d bytes: %w; check that the database runs and that the credentials are right", cl.where(), n, cmdErr)
		}
		return n, nil, fmt.Errorf("back up database: %w", err)
	}
	if closeErr != nil {
		return n, nil, fmt.Errorf("back up database: pg_dump failed %s: %w", cl.where(), closeErr)
	}
	if n == 0 {
		return n, nil, fmt.Errorf("back up database: pg_dump wrote nothing %s", cl.where())
	}
	return n, st, nil
}

// startEarlyDump starts the dump of database name before the checks have run (DumpEarly).
// In the container, the exec starts at once and the password follows on its stdin when
// the secret has been read, so that podman's exec set-up overlaps the secret lookup; on
// this host, pg_dump starts when the password is known (it goes in its environment).
func (b *PodmanBackup) startEarlyDump(ctx context.Context, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending != nil {
		return
	}
	if b.Config.DBAccess != DBAccessContainer {
		b.pending = startStream(ctx, func(ctx context.Context, w io.Writer) error {
			password, _, err := b.dbPassword(ctx)
			if err != nil {
				return err
			}
			return b.dbClient(name, password).dump(ctx, w)
		})
		return
	}
	cl := b.dbClient(name, "")
	inner, marker := newDumpNames()
	pr, pw := io.Pipe()
	stream := startStream(ctx, func(ctx context.Context, w io.Writer) error {
		return cl.podman.Exec(ctx, podman.ExecOptions{
			Container: cl.cfg.DBContainer,
			Command:   []string{"sh", "-c", cl.pipedDumpScript(inner, marker)},
			Stdin:     pr,
			Stdout:    w,
		})
	})
	out := &pipedOutput{stdout: stream.pr, marker: marker, decided: make(chan struct{}), logf: func(m string) { b.log().Debug(m, "container", cl.cfg.DBContainer) }}
	stream.out = out
	go func() {
		var pipe *containerPipe
		pipeDone := make(chan struct{})
		go func() {
			defer close(pipeDone)
			p, err := openContainerPipe(ctx, cl.podman, cl.cfg.DBContainer, inner)
			if err != nil {
				b.log().Debug("the dump goes through podman exec's stdout", "reason", firstLine(err.Error()))
				return
			}
			pipe = p
		}()
		password, _, err := b.dbPassword(ctx)
		<-pipeDone
		if err == nil && strings.ContainsAny(password, "\r\n") {
			out.restart = true
		}
		if err != nil || out.restart {
			if pipe != nil {
				pipe.close()
			}
			close(out.decided)
			// Stopped before pg_dump can connect without a password; Plan reports err.
			stream.cancel()
			pw.CloseWithError(errors.New("backup aborted"))
			return
		}
		where := "stdout"
		if pipe != nil {
			where = "fifo"
		}
		out.pipe = pipe
		close(out.decided)
		_, _ = io.WriteString(pw, password+"\n"+where+"\n")
		_ = pw.Close()
	}()
	b.pending = stream
}

// Close stops a dump that Plan started early (DumpEarly) and WriteBackup did not take.
func (b *PodmanBackup) Close() error {
	b.mu.Lock()
	s := b.pending
	b.pending = nil
	b.mu.Unlock()
	if s != nil {
		_ = s.Close()
	}
	return nil
}

// recordDump puts what the dump holds into the metadata: rows per table as the dump
// carries them (a restore compares them with what it loaded), the database's owner and
// grants, and a warning when a restore would refuse the dump.
func recordDump(out *BackupOutcome, db *DatabasePlan, st *pgdump.Stats) {
	if st == nil {
		return
	}
	if st.Err != nil {
		out.Warnings = append(out.Warnings, fmt.Sprintf("a restore will refuse this database dump: %v; the database holds objects a Flight Control server does not make: remove them, or restore this archive with your database tools", st.Err))
	} else {
		for table, n := range st.Rows {
			out.Extra[archive.ExtraDumpRowsPrefix+strings.TrimPrefix(table, "public.")] = strconv.FormatInt(n, 10)
		}
	}
	if db.Owner != "" {
		out.Extra[archive.ExtraDBOwner] = db.Owner
		if db.ACL != nil {
			if b, err := json.Marshal(db.ACL); err == nil {
				out.Extra[archive.ExtraDBACL] = string(b)
			}
		}
	}
}

func (b *PodmanBackup) writeConfig(sink BackupSink) (int64, error) {
	path := b.Config.ConfigFile
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("back up service configuration: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("back up service configuration: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("back up service configuration: %s is not a regular file", path)
	}
	if err := sink.AddDir(EntryConfigDir, 0o700, st.ModTime()); err != nil {
		return 0, fmt.Errorf("back up service configuration: %w", err)
	}
	if err := sink.AddFile(EntryConfigFile, st.Mode().Perm(), st.ModTime(), st.Size(), f); err != nil {
		return 0, fmt.Errorf("back up service configuration %s: %w", path, err)
	}
	return st.Size(), nil
}

// writePAMVolume exports the PAM issuer volume. A failure before anything reached the
// archive is a warning (as upstream); a failure later fails the backup, since the
// archive can no longer drop the entry.
func (b *PodmanBackup) writePAMVolume(ctx context.Context, sink BackupSink, now time.Time) (int64, string, error) {
	name := b.Config.PAMVolume
	exportCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := startStream(exportCtx, func(ctx context.Context, w io.Writer) error { return b.podman().VolumeExport(ctx, name, w) })
	defer stream.Close()
	head := make([]byte, pamVolumeBufferLimit)
	got, err := io.ReadFull(stream, head)
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		// The whole export fits in memory and podman succeeded.
		if err := sink.AddDir(EntryVolumesDir, 0o700, now); err != nil {
			return 0, "", fmt.Errorf("back up PAM Issuer volume: %w", err)
		}
		if err := sink.AddFile(EntryPAMVolumeTar, 0o600, now, int64(got), bytes.NewReader(head[:got])); err != nil {
			return 0, "", fmt.Errorf("back up PAM Issuer volume: %w", err)
		}
		return int64(got), "", nil
	case err != nil:
		return 0, pamVolumeWarning(firstLine(err.Error())), nil
	}
	if err := sink.AddDir(EntryVolumesDir, 0o700, now); err != nil {
		return 0, "", fmt.Errorf("back up PAM Issuer volume: %w", err)
	}
	n, err := sink.AddStream(EntryPAMVolumeTar, 0o600, now, io.MultiReader(bytes.NewReader(head), stream))
	if err != nil {
		return n, "", fmt.Errorf("back up PAM Issuer volume %s: %w", name, err)
	}
	return n, "", nil
}

// dbPassword returns the database password and where it came from: the option, else the
// Podman secret. It is read once per backup.
func (b *PodmanBackup) dbPassword(ctx context.Context) (string, string, error) {
	b.once.Do(func() {
		if b.Config.DBPassword != "" {
			b.password, b.pwSource = b.Config.DBPassword, "option db_password"
			return
		}
		secret := orDefault(b.Config.DBPasswordSecret, SecretDBUserPassword)
		pw, err := b.podman().ReadSecret(ctx, secret)
		if err != nil {
			b.pwErr = fmt.Errorf("database password: %w; set db_password, or create the podman secret %s", err, secret)
			return
		}
		b.password, b.pwSource = pw, "podman secret "+secret
	})
	return b.password, b.pwSource, b.pwErr
}

// ReadPodmanSecret returns the value of a Podman secret: `podman secret inspect
// --showsecret` (podman ≥ 4.4), else the file driver's store (podman 4.3).
func ReadPodmanSecret(ctx context.Context, run runner.Runner, name string) (string, error) {
	return (&podman.Client{Runner: run}).ReadSecret(ctx, name)
}

// dbClient runs pg_dump and psql the way the configuration says: inside the database
// container (password on stdin, as upstream) or on this host (password in the
// environment). The password is never in argv.
type dbClient struct {
	run      runner.Runner
	podman   *podman.Client
	cfg      PodmanConfig
	name     string
	password string
}

func (b *PodmanBackup) dbClient(name, password string) dbClient {
	return dbClient{run: b.Runner, podman: b.podman(), cfg: b.Config, name: name, password: password}
}

func (b *PodmanBackup) podman() *podman.Client {
	return &podman.Client{Runner: b.Runner, Logger: b.Logger}
}

func (d dbClient) where() string {
	if d.cfg.DBAccess == DBAccessContainer {
		return fmt.Sprintf("(database %s as %s in container %s)", d.name, d.cfg.DBUser, d.cfg.DBContainer)
	}
	return fmt.Sprintf("(database %s as %s on %s:%d)", d.name, d.cfg.DBUser, d.cfg.DBHost, d.cfg.DBPort)
}

// connArgs are the libpq connection flags shared by pg_dump and psql.
func (d dbClient) connArgs() []string {
	return []string{"-h", d.cfg.DBHost, "-p", strconv.Itoa(d.cfg.DBPort), "-U", d.cfg.DBUser, "-d", d.name}
}

// script is a command line for sh inside the database container. The password reaches
// it on stdin, read into PGPASSWORD: upstream's `sh -c "PGPASSWORD=$(cat -) ..."`.
func (d dbClient) inContainer(ctx context.Context, script string, stdout io.Writer) error {
	return d.inContainerWith(ctx, script, strings.NewReader(d.password), stdout)
}

// inContainerWith is inContainer with the password read from stdin.
func (d dbClient) inContainerWith(ctx context.Context, script string, stdin io.Reader, stdout io.Writer) error {
	return d.podman.Exec(ctx, podman.ExecOptions{
		Container: d.cfg.DBContainer,
		Command:   []string{"sh", "-c", "PGPASSWORD=$(cat -) " + script},
		Stdin:     stdin,
		Stdout:    stdout,
	})
}

// local runs a PostgreSQL client on this host with the password in its environment.
func (d dbClient) local(ctx context.Context, name string, args []string, stdout io.Writer) error {
	env := []string{"PGCONNECT_TIMEOUT=15"}
	if d.password != "" {
		env = append(env, "PGPASSWORD="+d.password)
	}
	return d.run.Run(ctx, runner.Cmd{Name: clientProgram(name), Args: args, Env: env, Stdout: stdout})
}

// containerConn renders connArgs for sh, quoting user and database as upstream does.
func (d dbClient) containerConn() string {
	return fmt.Sprintf("-h %s -p %d -U %s -d %s", shellWord(d.cfg.DBHost), d.cfg.DBPort, shellQuote(d.cfg.DBUser), shellQuote(d.name))
}

// dumpScript and dumpArgs are pg_dump --clean --if-exists of the database, plain SQL.
func (d dbClient) dumpScript() string { return "pg_dump --clean --if-exists " + d.containerConn() }

func (d dbClient) dumpArgs() []string {
	return append([]string{"--clean", "--if-exists", "--no-password"}, d.connArgs()...)
}

// dump writes the database dump to w.
func (d dbClient) dump(ctx context.Context, w io.Writer) error {
	if d.cfg.DBAccess == DBAccessContainer {
		return d.inContainer(ctx, d.dumpScript(), w)
	}
	return d.local(ctx, "pg_dump", d.dumpArgs(), w)
}

// query runs one SQL statement through psql and returns its unaligned, tuples-only output
// (fields separated by |).
func (d dbClient) query(ctx context.Context, sql string) (string, error) {
	var out bytes.Buffer
	var err error
	if d.cfg.DBAccess == DBAccessContainer {
		err = d.inContainer(ctx, "PGCONNECT_TIMEOUT=15 psql -X -w -A -t -q -v ON_ERROR_STOP=1 "+d.containerConn()+" -c "+shellQuote(sql), &out)
	} else {
		err = d.local(ctx, "psql", append([]string{"-X", "-w", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"}, append(d.connArgs(), "-c", sql)...), &out)
	}
	return out.String(), err
}

func (d dbClient) pgDumpVersion(ctx context.Context) (string, error) {
	var out bytes.Buffer
	var err error
	if d.cfg.DBAccess == DBAccessContainer {
		err = d.podman.Exec(ctx, podman.ExecOptions{Container: d.cfg.DBContainer, Command: []string{"pg_dump", "--version"}, Stdout: &out})
	} else {
		err = d.run.Run(ctx, runner.Cmd{Name: clientProgram("pg_dump"), Args: []string{"--version"}, Stdout: &out})
	}
	if err != nil {
		return "", err
	}
	if m := versionRE.FindString(out.String()); m != "" {
		return m, nil
	}
	return strings.TrimSpace(out.String()), nil
}

var versionRE = regexp.MustCompile(`\d+(\.\d+)+`)

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9._:/-]+$`)

// shellWord leaves a plain host name or address as it is and quotes anything else.
func shellWord(s string) string {
	if plainWord.MatchString(s) {
		return s
	}
	return shellQuote(s)
}

// cmdStream is a command's stdout as a reader. A command that fails makes Read return
// its error instead of io.EOF, so a consumer can never take a failed dump for a whole one.
//
// The command writes into an OS pipe of dumpPipeSize bytes that Read reads directly: the
// program (pg_dump, or podman relaying it) gets the pipe itself as its stdout, so no
// goroutine copies the stream in 32 KiB pieces in between, and each Read takes up to a
// whole pipe's worth.
type cmdStream struct {
	pr     *os.File
	out    *pipedOutput // the early container dump: stdout, then maybe a FIFO
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

// dumpPipeSize is the capacity asked for the stream's pipe (Linux's default limit for
// unprivileged processes, /proc/sys/fs/pipe-max-size); the kernel's 64 KiB stays when refused.
const dumpPipeSize = 1 << 20

func startStream(ctx context.Context, produce func(ctx context.Context, w io.Writer) error) *cmdStream {
	ctx, cancel := context.WithCancel(ctx)
	s := &cmdStream{cancel: cancel, done: make(chan struct{})}
	pr, pw, err := os.Pipe()
	if err != nil {
		s.pr, s.err = nil, fmt.Errorf("create a pipe for the stream: %w", err)
		close(s.done)
		return s
	}
	runner.SetPipeSize(pw, dumpPipeSize)
	s.pr = pr
	go func() {
		err := produce(ctx, pw)
		_ = pw.Close()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		close(s.done)
	}()
	return s
}

// Read reads the command's output; at its end, the command's error if it failed.
func (s *cmdStream) Read(p []byte) (int, error) {
	if s.pr == nil {
		return 0, s.CommandErr()
	}
	var n int
	var err error
	if s.out != nil {
		n, err = s.out.Read(p)
	} else {
		n, err = s.pr.Read(p)
	}
	if err == io.EOF {
		// Every writer has closed the pipe: the command has ended, or is ending.
		<-s.done
		if cerr := s.CommandErr(); cerr != nil {
			return n, cerr
		}
	}
	if errors.Is(err, os.ErrClosed) {
		err = errors.New("backup aborted")
	}
	return n, err
}

// Close stops the command if it still runs, waits for it and returns its error.
func (s *cmdStream) Close() error {
	select {
	case <-s.done:
	default:
		// The command's next write fails (EPIPE), and it is signalled.
		if s.pr != nil {
			_ = s.pr.Close()
		}
		if s.out != nil {
			s.out.close()
		}
		s.cancel()
		<-s.done
	}
	if s.out != nil {
		s.out.close()
	}
	s.cancel()
	if s.pr != nil {
		_ = s.pr.Close()
	}
	return s.CommandErr()
}

// CommandErr is the command's error once it has ended (nil before, or on success).
func (s *cmdStream) CommandErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
