package fleet

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
)

// TestRedisOverTLS: a rediss:// Redis whose certificate an internal CA
// signs (tls_ca_file) is reached over TLS; without that CA the
// certificate is refused.
func TestRedisOverTLS(t *testing.T) {
	cert := modtest.SelfSigned(t, "localhost")
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsAddr := ln.Addr().String()
	ln.Close()
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	startRedis(t, "--tls-port", tlsPort, "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-auth-clients", "no")
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	url := "rediss://" + tlsAddr + "/0"
	ctx := context.Background()
	f := openFleet(t, Config{URL: url, RootCAs: roots, Replica: "a"})
	var l *Lease
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = f.Lease(ctx, artifact, 10*time.Second); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || l == nil {
		t.Fatalf("Lease over TLS: %v, %v", l, err)
	}
	l.Release()
	g := openFleet(t, Config{URL: url, Replica: "b"})
	if _, err := g.Lease(ctx, artifact, 10*time.Second); err == nil {
		t.Error("Lease over TLS with a certificate no root vouches for: no error")
	}
}
