package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modgate/modgate/sidecar/modtest"
)

func TestMain(m *testing.M) {
	// lumberjack (the audit log's rotation) starts one goroutine per
	// rotating file and has no way to stop it.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

// BenchmarkHotPath is the hot-path row of the table under go test, for
// profiling:
//
//	go test -run='^$' -bench=HotPath -benchmem -cpuprofile cpu.out ./sidecar/benchtable
//
// Client, origin and proxies share the process; the direct column is the
// client and origin alone.
func BenchmarkHotPath(b *testing.B) {
	e, err := newInproc(b.TempDir(), modtest.FixtureDir(b), inProcess)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	for _, kind := range hotKinds {
		for _, name := range hotTargets(kind) {
			b.Run("kind="+kind+"/target="+name, func(b *testing.B) { e.hotPath(b, kind, name) })
		}
	}
}

// TestColumns sends every kind of request the table measures through
// every column once, and checks that each comes back whole: the policy
// allows the fixtures, forward mode reaches the loopback origin, tunnels
// open, and modgate writes an audit line per request and exports spans.
func TestColumns(t *testing.T) {
	dir := t.TempDir()
	o, paths, err := newOrigin(modtest.FixtureDir(t), 3<<20)
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(o)
	defer origin.Close()
	originAddr := origin.Listener.Addr().String()
	recv := &receiver{}
	collector := httptest.NewServer(recv)
	defer collector.Close()
	floorHandler, err := newFloor(origin.URL)
	if err != nil {
		t.Fatal(err)
	}
	floor := httptest.NewServer(floorHandler)
	defer floor.Close()
	policyFile, err := writePolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	audit := filepath.Join(dir, "audit", "modgate.jsonl")
	g, err := startGate(gateConfig{Origin: origin.URL, OTLP: collector.URL, Policy: policyFile, Audit: audit})
	if err != nil {
		t.Fatal(err)
	}
	gateAddr := g.ln.Addr().String()
	floorAddr := floor.Listener.Addr().String()

	want := func(p string) int64 {
		if p == zipPath {
			return o.zipSize
		}
		return int64(len(o.files[p].body))
	}
	all := append(append([]string{}, paths...), zipPath)
	sent := 0
	for _, tg := range []*target{
		{name: "direct", addr: originAddr, reqs: requests(all, originAddr, false)},
		{name: "floor", addr: floorAddr, reqs: requests(all, floorAddr, false)},
		{name: "modgate", addr: gateAddr, reqs: requests(all, gateAddr, false)},
		{name: "floor absolute-form", addr: floorAddr, reqs: requests(all, originAddr, true)},
		{name: "modgate absolute-form", addr: gateAddr, reqs: requests(all, originAddr, true)},
		{name: "floor tunnel", addr: floorAddr, via: originAddr, reqs: requests(all, originAddr, false)},
		{name: "modgate tunnel", addr: gateAddr, via: originAddr, reqs: requests(all, originAddr, false)},
	} {
		c, err := tg.dial()
		if err != nil {
			t.Fatalf("%s: %v", tg.name, err)
		}
		for i, req := range tg.reqs {
			a, err := c.roundTrip(req)
			if err != nil || a.status != 200 || a.bytes != want(all[i]) {
				t.Fatalf("%s %s: status %d, %d bytes (want %d), %v", tg.name, all[i], a.status, a.bytes, want(all[i]), err)
			}
			if strings.HasPrefix(tg.name, "modgate") && tg.via == "" {
				sent++
			}
		}
		c.Close()
		if strings.HasPrefix(tg.name, "modgate") && tg.via != "" {
			sent++ // one audit line for the tunnel
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("\n")); n != sent {
		t.Errorf("audit log has %d lines, want %d", n, sent)
	}
	if !bytes.Contains(data, []byte(`"decision":"allow"`)) || !bytes.Contains(data, []byte(`"trace_id":"`)) {
		t.Errorf("audit lines without a decision or trace id:\n%.400s", data)
	}
	if recv.traces.Load() == 0 {
		t.Error("no spans reached the OTLP receiver")
	}
}

// TestInProcessSpans checks the in-process exporter of the modgate column
// (-export inprocess): every request is a server span and a client span,
// and they all reach it once modgate has stopped.
func TestInProcessSpans(t *testing.T) {
	dir := t.TempDir()
	o, paths, err := newOrigin(modtest.FixtureDir(t), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(o)
	defer origin.Close()
	policyFile, err := writePolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	g, err := startGate(gateConfig{Origin: origin.URL, OTLP: inProcess, Policy: policyFile, Audit: filepath.Join(dir, "audit.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	addr := g.ln.Addr().String()
	tg := &target{name: "modgate", addr: addr, reqs: requests(paths[:3], addr, false)}
	c, err := tg.dial()
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range tg.reqs {
		if a, err := c.roundTrip(req); err != nil || a.status != 200 {
			t.Fatalf("status %d, %v", a.status, err)
		}
	}
	c.Close()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if n := g.spans.n.Load(); n != 2*int64(len(tg.reqs)) {
		t.Errorf("the in-process exporter received %d spans, want %d", n, 2*len(tg.reqs))
	}
}

// TestRawConn checks the load generator's reader against net/http's
// server: lengths, chunks, bodies that end with the connection, no body.
func TestRawConn(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Write(bytes.Repeat([]byte("x"), 100<<10))
		case "/chunked":
			for range 3 {
				w.Write(bytes.Repeat([]byte("y"), 1000))
				w.(http.Flusher).Flush()
			}
		case "/close":
			c, brw, _ := http.NewResponseController(w).Hijack()
			brw.WriteString("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
			brw.Flush()
			c.Close()
		case "/none":
			w.WriteHeader(http.StatusNotModified)
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	c, err := dialRaw(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }()
	for _, tc := range []struct {
		path   string
		status int
		bytes  int64
		close  bool
	}{
		{"/length", 200, 100 << 10, false},
		{"/chunked", 200, 3000, false},
		{"/none", 304, 0, false},
		{"/length", 200, 100 << 10, false},
		{"/close", 200, int64(len("until the end")), true},
	} {
		a, err := c.roundTrip(requests([]string{tc.path}, addr, false)[0])
		if err != nil || a.status != tc.status || a.bytes != tc.bytes || a.close != tc.close {
			t.Errorf("%s: got %+v, %v; want status %d, %d bytes, close %v", tc.path, a, err, tc.status, tc.bytes, tc.close)
		}
	}
}

// TestRawConnConnect checks the CONNECT handshake and a refusal.
func TestRawConnConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err == nil && i == 0 && req.Method == http.MethodConnect {
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			} else {
				io.WriteString(c, "HTTP/1.1 403 modgate: refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}
			c.Close()
		}
	}()
	c, err := dialRaw(ln.Addr().String(), "origin.example.test:443")
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.readResponse(false)
	c.Close()
	if err != nil || a.status != 200 || a.bytes != 2 {
		t.Errorf("through the tunnel: %+v, %v", a, err)
	}
	if _, err := dialRaw(ln.Addr().String(), "origin.example.test:443"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("refused CONNECT: err = %v, want status 403", err)
	}
	ln.Close()
	<-done
}

func TestPercentile(t *testing.T) {
	s := &stats{}
	for i := 1; i <= 100; i++ {
		s.lat = append(s.lat, time.Duration(i)*time.Microsecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Microsecond, 99: 99 * time.Microsecond, 100: 100 * time.Microsecond} {
		if got := s.pct(p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := (&stats{}).pct(50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
	for d, want := range map[time.Duration]string{-1500 * time.Nanosecond: "-2 µs", -400 * time.Nanosecond: "+0 µs", 12345 * time.Microsecond: "+12,345 µs"} {
		if got := signedMicros(d); got != want {
			t.Errorf("signedMicros(%v) = %q, want %q", d, got, want)
		}
	}
	if got, want := fmt.Sprint(growth(1<<20, 2<<20)), "0"; got != want {
		t.Errorf("growth below zero = %s, want %s", got, want)
	}
}
