package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"

	"flightctl.dr/internal/encrypt"
	"flightctl.dr/internal/pgdump"
)

// maxMetadataSize bounds metadata.json, which is read into memory (a manifest
// of 100k entries is about 20 MiB).
const maxMetadataSize = 64 << 20

func (o VerifyOptions) withDefaults(archivePath string) VerifyOptions {
	if o.ChecksumFile == "" {
		o.ChecksumFile = archivePath + ".sha256"
	}
	d := DefaultLimits()
	if o.Limits.MaxEntries <= 0 {
		o.Limits.MaxEntries = d.MaxEntries
	}
	if o.Limits.MaxEntrySize <= 0 {
		o.Limits.MaxEntrySize = d.MaxEntrySize
	}
	if o.Limits.MaxTotalSize <= 0 {
		o.Limits.MaxTotalSize = d.MaxTotalSize
	}
	if o.Limits.MaxExpansion <= 0 {
		o.Limits.MaxExpansion = d.MaxExpansion
	}
	for _, p := range []struct{ v, d *int64 }{
		{&o.Limits.MaxPKISize, &d.MaxPKISize}, {&o.Limits.MaxEncryptionSize, &d.MaxEncryptionSize},
		{&o.Limits.MaxConfigSize, &d.MaxConfigSize}, {&o.Limits.MaxVolumeSize, &d.MaxVolumeSize},
	} {
		if *p.v <= 0 {
			*p.v = *p.d
		}
	}
	return o
}

// entrySink receives the entries of an archive being read; Extract writes
// them, Verify only checks them.
type entrySink interface {
	dir(name string, hdr *tar.Header) error
	// file returns where the content goes (nil: nowhere) and a function to
	// call once it is all written.
	file(name string, hdr *tar.Header) (io.Writer, func() error, error)
}

// scanner checks entries as they stream past.
type scanner struct {
	limits Limits
	expect map[string]ManifestEntry // from VerifyOptions.Manifest; nil: none
	// checkDump runs db/dump.sql through the dump checker (not when the caller loads
	// the dump through it itself); dumpRows are the rows it counted.
	checkDump bool
	dumpRows  map[string]int64
	sink      entrySink
	entries   []Entry
	types     map[string]string
	parents   map[string]bool
	held      tally
	metadata  []byte
	buf       []byte
	// decryption reads an encrypted archive (nil: none given).
	decryption *encrypt.Identities
}

func newScanner(limits Limits, sink entrySink) *scanner {
	return &scanner{limits: limits, sink: sink, types: map[string]string{}, parents: map[string]bool{}, held: newTally(limits), buf: make([]byte, 256<<10)}
}

// tally is what the file entries admitted so far hold, for the limits on sums.
type tally struct {
	total   int64
	comps   map[string]int64
	budgets []int64
}

func newTally(l Limits) tally {
	return tally{comps: map[string]int64{}, budgets: make([]int64, len(l.Budgets))}
}

// admit checks a file entry of size bytes against the limits and counts it. It is the one
// rule for sizes: the walk applies it to each header as it arrives, before the content is
// read, and CheckMetadata to the manifest before the walk, so that both refuse with the
// same words.
func (l Limits) admit(t *tally, raw, name string, size int64) error {
	if size < 0 || size > l.MaxEntrySize {
		return entryError(KindLimit, raw, "archive entry %q is %d bytes, past the limit of %d per entry: the archive may be a decompression bomb, do not restore from it (a larger max_total_size raises the limit)", raw, size, l.MaxEntrySize)
	}
	if t.total+size > l.MaxTotalSize {
		return entryError(KindLimit, raw, "archive entry %q brings the archive past the limit of %d bytes in total: the archive may be a decompression bomb, do not restore from it (the limit is the max_total_size option)", raw, l.MaxTotalSize)
	}
	if what, limit := l.componentLimit(name); limit > 0 && size > limit-t.comps[what] {
		return entryError(KindLimit, raw, "archive entry %q brings %s to more than %d bytes, past its limit: a Flight Control server's is far smaller, the archive is a decompression bomb or was tampered with: do not restore from it", raw, what, limit)
	}
	for i, b := range l.Budgets {
		if b.Holds != nil && b.Holds(name) && size > b.Bytes-t.budgets[i] {
			return entryError(KindLimit, raw, "archive entry %q brings %s to more than %d bytes, past the budget of %s: %s", raw, b.What, b.Bytes, b.From, b.Advice)
		}
	}
	if what, limit := l.componentLimit(name); limit > 0 {
		t.comps[what] += size
	}
	for i, b := range l.Budgets {
		if b.Holds != nil && b.Holds(name) {
			t.budgets[i] += size
		}
	}
	t.total += size
	return nil
}

// expectManifest makes the scanner hold every entry to the manifest as its header shows.
func (s *scanner) expectManifest(m []ManifestEntry) {
	if len(m) == 0 {
		return
	}
	s.expect = make(map[string]ManifestEntry, len(m))
	for _, e := range m {
		s.expect[e.Path] = e
	}
}

// countingReader counts the compressed bytes the decompressor takes.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// expansionReader refuses a stream that inflates past the limit, as soon as it does.
type expansionReader struct {
	r      io.Reader
	in     *countingReader
	out    int64
	limit  float64
	failed error
}

func (e *expansionReader) Read(p []byte) (int, error) {
	if e.failed != nil {
		return 0, e.failed
	}
	n, err := e.r.Read(p)
	e.out += int64(n)
	if e.out > ExpansionFloor && float64(e.out) > e.limit*float64(max(e.in.n, 1)) {
		e.failed = &IntegrityError{Kind: KindLimit, Detail: fmt.Sprintf("the archive inflates to more than %.0f times its compressed size (%d bytes of tar from %d compressed): SQL and PEM files never compress that well, the archive is a decompression bomb or was tampered with: do not restore from it (the limit is the max_expansion option)", e.limit, e.out, e.in.n)}
		return n, e.failed
	}
	return n, err
}

func classifyReadError(entry string, err error) error {
	if _, ok := IsIntegrityError(err); ok {
		return err
	}
	var corrupt flate.CorruptInputError
	where := "the archive"
	if entry != "" {
		where = fmt.Sprintf("archive entry %q", entry)
	}
	switch {
	case errors.Is(err, gzip.ErrChecksum), errors.Is(err, gzip.ErrHeader), errors.As(err, &corrupt):
		return &IntegrityError{Kind: KindCompression, Entry: entry, Detail: fmt.Sprintf("%s: the gzip stream is damaged (%v): the archive is corrupt, do not restore from it", where, err), Err: err}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &IntegrityError{Kind: KindStructure, Entry: entry, Detail: fmt.Sprintf("%s: the archive ends too early: it is truncated (an interrupted copy or backup?), do not restore from it", where), Err: err}
	case errors.Is(err, tar.ErrHeader), errors.Is(err, tar.ErrFieldTooLong):
		return &IntegrityError{Kind: KindStructure, Entry: entry, Detail: fmt.Sprintf("%s: the tar stream is damaged (%v): the archive is corrupt, do not restore from it", where, err), Err: err}
	}
	return err
}

func typeName(flag byte) string {
	switch flag {
	case tar.TypeSymlink:
		return "a symbolic link"
	case tar.TypeLink:
		return "a hard link"
	case tar.TypeChar:
		return "a character device"
	case tar.TypeBlock:
		return "a block device"
	case tar.TypeFifo:
		return "a FIFO"
	case tar.TypeXGlobalHeader:
		return "a PAX global header"
	case tar.TypeGNUSparse:
		return "a sparse file"
	}
	return fmt.Sprintf("of tar type %q", flag)
}

// scan reads the whole gzip+tar stream from compressed.
func (s *scanner) scan(ctx context.Context, compressed io.Reader) error {
	in := &countingReader{r: compressed}
	gzr, err := newDecompressor(in)
	if err == io.EOF {
		return &IntegrityError{Kind: KindStructure, Detail: "the archive is empty: an interrupted copy or backup? do not restore from it"}
	}
	if err != nil {
		return classifyReadError("", err)
	}
	defer gzr.Close()
	gz := &expansionReader{r: gzr, in: in, limit: s.limits.MaxExpansion}
	tr := tar.NewReader(gz)
	last := ""
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if last != "" {
				return classifyReadError("", fmt.Errorf("after entry %q: %w", last, err))
			}
			return classifyReadError("", err)
		}
		if err := s.entry(ctx, tr, hdr); err != nil {
			return err
		}
		last = hdr.Name
	}
	// Read what follows the end-of-archive marker: it must be zeros, and
	// reading it checks the last gzip member's CRC.
	for {
		n, err := gz.Read(s.buf)
		if n > 0 && !allZero(s.buf[:n]) {
			return &IntegrityError{Kind: KindStructure, Detail: "the archive has data after the end of the tar stream: the archive is corrupt or was tampered with, do not restore from it"}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return classifyReadError("", err)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (s *scanner) entry(ctx context.Context, tr *tar.Reader, hdr *tar.Header) error {
	raw := hdr.Name
	if len(s.entries)+1 > s.limits.MaxEntries {
		return entryError(KindLimit, raw, "archive entry %q is past the limit of %d entries: the archive may be a decompression bomb, do not restore from it", raw, s.limits.MaxEntries)
	}
	name, err := cleanEntryName(raw)
	if err != nil {
		return err
	}
	typ := ""
	switch hdr.Typeflag {
	case tar.TypeDir:
		typ = TypeDir
	case tar.TypeReg, '\x00':
		typ = TypeFile
		if strings.HasSuffix(raw, "/") {
			return entryError(KindUnsafePath, raw, "archive entry %q is a regular file with a directory name: %s", raw, doNotRestore)
		}
	default:
		return entryError(KindEntryType, raw, "archive entry %q is %s; only regular files and directories are allowed: %s", raw, typeName(hdr.Typeflag), doNotRestore)
	}
	if name == "" {
		if typ == TypeDir {
			return nil // "./": the root itself
		}
		return entryError(KindUnsafePath, raw, "archive entry %q has an empty name: %s", raw, doNotRestore)
	}
	if prev, ok := s.types[name]; ok {
		return entryError(KindDuplicate, raw, "archive entry %q appears twice (first as a %s): the archive is ambiguous, do not restore from it", raw, prev)
	}
	if typ == TypeFile && s.parents[name] {
		return entryError(KindDuplicate, raw, "archive entry %q is a file but earlier entries use it as a directory: %s", raw, doNotRestore)
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if s.types[dir] == TypeFile {
			return entryError(KindDuplicate, raw, "archive entry %q is inside %q, which is a file: %s", raw, dir, doNotRestore)
		}
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	e := Entry{Path: name, Type: typ, Mode: fmt.Sprintf("%04o", mode)}
	s.types[name] = typ
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		s.parents[dir] = true
	}
	if typ == TypeDir {
		if err := s.sink.dir(name, hdr); err != nil {
			return err
		}
		s.entries = append(s.entries, e)
		return nil
	}

	if s.expect != nil && name != MetadataName {
		m, ok := s.expect[name]
		switch {
		case !ok:
			return entryError(KindManifest, name, "archive entry %q is not listed in the manifest: the archive was altered, do not restore from it", name)
		case m.Type == TypeFile && m.Size != hdr.Size:
			return entryError(KindManifest, name, "archive entry %q is %d bytes but the manifest says %d: the archive was altered, do not restore from it", name, hdr.Size, m.Size)
		}
	}
	// The header says how many bytes follow, and the tar reader never yields more: the
	// limits and budgets are held from it, before the content is read.
	if err := s.limits.admit(&s.held, raw, name, hdr.Size); err != nil {
		return err
	}
	if name == MetadataName && hdr.Size > maxMetadataSize {
		return entryError(KindMetadata, raw, "archive entry %q is %d bytes, more than metadata can be (%d): do not restore from this archive", raw, hdr.Size, maxMetadataSize)
	}

	out, finish, err := s.sink.file(name, hdr)
	if err != nil {
		return err
	}
	h := sha256.New()
	var meta *bytes.Buffer
	dst := io.Writer(h)
	if name == MetadataName {
		meta = bytes.NewBuffer(make([]byte, 0, hdr.Size))
		dst = io.MultiWriter(h, meta)
	}
	if out != nil {
		dst = io.MultiWriter(dst, out)
	}
	var dump *dumpWatch
	if name == DatabaseDump && s.checkDump {
		// The dump is checked as a restore checks it, and refused as soon as it shows.
		dump = &dumpWatch{w: pgdump.Watch()}
		dst = io.MultiWriter(dst, dump)
	}
	n, err := copyCtx(ctx, dst, tr, s.buf)
	if dump != nil {
		st := dump.w.Close()
		if st.Err != nil {
			return DumpRefused(st.Err)
		}
		s.dumpRows = st.Rows
	}
	if err != nil {
		return classifyReadError(raw, err)
	}
	if n != hdr.Size {
		return entryError(KindStructure, raw, "archive entry %q holds %d bytes instead of %d: the archive is corrupt, do not restore from it", raw, n, hdr.Size)
	}
	if finish != nil {
		if err := finish(); err != nil {
			return err
		}
	}
	if meta != nil {
		s.metadata = meta.Bytes()
	}
	e.Size = hdr.Size
	e.SHA256 = hex.EncodeToString(h.Sum(nil))
	s.entries = append(s.entries, e)
	return nil
}

func copyCtx(ctx context.Context, dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// checkMetadata parses metadata.json and checks it, the manifest and the
// expectations, filling the report.
func (s *scanner) checkMetadata(rep *Report, opts VerifyOptions) error {
	if s.metadata == nil {
		return &IntegrityError{Kind: KindMetadata, Entry: MetadataName, Detail: "the archive has no metadata.json: it was not written by flightctl-backup or is incomplete, do not restore from it"}
	}
	bad := func(format string, args ...any) error {
		return &IntegrityError{Kind: KindMetadata, Entry: MetadataName, Detail: "metadata.json " + fmt.Sprintf(format, args...) + ": do not restore from this archive"}
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(s.metadata, &raw); err != nil {
		return bad("is not a JSON object (%v)", err)
	}
	for _, key := range []string{"timestamp", "version", "deploymentType", "databaseIncluded"} {
		if _, ok := raw[key]; !ok {
			return bad("has no %q key", key)
		}
	}
	var meta Metadata
	if err := json.Unmarshal(s.metadata, &meta); err != nil {
		return bad("is malformed (%v)", err)
	}
	var ts string
	if err := json.Unmarshal(raw["timestamp"], &ts); err != nil {
		return bad("has a timestamp that is not a string")
	}
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		return bad("has a timestamp %q that is not RFC 3339", ts)
	}
	if meta.Version == "" {
		return bad("has an empty version")
	}
	if meta.DeploymentType != DeploymentPodman && meta.DeploymentType != DeploymentKubernetes {
		return bad("has deploymentType %q; expected %q or %q", meta.DeploymentType, DeploymentPodman, DeploymentKubernetes)
	}
	if meta.FormatVersion > FormatVersion {
		return &IntegrityError{Kind: KindMetadata, Entry: MetadataName, Detail: fmt.Sprintf("archive format version %d is newer than this tool reads (%d): upgrade flightctl.dr before restoring from it", meta.FormatVersion, FormatVersion)}
	}
	rep.Metadata = meta
	_, rep.HasManifest = raw["manifest"]

	byPath := make(map[string]*Entry, len(s.entries))
	for i := range s.entries {
		byPath[s.entries[i].Path] = &s.entries[i]
	}
	if err := checkDatabaseIncluded(meta.DatabaseIncluded, byPath[DatabaseDump] != nil && byPath[DatabaseDump].Type == TypeFile); err != nil {
		return err
	}
	if rep.HasManifest {
		// Known before the walk (expectEarly) or only now: metadata.json comes last.
		if err := checkManifest(meta.Manifest, byPath); err != nil {
			return err
		}
	}
	if s.dumpRows != nil {
		warnings, err := CheckDumpRows(s.dumpRows, meta)
		if err != nil {
			return err
		}
		rep.Warnings = append(rep.Warnings, warnings...)
	}
	if opts.ExpectedDeploymentType != "" && meta.DeploymentType != opts.ExpectedDeploymentType {
		return &IntegrityError{Kind: KindDeploymentType, Entry: MetadataName, Detail: fmt.Sprintf("deployment type mismatch: archive was created on a %q deployment but the current environment is %q; cross-deployment restore is not supported", meta.DeploymentType, opts.ExpectedDeploymentType)}
	}
	if opts.ExpectedVersion != "" && meta.Version != opts.ExpectedVersion {
		return &IntegrityError{Kind: KindVersion, Entry: MetadataName, Detail: fmt.Sprintf("version mismatch: archive was created by server version %q but the expected version is %q; restore it on a server of the same version", meta.Version, opts.ExpectedVersion)}
	}
	return nil
}

// expectEarly holds the walk to the manifest before the data is read: opts.Manifest, or
// the one metadata.json at the archive's tail lists (ReadMetadata: our archives, whose
// gzip members say their lengths). An entry the manifest does not list, or lists with
// another size, is then refused from its header, and the manifest's sizes are held to the
// limits and budgets (CheckMetadata) before the first byte is inflated, as a restore does.
// The total cannot then pass the manifest's: every entry is listed once, with its size.
//
// The tail is read before the checksum is known, so it only ever adds refusals: the walk
// still checks metadata.json as it finds it against the entries (checkManifest). When the
// tail cannot be read this way (upstream's archives, which have no manifest, another
// layout, a damaged end), the manifest is only known once the walk reaches metadata.json,
// which every writer puts last, after the data: the entries are then compared with it at
// the end, and a damaged archive is reported in the walk's words, a wrong checksum first.
func (s *scanner) expectEarly(ctx context.Context, path string, opts VerifyOptions) error {
	m := opts.Manifest
	if m == nil {
		md, err := ReadMetadataWith(ctx, path, opts.Decryption)
		if err != nil || md.FormatVersion < 1 || len(md.Manifest) == 0 {
			return nil
		}
		if err := CheckMetadata(md, opts.Limits); err != nil {
			return err
		}
		m = md.Manifest
	}
	s.expectManifest(m)
	return nil
}

func checkManifest(manifest []ManifestEntry, byPath map[string]*Entry) error {
	listed := make(map[string]bool, len(manifest))
	for _, m := range manifest {
		if listed[m.Path] {
			return entryError(KindManifest, m.Path, "the manifest lists %q twice: the metadata is corrupt, do not restore from this archive", m.Path)
		}
		listed[m.Path] = true
		e := byPath[m.Path]
		switch {
		case e == nil:
			return entryError(KindManifest, m.Path, "archive entry %q is listed in the manifest but missing from the archive: the archive is incomplete, do not restore from it", m.Path)
		case e.Type != m.Type:
			return entryError(KindManifest, m.Path, "archive entry %q is a %s but the manifest says %s: the archive was altered, do not restore from it", m.Path, e.Type, m.Type)
		case e.Type == TypeFile && e.Size != m.Size:
			return entryError(KindManifest, m.Path, "archive entry %q is %d bytes but the manifest says %d: the archive was altered, do not restore from it", m.Path, e.Size, m.Size)
		case e.Type == TypeFile && !strings.EqualFold(e.SHA256, m.SHA256):
			return entryError(KindManifest, m.Path, "archive entry %q has sha256 %s but the manifest says %s: the archive was altered, do not restore from it", m.Path, e.SHA256, m.SHA256)
		case m.Mode != "" && e.Mode != m.Mode:
			return entryError(KindManifest, m.Path, "archive entry %q has mode %s but the manifest says %s: the archive was altered, do not restore from it", m.Path, e.Mode, m.Mode)
		}
	}
	for p, e := range byPath {
		if p != MetadataName && e.Type == TypeFile && !listed[p] {
			return entryError(KindManifest, p, "archive entry %q is not listed in the manifest: the archive was altered, do not restore from it", p)
		}
	}
	return nil
}

func components(entries []Entry) Components {
	var c Components
	for _, e := range entries {
		if e.Type != TypeFile {
			continue
		}
		top, _, nested := strings.Cut(e.Path, "/")
		switch {
		case e.Path == DatabaseDump:
			c.Database = true
		case nested && top == "pki":
			c.PKI = true
		case nested && top == "encryption":
			c.Encryption = true
		case nested && top == "config":
			c.Config = true
		case nested && top == "volumes":
			c.Volumes = true
		}
	}
	return c
}

// openArchive opens path and checks it is a regular file.
func openArchive(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("archive %q does not exist: %w", path, fs.ErrNotExist)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("open archive: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open archive: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("open archive %q: it is a %s, not a regular file", path, describeMode(st.Mode()))
	}
	return f, st.Size(), nil
}

// expectedChecksum reads the checksum file. It returns "" when the file is
// missing and not required.
// openWithChecksum reads the expected checksum (opts already has its defaults), then opens
// the archive: the first steps of Verify and Extract.
func openWithChecksum(path string, opts VerifyOptions) (f *os.File, want string, err error) {
	// The archive first: a missing archive is reported as such, not as its missing .sha256.
	f, _, err = openArchive(path)
	if err != nil {
		return nil, "", err
	}
	if opts.ExpectedSHA256 != "" {
		want = strings.ToLower(opts.ExpectedSHA256)
	} else if want, err = expectedChecksum(opts); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("archive integrity check failed: %w", err)
	}
	return f, want, nil
}

func expectedChecksum(opts VerifyOptions) (string, error) {
	sum, err := readChecksumFile(opts.ChecksumFile)
	if err != nil && !opts.RequireChecksum && errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return sum, err
}

func checksumMismatch(path, want, got string, cause error) error {
	detail := fmt.Sprintf("checksum mismatch for archive %q: expected %s, got %s", path, want, got)
	if cause != nil {
		detail += fmt.Sprintf(" (reading it also failed: %v)", cause)
	}
	return &IntegrityError{Kind: KindChecksum, Detail: detail + "; the archive is damaged or not the one the checksum was made for: do not restore from it"}
}

// Verify checks an archive without writing anything: checksum, gzip and tar
// structure, entry safety, metadata.json, manifest and expectations. It reads
// the file once. The error is an *IntegrityError when the archive is bad.
func Verify(ctx context.Context, path string, opts VerifyOptions) (*Report, error) {
	opts = opts.withDefaults(path)
	// Who wrote it comes before anything else is read.
	sig, warnings, err := CheckSignature(path, opts.Signature)
	if err != nil {
		return nil, err
	}
	f, want, err := openWithChecksum(path, opts)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if enc, err := isEncrypted(f); err != nil {
		return nil, err
	} else if enc && opts.Decryption.Empty() && opts.CiphertextOnly {
		rep, err := verifyCiphertext(ctx, f, path, want, opts)
		if err != nil {
			return nil, err
		}
		if sig.Checked {
			rep.Signature = sig
		}
		rep.Warnings = append(rep.Warnings, warnings...)
		return rep, nil
	}
	s := newScanner(opts.Limits, verifySink{})
	if err := s.expectEarly(ctx, path, opts); err != nil {
		return nil, err
	}
	s.checkDump = opts.CheckDump
	s.decryption = opts.Decryption
	rep, err := runScan(ctx, f, path, want, s)
	if err != nil {
		return nil, err
	}
	rep.ChecksumFile = opts.ChecksumFile
	if sig.Checked {
		rep.Signature = sig
	}
	rep.Warnings = append(rep.Warnings, warnings...)
	if err := s.checkMetadata(rep, opts); err != nil {
		return nil, fmt.Errorf("archive integrity check failed: %w", err)
	}
	return rep, nil
}

// runScan reads f once, hashing it while scanning. When want is set, a
// mismatch is reported in preference to whatever else broke, since it says
// the file is not the one that was written.
func runScan(ctx context.Context, f io.Reader, path, want string, s *scanner) (*Report, error) {
	encrypted, err := isEncrypted(f)
	if err != nil {
		return nil, err
	}
	hr := newHashingReader(ctx, f)
	var encRep *EncryptionReport
	scanErr := func() error {
		if !encrypted {
			return s.scan(ctx, hr)
		}
		// tar, gzip, age, file: decrypted in the pass that hashes the file.
		dec, rep, err := openPayload(hr, s.decryption)
		if err != nil {
			return err
		}
		encRep = rep
		if err := s.scan(ctx, dec); err != nil {
			if _, ok := encrypt.AsError(err); ok {
				return encryptionError(err)
			}
			var ie *IntegrityError
			if errors.As(err, &ie) && ie.Err != nil {
				if _, ok := encrypt.AsError(ie.Err); ok {
					return encryptionError(ie.Err)
				}
			}
			return err
		}
		// The age file must end where its last chunk says.
		if n, err := io.Copy(io.Discard, dec); err != nil || n != 0 {
			if err == nil {
				err = fmt.Errorf("%d bytes after the end of the gzip stream", n)
				return &IntegrityError{Kind: KindStructure, Detail: "the encrypted archive holds data after the end of the archive: it was tampered with, do not restore from it", Err: err}
			}
			return encryptionError(err)
		}
		return nil
	}()
	if scanErr != nil && (ctx.Err() != nil || want == "") {
		hr.close()
		if ctx.Err() == nil {
			scanErr = fmt.Errorf("archive integrity check failed: %w", scanErr)
		}
		return nil, scanErr
	}
	sum, size, readErr := hr.finish()
	if readErr != nil {
		return nil, fmt.Errorf("read archive %q: %w", path, readErr)
	}
	got := hex.EncodeToString(sum)
	if want != "" && got != want {
		return nil, fmt.Errorf("archive integrity check failed: %w", checksumMismatch(path, want, got, scanErr))
	}
	if scanErr != nil {
		return nil, fmt.Errorf("archive integrity check failed: %w", scanErr)
	}
	if encRep != nil {
		encRep.ContentsVerified = true
		if ra, ok := f.(io.ReaderAt); ok {
			if r, err := stanzaReport(ra, size); err == nil {
				encRep.RecipientTypes = r.RecipientTypes
			}
		}
	}
	return &Report{
		Path:              path,
		SHA256:            got,
		Size:              size,
		ChecksumVerified:  want != "",
		Entries:           s.entries,
		Components:        components(s.entries),
		ArchiveEncryption: encRep,
	}, nil
}

type verifySink struct{}

func (verifySink) dir(string, *tar.Header) error { return nil }
func (verifySink) file(string, *tar.Header) (io.Writer, func() error, error) {
	return nil, nil, nil
}

// checkDatabaseIncluded is the rule that metadata.json and the archive agree on the dump.
func checkDatabaseIncluded(included, present bool) error {
	switch {
	case included && !present:
		return &IntegrityError{Kind: KindMetadata, Entry: DatabaseDump, Detail: fmt.Sprintf("metadata.json says the database is included but the archive has no %s: the archive is incomplete, do not restore from it", DatabaseDump)}
	case !included && present:
		return &IntegrityError{Kind: KindMetadata, Entry: DatabaseDump, Detail: fmt.Sprintf("metadata.json says the database is not included (an external database) but the archive holds %s: the archive was altered, do not restore from it", DatabaseDump)}
	}
	return nil
}

// CheckMetadata applies to metadata read on its own (ReadMetadata, before the archive is
// walked) the rules a full verification applies to it: the manifest's names, its
// sizes against the limits and budgets, and databaseIncluded against the dump's presence.
// Its refusals are worded as Verify's.
func CheckMetadata(md *Metadata, limits Limits) error {
	limits = VerifyOptions{Limits: limits}.withDefaults("").Limits
	held := newTally(limits)
	present := false
	for _, m := range md.Manifest {
		name, err := cleanEntryName(m.Path)
		if err != nil {
			return fmt.Errorf("archive integrity check failed: %w", err)
		}
		if name != m.Path {
			return fmt.Errorf("archive integrity check failed: %w", entryError(KindManifest, m.Path, "the manifest lists %q, which is not a canonical name: the metadata is corrupt, do not restore from this archive", m.Path))
		}
		if m.Path == DatabaseDump && m.Type == TypeFile {
			present = true
		}
		if m.Type != TypeFile {
			continue
		}
		// The manifest lists the entries in the archive's order, so the entry refused here
		// is the one the walk would refuse from its header.
		if err := limits.admit(&held, m.Path, m.Path, m.Size); err != nil {
			return fmt.Errorf("archive integrity check failed: %w", err)
		}
	}
	if len(md.Manifest) > 0 {
		if err := checkDatabaseIncluded(md.DatabaseIncluded, present); err != nil {
			return fmt.Errorf("archive integrity check failed: %w", err)
		}
	}
	return nil
}
