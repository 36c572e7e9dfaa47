package archive

import (
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen bounds an entry's name: flightctl-backup's longest are well under it, and
// every name fits in a path below /etc/flightctl with the restore's suffixes.
const MaxNameLen = 1024

func shorten(s string) string {
	if len(s) > 96 {
		return s[:80] + "..."
	}
	return s
}

// cleanEntryName returns the canonical form of a tar entry name (a leading
// "./" and, for directories, a trailing "/" are tolerated and removed) or an
// IntegrityError naming the entry when it is absolute, climbs with "..", is
// empty or not canonical.
func cleanEntryName(raw string) (string, error) {
	name := raw
	if strings.ContainsRune(name, 0) {
		return "", entryError(KindUnsafePath, raw, "archive entry %q contains a NUL byte: %s", raw, doNotRestore)
	}
	if !utf8.ValidString(name) {
		return "", entryError(KindUnsafePath, raw, "archive entry %q is not valid UTF-8: flightctl-backup writes only clean UTF-8 names; %s", raw, doNotRestore)
	}
	for _, c := range name {
		if unicode.IsControl(c) {
			return "", entryError(KindUnsafePath, raw, "archive entry %q holds a control character (%U): flightctl-backup writes none; %s", raw, c, doNotRestore)
		}
	}
	if len(name) > MaxNameLen {
		return "", entryError(KindUnsafePath, raw, "archive entry %q has a name of %d bytes, past the limit of %d: flightctl-backup writes no such name; %s", shorten(raw), len(name), MaxNameLen, doNotRestore)
	}
	if strings.HasPrefix(name, "/") {
		return "", entryError(KindUnsafePath, raw, "archive entry %q is an absolute path: %s", raw, doNotRestore)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", entryError(KindUnsafePath, raw, "archive entry %q has a \"..\" path component: %s", raw, doNotRestore)
		}
		if len(part) > 255 {
			return "", entryError(KindUnsafePath, raw, "archive entry %q has a path component of %d bytes, past the 255 a file name can have: %s", shorten(raw), len(part), doNotRestore)
		}
	}
	if name == "./" || name == "." {
		return "", nil // the root itself: harmless, nothing is written for it
	}
	if strings.HasPrefix(name, "./") {
		return "", entryError(KindUnsafePath, raw, "archive entry %q starts with \"./\": flightctl-backup and upstream's flightctl-backup write names without it (\"%s\"); this archive was made by another tool: %s", raw, strings.TrimLeft(name, "./"), doNotRestore)
	}
	name = strings.TrimSuffix(name, "/")
	if name == "" {
		return "", nil
	}
	if path.Clean(name) != name {
		return "", entryError(KindUnsafePath, raw, "archive entry %q is not a canonical relative path: %s", raw, doNotRestore)
	}
	return name, nil
}

// validateWriterName checks a name given to the writer: it must already be
// canonical, since it is written as is.
func validateWriterName(name string) error {
	clean, err := cleanEntryName(name)
	if err != nil {
		return err
	}
	if clean != name || name == "" {
		return fmt.Errorf("entry name %q must be a clean relative path such as \"pki/ca.crt\"", name)
	}
	return nil
}
