//go:build !linux

package estate

import "os"

// setPipeSize is a no-op where pipes cannot be resized.
func setPipeSize(*os.File, int) {}
