package drill

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// KubernetesCASecret is the Secret of a Helm install that holds the CA.
const KubernetesCASecret = "flightctl-ca"

// pkiFiles collects the PKI of an archive as it streams past: Podman archives hold files
// under pki/; Kubernetes archives one Secret per file, pki/<name>.yaml, whose data
// entries (tls.crt, tls.key, ca.crt...) are read as files named pki/<name>.yaml#<key>.
type pkiFiles struct {
	blobs map[string][]byte
	// problems are entries that could not be read (a Secret that does not parse).
	problems []string
	kube     bool
}

func newPKIFiles() *pkiFiles { return &pkiFiles{blobs: map[string][]byte{}} }

// add takes one regular file of the archive under pki/.
func (p *pkiFiles) add(name string, data []byte) {
	if strings.HasSuffix(name, ".yaml") && !strings.Contains(strings.TrimPrefix(name, "pki/"), "/") {
		if items, ok := secretData(data); ok {
			p.kube = true
			for k, v := range items {
				p.blobs[name+"#"+k] = v
			}
			return
		}
		p.problems = append(p.problems, name+" is not a readable Kubernetes Secret")
		return
	}
	p.blobs[name] = data
}

// secretData reads a Secret's data (base64) and stringData as the API server would.
func secretData(b []byte) (map[string][]byte, bool) {
	var s struct {
		Kind       string            `json:"kind"`
		Data       map[string]string `json:"data"`
		StringData map[string]string `json:"stringData"`
	}
	if err := yaml.Unmarshal(b, &s); err != nil || (s.Kind != "" && s.Kind != "Secret") {
		return nil, false
	}
	out := map[string][]byte{}
	for k, v := range s.Data {
		d, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, false
		}
		out[k] = d
	}
	for k, v := range s.StringData {
		out[k] = []byte(v)
	}
	return out, true
}

// Certificate is one certificate of the archive's PKI, as the report shows it.
type Certificate struct {
	// Path is the archive entry ("pki/flightctl-api/server.crt"), or for a Kubernetes
	// archive the Secret file and key ("pki/flightctl-api-server-tls.yaml#tls.crt").
	Path     string    `json:"path"`
	Subject  string    `json:"subject"`
	Issuer   string    `json:"issuer"`
	IsCA     bool      `json:"is_ca"`
	Server   bool      `json:"server"`
	NotAfter time.Time `json:"not_after"`
	DaysLeft int       `json:"days_left"`
	Expired  bool      `json:"expired"`
	// ChainsToCA: the certificate verifies against the archive's CA (through the CAs the
	// archive holds besides it); always true for the CA itself.
	ChainsToCA bool `json:"chains_to_ca"`
	// KeyMatches is set when the archive holds the certificate's key beside it.
	KeyMatches *bool  `json:"key_matches,omitempty"`
	Problem    string `json:"problem,omitempty"`
}

// PKIReport is what the PKI check found.
type PKIReport struct {
	// CA is the archive's CA certificate (pki/ca.crt, or the flightctl-ca Secret).
	CA *Certificate `json:"ca,omitempty"`
	// CAKey is the entry holding the CA's key; "" when the archive has none.
	CAKey         string `json:"ca_key,omitempty"`
	CAKeyMatches  bool   `json:"ca_key_matches"`
	CAFingerprint string `json:"ca_fingerprint,omitempty"`
	// Certificates are all the certificates found, the CA's first.
	Certificates []Certificate `json:"certificates"`
	// SoonestExpiry is the earliest NotAfter of the CA and server certificates.
	SoonestExpiry *time.Time `json:"soonest_expiry,omitempty"`
	// Problems fail the check; Notes do not.
	Problems []string `json:"problems"`
	Notes    []string `json:"notes,omitempty"`
}

type parsedCert struct {
	path string
	cert *x509.Certificate
}

// checkPKI checks that the archive's PKI is a usable CA chain: the CA certificate and
// key match, server certificates chain to the CA and are not expired, and when each
// certificate expires. warnDays: a CA or server certificate expiring sooner gets a note.
func checkPKI(p *pkiFiles, now time.Time, warnDays int, estateCA string) *PKIReport {
	rep := &PKIReport{Certificates: []Certificate{}, Problems: append([]string{}, p.problems...)}
	names := make([]string, 0, len(p.blobs))
	for n := range p.blobs {
		names = append(names, n)
	}
	sort.Strings(names)
	var certs []parsedCert // first certificate of every file holding some
	var pool []parsedCert  // every certificate, bundles included
	keys := map[string]crypto.PrivateKey{}
	for _, n := range names {
		first := true
		rest := p.blobs[n]
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			switch {
			case b.Type == "CERTIFICATE":
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%s: a certificate that does not parse (%v)", n, err))
					continue
				}
				pool = append(pool, parsedCert{n, c})
				if first {
					certs = append(certs, parsedCert{n, c})
					first = false
				}
			case strings.HasSuffix(b.Type, "PRIVATE KEY"):
				k, err := parseKey(b)
				if err != nil {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%s: a private key that does not parse (%v)", n, err))
					continue
				}
				keys[n] = k
			}
		}
	}
	if len(certs) == 0 {
		rep.Problems = append(rep.Problems, "the archive holds no certificate under pki/: a restored server would have no PKI")
		return rep
	}

	caPath, caKeyPath := findCA(p, certs)
	var ca *x509.Certificate
	for _, c := range certs {
		if c.path == caPath {
			ca = c.cert
		}
	}
	if ca == nil {
		want := "pki/ca.crt"
		if p.kube {
			want = "the Secret " + KubernetesCASecret + " (pki/" + KubernetesCASecret + ".yaml)"
		}
		rep.Problems = append(rep.Problems, "no CA certificate in "+want+": the server certificates cannot be checked against it")
	} else {
		sum := sha256.Sum256(ca.Raw)
		rep.CAFingerprint = "sha256:" + hex.EncodeToString(sum[:])
		if !ca.IsCA {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s is not a CA certificate (%s)", caPath, ca.Subject))
		}
		if estateCA != "" && estateCA != rep.CAFingerprint {
			rep.Problems = append(rep.Problems, fmt.Sprintf("the CA in %s (%s) is not the one the archive's estate records (%s)", caPath, rep.CAFingerprint, estateCA))
		}
		if k, ok := keys[caKeyPath]; ok {
			rep.CAKey = caKeyPath
			rep.CAKeyMatches = keyMatches(k, ca)
			if !rep.CAKeyMatches {
				rep.Problems = append(rep.Problems, fmt.Sprintf("the CA key %s does not belong to the CA certificate %s: a restored server could not sign device certificates", caKeyPath, caPath))
			}
		} else {
			rep.Problems = append(rep.Problems, fmt.Sprintf("the archive holds no CA key (%s): a restored server could not sign device certificates", caKeyPath))
		}
	}

	roots := x509.NewCertPool()
	inter := x509.NewCertPool()
	if ca != nil {
		roots.AddCert(ca)
	}
	for _, c := range pool {
		if c.cert.IsCA && (ca == nil || !c.cert.Equal(ca)) {
			inter.AddCert(c.cert)
		}
	}
	var soonest time.Time
	for _, c := range certs {
		isCA := ca != nil && c.cert.Equal(ca)
		if isCA && c.path != caPath {
			continue // a copy of the CA (ca.crt of a TLS Secret, the first of a bundle)
		}
		info := describe(c, now)
		if isCA {
			info.ChainsToCA = true
		} else if ca != nil {
			// Chains are checked at a time the certificate is valid: expiry is its own check.
			at := now
			if at.After(c.cert.NotAfter) {
				at = c.cert.NotAfter.Add(-time.Second)
			}
			if at.Before(c.cert.NotBefore) {
				at = c.cert.NotBefore.Add(time.Second)
			}
			_, err := c.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			info.ChainsToCA = err == nil
			if err != nil && info.Server {
				info.Problem = "does not chain to the CA: " + err.Error()
				rep.Problems = append(rep.Problems, fmt.Sprintf("the server certificate %s (%s) does not chain to the CA %s: %v", c.path, c.cert.Subject, ca.Subject, err))
			} else if err != nil && !c.cert.IsCA {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s (%s) does not chain to the CA", c.path, c.cert.Subject))
			}
		}
		if kp := keyPathFor(c.path); kp != "" {
			if k, ok := keys[kp]; ok && !isCA {
				m := keyMatches(k, c.cert)
				info.KeyMatches = &m
				if !m {
					info.Problem = strings.TrimPrefix(info.Problem+"; key "+kp+" does not match", "; ")
					rep.Problems = append(rep.Problems, fmt.Sprintf("the key %s does not belong to the certificate %s", kp, c.path))
				}
			}
		}
		important := isCA || info.Server || c.cert.IsCA
		if important {
			if info.Expired {
				what := "server certificate"
				if c.cert.IsCA {
					what = "CA certificate"
				}
				info.Problem = strings.TrimPrefix(info.Problem+"; expired", "; ")
				rep.Problems = append(rep.Problems, fmt.Sprintf("the %s %s (%s) expired on %s: renew it before relying on this backup", what, c.path, c.cert.Subject, c.cert.NotAfter.UTC().Format(time.RFC3339)))
			} else if info.DaysLeft < warnDays {
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s (%s) expires in %d days, on %s", c.path, c.cert.Subject, info.DaysLeft, c.cert.NotAfter.UTC().Format(time.RFC3339)))
			}
			if soonest.IsZero() || c.cert.NotAfter.Before(soonest) {
				soonest = c.cert.NotAfter
			}
		}
		if isCA {
			rep.CA = &info
			rep.Certificates = append([]Certificate{info}, rep.Certificates...)
		} else {
			rep.Certificates = append(rep.Certificates, info)
		}
	}
	if !soonest.IsZero() {
		s := soonest.UTC()
		rep.SoonestExpiry = &s
	}
	return rep
}

// findCA names the CA certificate and its key: pki/ca.crt and pki/ca.key on a Podman
// host; in the flightctl-ca Secret, tls.crt/tls.key when tls.crt is a CA, else
// ca.crt/ca.key.
func findCA(p *pkiFiles, certs []parsedCert) (certPath, keyPath string) {
	if !p.kube {
		return "pki/ca.crt", "pki/ca.key"
	}
	base := "pki/" + KubernetesCASecret + ".yaml#"
	for _, c := range certs {
		if c.path == base+"tls.crt" && c.cert.IsCA {
			return base + "tls.crt", base + "tls.key"
		}
	}
	return base + "ca.crt", base + "ca.key"
}

// keyPathFor is where the key of a certificate file sits: x.crt → x.key; in a Secret,
// tls.crt → tls.key, ca.crt → ca.key.
func keyPathFor(certPath string) string {
	dir, file := path.Split(certPath)
	if i := strings.LastIndexByte(certPath, '#'); i >= 0 {
		dir, file = certPath[:i+1], certPath[i+1:]
	}
	for _, ext := range []string{".crt", ".pem"} {
		if b, ok := strings.CutSuffix(file, ext); ok && !strings.HasSuffix(b, "bundle") {
			return dir + b + ".key"
		}
	}
	return ""
}

func describe(c parsedCert, now time.Time) Certificate {
	info := Certificate{Path: c.path, Subject: c.cert.Subject.String(), Issuer: c.cert.Issuer.String(), IsCA: c.cert.IsCA,
		NotAfter: c.cert.NotAfter.UTC(), Expired: now.After(c.cert.NotAfter)}
	info.DaysLeft = int(c.cert.NotAfter.Sub(now).Hours() / 24)
	if c.cert.NotAfter.Before(now) {
		info.DaysLeft = -int(now.Sub(c.cert.NotAfter).Hours()/24) - 1
	}
	for _, u := range c.cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageServerAuth {
			info.Server = true
		}
	}
	return info
}

func parseKey(b *pem.Block) (crypto.PrivateKey, error) {
	switch b.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(b.Bytes)
	case "PRIVATE KEY":
		return x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	return nil, errors.New("unsupported key type " + b.Type)
}

// keyMatches says whether k is the private key of c's public key.
func keyMatches(k crypto.PrivateKey, c *x509.Certificate) bool {
	s, ok := k.(crypto.Signer)
	if !ok {
		return false
	}
	pub, ok := s.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}
