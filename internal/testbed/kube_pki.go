package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// KeyPair is a certificate with its key: the test cluster's PKI and the sandbox's
// Flight Control PKI are made of them.
type KeyPair struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	DER  []byte
}

// NewKeyPair makes a P-256 key and a certificate from tmpl, signed by parent (self-signed
// when nil), valid from an hour ago until tmpl.NotAfter (a year when unset).
func NewKeyPair(tmpl *x509.Certificate, parent *KeyPair) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().AddDate(1, 0, 0)
	}
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.Key, parent.Cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, Key: key, DER: der}, nil
}

// CertPEM is the certificate in PEM form.
func (c *KeyPair) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER})
}

// KeyPEM is the key in PEM form (SEC 1, as Flight Control writes its keys).
func (c *KeyPair) KeyPEM() []byte {
	b, err := x509.MarshalECPrivateKey(c.Key)
	if err != nil {
		panic(err) // a P-256 key made by NewKeyPair always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
}

// write stores base.crt (0644) and base.key (0600) in dir.
func (c *KeyPair) write(dir, base string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	if err = os.WriteFile(certFile, c.CertPEM(), 0o644); err != nil {
		return
	}
	err = os.WriteFile(keyFile, c.KeyPEM(), 0o600)
	return
}

// kubePKI is the cluster's certificates: one CA signs the API server's serving certificate,
// the administrator's and the API server's kubelet client certificates and the node's
// serving certificate; a separate key signs service account tokens.
type kubePKI struct {
	CAFile                        string
	APIServerCert, APIServerKey   string
	AdminCert, AdminKey           string
	KubeletClientCert, KubeletKey string
	NodeCert, NodeKey             string
	ServiceAccountKey             string
}

func writeKubePKI(dir string) (*kubePKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := NewKeyPair(&x509.Certificate{
		Subject: pkix.Name{CommonName: "flightctl-dr-test-cluster-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}, nil)
	if err != nil {
		return nil, err
	}
	p := &kubePKI{}
	if p.CAFile, _, err = ca.write(dir, "ca"); err != nil {
		return nil, err
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}
	server := func(cn string, dns ...string) (*KeyPair, error) {
		return NewKeyPair(&x509.Certificate{
			Subject: pkix.Name{CommonName: cn}, DNSNames: dns, IPAddresses: loopback,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}, ca)
	}
	client := func(cn string, groups ...string) (*KeyPair, error) {
		return NewKeyPair(&x509.Certificate{
			Subject:  pkix.Name{CommonName: cn, Organization: groups},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, ca)
	}
	steps := []struct {
		make      func() (*KeyPair, error)
		base      string
		cert, key *string
	}{
		{func() (*KeyPair, error) {
			return server("kube-apiserver", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
		}, "apiserver", &p.APIServerCert, &p.APIServerKey},
		{func() (*KeyPair, error) { return client("flightctl-dr-admin", "system:masters") }, "admin", &p.AdminCert, &p.AdminKey},
		{func() (*KeyPair, error) { return client("kube-apiserver-kubelet-client", "system:masters") }, "kubelet-client", &p.KubeletClientCert, &p.KubeletKey},
		{func() (*KeyPair, error) { return server("kubenode", "localhost") }, "node", &p.NodeCert, &p.NodeKey},
	}
	for _, s := range steps {
		pair, err := s.make()
		if err != nil {
			return nil, err
		}
		if *s.cert, *s.key, err = pair.write(dir, s.base); err != nil {
			return nil, err
		}
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	b, err := x509.MarshalECPrivateKey(sa)
	if err != nil {
		return nil, err
	}
	p.ServiceAccountKey = filepath.Join(dir, "service-account.key")
	if err := os.WriteFile(p.ServiceAccountKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}
