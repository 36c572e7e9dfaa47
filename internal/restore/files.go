package restore

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// Suffixes of the copies kept beside a live path while a restore runs.
const (
	stagedSuffix = ".flightctl-dr-new-"
	oldSuffix    = ".flightctl-dr-old-"
)

func stagedPath(live, id string) string { return live + stagedSuffix + id }
func oldPath(live, id string) string    { return live + oldSuffix + id }

// entryOf maps an archive entry name to the target it belongs to and its path relative to
// the target's root ("" for the root itself).
func entryOf(targets []FileTarget, name string) (int, string, bool) {
	for i, t := range targets {
		switch t.Kind {
		case KindDir:
			if name == t.Entry {
				return i, "", true
			}
			if strings.HasPrefix(name, t.Entry+"/") {
				return i, strings.TrimPrefix(name, t.Entry+"/"), true
			}
		case KindFile:
			if name == t.Entry {
				return i, "", true
			}
		}
	}
	return 0, "", false
}

// stager writes archive entries into the staged copies beside the live paths.
type stager struct {
	targets []FileTarget
	staged  []string // staged path per target
	dirs    []stagedDir
	owners  bool // chown new entries like the live ones (only root can)
	counts  []int
	// newRoots maps a target with no live root to its root's index in dirs: that root
	// takes the archive's mode.
	newRoots map[int]int
}

type stagedDir struct {
	path string
	mode fs.FileMode
}

func newStager(targets []FileTarget, sets []JournalFileSet) *stager {
	s := &stager{targets: targets, owners: os.Geteuid() == 0, counts: make([]int, len(targets)), newRoots: map[int]int{}}
	for _, fs := range sets {
		s.staged = append(s.staged, fs.Staged)
	}
	return s
}

// prepare removes leftovers of an earlier attempt and creates the staged roots.
func (s *stager) prepare() error {
	for i, t := range s.targets {
		if err := os.RemoveAll(s.staged[i]); err != nil {
			return fmt.Errorf("remove earlier staged copy %s: %w", s.staged[i], err)
		}
		if t.Kind == KindDir {
			if err := os.MkdirAll(filepath.Dir(t.Path), 0o755); err != nil {
				return fmt.Errorf("create %s: %w", filepath.Dir(t.Path), err)
			}
			if err := os.Mkdir(s.staged[i], 0o700); err != nil {
				return fmt.Errorf("stage %s: %w", t.Name, err)
			}
			mode := fs.FileMode(0o700)
			if fi, err := os.Stat(t.Path); err == nil && fi.IsDir() {
				// The live root keeps its mode and owner: services depend on them.
				mode = fi.Mode().Perm()
				s.chownLike(s.staged[i], t.Path, t.Path)
			} else {
				// No live root (deleted in a disaster): the archive's mode, when it has one.
				s.newRoots[i] = len(s.dirs)
			}
			s.dirs = append(s.dirs, stagedDir{path: s.staged[i], mode: mode})
		} else if err := os.MkdirAll(filepath.Dir(t.Path), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(t.Path), err)
		}
	}
	return nil
}

func (s *stager) entry(hdr *tar.Header, name string, r io.Reader) error {
	i, rel, ok := entryOf(s.targets, name)
	if !ok {
		return nil
	}
	t := s.targets[i]
	dst := s.staged[i]
	live := t.Path
	if rel != "" {
		dst = filepath.Join(dst, filepath.FromSlash(rel))
		live = filepath.Join(live, filepath.FromSlash(rel))
	}
	mode := fs.FileMode(hdr.Mode).Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		if t.Kind != KindDir {
			return fmt.Errorf("archive entry %s: expected a file, found a directory", name)
		}
		if rel == "" {
			if d, ok := s.newRoots[i]; ok {
				s.dirs[d].mode = mode
			}
			return nil // an existing live root keeps its mode (prepare)
		}
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return fmt.Errorf("stage %s: %w", name, err)
		}
		s.dirs = append(s.dirs, stagedDir{path: dst, mode: mode})
		s.chownLike(dst, live, t.Path)
		return nil
	case tar.TypeReg:
		if t.Kind == KindDir && rel == "" {
			return fmt.Errorf("archive entry %s: expected a directory, found a file", name)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("stage %s: %w", name, err)
		}
		f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("stage %s: %w", name, err)
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return fmt.Errorf("stage %s: %w", name, err)
		}
		s.chownLike(dst, live, t.Path)
		// Chmod after chown: chown clears setuid bits, and the umask must not narrow the mode.
		if err := f.Chmod(mode); err != nil {
			f.Close()
			return fmt.Errorf("stage %s: %w", name, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("stage %s: %w", name, err)
		}
		s.counts[i]++
		return f.Close()
	}
	return nil
}

// chownLike gives dst the owner of its live counterpart, or of the live root for new
// entries. Only root can; elsewhere the files belong to the restoring user anyway.
func (s *stager) chownLike(dst, live, liveRoot string) {
	if !s.owners {
		return
	}
	for _, p := range []string{live, liveRoot, filepath.Dir(liveRoot)} {
		if fi, err := os.Lstat(p); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				_ = os.Lchown(dst, int(st.Uid), int(st.Gid))
				return
			}
		}
	}
}

// finish applies directory modes (deepest first, so a read-only directory does not block
// its children) and syncs the staged trees.
func (s *stager) finish() error {
	sort.Slice(s.dirs, func(a, b int) bool { return len(s.dirs[a].path) > len(s.dirs[b].path) })
	for _, d := range s.dirs {
		if err := syncDir(d.path); err != nil {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("stage %s: %w", d.path, err)
		}
	}
	for i, t := range s.targets {
		if _, err := os.Lstat(s.staged[i]); err != nil {
			return fmt.Errorf("stage %s: archive entry %s was not found in the archive: %w", t.Name, t.Entry, err)
		}
		if err := syncDir(filepath.Dir(t.Path)); err != nil {
			return err
		}
	}
	return nil
}

func exists(p string) (bool, error) {
	_, err := os.Lstat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// swapFileSet moves the live copy aside and the staged copy into place. Each call looks at
// what is on disk, so it can resume after an interrupt at any point.
func swapFileSet(set JournalFileSet) error {
	stagedThere, err := exists(set.Staged)
	if err != nil {
		return err
	}
	if !stagedThere {
		// Nothing staged: either the swap already happened or staging never did.
		if liveThere, err := exists(set.Live); err != nil || !liveThere {
			return fmt.Errorf("swap %s: neither the staged copy %s nor the live %s exists: run the restore again to stage it anew", set.Name, set.Staged, set.Live)
		}
		return nil
	}
	if set.HadLive {
		oldThere, err := exists(set.Old)
		if err != nil {
			return err
		}
		if !oldThere {
			if err := os.Rename(set.Live, set.Old); err != nil {
				return fmt.Errorf("swap %s: move the live copy aside: %w", set.Name, err)
			}
		} else if liveThere, _ := exists(set.Live); liveThere {
			// Both the old and a live copy with a staged one: an earlier swap was undone
			// half-way. The live copy is not the original: the original is old.
			if err := os.RemoveAll(set.Live); err != nil {
				return fmt.Errorf("swap %s: %w", set.Name, err)
			}
		}
	} else if liveThere, _ := exists(set.Live); liveThere {
		if err := os.RemoveAll(set.Live); err != nil {
			return fmt.Errorf("swap %s: %w", set.Name, err)
		}
	}
	if err := os.Rename(set.Staged, set.Live); err != nil {
		return fmt.Errorf("swap %s: move the restored copy into place: %w", set.Name, err)
	}
	return syncDir(filepath.Dir(set.Live))
}

// rollbackFileSet puts the previous copy back and removes the staged one.
func rollbackFileSet(set JournalFileSet) error {
	if err := os.RemoveAll(set.Staged); err != nil {
		return fmt.Errorf("roll back %s: remove %s: %w", set.Name, set.Staged, err)
	}
	if set.HadLive {
		oldThere, err := exists(set.Old)
		if err != nil {
			return err
		}
		if !oldThere {
			return nil // never swapped: live is the original
		}
		if err := os.RemoveAll(set.Live); err != nil {
			return fmt.Errorf("roll back %s: remove the restored copy: %w", set.Name, err)
		}
		if err := os.Rename(set.Old, set.Live); err != nil {
			return fmt.Errorf("roll back %s: put %s back as %s by hand: %w", set.Name, set.Old, set.Live, err)
		}
	} else if err := os.RemoveAll(set.Live); err != nil {
		return fmt.Errorf("roll back %s: remove the restored copy: %w", set.Name, err)
	}
	return syncDir(filepath.Dir(set.Live))
}

// FileState is one file's content hash and mode, for plans and diffs.
type FileState struct {
	SHA256 string `json:"sha256,omitempty"`
	Mode   string `json:"mode"`
	Dir    bool   `json:"dir,omitempty"`
}

// FileChanges lists what replacing one live path would add, replace and remove.
type FileChanges struct {
	Name      string   `json:"name"`
	Path      string   `json:"path"`
	InArchive bool     `json:"in_archive"`
	Added     []string `json:"added"`
	Replaced  []string `json:"replaced"`
	Removed   []string `json:"removed"`
	Unchanged int      `json:"unchanged"`

	before map[string]FileState
	after  map[string]FileState
}

// liveTree reads a live file or directory tree as relative path → state ("" for a file
// target itself).
func liveTree(t FileTarget) (map[string]FileState, error) {
	out := map[string]FileState{}
	fi, err := os.Lstat(t.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	if t.Kind == KindFile {
		st, err := fileState(t.Path, fi)
		if err != nil {
			return nil, err
		}
		out[""] = st
		return out, nil
	}
	err = filepath.WalkDir(t.Path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == t.Path {
			return nil
		}
		rel, _ := filepath.Rel(t.Path, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, err := fileState(p, info)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = st
		return nil
	})
	return out, err
}

func fileState(p string, fi fs.FileInfo) (FileState, error) {
	st := FileState{Mode: fmt.Sprintf("%04o", fi.Mode().Perm())}
	switch {
	case fi.IsDir():
		st.Dir = true
	case fi.Mode().IsRegular():
		f, err := os.Open(p)
		if err != nil {
			return st, err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return st, err
		}
		st.SHA256 = hex.EncodeToString(h.Sum(nil))
	default:
		st.SHA256 = "(" + fi.Mode().Type().String() + ")"
	}
	return st, nil
}

func compareTrees(c *FileChanges) {
	c.Added, c.Replaced, c.Removed = []string{}, []string{}, []string{}
	for p, a := range c.after {
		b, ok := c.before[p]
		switch {
		case !ok:
			c.Added = append(c.Added, p)
		case a != b:
			c.Replaced = append(c.Replaced, p)
		default:
			c.Unchanged++
		}
	}
	for p := range c.before {
		if _, ok := c.after[p]; !ok {
			c.Removed = append(c.Removed, p)
		}
	}
	for _, l := range [][]string{c.Added, c.Replaced, c.Removed} {
		sort.Strings(l)
	}
}

// displayPath names an entry of a file change for diffs.
func (c *FileChanges) displayPath(rel string) string {
	if rel == "" {
		return c.Path
	}
	return c.Path + "/" + rel
}
