package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// startForwardGate serves a modgate whose forward mode may reach 127.0.0.1
// on port, configured further by with (if not nil), and returns its
// address. It is stopped (Serve returns, its tunnels' sweep too) when the
// benchmark ends, before the cleanups registered ahead of it.
func startForwardGate(b *testing.B, port int, with func(*Config)) string {
	cfg := Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   ForwardConfig{AllowHosts: []string{"127.0.0.1"}, ConnectPorts: []int{port}},
	}
	if with != nil {
		with(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	return ln.Addr().String()
}

// BenchmarkForwardAbsolute sends small absolute-form GETs through modgate
// and, alternating request by request, through a plain Go forwarder
// (httputil.ReverseProxy that sends each request where its URL says). It
// reports ns per request for each and "modgate/floor-throughput" (target
// at least 1.0).
func BenchmarkForwardAbsolute(b *testing.B) {
	// A .info answer that passes modgate's check of .info answers.
	body := []byte(`{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z","Origin":{"VCS":"git","URL":"https://example.test/a"}}`)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	defer origin.Close()
	u, _ := url.Parse(origin.URL)
	port, _ := strconv.Atoi(u.Port())
	gate := startForwardGate(b, port, nil)
	floor := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL = r.In.URL
	}})
	defer floor.Close()
	client := func(proxy string) *http.Client {
		p, _ := url.Parse(proxy)
		return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(p), MaxIdleConnsPerHost: 16}}
	}
	viaGate, viaFloor := client("http://"+gate), client(floor.URL)
	target := origin.URL + "/fixture.test/a/@v/v1.0.0.info"
	get := func(c *http.Client) time.Duration {
		start := time.Now()
		resp, err := c.Get(target)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n != int64(len(body)) {
			b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
		}
		return time.Since(start)
	}
	for range 200 {
		get(viaGate)
		get(viaFloor)
	}
	var tGate, tFloor time.Duration
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			tGate += get(viaGate)
			tFloor += get(viaFloor)
		} else {
			tFloor += get(viaFloor)
			tGate += get(viaGate)
		}
		n++
	}
	b.ReportMetric(float64(tGate.Nanoseconds())/float64(n), "modgate-ns/req")
	b.ReportMetric(float64(tFloor.Nanoseconds())/float64(n), "floor-ns/req")
	b.ReportMetric(float64(tFloor)/float64(tGate), "modgate/floor-throughput")
}

// tunnelSize is the body the tunnel benchmarks move.
const tunnelSize = 256 << 20

// BenchmarkForwardTunnel reads 256 MiB of plaintext from a TCP origin
// directly, through a bare relay (the floor: accept, dial, io.Copy both
// ways) and through a CONNECT tunnel of modgate, the three taking turns in
// an order that rotates from iteration to iteration. It reports MB/s for
// each and the ratios "tunnel/direct-throughput" (target at least 0.9) and
// "tunnel/floor-throughput". On loopback every relayed byte crosses the
// kernel twice, so on two cores even the floor stays well under direct.
func BenchmarkForwardTunnel(b *testing.B) { benchTunnel(b, false) }

// BenchmarkForwardTunnelTLS is BenchmarkForwardTunnel with what a tunnel
// carries in real use: the go command sends CONNECT only for https URLs,
// so the origin serves the 256 MiB over TLS (a self-signed certificate)
// and the client reads it through its own TLS connection, direct, through
// the floor or through modgate. Both ends then pay for the cipher in every
// column; the relay in the middle only moves the records.
func BenchmarkForwardTunnelTLS(b *testing.B) { benchTunnel(b, true) }

func benchTunnel(b *testing.B, useTLS bool) {
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var clientTLS *tls.Config
	if useTLS {
		cert := modtest.SelfSigned(b, "origin.test")
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			b.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(leaf)
		clientTLS = &tls.Config{RootCAs: roots, ServerName: "origin.test"}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	chunk := bytes.Repeat([]byte("modgate!"), 4<<10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for left := tunnelSize; left > 0; left -= len(chunk) {
					if _, err := c.Write(chunk[:min(left, len(chunk))]); err != nil {
						return
					}
				}
			}()
		}
	}()
	addr := ln.Addr().String()
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	gateAddr := startForwardGate(b, port, nil)
	relay, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer relay.Close()
	go func() {
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer s.Close()
				go io.Copy(s, c)
				io.Copy(c, s)
			}()
		}
	}()

	// drain reads the whole body from c, through TLS if the origin speaks
	// it; the handshake is part of the transfer, as for a fresh download.
	drain := func(c net.Conn) {
		var r io.Reader = c
		if useTLS {
			tc := tls.Client(c, clientTLS)
			defer tc.Close()
			r = tc
		}
		n, err := io.Copy(io.Discard, r)
		if err != nil || n != tunnelSize {
			b.Fatalf("%d bytes, %v", n, err)
		}
	}
	dial := func(a string) net.Conn {
		c, err := net.Dial("tcp", a)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	direct := func() time.Duration {
		start := time.Now()
		c := dial(addr)
		defer c.Close()
		drain(c)
		return time.Since(start)
	}
	floor := func() time.Duration {
		start := time.Now()
		c := dial(relay.Addr().String())
		defer c.Close()
		drain(c)
		return time.Since(start)
	}
	tunnel := func() time.Duration {
		start := time.Now()
		c := dial(gateAddr)
		defer c.Close()
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("CONNECT: %v %v", resp, err)
		}
		drain(&bufferedConn{Conn: c, r: br})
		return time.Since(start)
	}
	var t [3]time.Duration
	ways := [3]func() time.Duration{direct, floor, tunnel}
	for _, w := range ways { // warm-up
		w()
	}
	n := 0
	for b.Loop() {
		for i := range ways { // the order rotates, so that none is always first
			k := (i + n) % len(ways)
			t[k] += ways[k]()
		}
		n++
	}
	tDirect, tFloor, tTunnel := t[0], t[1], t[2]
	mb := float64(tunnelSize) / 1e6
	b.ReportMetric(mb*float64(n)/tDirect.Seconds(), "direct-MB/s")
	b.ReportMetric(mb*float64(n)/tFloor.Seconds(), "floor-MB/s")
	b.ReportMetric(mb*float64(n)/tTunnel.Seconds(), "tunnel-MB/s")
	b.ReportMetric(float64(tDirect)/float64(tTunnel), "tunnel/direct-throughput")
	b.ReportMetric(float64(tFloor)/float64(tTunnel), "tunnel/floor-throughput")
}

// bufferedConn reads through r, which holds what came behind the CONNECT
// answer, and writes to Conn.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// BenchmarkForwardConnectSetup opens a new CONNECT tunnel per iteration,
// sends one small GET through it and closes it, as `benchtable -only
// setup` does: modgate serves its listener itself (Serve: the connection
// limiter, an audit log, telemetry as `modgate run` sets it up without an
// endpoint, a JSON log). allocs/op counts the client and the origin too;
// compare runs of it, not its numbers with a proxy's own.
func BenchmarkForwardConnectSetup(b *testing.B) {
	body := []byte(`{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	defer origin.Close()
	originAddr := origin.Listener.Addr().String()
	_, p, _ := net.SplitHostPort(originAddr)
	port, _ := strconv.Atoi(p)
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Getenv: func(string) string { return "" }})
	if err != nil {
		b.Fatal(err)
	}
	audit, err := policy.NewAuditLog(filepath.Join(b.TempDir(), "audit.jsonl"), policy.AuditOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { // after the gate has stopped
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		tel.Shutdown(sctx)
		audit.Close()
	})
	gateAddr := startForwardGate(b, port, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
		c.Telemetry, c.Audit = tel, audit
	})
	floor := httptest.NewServer(http.HandlerFunc(floorTunnel))
	defer floor.Close()
	connectReq := []byte("CONNECT " + originAddr + " HTTP/1.1\r\nHost: " + originAddr + "\r\nUser-Agent: Go-http-client/1.1\r\n\r\n")
	getReq := []byte("GET /fixture.test/a/@v/v1.0.0.info HTTP/1.1\r\nHost: " + originAddr + "\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
	buf := make([]byte, 4096)
	// readAnswer reads one answer (headers and a body of Content-Length
	// bytes) and returns its status line.
	readAnswer := func(c net.Conn) string {
		got := 0
		for {
			n, err := c.Read(buf[got:])
			got += n
			head, rest, ok := bytes.Cut(buf[:got], []byte("\r\n\r\n"))
			if ok {
				status, _, _ := bytes.Cut(head, []byte("\r\n"))
				length := 0
				if _, v, ok := bytes.Cut(head, []byte("Content-Length: ")); ok {
					v, _, _ = bytes.Cut(v, []byte("\r\n"))
					length, _ = strconv.Atoi(string(v))
				}
				for len(rest) < length {
					n, err := c.Read(buf[got:])
					if err != nil {
						b.Fatal(err)
					}
					got += n
					_, rest, _ = bytes.Cut(buf[:got], []byte("\r\n\r\n"))
				}
				return string(status)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	once := func(proxy string) {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		c.Write(connectReq)
		if st := readAnswer(c); !strings.Contains(st, " 200 ") {
			b.Fatalf("CONNECT: %s", st)
		}
		c.Write(getReq)
		if st := readAnswer(c); !strings.Contains(st, " 200 ") {
			b.Fatalf("GET: %s", st)
		}
	}
	for _, t := range []struct{ name, addr string }{{"modgate", gateAddr}, {"floor", floor.Listener.Addr().String()}} {
		b.Run("target="+t.name, func(b *testing.B) {
			for range 200 {
				once(t.addr)
			}
			cpu, n := processCPU(), 0
			for b.Loop() {
				once(t.addr)
				n++
			}
			// The whole process's CPU time (client, origin and proxy): on
			// two cores a proxy can add more CPU than it adds latency.
			b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(n), "cpu-µs/op")
		})
	}
}

// floorTunnel is the least a CONNECT proxy written with net/http does
// (benchtable's floor): dial, hijack, io.Copy both ways.
func floorTunnel(w http.ResponseWriter, r *http.Request) {
	s, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer s.Close()
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{})
	go func() {
		io.Copy(s, c)
		s.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, s)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
