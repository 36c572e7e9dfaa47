//go:build !linux

package runner

import "os"

// SetPipeSize is a no-op where pipes cannot be resized.
func SetPipeSize(*os.File, int) {}
