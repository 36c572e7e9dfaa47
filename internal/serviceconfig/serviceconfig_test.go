package serviceconfig

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		want     DB
		external bool
	}{
		{name: "empty document", yaml: "", want: DB{}},
		{name: "no db section", yaml: "global:\n  baseDomain: example.com\n", want: DB{}},
		{name: "null db", yaml: "db:\n", want: DB{}},
		{name: "builtin with name", yaml: "db:\n  type: builtin\n  name: flightctl\n", want: DB{Type: "builtin", Name: "flightctl"}},
		{name: "external, case and spaces as upstream", yaml: "db:\n  type: '  External '\n", want: DB{Type: "external"}, external: true},
		{
			name: "external settings",
			yaml: "db:\n  type: external\n  name: fc\n  external:\n    hostname: db.example.com\n    port: 5433\n    name: fcprod\n    sslmode: verify-full\n",
			want: DB{Type: "external", Name: "fc", External: ExternalDB{Hostname: "db.example.com", Port: 5433, Name: "fcprod", SSLMode: "verify-full"}}, external: true,
		},
		{name: "database: key is not db:", yaml: "database:\n  type: external\n", want: DB{}},
		{name: "aliases followed", yaml: "x-db: &ext\n  type: external\n  name: &n fc\ndb: *ext\n", want: DB{Type: "external", Name: "fc"}, external: true},
		{name: "unknown keys ignored", yaml: "db:\n  type: builtin\n  extra: [1, 2]\nservice:\n  x: {a: 1}\n", want: DB{Type: "builtin"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml))
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.DB)
			assert.Equal(t, tc.external, cfg.DB.IsExternal())
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct{ name, yaml, wantErr string }{
		{"broken yaml", "db:\n  type: [unterminated\n", "invalid YAML"},
		{"tab indentation", "db:\n\ttype: external\n", "invalid YAML"},
		{"db is a list", "db:\n  - a\n", "db must be a mapping"},
		{"db is a string", "db: external\n", "db must be a mapping"},
		{"type is a mapping", "db:\n  type:\n    a: b\n", "db.type must be a string"},
		{"port not a number", "db:\n  external:\n    port: five\n", "db.external.port must be a number"},
		{"top level is a list", "- a\n- b\n", "invalid YAML"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "service-config.yaml")
	require.NoError(t, os.WriteFile(path, []byte("db:\n  type: external\n"), 0o600))
	cfg, err := Load(path)
	require.NoError(t, err)
	assert.True(t, cfg.DB.IsExternal())
	assert.Equal(t, path, cfg.Path)

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does not exist")

	// A directory where the file should be cannot be read.
	_, err = Load(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "read service configuration")

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("db: [\n"), 0o600))
	_, err = Load(bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), bad)
	assert.Contains(t, err.Error(), "invalid YAML")
}
