package estate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"

	"flightctl.dr/internal/archive"
)

// CAFile is the CA certificate inside the PKI directory.
const CAFile = "ca.crt"

// Identity reads what a server says about itself: the API endpoint (service.baseUrl of the
// service configuration) and the fingerprint of its CA certificate. name is the estate's
// name; empty takes the host name. Parts that cannot be read are left empty and reported
// in warnings: an identity is a label, never a reason to fail a backup.
func Identity(name, configFile, pkiDir string) (*archive.Estate, []string) {
	var warnings []string
	if strings.TrimSpace(name) == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "unknown"
		}
		name = h
	}
	id := &archive.Estate{Name: strings.TrimSpace(name)}
	if configFile == "" {
		// Nothing to read (Kubernetes: the release's config is not a local file).
	} else if ep, err := APIEndpoint(configFile); err != nil {
		warnings = append(warnings, fmt.Sprintf("the archive records no API endpoint for estate %s: %v", id.Name, err))
	} else {
		id.APIEndpoint = ep
	}
	// A PKI without a PEM ca.crt (or none at all) is backed up as it is; the archive then
	// records no fingerprint, which only the estate's label lacks.
	if pkiDir != "" {
		if fp, err := CAFingerprint(filepath.Join(pkiDir, CAFile)); err == nil {
			id.CAFingerprint = fp
		}
	}
	return id, warnings
}

// APIEndpoint returns service.baseUrl of the service configuration ("" when it has none).
func APIEndpoint(configFile string) (string, error) {
	data, err := os.ReadFile(configFile)
	if err != nil {
		return "", err
	}
	var raw struct {
		Service struct {
			BaseURL string `yaml:"baseUrl"`
		} `yaml:"service"`
	}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return "", fmt.Errorf("read service.baseUrl from %s: %w", configFile, err)
	}
	return strings.TrimSpace(raw.Service.BaseURL), nil
}

// CAFingerprint returns "sha256:<hex>" of the first PEM certificate in path.
func CAFingerprint(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return "", fmt.Errorf("%s holds no PEM certificate", path)
		}
		if b.Type == "CERTIFICATE" {
			sum := sha256.Sum256(b.Bytes)
			return "sha256:" + hex.EncodeToString(sum[:]), nil
		}
	}
}
