// Package serviceconfig reads the parts of /etc/flightctl/service-config.yaml that backup
// and restore need: the top-level db section (SPEC §1, UPSTREAM §2.3). Everything else in
// the file is left alone; the file itself is copied byte for byte into archives.
package serviceconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultPath is where a quadlet install keeps its service configuration.
const DefaultPath = "/etc/flightctl/service-config.yaml"

// DBTypeExternal is the db.type that marks a database the server does not run itself.
const DBTypeExternal = "external"

// Config is the subset of service-config.yaml this project reads.
type Config struct {
	// Path is the file the config was read from ("" when parsed from bytes).
	Path string
	DB   DB
}

// DB is the top-level db section. Quadlet installs use "db:", not "database:".
type DB struct {
	// Type is db.type, lowercased and trimmed as upstream does ("", "builtin", "external").
	Type string
	// Name is db.name, trimmed ("" when unset).
	Name string
	// External holds db.external.* when present, for guidance messages.
	External ExternalDB
}

// ExternalDB is the connection information of an external database, as far as the config
// states it. Any field may be empty.
type ExternalDB struct {
	Hostname string
	Port     int
	Name     string
	SSLMode  string
}

// IsExternal reports whether the database is external: no dump is taken on backup and
// none is loaded on restore.
func (d DB) IsExternal() bool { return d.Type == DBTypeExternal }

// rawConfig mirrors the YAML loosely: values are decoded as generic nodes so that an
// unexpected type elsewhere in the file never stops a backup.
type rawConfig struct {
	DB yaml.Node `yaml:"db"`
}

// Load reads and parses the service configuration at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("service configuration %s does not exist: point config_file at the flightctl service-config.yaml", path)
		}
		return nil, fmt.Errorf("read service configuration %s: %w", path, err)
	}
	cfg, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("service configuration %s: %w", path, err)
	}
	cfg.Path = path
	return cfg, nil
}

// Parse parses service-config.yaml content. An empty document is valid and yields the
// zero Config (built-in database, name from the defaults).
func Parse(data []byte) (*Config, error) {
	var raw rawConfig
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w; fix the file or restore it from a known good copy", err)
	}
	cfg := &Config{}
	db := deref(&raw.DB)
	if db.Kind == 0 || isNull(db) {
		return cfg, nil
	}
	if db.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: db must be a mapping (db.type, db.name, ...), found %s", db.Line, kindName(db))
	}
	var err error
	if cfg.DB.Type, err = scalarField(db, "db", "type"); err != nil {
		return nil, err
	}
	cfg.DB.Type = strings.ToLower(strings.TrimSpace(cfg.DB.Type))
	if cfg.DB.Name, err = scalarField(db, "db", "name"); err != nil {
		return nil, err
	}
	cfg.DB.Name = strings.TrimSpace(cfg.DB.Name)
	if ext := child(db, "external"); ext != nil && !isNull(ext) {
		if ext.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: db.external must be a mapping, found %s", ext.Line, kindName(ext))
		}
		e := &cfg.DB.External
		if e.Hostname, err = scalarField(ext, "db.external", "hostname"); err != nil {
			return nil, err
		}
		if e.Name, err = scalarField(ext, "db.external", "name"); err != nil {
			return nil, err
		}
		if e.SSLMode, err = scalarField(ext, "db.external", "sslmode"); err != nil {
			return nil, err
		}
		if n := child(ext, "port"); n != nil && !isNull(n) {
			if n.Kind != yaml.ScalarNode || n.Decode(&e.Port) != nil {
				return nil, fmt.Errorf("line %d: db.external.port must be a number, found %q", n.Line, n.Value)
			}
		}
	}
	return cfg, nil
}

func child(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return deref(m.Content[i+1])
		}
	}
	return nil
}

// deref follows YAML aliases (*name) to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func scalarField(m *yaml.Node, section, key string) (string, error) {
	n := child(m, key)
	if n == nil || isNull(n) {
		return "", nil
	}
	if n.Kind != yaml.ScalarNode {
		return "", fmt.Errorf("line %d: %s.%s must be a string, found %s", n.Line, section, key, kindName(n))
	}
	return n.Value, nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}
