package sidecar_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// TestRedirectTargetsAreGuarded: an upstream may sit on loopback, but its
// redirects may not lead there, even to a host that redirect_hosts
// allows. Before the guard, a redirect to localhost served modgate's own
// admin JSON as a version list.
func TestRedirectTargetsAreGuarded(t *testing.T) {
	var innerHits atomic.Int64
	inner := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		innerHits.Add(1)
		io.WriteString(w, "v9.9.9\n")
	}))
	defer inner.Close()
	_, innerPort, _ := net.SplitHostPort(strings.TrimPrefix(inner.URL, "http://"))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, adminPort, _ := net.SplitHostPort(adminLn.Addr().String())

	// The upstream redirects each module to a place of the test's choosing.
	targets := map[string]string{
		"admin":    "http://localhost:" + adminPort + "/debug/upstreams",
		"adminip":  "http://127.0.0.1:" + adminPort + "/debug/upstreams",
		"v6":       "http://[::1]:" + innerPort + "/list",
		"mapped":   "http://[::ffff:127.0.0.1]:" + innerPort + "/list",
		"inner":    "http://localhost:" + innerPort + "/list",
		"samehost": "/real/list",
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/real/list" {
			io.WriteString(w, "v1.0.0\n")
			return
		}
		for name, to := range targets {
			if strings.Contains(r.URL.Path, "/"+name+"/") {
				http.Redirect(w, r, to, http.StatusFound)
				return
			}
		}
		http.NotFound(w, r)
	}))
	defer up.Close()

	for _, hosts := range [][]string{{"*"}, {"localhost", "127.0.0.1", "::1", "::ffff:127.0.0.1"}} {
		s, err := sidecar.New(sidecar.Config{
			Listen: ln.Addr().String(), Admin: adminLn.Addr().String(), Dial: modtest.LoopbackDial,
			Upstreams: []upstream.Config{{Name: "up", URL: up.URL, RedirectHosts: hosts,
				Retry: upstream.RetrySettings{Attempts: 1}, Breaker: upstream.BreakerSettings{Disabled: true}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx, ln, adminLn) }()
		base := "http://" + ln.Addr().String()
		for name := range targets {
			resp, err := http.Get(base + "/fixture.test/" + name + "/@v/list")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if name == "samehost" {
				if resp.StatusCode != 200 || string(body) != "v1.0.0\n" {
					t.Errorf("redirect_hosts %q: a redirect within the upstream: %d %q", hosts, resp.StatusCode, body)
				}
				continue
			}
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "redirect to") ||
				!strings.Contains(string(body), "a loopback address") || strings.Contains(string(body), "breaker") {
				t.Errorf("redirect_hosts %q: redirect to %s: %d %q; want 502 naming the loopback address", hosts, targets[name], resp.StatusCode, body)
			}
		}
		cancel()
		<-done
		// Serve closed the listeners; the next round gets new ones.
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if adminLn, err = net.Listen("tcp", "127.0.0.1:"+adminPort); err != nil {
			t.Fatal(err)
		}
	}
	adminLn.Close()
	ln.Close()
	if n := innerHits.Load(); n != 0 {
		t.Errorf("a redirect reached a loopback server %d times", n)
	}
}
