// Package mitm is modgate's own certificate authority for intercepting
// TLS to module hosts: a CA that `modgate ca init` generates (never a
// library's built-in one, whose key is public), and leaf certificates
// minted per host and cached.
package mitm

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// The files of a CA directory.
const (
	CertFile = "modgate-ca.pem"
	KeyFile  = "modgate-ca-key.pem"
)

// caValidity is how long a generated CA is valid; leaves last leafValidity
// and are minted again well before they expire.
const (
	caValidity   = 5 * 365 * 24 * time.Hour
	leafValidity = 7 * 24 * time.Hour
)

// CertPath returns where the CA certificate of dir is: the file to put in
// SSL_CERT_FILE (for the go command) and GIT_SSL_CAINFO (for git).
func CertPath(dir string) string { return filepath.Join(dir, CertFile) }

// Init generates an ECDSA P-256 CA in dir: the certificate (0644) and its
// key (0600). It refuses to overwrite an existing CA.
func Init(dir string) error {
	for _, f := range []string{CertFile, KeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("%s already exists: remove the CA files first to make a new CA (clients trust the old one)", filepath.Join(dir, f))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "modgate CA " + host, Organization: []string{"modgate"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaves only
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	// The key first, created exclusively: two concurrent inits cannot both
	// win, and the key is never readable by others, not even briefly.
	if err := writeExclusive(filepath.Join(dir, KeyFile), 0o600, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})); err != nil {
		return err
	}
	return writeExclusive(filepath.Join(dir, CertFile), 0o644, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeExclusive(path string, mode os.FileMode, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// CA signs leaf certificates for intercepted hosts. Safe for concurrent use.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// leafKey is shared by all leaves: minting is then one signature.
	leafKey *ecdsa.PrivateKey
	clock   wire.Clock // tells leaves' validity; a test moves it

	mu     sync.Mutex
	leaves map[string]*list.Element // of *leafEntry, most recent first in order
	order  *list.List
}

// Load reads the CA of dir.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CA in %s: run `modgate ca init --ca-dir %s`", dir, dir)
	}
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA in %s: %v", dir, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("CA in %s: not an ECDSA CA certificate", dir)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, leafKey: leafKey, clock: wire.SystemClock{}, leaves: map[string]*list.Element{}, order: list.New()}, nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// MaxLeaves bounds the cache of minted certificates; the least recently
// used goes first. Callers key it on a normalised host name, so that one
// host has one entry however clients spell it.
const MaxLeaves = 1024

type leafEntry struct {
	host string
	cert *tls.Certificate
}

// Leaf returns a certificate for host (a name or an IP address), minted on
// first use and cached until it nears expiry.
func (ca *CA) Leaf(host string) (*tls.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.clock.Now()
	if e, ok := ca.leaves[host]; ok {
		c := e.Value.(*leafEntry).cert
		if now.Before(c.Leaf.NotAfter.Add(-leafValidity / 2)) {
			ca.order.MoveToFront(e)
			return c, nil
		}
		ca.order.Remove(e)
		delete(ca.leaves, host)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(leafValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &ca.leafKey.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der, ca.cert.Raw}, PrivateKey: ca.leafKey, Leaf: leaf}
	ca.leaves[host] = ca.order.PushFront(&leafEntry{host: host, cert: c})
	for ca.order.Len() > MaxLeaves {
		last := ca.order.Back()
		ca.order.Remove(last)
		delete(ca.leaves, last.Value.(*leafEntry).host)
	}
	return c, nil
}

// Leaves returns how many certificates are cached.
func (ca *CA) Leaves() int {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.order.Len()
}

// ServerConfig is the TLS configuration that presents a leaf for host to
// the client, whatever name the client sends (the CONNECT named the host).
func (ca *CA) ServerConfig(host string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return ca.Leaf(host)
		},
	}
}
