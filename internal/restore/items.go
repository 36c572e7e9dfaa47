package restore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"flightctl.dr/internal/archive"
)

// State that lives in objects rather than files (Kubernetes Secrets) is restored through
// an ItemStore: the archive's entries are staged (parsed and checked, nothing applied)
// during the load pass, the live objects are recorded in the journal before the first is
// replaced, and a rollback puts the recorded ones back (and removes those that did not
// exist).

// ItemComponent is one part of the archive restored into objects.
type ItemComponent struct {
	// Name is the component ("pki", "encryption", "config").
	Name string
	// Entry is an archive directory ("pki": every regular file under it) or file.
	Entry string
	// Required makes a missing entry an error; otherwise it is a warning and the live
	// objects are left alone.
	Required bool
}

// Item is one object a restore writes, or a live object it recorded.
type Item struct {
	Component string `json:"component"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Absent: the object does not exist (a recorded object: it did not exist before the
	// restore, so a rollback removes it).
	Absent bool `json:"absent,omitempty"`
	// Object is the object's content as the estate writes it back.
	Object json.RawMessage `json:"object,omitempty"`
	// Note says what applying it does, for the log.
	Note string `json:"note,omitempty"`
	// Warning is something the operator must know or do about it; it becomes one of the
	// result's warnings.
	Warning string `json:"warning,omitempty"`
}

// Ref is "Secret flightctl/flightctl-ca".
func (i Item) Ref() string { return i.Kind + " " + i.Namespace + "/" + i.Name }

// ItemStore stages and applies the objects of an estate.
type ItemStore interface {
	Components() []ItemComponent
	// Stage turns the archive's entries (path → content) into the objects to write. It
	// refuses what it cannot apply safely and changes nothing.
	Stage(ctx context.Context, entries map[string][]byte) ([]Item, error)
	// Current reads the live object of each item (Absent when there is none).
	Current(ctx context.Context, items []Item) ([]Item, error)
	// Apply makes each item's live object what the item says; an Absent item is removed.
	Apply(ctx context.Context, items []Item) error
}

// ItemTarget is a Target whose state items are objects.
type ItemTarget interface {
	Items() ItemStore
}

// JournalItems records the staged objects and, before the first is applied, the live ones.
type JournalItems struct {
	Components []string `json:"components"`
	Staged     []Item   `json:"staged,omitempty"`
	Before     []Item   `json:"before,omitempty"`
	// BeforeRecorded is true once Before holds the live objects from before any change.
	BeforeRecorded bool `json:"before_recorded,omitempty"`
}

// StepApplyItems is the part of swap_files that writes the objects (checkpoint names).
const StepApplyItems = "apply_items"

func (r *run) itemStore() ItemStore {
	if it, ok := r.target.(ItemTarget); ok {
		return it.Items()
	}
	return nil
}

// selectItems decides which item components the archive restores.
func (r *run) selectItems(entries map[string]archive.Entry) error {
	store := r.itemStore()
	if store == nil {
		return nil
	}
	for _, c := range store.Components() {
		found := false
		for p := range entries {
			if p == c.Entry || strings.HasPrefix(p, c.Entry+"/") {
				found = true
				break
			}
		}
		if !found {
			if c.Required {
				return fmt.Errorf("%s missing from archive: %s not found; this archive cannot be restored", c.Name, c.Entry)
			}
			r.res.warn(r.logger, "no %s in the archive (%s): the live objects are left as they are", c.Name, c.Entry)
			continue
		}
		r.items = append(r.items, c)
	}
	return nil
}

// maxItemEntry bounds one staged object entry (a Secret is at most 1 MiB in etcd).
const maxItemEntry = 4 << 20

// itemBuffer collects the archive entries of the item components during the load pass.
type itemBuffer struct {
	comps   []ItemComponent
	entries map[string][]byte
}

func newItemBuffer(comps []ItemComponent) *itemBuffer {
	return &itemBuffer{comps: comps, entries: map[string][]byte{}}
}

func (b *itemBuffer) wants(name string) bool {
	for _, c := range b.comps {
		if name == c.Entry || strings.HasPrefix(name, c.Entry+"/") {
			return true
		}
	}
	return false
}

func (b *itemBuffer) add(name string, rd io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(rd, maxItemEntry+1))
	if err != nil {
		return fmt.Errorf("stage %s: %w", name, err)
	}
	if len(data) > maxItemEntry {
		return fmt.Errorf("stage %s: larger than %d bytes, which no Secret can hold", name, maxItemEntry)
	}
	b.entries[name] = data
	return nil
}

// stageItems hands the collected entries to the estate and records what it will write.
func (r *run) stageItems(ctx context.Context, b *itemBuffer) error {
	staged, err := r.itemStore().Stage(ctx, b.entries)
	if err != nil {
		return err
	}
	r.journal.Items.Staged = staged
	for _, it := range staged {
		r.logger.Info("staged", "object", it.Ref(), "note", it.Note)
		if it.Warning != "" {
			r.res.warn(r.logger, "%s: %s", it.Ref(), it.Warning)
		}
	}
	return nil
}

// applyItems records the live objects, then writes the staged ones.
func (r *run) applyItems(ctx context.Context) error {
	ji := r.journal.Items
	if ji == nil || len(ji.Staged) == 0 {
		return nil
	}
	store := r.itemStore()
	if !ji.BeforeRecorded {
		before, err := store.Current(ctx, ji.Staged)
		if err != nil {
			return fmt.Errorf("record the live objects before replacing them: %w", err)
		}
		ji.Before, ji.BeforeRecorded = before, true
		if err := r.store.save(r.journal); err != nil {
			return err
		}
		if err := r.checkpoint(StepApplyItems + ":recorded"); err != nil {
			return err
		}
	}
	if err := store.Apply(ctx, ji.Staged); err != nil {
		return err
	}
	refs := make([]string, len(ji.Staged))
	for i, it := range ji.Staged {
		refs[i] = it.Ref()
	}
	r.logger.Info(fmt.Sprintf("applied %d objects", len(refs)), "objects", refs)
	return r.checkpoint(StepApplyItems)
}

// rollbackItems puts the recorded live objects back.
func (r *run) rollbackItems(ctx context.Context) error {
	ji := r.journal.Items
	if ji == nil || !ji.BeforeRecorded || len(ji.Before) == 0 {
		return nil
	}
	if err := r.itemStore().Apply(ctx, ji.Before); err != nil {
		return fmt.Errorf("put the previous objects back: %w", err)
	}
	return nil
}

// itemComponentNames lists the components the journal restores.
func itemComponentNames(comps []ItemComponent) []string {
	out := make([]string, len(comps))
	for i, c := range comps {
		out[i] = c.Name
	}
	return out
}

// itemPlan is the plan's view of the objects: one line per component.
func itemPlan(comps []ItemComponent) []string {
	out := itemComponentNames(comps)
	sort.Strings(out)
	return out
}

// liveItems adds to st a digest of each object the restore j wrote, keyed by its
// reference ("" when it no longer exists), so that a later run sees a deleted or changed
// Secret as drift.
func (r *run) liveItems(ctx context.Context, j *Journal, st *LiveState) error {
	store := r.itemStore()
	if store == nil || j.Items == nil || len(j.Items.Staged) == 0 {
		return nil
	}
	cur, err := store.Current(ctx, j.Items.Staged)
	if err != nil {
		return err
	}
	for _, it := range cur {
		d := ""
		if !it.Absent {
			sum := sha256.Sum256(it.Object)
			d = hex.EncodeToString(sum[:])
		}
		st.Files[it.Ref()] = d
	}
	return nil
}
