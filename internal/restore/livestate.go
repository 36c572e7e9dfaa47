package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"flightctl.dr/internal/archive"
)

// LiveState is what a finished restore left on the server, recorded in the journal so that
// a later run with the same archive can tell whether the server still holds it: the live
// database (its pg_database oid: a database dropped and made again, or swapped, has a new
// one), a digest of every file tree put in place, and whether the KV store's
// awaiting-reconnect keys were there.
type LiveState struct {
	// DatabaseOID is the oid of the live database; "" when the restore loaded none.
	DatabaseOID string `json:"database_oid,omitempty"`
	// Files maps every live path replaced from the archive to a digest of its tree.
	Files map[string]string `json:"files,omitempty"`
	// KV is true when device preparation ran and its keys can be checked.
	KV bool `json:"kv,omitempty"`
}

// databaseOID is implemented by databases that can tell a database's oid.
type databaseOID interface {
	OID(ctx context.Context, name string) (string, error)
}

// OID returns the oid of database name, "" when there is no such database.
func (d *PsqlDatabase) OID(ctx context.Context, name string) (string, error) {
	out, err := d.query(ctx, "postgres", fmt.Sprintf("SELECT oid FROM pg_database WHERE datname = %s;", quoteLiteral(name)))
	if err != nil {
		return "", fmt.Errorf("look up database %s: %w", name, err)
	}
	return out, nil
}

// treeDigest is a stable digest of a tree as liveTree reads it ("" for a missing path).
func treeDigest(tree map[string]FileState) string {
	if len(tree) == 0 {
		return ""
	}
	keys := make([]string, 0, len(tree))
	for k := range tree {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		st := tree[k]
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%t\n", k, st.SHA256, st.Mode, st.Dir)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// journalTargets are the file targets the journal says were replaced.
func (r *run) journalTargets(j *Journal) []FileTarget {
	replaced := map[string]bool{}
	for _, f := range j.Files {
		replaced[f.Live] = true
	}
	var out []FileTarget
	for _, t := range r.target.Files() {
		if replaced[t.Path] {
			out = append(out, t)
		}
	}
	return out
}

// liveState reads what the server holds now, for the parts journal j restored.
func (r *run) liveState(ctx context.Context, j *Journal) (*LiveState, error) {
	st := &LiveState{Files: map[string]string{}}
	if db := r.target.Database(); db != nil && j.Database != nil {
		if o, ok := db.(databaseOID); ok {
			oid, err := o.OID(ctx, db.Name())
			if err != nil {
				return nil, err
			}
			st.DatabaseOID = oid
		}
	}
	for _, t := range r.journalTargets(j) {
		tree, err := liveTree(t)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t.Path, err)
		}
		st.Files[t.Path] = treeDigest(tree)
	}
	if err := r.liveItems(ctx, j, st); err != nil {
		return nil, err
	}
	st.KV = j.isDone(StepDevicePrep) && r.target.Devices() != nil
	return st, nil
}

// recordLiveState stores in the journal what the finished restore left on the server. A
// failure only costs the next run its shortcut: it then restores again.
func (r *run) recordLiveState(ctx context.Context) {
	j := r.journal
	if j == nil || j.State != StateDone {
		return
	}
	st, err := r.produced, r.producedErr
	if st == nil && err == nil {
		st, err = r.liveState(ctx, j)
	}
	if err == nil {
		j.Produced = st
		err = r.store.save(j)
	}
	if err != nil {
		r.res.warn(r.logger, "could not record what the restore left on the server (%v): running the restore again with this archive will restore it again", err)
	}
}

// applyAndRecord applies the journal's steps and, when the restore finished, records the
// state it produced.
func (r *run) applyAndRecord(ctx context.Context) error {
	if err := r.apply(ctx); err != nil {
		return err
	}
	r.recordLiveState(ctx)
	return nil
}

// liveDrift lists how the server differs from what the finished restore j left on it; an
// empty list means the server still holds that restore. A journal written before live
// states were recorded (no Produced) cannot tell: it is reported as no drift.
func (r *run) liveDrift(ctx context.Context, j *Journal) ([]string, error) {
	p := j.Produced
	if p == nil {
		return nil, nil
	}
	now, err := r.liveState(ctx, j)
	if err != nil {
		return nil, fmt.Errorf("compare the server with the restore %s: %w", j.ID, err)
	}
	var drift []string
	if p.DatabaseOID != "" {
		name := j.Database.Live
		switch now.DatabaseOID {
		case "":
			drift = append(drift, fmt.Sprintf("database %s is missing", name))
		case p.DatabaseOID:
		default:
			drift = append(drift, fmt.Sprintf("database %s is not the one the restore loaded (it was dropped or replaced since)", name))
		}
	}
	paths := make([]string, 0, len(p.Files))
	for path := range p.Files {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	for _, path := range paths {
		got, ok := now.Files[path]
		switch {
		case !ok:
		case got == "" && p.Files[path] != "":
			drift = append(drift, path+" is missing")
		case got != p.Files[path]:
			drift = append(drift, path+" changed")
		}
	}
	// The KV store can only be asked once the database is the restored one.
	if p.KV && len(drift) == 0 {
		missing, err := r.missingKeys(ctx, j)
		if err != nil {
			return nil, fmt.Errorf("compare the KV store with the restore %s: %w", j.ID, err)
		}
		if missing > 0 {
			drift = append(drift, fmt.Sprintf("the KV store lacks %d awaiting-reconnect keys (it was flushed or replaced since)", missing))
		}
	}
	return drift, nil
}

// missingKeys is the number of devices awaiting reconnection whose KV key is missing.
// Devices that reconnected since are no longer awaiting and do not count.
func (r *run) missingKeys(ctx context.Context, j *Journal) (int, error) {
	dev := r.target.Devices()
	if err := dev.Check(ctx); err != nil {
		return 0, err
	}
	counts, _, err := dev.Prepare(ctx, DevicePrepRequest{RestoreID: j.ID, DryRun: true})
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(counts)
	if err != nil {
		return 0, err
	}
	var plan struct {
		Before *struct {
			KeysMissing int `json:"awaiting_reconnect_keys_missing"`
		} `json:"before"`
	}
	if err := json.Unmarshal(b, &plan); err != nil || plan.Before == nil {
		return 0, nil
	}
	return plan.Before.KeysMissing, nil
}

// checkEstate refuses an archive of another estate unless the operator named it as the
// source. Archives that record no estate (upstream's, older ones) pass with a warning.
func (r *run) checkEstate() error {
	md := r.report.Metadata
	here := strings.TrimSpace(r.opts.EstateName)
	if md.Estate == nil || md.Estate.Name == "" {
		if here != "" {
			r.res.warn(r.logger, "the archive records no estate (made by upstream flightctl-backup or an older flightctl.dr): make sure it is a backup of %s", here)
		}
		return nil
	}
	from := md.Estate.Name
	if here == "" || from == here {
		return nil
	}
	if strings.TrimSpace(r.opts.SourceEstate) == from {
		r.res.warn(r.logger, "restoring estate %s's archive onto estate %s, as asked (source estate %s): this server takes %s's database, PKI and keys", from, here, from, from)
		return nil
	}
	if r.opts.SourceEstate != "" {
		return fmt.Errorf("archive %s was made on estate %s, not on the source estate named (%s): name the estate the archive comes from", r.opts.ArchivePath, describeEstate(md.Estate), r.opts.SourceEstate)
	}
	return fmt.Errorf("%w: archive %s was made on estate %s but this server is estate %s; restoring it would give this server %s's database, PKI and keys. If this host replaces %s, name the source estate (%s)",
		ErrOtherEstate, r.opts.ArchivePath, describeEstate(md.Estate), here, from, from, r.opts.sourceEstateHint(from))
}

// ErrOtherEstate is returned when the archive belongs to another estate.
var ErrOtherEstate = fmt.Errorf("archive of another estate")

func (o *Options) sourceEstateHint(from string) string {
	if o.SourceEstateHint != "" {
		return strings.ReplaceAll(o.SourceEstateHint, "{estate}", from)
	}
	return "source_estate: " + from
}

func describeEstate(e *archive.Estate) string {
	s := e.Name
	var parts []string
	if e.APIEndpoint != "" {
		parts = append(parts, "API "+e.APIEndpoint)
	}
	if e.CAFingerprint != "" {
		parts = append(parts, "CA "+e.CAFingerprint)
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}
