package sidecar_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// raw sends bytes as they are and returns what comes back until modgate
// closes the connection or the deadline passes.
func raw(t *testing.T, base string, request string, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	io.WriteString(c, request)
	b, _ := io.ReadAll(c)
	return string(b)
}

// statusOf returns the status line of the first answer in resp.
func statusOf(resp string) string {
	line, _, _ := strings.Cut(resp, "\r\n")
	return line
}

// stillUp checks that modgate answers a good request.
func stillUp(t *testing.T, url string) {
	t.Helper()
	if status, _, _ := rawGet(t, url, "/fixture.test/dep01/@v/list"); status != 200 {
		t.Fatalf("modgate is not answering after that: %d", status)
	}
}

func TestHostileRequests(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{URL: p.URL}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"*"}},
	})
	long := strings.Repeat("a", 100<<10)
	tests := []struct {
		name, request, want string
	}{
		{"oversized request line", "GET /" + long + " HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 431"},
		{"oversized header", "GET /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\nX-Big: " + long + "\r\n\r\n", "HTTP/1.1 431"},
		{"invalid method", "G(T /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"},
		{"unknown method", "BREW /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"},
		{"two Content-Lengths", "GET /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400"},
		{"bad Transfer-Encoding", "GET /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "HTTP/1.1 501"},
		{"CONNECT without a port", "CONNECT proxy.example.test HTTP/1.1\r\nHost: proxy.example.test\r\n\r\n", "HTTP/1.1 400"},
		{"CONNECT to an empty host", "CONNECT :443 HTTP/1.1\r\nHost: :443\r\n\r\n", "HTTP/1.1 400"},
		{"a request with a body", "GET /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 400"},
		{"CONNECT to a bad port", "CONNECT proxy.example.test:99999 HTTP/1.1\r\nHost: proxy.example.test:99999\r\n\r\n", "HTTP/1.1 403"},
		{"absolute-form to an IPv6 loopback", "GET http://[::1]:80/x HTTP/1.1\r\nHost: [::1]\r\n\r\n", "HTTP/1.1 403"},
		{"absolute-form to a decimal address", "GET http://2130706433/x HTTP/1.1\r\nHost: 2130706433\r\n\r\n", "HTTP/1.1 403"},
		{"absolute-form with another scheme", "GET ftp://example.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n", "HTTP/1.1 400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := raw(t, url, strings.Replace(tt.request, "Host:", "Connection: close\r\nHost:", 1), 5*time.Second)
			if !strings.HasPrefix(statusOf(got), tt.want) {
				t.Errorf("got %q; want %s", statusOf(got), tt.want)
			}
			stillUp(t, url)
		})
	}
	if reqs := p.Requests(); len(reqs) != len(tests) {
		t.Errorf("upstream requests %v: only the liveness checks should reach it", reqs)
	}
}

// TestRequestSmuggling: a request whose framing is ambiguous either is
// refused or is framed one way only: the bytes after it are never read as
// a request of their own.
func TestRequestSmuggling(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}})
	smuggled := "GET /fixture.test/dep02/@v/list HTTP/1.1\r\nHost: x\r\n\r\n"
	req := fmt.Sprintf("POST /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 5+len(smuggled))
	got := raw(t, url, req+smuggled, 2*time.Second)
	if n := strings.Count(got, "HTTP/1.1 "); n > 1 && p.CountMatching("dep02") > 0 {
		t.Errorf("the bytes after the body were served as a request of their own:\n%s", got)
	}
	if p.CountMatching("dep01") != 0 {
		t.Errorf("an ambiguous request reached the upstream")
	}
	stillUp(t, url)
}

// TestForwardSmugglingSafeguard: in forward mode too, a request sent
// chunked is answered with Connection: close and nothing after it on the
// connection reaches the origin (the origin's own headers must not drop
// modgate's Connection: close).
func TestForwardSmugglingSafeguard(t *testing.T) {
	var seen atomic.Int32
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		w.Header().Set("Connection", "keep-alive")
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(origin.Close)
	host := "git.example.test"
	url := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		Resolve:   map[string]string{host + ":80": strings.TrimPrefix(origin.URL, "http://")},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{host}},
	})
	second := "GET http://" + host + "/second HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	first := "POST http://" + host + "/repo/git-upload-pack HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	got := raw(t, url, first+second, 2*time.Second)
	if !strings.Contains(got, "Connection: close") {
		t.Errorf("a chunked request in forward mode was answered without Connection: close:\n%s", got)
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("%d requests reached the origin, want 1 (the pipelined one must not):\n%s", n, got)
	}
}

func TestPathTraversalEncodings(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}})
	for _, target := range []string{
		"/../../etc/passwd",
		"/fixture.test/%2e%2e/%2e%2e/etc/@v/list",
		"/fixture.test/%252e%252e/etc/@v/list",
		"/fixture.test/..%2fetc/@v/list",
		"/fixture.test/..%5cetc/@v/list",
		"/fixture.test/..\\etc/@v/list",
		"/fixture.test/./dep01/@v/list",
		"/fixture.test//dep01/@v/list",
		"/fixture.test/%c0%ae%c0%ae/etc/@v/list",
		"/fixture.test/\uff0e\uff0e/etc/@v/list",
		"/fixture.test/dep01/@v/..%2f..%2f..%2fetc%2fpasswd.info",
		"/sumdb/sum.fixture.test/lookup/..%2f..%2fetc@v1.0.0",
		"/sumdb/..%2f..%2fetc/supported",
		"/fixture.test/!/@v/list",
		"/fixture.test/!A/@v/list",
	} {
		status, h, body := rawGet(t, url, target)
		if status != 400 && status != 404 {
			t.Errorf("GET %s = %d %q; want 400 or 404", target, status, body)
		}
		if !strings.HasPrefix(body, "modgate: ") || h.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("GET %s: no modgate explanation: %q", target, body)
		}
	}
	if reqs := p.Requests(); len(reqs) != 0 {
		t.Errorf("traversal attempts reached the upstream: %v", reqs)
	}
}

// hostileOrigin answers lists and .info files in ways no proxy should.
// ended receives the path of each request whose handler returned.
func hostileOrigin(t *testing.T) (srv *httptest.Server, sent *atomic.Int64, ended chan string) {
	sent, ended = new(atomic.Int64), make(chan string, 16)
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			select {
			case ended <- r.URL.Path:
			default:
			}
		}()
		chunk := []byte(strings.Repeat("v1.0.0-endless\n", 4096))
		// A list of 64 MiB; an .info and a zip that never end, with no
		// length.
		if strings.HasSuffix(r.URL.Path, "/@v/list") {
			w.Header().Set("Content-Length", fmt.Sprint(64<<20))
		}
		for r.Context().Err() == nil && sent.Load() < 2<<30 {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv, sent, ended
}

func TestHugeAndEndlessUpstreamAnswers(t *testing.T) {
	origin, sent, _ := hostileOrigin(t)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{Name: "hostile", URL: origin.URL}}})
	for _, c := range []struct{ path, want string }{
		// The list says its length: refused before a byte is read.
		{"/fixture.test/dep01/@v/list", "modgate: bad-upstream: fixture.test/dep01 (version list): the upstream's answer is too large for its kind"},
		{"/fixture.test/dep01/@v/v1.0.0.info", "the limit is 262144"},
	} {
		sent.Store(0)
		status, _, body := rawGet(t, url, c.path)
		if status != http.StatusBadGateway || !strings.Contains(body, c.want) {
			t.Errorf("GET %s = %d %q; want 502 with %q", c.path, status, body, c.want)
		}
		if n := sent.Load(); n > 64<<20 {
			t.Errorf("GET %s: modgate read %d MiB before giving up", c.path, n>>20)
		}
	}
	// An endless zip streams, and is cut at the largest zip the go command
	// accepts; a client that stops reading early costs nothing further.
	resp, err := http.Get(url + "/fixture.test/dep01/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, resp.Body, 8<<20)
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	before := sent.Load()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		if now := sent.Load(); now == before {
			break
		} else {
			before = now
		}
	}
	if sent.Load() > 600<<20 {
		t.Errorf("the upstream kept sending after the client left: %d MiB", sent.Load()>>20)
	}
	stillUpWith(t, url, origin)
}

func stillUpWith(t *testing.T, url string, _ *httptest.Server) {
	t.Helper()
	if status, _, _ := rawGet(t, url, "/fixture.test/dep01/@v/v1.0.0.mod"); status == 0 {
		t.Fatal("modgate is down")
	}
}

// TestConcurrentHugeAnswersStayBounded: 40 concurrent requests whose
// upstream sends a 20 MiB chunked .info, then as many for .mod (the go
// command's 16 MiB limit) with a smaller buffer budget: modgate's heap
// stays within a bound (documented in README, "Security"), the .info
// answers are refused at their kind's limit and the .mod ones either there
// or, past the budget, with 503.
func TestConcurrentHugeAnswersStayBounded(t *testing.T) {
	chunk := []byte(strings.Repeat("x", 64<<10))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for range (20 << 20) / len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(origin.Close)
	url := startGate(t, sidecar.Config{
		BufferBudget: 64 << 20,
		Upstreams:    []upstream.Config{{Name: "hostile", URL: origin.URL}},
	})
	// The bound is on what modgate holds, not on garbage the collector
	// has yet to reach: with the default pacing, a loaded machine (CI's)
	// lets tens of MiB of dropped buffers count as in use.
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	for _, kind := range []string{"info", "mod"} {
		var wg sync.WaitGroup
		statuses := make([]int, 40)
		for i := range statuses {
			wg.Go(func() {
				statuses[i], _, _ = rawGet(t, url, fmt.Sprintf("/fixture.test/dep%02d/@v/v1.0.%d.%s", i%20+1, i, kind))
			})
		}
		wg.Wait()
		// 502 for an answer too large for its kind; 503 once the budget
		// is spent, or once the hostile upstream's breaker has opened (an
		// answer refused by the check is the upstream's failure).
		for i, s := range statuses {
			if s != http.StatusBadGateway && s != http.StatusServiceUnavailable {
				t.Errorf(".%s request %d: %d", kind, i, s)
			}
		}
	}
	close(stop)
	<-sampled
	growth := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use grew by at most %d MiB", growth>>20)
	// 64 MiB of budget, plus per-request buffers and the race detector's
	// shadow of them.
	if growth > 160<<20 {
		t.Errorf("heap in use grew by %d MiB for 80 huge answers; want under 160 MiB", growth>>20)
	}
}

// TestSlowClients: a client that sends its headers too slowly is cut off
// at the header timeout, and one that stops reading an answer is given up
// at the idle timeout, releasing the upstream fetch.
func TestSlowClients(t *testing.T) {
	origin, sent, ended := hostileOrigin(t)
	url := startGate(t, sidecar.Config{
		ClientHeader: 200 * time.Millisecond,
		ClientIdle:   300 * time.Millisecond,
		Upstreams:    []upstream.Config{{Name: "hostile", URL: origin.URL}},
	})

	// Slowloris: one header byte at a time, forever.
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /fixture.test/dep01/@v/list HTTP/1.1\r\nHost: x\r\n")
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		for {
			if _, err := io.WriteString(c, "X"); err != nil {
				closed <- time.Since(start)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		c.Read(make([]byte, 1)) // returns when modgate closes the connection
		closed <- time.Since(start)
	}()
	select {
	case d := <-closed:
		t.Logf("slow headers cut after %v", d.Round(10*time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Errorf("a client trickling its headers was not cut off")
	}

	// A client that never reads a (endless) zip.
	c2, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.(*net.TCPConn).SetReadBuffer(4 << 10)
	io.WriteString(c2, "GET /fixture.test/dep01/@v/v1.0.0.zip HTTP/1.1\r\nHost: x\r\n\r\n")
	// modgate's writes stall, its idle timeout fires, and it gives up:
	// the upstream request is cancelled (back-pressure alone would only
	// pause it).
	select {
	case path := <-ended:
		t.Logf("the upstream request for %s ended after %d MiB", path, sent.Load()>>20)
	case <-time.After(10 * time.Second):
		t.Fatalf("modgate still holds the upstream fetch for a client that never reads (%d MiB sent)", sent.Load()>>20)
	}
}
