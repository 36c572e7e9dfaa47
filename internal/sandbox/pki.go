package sandbox

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"flightctl.dr/internal/testbed"
)

type keyPair = testbed.KeyPair

func newKeyPair(tmpl *x509.Certificate, parent *keyPair) (*keyPair, error) {
	return testbed.NewKeyPair(tmpl, parent)
}

func writeKeyPair(k *keyPair, dir, base string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, base+".crt"), k.CertPEM(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, base+".key"), k.KeyPEM(), 0o600)
}

// writePKI generates the PKI of a quadlet install: the CA, the client-signer CA, a CA
// bundle, and server certificates in per-service subdirectories. Keys 0600, certs 0644.
func writePKI(pkiDir string) ([]string, error) {
	ca, err := newKeyPair(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "flightctl-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		NotAfter:              time.Now().AddDate(10, 0, 0),
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("generate CA: %w", err)
	}
	signer, err := newKeyPair(&x509.Certificate{
		Subject:               pkix.Name{CommonName: "flightctl-client-signer-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		NotAfter:              time.Now().AddDate(5, 0, 0),
	}, ca)
	if err != nil {
		return nil, fmt.Errorf("generate client-signer CA: %w", err)
	}
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		return nil, err
	}
	if err := writeKeyPair(ca, pkiDir, "ca"); err != nil {
		return nil, err
	}
	if err := writeKeyPair(signer, pkiDir, "client-signer"); err != nil {
		return nil, err
	}
	bundle := append(ca.CertPEM(), signer.CertPEM()...)
	if err := os.WriteFile(filepath.Join(pkiDir, "ca-bundle.crt"), bundle, 0o644); err != nil {
		return nil, err
	}
	files := []string{"ca.crt", "ca.key", "client-signer.crt", "client-signer.key", "ca-bundle.crt"}
	for _, svc := range []string{"flightctl-api", "flightctl-alertmanager-proxy", "flightctl-telemetry-gateway"} {
		server, err := newKeyPair(&x509.Certificate{
			Subject:     pkix.Name{CommonName: svc},
			DNSNames:    []string{"localhost", svc},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}, ca)
		if err != nil {
			return nil, fmt.Errorf("generate %s server certificate: %w", svc, err)
		}
		if err := writeKeyPair(server, filepath.Join(pkiDir, svc), "server"); err != nil {
			return nil, err
		}
		files = append(files, svc+"/server.crt", svc+"/server.key")
	}
	// The API's client certificate for the enrollment service, signed by the client signer.
	client, err := newKeyPair(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "client-enrollment"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("generate enrollment client certificate: %w", err)
	}
	if err := writeKeyPair(client, pkiDir, "client-enrollment"); err != nil {
		return nil, err
	}
	files = append(files, "client-enrollment.crt", "client-enrollment.key")
	return files, nil
}

// writeEncryptionKey writes the data-at-rest key file (32 random bytes, base64), 0600 in a
// 0700 directory.
func writeEncryptionKey(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "key"), []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}
