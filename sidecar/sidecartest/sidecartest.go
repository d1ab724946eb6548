// Package sidecartest starts real modgates for tests, as net/http/httptest
// starts servers: sidecar.New and Serve on loopback listeners, stopped when
// the test ends.
package sidecartest

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
)

// Gate is a modgate serving for a test.
type Gate struct {
	// URL is the module listener's, "http://127.0.0.1:port".
	URL string
	// Addr is the module listener's address.
	Addr string
	// AdminAddr is the admin listener's address, "" without one.
	AdminAddr string
	// Server is the modgate.
	Server *sidecar.Server

	stop func()
}

// Stop shuts the modgate down as a signal does and waits for it: requests
// and the fetches they started (entries being written to the caches)
// finish first. A test that reads what one modgate kept stops it first.
func (g *Gate) Stop() { g.stop() }

// Start serves a modgate with cfg until the test ends. Its module
// listener is ln, or a fresh one on 127.0.0.1 when ln is nil; cfg.Listen
// is set to its address. When cfg.Admin is not empty, an admin listener is
// opened there too ("127.0.0.1:0" for any port), and Start returns after
// its first answer. The test fails if New or Serve does.
func Start(t testing.TB, ln net.Listener, cfg sidecar.Config) *Gate {
	t.Helper()
	if ln == nil {
		ln = listen(t, "127.0.0.1:0")
	}
	var adminLn net.Listener
	if cfg.Admin != "" {
		adminLn = listen(t, cfg.Admin)
		cfg.Admin = adminLn.Addr().String()
	}
	cfg.Listen = ln.Addr().String()
	if cfg.Dial == nil {
		cfg.Dial = modtest.LoopbackDial // no test reaches the network
	}
	s, err := sidecar.New(cfg)
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, adminLn) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("modgate Serve: %v", err)
		}
	})
	t.Cleanup(stop)
	g := &Gate{URL: "http://" + cfg.Listen, Addr: cfg.Listen, AdminAddr: cfg.Admin, Server: s, stop: stop}
	if adminLn != nil {
		g.waitReady(t)
	}
	return g
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// waitReady waits for the admin listener's first answer: Serve marks the
// server ready before it serves, so an answer means ready (or, with every
// upstream unusable, as ready as it will be).
func (g *Gate) waitReady(t testing.TB) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + g.AdminAddr + "/healthz")
	if err != nil {
		t.Fatalf("sidecartest: modgate's admin listener: %v", err)
	}
	resp.Body.Close()
}
