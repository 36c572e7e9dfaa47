package archive

import (
	"fmt"
	"path"
	"strings"
)

// cleanEntryName returns the canonical form of a tar entry name (a leading
// "./" and, for directories, a trailing "/" are tolerated and removed) or an
// IntegrityError naming the entry when it is absolute, climbs with "..", is
// empty or not canonical.
func cleanEntryName(raw string) (string, error) {
	name := raw
	if strings.ContainsRune(name, 0) {
		return "", entryError(KindUnsafePath, raw, "archive entry %q contains a NUL byte: %s", raw, doNotRestore)
	}
	if strings.HasPrefix(name, "/") {
		return "", entryError(KindUnsafePath, raw, "archive entry %q is an absolute path: %s", raw, doNotRestore)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", entryError(KindUnsafePath, raw, "archive entry %q has a \"..\" path component: %s", raw, doNotRestore)
		}
	}
	for strings.HasPrefix(name, "./") {
		name = name[2:]
	}
	name = strings.TrimSuffix(name, "/")
	if name == "" || name == "." {
		return "", nil // the root itself
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
