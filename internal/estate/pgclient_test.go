package estate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// A Debian-like layout built in a temporary directory: pg_wrapper on PATH, clients of
// several versions in lib/<version>/bin.
func TestResolveClientSkipsDebianWrapper(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "lib")
	for _, v := range []string{"9.6", "13", "15", "16"} {
		dir := filepath.Join(lib, v, "bin")
		require.NoError(t, os.MkdirAll(dir, 0o755))
		if v != "16" { // 16 has the server only here
			require.NoError(t, os.WriteFile(filepath.Join(dir, "psql"), []byte("#!/bin/sh\n"), 0o755))
		}
	}
	require.NoError(t, os.MkdirAll(filepath.Join(lib, "common"), 0o755))
	wrapper := filepath.Join(root, "share", "pg_wrapper")
	require.NoError(t, os.MkdirAll(filepath.Dir(wrapper), 0o755))
	require.NoError(t, os.WriteFile(wrapper, []byte("#!/usr/bin/perl\n"), 0o755))
	bin := filepath.Join(root, "bin")
	require.NoError(t, os.MkdirAll(bin, 0o755))
	onPath := filepath.Join(bin, "psql")
	require.NoError(t, os.Symlink(wrapper, onPath))

	require.Equal(t, filepath.Join(lib, "15", "bin", "psql"), resolveClient("psql", onPath, lib, ""), "the newest version that has it")
	require.Equal(t, "psql", resolveClient("psql", onPath, lib, "13/main"), "PGCLUSTER chooses through the wrapper")
	require.Equal(t, "psql", resolveClient("psql", "", lib, ""), "not on PATH")
	require.Equal(t, "pg_dump", resolveClient("pg_dump", onPath, lib, ""), "no version has it")

	real := filepath.Join(bin, "psql-real")
	require.NoError(t, os.WriteFile(real, []byte("#!/bin/sh\n"), 0o755))
	require.Equal(t, "psql", resolveClient("psql", real, lib, ""), "not the wrapper")
}
