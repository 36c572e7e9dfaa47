package retention

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ListDir lists the archives of one directory (the server's or the
// controller's) as Plan wants them: an archive with a well-formed checksum
// file beside it is Good, one without NoChecksum, one with a malformed one
// BadChecksum; one with its signature (<archive>.sig) beside it Signed.
// Checksum files, signatures of listed archives and hidden files are not
// listed; other names are, and Plan passes them back as ignored (or, for the
// signature of an archive that is gone, as an orphan signature).
func ListDir(dir string) ([]Archive, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list archives in %s: %w", dir, err)
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Name()] = true
	}
	var out []Archive
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") {
			continue
		}
		if a, ok := strings.CutSuffix(n, ".sha256"); ok && have[a] {
			continue
		}
		if a, ok := SignatureOf(n); ok && have[a] {
			continue
		}
		a := Archive{Name: n}
		if !e.Type().IsRegular() {
			out = append(out, Archive{Name: n + "/"})
			continue
		}
		if info, err := e.Info(); err == nil {
			a.Size = info.Size()
		}
		if IsArchiveName(n) {
			a.Signed = have[SignatureName(n)]
			b, err := os.ReadFile(filepath.Join(dir, ChecksumName(n)))
			switch {
			case errors.Is(err, fs.ErrNotExist):
				a.Status, a.Detail = NoChecksum, "no "+ChecksumName(n)
			case err != nil:
				a.Status, a.Detail = BadChecksum, err.Error()
			default:
				if f := strings.Fields(string(b)); len(f) == 0 || len(f[0]) != 64 || !isHex(f[0]) {
					a.Status, a.Detail = BadChecksum, ChecksumName(n)+" is not a sha256sum line"
				}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// DeleteInDir removes what Plan.Deletions lists from dir, in that order
// (each checksum file before its archive, synced, so that an interrupted
// prune never leaves an archive that looks complete; the signature after the
// archive). It refuses names that are not this tool's.
func DeleteInDir(ctx context.Context, dir string, names []string) ([]string, error) {
	var done []string
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		if !IsCompanionName(n) || strings.ContainsRune(n, '/') {
			return done, fmt.Errorf("%s is not an archive this tool writes: not removed", n)
		}
		if err := os.Remove(filepath.Join(dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return done, fmt.Errorf("remove %s: %w", filepath.Join(dir, n), err)
		}
		if strings.HasSuffix(n, ".sha256") {
			if d, err := os.Open(dir); err == nil {
				_ = d.Sync()
				d.Close()
			}
		}
		done = append(done, n)
	}
	return done, nil
}
