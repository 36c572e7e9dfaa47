//go:build !linux

package archive

import "os"

func openUnnamed(dir string, perm os.FileMode) (*os.File, error) { return nil, errUnnamedUnsupported }

func linkUnnamed(f *os.File, dir, name string) error { return errUnnamedUnsupported }
