package sidecar_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

func TestMain(m *testing.M) {
	// lumberjack starts one cleanup goroutine per rotating file and never
	// stops it, even on Close; modgate opens one audit log.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

const sumdbName = "sum.fixture.test"

var (
	fixturesOnce sync.Once
	fixtures     *modtest.Fixtures
)

func loadFixtures(t *testing.T) *modtest.Fixtures {
	fixturesOnce.Do(func() { fixtures = modtest.MustLoadFixtures(t, modtest.FixtureDir(t)) })
	return fixtures
}

// startGate serves modgate on a loopback port until the test ends and
// returns its URL.
func startGate(t *testing.T, cfg sidecar.Config) string {
	t.Helper()
	url, _ := startGateServer(t, cfg)
	return url
}

// startGateServer is startGate that also returns the server.
func startGateServer(t *testing.T, cfg sidecar.Config) (string, *sidecar.Server) {
	t.Helper()
	if cfg.SumDB == "" {
		cfg.SumDB = sumdbName
	}
	g := sidecartest.Start(t, nil, cfg)
	return g.URL, g.Server
}

// env is one end-to-end set-up: fixtures, a checksum database, a go command
// whose GOPROXY is modgate.
type env struct {
	fx  *modtest.Fixtures
	db  *modtest.SumDB
	go_ *modtest.Go
}

func newEnv(t *testing.T) *env {
	fx := loadFixtures(t)
	return &env{fx: fx, db: modtest.NewSumDB(t, sumdbName, fx), go_: modtest.NewGo(t)}
}

// proxy starts a fake upstream; withSumDB makes it serve the database too.
func (e *env) proxy(t *testing.T, withSumDB bool) *modtest.Proxy {
	if withSumDB {
		return modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
	}
	return modtest.NewProxy(t, e.fx)
}

// gate starts modgate with the upstreams and points the go command at it.
func (e *env) gate(t *testing.T, ups ...upstream.Config) string {
	url := startGate(t, sidecar.Config{Upstreams: ups})
	e.go_.UseProxy(url, e.db)
	return url
}

// download runs go mod download and returns what it printed.
func (e *env) download(args ...string) (string, error) {
	stdout, stderr, err := e.go_.Run(append([]string{"mod", "download"}, args...)...)
	return stdout + stderr, err
}

func TestGoModDownloadGraph(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	e.gate(t, upstream.Config{Name: "fixtures", URL: p.URL})
	e.go_.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
	e.go_.WriteFile("main.go", "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n")
	if _, stderr, err := e.go_.Run("mod", "tidy"); err != nil {
		t.Fatalf("go mod tidy: %v\n%s", err, stderr)
	}
	if _, stderr, err := e.go_.Run("mod", "download", "all"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, stderr)
	}
	if stdout, stderr, err := e.go_.Run("mod", "verify"); err != nil || !strings.Contains(stdout, "all modules verified") {
		t.Fatalf("go mod verify: %v\n%s%s", err, stdout, stderr)
	}
	if _, stderr, err := e.go_.Run("build", "./..."); err != nil {
		t.Fatalf("go build: %v\n%s", err, stderr)
	}
	zips := p.CountMatching(".zip")
	if zips < 20 {
		t.Errorf("%d zips passed through modgate; want the whole graph (at least 20)", zips)
	}
	if p.CountMatching("/sumdb/"+sumdbName+"/lookup/") == 0 {
		t.Errorf("no checksum database lookup passed through modgate")
	}
	sum, err := os.ReadFile(filepath.Join(e.go_.Dir(), "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"fixture.test/app v1.0.0", "fixture.test/dep20 v1.0.0"} {
		want, _ := e.fx.GoSumLines(strings.Fields(m)[0], strings.Fields(m)[1])
		if !strings.Contains(string(sum), string(want)) {
			t.Errorf("go.sum lacks %s", want)
		}
	}
	t.Logf("%d requests reached the fake upstream, %d zips", len(p.Requests()), zips)
}

func TestChainFallthrough(t *testing.T) {
	tests := []struct {
		name   string
		faults []string // fault prefix per upstream; "" is healthy
		seps   string   // separator after each upstream but the last
		ok     bool
		stderr []string
	}{
		{name: "404,ok", faults: []string{"404", ""}, seps: ",", ok: true},
		{name: "410,ok", faults: []string{"410", ""}, seps: ",", ok: true},
		{name: "500|ok", faults: []string{"500", ""}, seps: "|", ok: true},
		{name: "500,ok", faults: []string{"500", ""}, seps: ",", stderr: []string{
			"502 Bad Gateway",
			"server response:",
			"modgate: upstream-failed: fixture.test/dep13@v1.0.0 (.info): no upstream could serve it",
			"first: 500 Internal Server Error",
			`the chain stops there: after "," only 404 and 410 move on`,
		}},
		{name: "404,404", faults: []string{"404", "410"}, seps: ",", stderr: []string{
			"404 Not Found",
			"modgate: not-found: fixture.test/dep13@v1.0.0 (.info): not found in any upstream",
			"first: 404 Not Found",
			"second: 410 Gone",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxy(t, true)
			var ups []upstream.Config
			for i, f := range tt.faults {
				u := upstream.Config{Name: []string{"first", "second"}[i], URL: p.URL}
				if f != "" {
					u.URL += "/f/" + f
				}
				if i < len(tt.seps) && tt.seps[i] == '|' {
					u.Fallthrough = upstream.OnError
				}
				ups = append(ups, u)
			}
			e.gate(t, ups...)
			stderr, err := e.download("fixture.test/dep13@v1.0.0")
			if tt.ok != (err == nil) {
				t.Fatalf("go mod download: err=%v; want ok=%v\n%s", err, tt.ok, stderr)
			}
			for _, want := range tt.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("go command output lacks %q:\n%s", want, stderr)
				}
			}
			if tt.name == "500,ok" && p.Count("") != 0 {
				t.Errorf("after \"500,\" the healthy upstream was asked %d times; want 0", p.Count(""))
			}
		})
	}
}

func TestCapitalsAndPrerelease(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	e.gate(t, upstream.Config{URL: p.URL})
	if stderr, err := e.download("fixture.test/UpperCase@v1.0.0", "fixture.test/pre@v1.1.0-rc.1"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, stderr)
	}
	if p.CountMatching("/fixture.test/!upper!case/@v/v1.0.0.zip") != 1 {
		t.Errorf("the escaped path did not reach the upstream: %v", p.Requests())
	}
	stdout, stderr, err := e.go_.Run("list", "-m", "-versions", "fixture.test/pre")
	if err != nil || !strings.Contains(stdout, "v1.1.0-rc.1") {
		t.Errorf("go list -m -versions: %v\n%s%s", err, stdout, stderr)
	}
}

func TestSumDBThroughSecondUpstream(t *testing.T) {
	e := newEnv(t)
	first := e.proxy(t, false)
	second := e.proxy(t, true)
	e.gate(t, upstream.Config{Name: "first", URL: first.URL}, upstream.Config{Name: "second", URL: second.URL})
	if stderr, err := e.download("fixture.test/dep01@v1.0.0"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, stderr)
	}
	if n := first.CountMatching("/sumdb/" + sumdbName + "/supported"); n != 1 {
		t.Errorf("first upstream asked for supported %d times; want 1", n)
	}
	if first.CountMatching("/lookup/") != 0 {
		t.Errorf("a lookup went to the upstream without the database")
	}
	if second.CountMatching("/sumdb/"+sumdbName+"/lookup/fixture.test/dep01@v1.0.0") != 1 {
		t.Errorf("the lookup did not reach the second upstream: %v", second.Requests())
	}
}

func TestSumDBDirect(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, false)
	var lookups atomic.Int32
	dbAddr, pool := tlsServerFor(t, sumdbName, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/lookup/") {
			lookups.Add(1)
		}
		e.db.Handler().ServeHTTP(w, r)
	}))
	url := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}},
		RootCAs:   pool,
		Resolve:   map[string]string{sumdbName + ":443": dbAddr},
	})
	e.go_.UseProxy(url, e.db)
	if stderr, err := e.download("fixture.test/dep02@v1.0.0"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, stderr)
	}
	if lookups.Load() != 1 {
		t.Errorf("%d lookups reached the database directly; want 1", lookups.Load())
	}
	if n := p.CountMatching("/sumdb/" + sumdbName + "/supported"); n != 1 {
		t.Errorf("the upstream was asked for supported %d times; want 1", n)
	}
}

// tlsServerFor serves h over TLS on loopback with a certificate for host,
// and returns its address and a pool that trusts it.
func tlsServerFor(t *testing.T, host string, h http.Handler) (string, *x509.CertPool) {
	t.Helper()
	cert := modtest.SelfSigned(t, host)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), pool
}

func TestHungUpstreamFailsWithinHeaderTimeout(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	e.gate(t, upstream.Config{Name: "stuck", URL: p.URL + "/f/hang", Timeouts: upstream.Timeouts{Header: 300 * time.Millisecond}})
	start := time.Now()
	stderr, err := e.download("fixture.test/dep03@v1.0.0")
	if err == nil {
		t.Fatalf("go mod download succeeded through a hung upstream")
	}
	for _, want := range []string{"504 Gateway Timeout", "stuck: no response headers within 300ms"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("go command output lacks %q:\n%s", want, stderr)
		}
	}
	t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))
}

func TestBodyCutMidWay(t *testing.T) {
	fx := loadFixtures(t)
	// A zip too big to be read whole before answering: it streams, and a
	// cut must abort the connection.
	big, err := modtest.NewModule("fixture.test/bigzip", "v1.0.0",
		modtest.File{Name: "go.mod", Data: []byte("module fixture.test/bigzip\n")},
		modtest.File{Name: "blob.go", Data: append([]byte("package bigzip\n// "), randomText(2<<20)...)})
	if err != nil {
		t.Fatal(err)
	}
	fx.Add(big)
	tests := []struct {
		fault, module string
		want          []string
	}{
		// Small bodies are read whole first, so the go command gets a
		// status and the reason.
		{"reset", "fixture.test/dep04@v1.0.0", []string{"502 Bad Gateway", "modgate: upstream-failed: fixture.test/dep04@v1.0.0 (.zip): no upstream could serve it", "cut: body cut after"}},
		{"stall", "fixture.test/dep04@v1.0.0", []string{"504 Gateway Timeout", "cut: body stalled: no data for 300ms"}},
		// Big ones have started streaming: the connection is aborted.
		{"reset", "fixture.test/bigzip@v1.0.0", []string{"bigzip/@v/v1.0.0.zip", "unexpected EOF"}},
		{"stall", "fixture.test/bigzip@v1.0.0", []string{"bigzip/@v/v1.0.0.zip", "unexpected EOF"}},
	}
	for _, tt := range tests {
		t.Run(tt.fault+" "+tt.module, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxy(t, true)
			e.gate(t, upstream.Config{Name: "cut", URL: p.URL + "/f/" + tt.fault, Timeouts: upstream.Timeouts{Idle: 300 * time.Millisecond}})
			out, err := e.download(tt.module)
			if err == nil {
				t.Fatalf("go mod download succeeded with a body cut mid-way")
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("go command output lacks %q:\n%s", want, out)
				}
			}
			path, version, _ := strings.Cut(tt.module, "@")
			zip := filepath.Join(e.go_.Getenv("GOMODCACHE"), "cache/download", path, "@v", version+".zip")
			if _, err := os.Stat(zip); err == nil {
				t.Errorf("a zip was left in the module cache")
			}
		})
	}
}

// randomText returns n bytes of printable text that does not compress.
func randomText(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = 'a' + b[i]%26
	}
	return b
}

// rawGet sends a request line as written, so that paths reach modgate
// without any client cleaning them.
func rawGet(t *testing.T, base, target string, header ...string) (int, http.Header, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: modgate\r\n%sConnection: close\r\n\r\n", target, strings.Join(header, ""))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

func TestBadInputNeverReachesUpstream(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}})
	tests := []struct {
		target string
		status int
		reason string
	}{
		{"/fixture.test/../etc/@v/list", 400, "invalid module path"},
		{"/fixture.test/%2e%2e/x/@v/list", 400, "invalid module path"},
		{"/fixture.test/a%00/@v/list", 400, "invalid module path"},
		{"/fixture.test/!!x/@v/list", 400, "invalid module path"},
		{"/fixture.test/Dep01/@v/list", 400, "an escaped path has no capital letters"},
		{"/fixture.test/dep01/@v/v1.0.mod", 400, `version "v1.0" is not canonical (want v1.0.0)`},
		{"/fixture.test/dep01/@v/master.zip", 400, `version "master" is not a semantic version`},
		{"/fixture.test/dep01/@v/v1.0.0%2f..%2f..%2fx.mod", 400, "invalid version"},
		{"/sumdb/" + sumdbName + "/lookup/fixture.test/dep01@latest", 400, "not a semantic version"},
		{"/sumdb/" + sumdbName + "/tile/8/0/..%2f..%2fx", 400, "invalid checksum database tile"},
		{"/sumdb/other.example.test/supported", 404, "checksum database other.example.test is not served here"},
		{"/index.html", 404, "is not a module proxy path"},
	}
	for _, tt := range tests {
		status, h, body := rawGet(t, url, tt.target)
		if status != tt.status || !strings.HasPrefix(body, "modgate: ") || !strings.Contains(body, tt.reason) {
			t.Errorf("GET %s = %d %q; want %d with %q", tt.target, status, body, tt.status, tt.reason)
		}
		if ct := h.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", tt.target, ct)
		}
	}
	if reqs := p.Requests(); len(reqs) != 0 {
		t.Errorf("rejected requests reached the upstream: %v", reqs)
	}
}

func TestMethodsAndForwardForms(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}})

	resp, err := http.Head(url + "/fixture.test/dep01/@v/v1.0.0.mod")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength <= 0 {
		t.Errorf("HEAD: %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
	resp, err = http.Post(url+"/fixture.test/dep01/@v/list", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || !strings.HasPrefix(string(body), "modgate: method-not-allowed: method POST not allowed") {
		t.Errorf("POST: %d %q", resp.StatusCode, body)
	}
}

func TestPassThroughHeaders(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}})
	direct, err := http.Get(p.URL + "/fixture.test/dep01/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(direct.Body)
	direct.Body.Close()
	resp, err := http.Get(url + "/fixture.test/dep01/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != string(want) {
		t.Errorf("zip differs: %d bytes, want %d", len(got), len(want))
	}
	for _, k := range []string{"Content-Type", "Content-Length"} {
		if resp.Header.Get(k) != direct.Header.Get(k) {
			t.Errorf("%s = %q; upstream sent %q", k, resp.Header.Get(k), direct.Header.Get(k))
		}
	}
}

func TestLoops(t *testing.T) {
	// An upstream that is modgate's own listener is refused at start-up.
	for _, c := range []struct{ listen, upstream string }{
		{"127.0.0.1:7999", "http://127.0.0.1:7999"},
		{"127.0.0.1:7999", "http://localhost:7999/"},
		{"0.0.0.0:7999", "http://127.0.0.1:7999"},
		{"127.0.0.1:7999", "https://mods.example.test:8443"}, // with --resolve below
	} {
		_, err := sidecar.New(sidecar.Config{
			Listen:    c.listen,
			Upstreams: []upstream.Config{{URL: c.upstream}},
			Resolve:   map[string]string{"mods.example.test:8443": "127.0.0.1:7999"},
		})
		if err == nil || !strings.Contains(err.Error(), "modgate's own listener") {
			t.Errorf("listen %s, upstream %s: err = %v; want a refusal", c.listen, c.upstream, err)
		}
	}
	if _, err := sidecar.New(sidecar.Config{Listen: "127.0.0.1:7999", Upstreams: []upstream.Config{{URL: "http://127.0.0.1:7998"}}}); err != nil {
		t.Errorf("another port refused: %v", err)
	}

	// Two modgates that point at each other: the request comes back with
	// the first one's Via token and is refused with 508, and the client
	// sees why.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aURL := "http://" + ln.Addr().String()
	bURL := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{Name: "a", URL: aURL}}})
	a, err := sidecar.New(sidecar.Config{Listen: ln.Addr().String(), Upstreams: []upstream.Config{{Name: "b", URL: bURL}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln, nil) }()
	defer func() { cancel(); <-done }()
	for _, c := range []struct{ url, next string }{{aURL, "b"}, {bURL, "a"}} {
		status, _, body := rawGet(t, c.url, "/fixture.test/dep01/@v/list")
		if status != http.StatusLoopDetected || !strings.Contains(body, "request loop") || !strings.Contains(body, c.next+": 508 Loop Detected") {
			t.Errorf("loop: %d %q", status, body)
		}
	}
}

func TestAdmin(t *testing.T) {
	s, err := sidecar.New(sidecar.Config{Upstreams: []upstream.Config{{URL: "https://a.example.test"}}})
	if err != nil {
		t.Fatal(err)
	}
	check := func(path string, want int) {
		t.Helper()
		rec := httptest.NewRecorder()
		s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1"+path, nil))
		if rec.Code != want {
			t.Errorf("%s = %d; want %d", path, rec.Code, want)
		}
	}
	check("/healthz", 200)
	check("/readyz", 503) // not serving yet

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()
	rawGet(t, "http://"+ln.Addr().String(), "/") // answered: serving
	check("/readyz", 200)
	cancel()
	<-done
	check("/readyz", 503)

	off, err := sidecar.New(sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := off.Ready(); err != nil && !strings.Contains(err.Error(), "not serving") {
		t.Errorf("unexpected: %v", err)
	}
}

func TestGracefulShutdownFinishesInFlight(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := sidecar.New(sidecar.Config{Listen: ln.Addr().String(), Upstreams: []upstream.Config{{URL: p.URL + "/f/slow400"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/fixture.test/dep01/@v/list")
		if err != nil {
			got <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- result{resp.StatusCode, string(b), err}
	}()
	// Shut down once the request is in flight at the upstream.
	for p.Count("slow400") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	r := <-got
	if r.err != nil || r.status != 200 || r.body != "v1.0.0\n" {
		t.Errorf("in-flight request: %d %q %v; want 200 v1.0.0", r.status, r.body, r.err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Errorf("still accepting after shutdown")
	}
}

func TestHTTPSUpstream(t *testing.T) {
	e := newEnv(t)
	p := modtest.NewProxyTLS(t, e.fx, modtest.WithSumDB(e.db))
	e.gate(t, upstream.Config{Name: "tls", URL: p.URL})
	// Without the upstream's CA, modgate refuses the certificate and says so.
	out, err := e.download("fixture.test/dep05@v1.1.0")
	if err == nil || !strings.Contains(out, "tls: failed to verify certificate") {
		t.Errorf("untrusted upstream: err=%v\n%s", err, out)
	}

	url := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{Name: "tls", URL: p.URL}}, RootCAs: p.CertPool()})
	e.go_.UseProxy(url, e.db)
	if out, err := e.download("fixture.test/dep05@v1.1.0"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
}

// TestReadiness: /readyz says 503 while every upstream's circuit is open
// or the chain is off, and 200 again once a probe may go through.
func TestReadiness(t *testing.T) {
	readyz := func(s *sidecar.Server) (int, string) {
		rec := httptest.NewRecorder()
		s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	clock := modtest.NewClock()
	url, s := startGateServer(t, sidecar.Config{Clock: clock, Upstreams: []upstream.Config{{
		Name: "dead", URL: modtest.DeadURL(t),
		Breaker: upstream.BreakerSettings{ConsecutiveFailures: 1, OpenFor: 30 * time.Second},
		Retry:   upstream.RetrySettings{Attempts: 1},
	}}})
	rawGet(t, url, "/") // answered: serving
	if code, body := readyz(s); code != 200 {
		t.Fatalf("a serving modgate with a closed circuit: %d %q", code, body)
	}
	if status, _, _ := rawGet(t, url, "/fixture.test/dep01/@v/list"); status != 502 {
		t.Fatalf("request to a dead upstream: %d", status)
	}
	if code, body := readyz(s); code != 503 || !strings.Contains(body, "every upstream's circuit is open (dead)") {
		t.Errorf("every circuit open: %d %q", code, body)
	}
	clock.Advance(30 * time.Second)
	if code, body := readyz(s); code != 200 {
		t.Errorf("open period over, a probe may go: %d %q", code, body)
	}

	offURL, off := startGateServer(t, sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}})
	rawGet(t, offURL, "/")
	if code, body := readyz(off); code != 503 || !strings.Contains(body, "the chain is off") {
		t.Errorf("a chain that is off: %d %q", code, body)
	}
}
