// Package wrap adds an operation's name to an error once. Several layers name the same
// operation (the archive reader says "archive integrity check failed", and so does the
// restore that called it; the units manager says "stop units", and so does the restore
// step): each prefix must appear once in what the operator reads.
package wrap

import (
	"fmt"
	"strings"
)

// Prefix returns err with "prefix: " in front, unless its message already starts with
// prefix; nil stays nil. The error chain is kept either way (errors.Is and errors.As see
// through it).
func Prefix(prefix string, err error) error {
	if err == nil {
		return nil
	}
	if strings.HasPrefix(err.Error(), prefix) {
		return err
	}
	return fmt.Errorf("%s: %w", prefix, err)
}
