package mitm

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

func TestInitLoadAndLeaves(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if err := Init(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second Init: %v; want a refusal to overwrite", err)
	}
	ca, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(CertPath(dir))
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CertPath holds no certificate")
	}

	// A TLS client that trusts the CA accepts a minted leaf for the host.
	for _, host := range []string{"proxy.example.test", "127.0.0.1"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				errc <- err
				return
			}
			c := tls.Server(conn, ca.ServerConfig(host))
			errc <- c.Handshake()
			c.Close()
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(conn, &tls.Config{RootCAs: pool, ServerName: host})
		if err := c.Handshake(); err != nil {
			t.Errorf("%s: client handshake: %v", host, err)
		}
		c.Close()
		if err := <-errc; err != nil {
			t.Errorf("%s: server handshake: %v", host, err)
		}
		ln.Close()
	}
	a, _ := ca.Leaf("proxy.example.test")
	b, _ := ca.Leaf("proxy.example.test")
	if a != b {
		t.Errorf("leaf not cached")
	}
	ca.clock = laterClock{by: 5 * 24 * time.Hour}
	if c, _ := ca.Leaf("proxy.example.test"); c == a {
		t.Errorf("a leaf near expiry was not minted again")
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "modgate ca init") {
		t.Errorf("Load of an empty dir: %v", err)
	}
}

// TestLeafCacheIsBounded: a client that CONNECTs to ever new host names
// cannot grow the certificate cache past MaxLeaves; the least recently used
// goes first.
func TestLeafCacheIsBounded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir); err != nil {
		t.Fatal(err)
	}
	ca, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	first, err := ca.Leaf("h0.example.test")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < MaxLeaves+50; i++ {
		if _, err := ca.Leaf(fmt.Sprintf("h%d.example.test", i)); err != nil {
			t.Fatal(err)
		}
		if i == MaxLeaves/2 {
			ca.Leaf("h0.example.test") // recently used: kept
		}
	}
	if n := ca.Leaves(); n != MaxLeaves {
		t.Errorf("%d certificates cached, want %d", n, MaxLeaves)
	}
	if again, _ := ca.Leaf("h0.example.test"); again != first {
		t.Errorf("a recently used certificate was evicted")
	}
	if again, _ := ca.Leaf("h1.example.test"); ca.Leaves() != MaxLeaves || again == nil {
		t.Errorf("re-minting an evicted host: %d cached", ca.Leaves())
	}
}

// laterClock is the real clock moved on by a fixed amount.
type laterClock struct {
	wire.SystemClock
	by time.Duration
}

func (c laterClock) Now() time.Time { return time.Now().Add(c.by) }
