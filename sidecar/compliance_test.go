package sidecar_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// The compliance table: every case runs unchanged through the three ways
// into modgate — reverse mode (GOPROXY=modgate), absolute-form
// (GOPROXY=http://proxy.fixture.test with HTTP_PROXY=modgate) and MITM
// (GOPROXY=https://proxy.fixture.test with HTTPS_PROXY=modgate intercepting
// that host) — and asserts the status, the error code, the audit line and
// what reached the upstream. Cases that a developer meets through the go
// command run the real go command.

// compliancePolicy is the policy of every rig.
const compliancePolicy = `private: ["fixture.test/dep09"]
rules:
  - deny: "fixture.test/dep02"
    reason: "malware, see SEC-123"
  - deny: "fixture.test/dep05"
    versions: ">=v1.1.0"
    reason: "regression, see BUG-7"
default: allow
`

// rig is modgate in one mode in front of one origin, with a client and a
// go command that reach the origin through it.
type rig struct {
	mode   string
	base   string // the GOPROXY the client uses
	client *http.Client
	goc    *modtest.Go
	p      *modtest.Proxy
	audit  string
	clock  *modtest.Clock
	gate   string // modgate's URL
}

var complianceModes = []string{"reverse", "forward", "mitm"}

// newRig starts the fixture proxy (or origin, when not nil: a handler that
// stands in for it) and modgate in mode.
func newRig(t *testing.T, mode string, origin func(gate string) http.Handler) *rig {
	t.Helper()
	e := newEnv(t)
	useTLS := mode == "mitm"
	p := modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
	if useTLS {
		p = modtest.NewProxyTLS(t, e.fx, modtest.WithSumDB(e.db), modtest.WithTLSNames(proxyHost))
	}
	originURL, roots := p.URL, p.CertPool()
	var gateURL atomic.Value
	if origin != nil {
		srv := httptest.NewUnstartedServer(origin(""))
		srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			origin(gateURL.Load().(string)).ServeHTTP(w, r)
		})
		if useTLS {
			cert := modtest.SelfSigned(t, proxyHost)
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			srv.StartTLS()
			leaf, _ := x509.ParseCertificate(cert.Certificate[0])
			roots = x509.NewCertPool()
			roots.AddCert(leaf)
		} else {
			srv.Start()
		}
		t.Cleanup(srv.Close)
		originURL = srv.URL
	}
	st, _ := policyStore(t, compliancePolicy)
	audit, auditPath := newAudit(t)
	clock := modtest.NewClock()
	timeouts := upstream.Timeouts{Header: 300 * time.Millisecond}
	breaker := upstream.BreakerSettings{ConsecutiveFailures: 3}
	cfg := sidecar.Config{
		Policy: st, Audit: audit, Clock: clock, RootCAs: roots,
		Cache: sidecar.CacheConfig{Dir: t.TempDir(), ListTTL: time.Minute},
	}
	r := &rig{mode: mode, p: p, audit: auditPath, clock: clock, goc: e.go_}
	switch mode {
	case "reverse":
		cfg.Upstreams = []upstream.Config{{Name: "fixtures", URL: originURL, Timeouts: timeouts, Breaker: breaker}}
	default:
		port := "80"
		if useTLS {
			port = "443"
		}
		cfg.Upstreams = []upstream.Config{{URL: "off"}}
		cfg.Resolve = map[string]string{proxyHost + ":" + port: strings.TrimPrefix(strings.TrimPrefix(originURL, "http://"), "https://")}
		cfg.Forward = sidecar.ForwardConfig{AllowHosts: []string{proxyHost}, Timeouts: timeouts, Breaker: breaker}
	}
	if useTLS {
		ca, pem := newCA(t)
		cfg.Forward.MITMHosts, cfg.Forward.CA = []string{proxyHost}, ca
		e.go_.TrustPEM(pem)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		r.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	} else {
		r.client = &http.Client{Transport: &http.Transport{}}
	}
	r.gate = startGate(t, cfg)
	gateURL.Store(r.gate)
	gate, _ := url.Parse(r.gate)
	switch mode {
	case "reverse":
		r.base = r.gate
	case "forward":
		r.base = "http://" + proxyHost
		r.client.Transport.(*http.Transport).Proxy = http.ProxyURL(gate)
		e.go_.Setenv("HTTP_PROXY", r.gate)
		e.go_.Setenv("http_proxy", r.gate)
	case "mitm":
		r.base = "https://" + proxyHost
		r.client.Transport.(*http.Transport).Proxy = http.ProxyURL(gate)
		e.go_.Setenv("HTTPS_PROXY", r.gate)
		e.go_.Setenv("https_proxy", r.gate)
	}
	t.Cleanup(r.client.CloseIdleConnections)
	e.go_.UseProxy(r.base, e.db)
	return r
}

// answer is what a client got.
type answer struct {
	status int
	header http.Header
	body   string
	err    error // the transfer failed (an aborted answer)
}

// code is the error code on the body's first line, or "".
func (a answer) code() wire.Code {
	line, _, _ := strings.Cut(a.body, "\n")
	c, _, _ := wire.ParseLine(line)
	return c
}

func (r *rig) get(t *testing.T, path string) answer {
	t.Helper()
	resp, err := r.client.Get(r.base + path)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: string(b), err: err}
}

// lastAudit returns the audit log's last line, failing unless the log has
// want lines.
func (r *rig) auditLines(t *testing.T) []map[string]any {
	t.Helper()
	return readAudit(t, r.audit)
}

// upstreamCount is how many requests for path-part reached the origin.
func (r *rig) upstreamCount(substr string) int { return r.p.CountMatching(substr) }

// want is what a case expects of one answer.
type want struct {
	status   int
	code     wire.Code // on an error's first line
	decision string    // of the audit line
	reason   string    // in the audit line's reason
	body     string    // in the body
	upstream int       // requests that reached the origin; -1: any
	match    string    // which origin requests to count (default: the path)
}

type complianceCase struct {
	name string
	// run makes the requests and checks the answers; it returns the number
	// of answers (each must leave exactly one audit line).
	run func(t *testing.T, r *rig) int
	// origin, if set, stands in for the fixture proxy.
	origin func(gate string) http.Handler
}

// check asserts a on w and on the audit line at index i.
func (r *rig) check(t *testing.T, path string, a answer, w want, lines []map[string]any, i int) {
	t.Helper()
	if a.err != nil && w.status != 0 {
		t.Errorf("%s: %v", path, a.err)
		return
	}
	if w.status != 0 && a.status != w.status {
		t.Errorf("%s: status %d, want %d\n%s", path, a.status, w.status, a.body)
	}
	if a.code() != w.code {
		t.Errorf("%s: error code %q, want %q\n%s", path, a.code(), w.code, a.body)
	}
	if w.body != "" && !strings.Contains(a.body, w.body) {
		t.Errorf("%s: body lacks %q:\n%s", path, w.body, a.body)
	}
	if w.upstream >= 0 {
		match := w.match
		if match == "" {
			match = path
		}
		if n := r.upstreamCount(match); n != w.upstream {
			t.Errorf("%s: %d requests for %s reached the origin, want %d (%v)", path, n, match, w.upstream, r.p.Requests())
		}
	}
	if i >= len(lines) {
		t.Errorf("%s: no audit line %d (%d lines)", path, i, len(lines))
		return
	}
	l := lines[i]
	if l["mode"] != r.mode {
		t.Errorf("%s: audit mode %v, want %s: %v", path, l["mode"], r.mode, l)
	}
	if w.decision != "" && l["decision"] != w.decision {
		t.Errorf("%s: audit decision %v, want %s: %v", path, l["decision"], w.decision, l)
	}
	wantStatus := w.status
	if wantStatus == 0 {
		wantStatus = a.status
	}
	if a.err == nil && int(l["status"].(float64)) != wantStatus {
		t.Errorf("%s: audit status %v, want %d", path, l["status"], wantStatus)
	}
	if reason, _ := l["reason"].(string); !strings.Contains(reason, w.reason) {
		t.Errorf("%s: audit reason %q lacks %q", path, reason, w.reason)
	}
}

// one is a case of one request and its expectations.
func one(path string, w want) func(t *testing.T, r *rig) int {
	return func(t *testing.T, r *rig) int {
		a := r.get(t, path)
		r.check(t, path, a, w, r.auditLines(t), 0)
		return 1
	}
}

// perMode picks a case's run by mode.
func perMode(runs map[string]func(t *testing.T, r *rig) int) func(t *testing.T, r *rig) int {
	return func(t *testing.T, r *rig) int { return runs[r.mode](t, r) }
}

var complianceCases = []complianceCase{
	{name: "allowed info", run: one("/fixture.test/dep01/@v/v1.0.0.info", want{status: 200, decision: "allow", body: `"Version":"v1.0.0"`, upstream: 1})},
	{name: "allowed mod", run: one("/fixture.test/dep01/@v/v1.0.0.mod", want{status: 200, decision: "allow", body: "module fixture.test/dep01", upstream: 1})},
	{name: "allowed zip", run: one("/fixture.test/dep01/@v/v1.0.0.zip", want{status: 200, decision: "allow", body: "fixture.test/dep01@v1.0.0/", upstream: 1})},
	{name: "allowed list", run: one("/fixture.test/dep01/@v/list", want{status: 200, decision: "allow", body: "v1.0.0", upstream: 1})},
	{name: "allowed latest", run: one("/fixture.test/dep01/@latest", want{status: 200, decision: "allow", body: `"Version":"v1.0.0"`, upstream: 1})},
	{name: "escaped capitals", run: one("/fixture.test/!upper!case/@v/v1.0.0.mod", want{status: 200, decision: "allow", body: "module fixture.test/UpperCase", upstream: 1})},
	{name: "go mod download", run: func(t *testing.T, r *rig) int {
		out, err := goDownload(r, "fixture.test/dep01@v1.0.0")
		if err != nil {
			t.Fatalf("go mod download: %v\n%s", err, out)
		}
		return -1 // the go command makes several requests
	}},
	{name: "denied module", run: one("/fixture.test/dep02/@v/v1.0.0.info", want{status: 403, code: wire.Denied, decision: "deny", reason: "malware, see SEC-123", body: "denied by policy rule 1", upstream: 0})},
	{name: "denied module through the go command", run: func(t *testing.T, r *rig) int {
		out, err := goDownload(r, "fixture.test/dep02@v1.0.0")
		if err == nil || !strings.Contains(out, "modgate: denied: fixture.test/dep02@v1.0.0 denied by policy rule 1") || !strings.Contains(out, "malware, see SEC-123") {
			t.Errorf("go mod download of a denied module: %v\n%s", err, out)
		}
		if n := r.upstreamCount("dep02"); n != 0 {
			t.Errorf("%d requests for a denied module reached the origin", n)
		}
		return -1
	}},
	{name: "denied version", run: one("/fixture.test/dep05/@v/v1.1.0.zip", want{status: 403, code: wire.Denied, decision: "deny", reason: "regression, see BUG-7", upstream: 0})},
	{name: "denied version left out of the list", run: one("/fixture.test/dep05/@v/list", want{status: 200, decision: "allow", reason: "1 of 2 versions removed by policy", upstream: 1})},
	{name: "denied version is not @latest", run: one("/fixture.test/dep05/@latest", want{status: 200, decision: "allow", reason: "latest v1.1.0 denied by policy; answered v1.0.0", body: `"Version":"v1.0.0"`, upstream: -1})},
	{name: "go list -m -versions filtered", run: func(t *testing.T, r *rig) int {
		stdout, stderr, err := r.goc.Run("list", "-m", "-versions", "fixture.test/dep05")
		if err != nil || strings.TrimSpace(stdout) != "fixture.test/dep05 v1.0.0" {
			t.Errorf("go list -m -versions: %q %v\n%s", stdout, err, stderr)
		}
		return -1
	}},
	{name: "private module to a public host", run: perMode(map[string]func(*testing.T, *rig) int{
		"reverse": one("/fixture.test/dep09/@v/v1.0.0.info", want{status: 404, code: wire.NotFound, decision: "allow", body: "is private", upstream: 0}),
		"forward": one("/fixture.test/dep09/@v/v1.0.0.info", want{status: 403, code: wire.PrivateHost, decision: "deny", body: "is not a private host", upstream: 0}),
		"mitm":    one("/fixture.test/dep09/@v/v1.0.0.info", want{status: 403, code: wire.PrivateHost, decision: "deny", body: "is not a private host", upstream: 0}),
	})},
	{name: "private checksum lookup", run: one("/sumdb/"+sumdbName+"/lookup/fixture.test/dep09@v1.0.0", want{status: 403, code: wire.PrivateLookup, decision: "deny", body: "GONOSUMDB", upstream: 0, match: "dep09"})},
	{name: "checksum database supported", run: one("/sumdb/"+sumdbName+"/supported", want{status: 200, decision: "allow", upstream: 1})},
	{name: "checksum lookup", run: one("/sumdb/"+sumdbName+"/lookup/fixture.test/dep01@v1.0.0", want{status: 200, decision: "allow", body: "fixture.test/dep01 v1.0.0 h1:", upstream: 1})},
	{name: "invalid path", run: one("/fixture.test/Bad/@v/list", want{status: 400, code: wire.BadRequest, decision: "invalid", body: "capital", upstream: 0, match: "Bad"})},
	{name: "non-canonical version", run: one("/fixture.test/dep01/@v/v1.0.mod", want{status: 400, code: wire.BadRequest, decision: "invalid", body: "not canonical", upstream: 0, match: "v1.0.mod"})},
	{name: ".info answer checked before it is kept", origin: lyingOrigin, run: func(t *testing.T, r *rig) int {
		path := "/fixture.test/dep01/@v/v1.0.0.info"
		for i := range 2 {
			a := r.get(t, path)
			r.check(t, path, a, want{status: 502, code: wire.BadUpstream, decision: "allow", body: "asked for v1.0.0, the answer names v9.9.9", upstream: -1}, r.auditLines(t), i)
		}
		return 2
	}},
	// The go command takes a go.mod that names another module (renamed,
	// forked) at download time; only a build that requires it refuses it.
	{name: ".mod naming another module relayed", origin: lyingOrigin,
		run: one("/fixture.test/dep01/@v/v1.0.0.mod", want{status: 200, decision: "allow", body: "module fixture.test/other", upstream: -1})},
	{name: "unknown module", run: one("/fixture.test/nosuch/@v/v1.0.0.info", want{status: 404, code: wire.NotFound, decision: "allow", body: "not found", upstream: 1})},
	{name: "upstream 500", run: func(t *testing.T, r *rig) int {
		r.p.SetFault("500")
		one("/fixture.test/dep01/@v/v1.0.0.info", want{status: 502, code: wire.UpstreamFailed, decision: "allow", body: "500 Internal Server Error", upstream: -1})(t, r)
		if n := r.p.Count("500"); n != 2 {
			t.Errorf("the failing origin was asked %d times, want 2 (one retry)", n)
		}
		return 1
	}},
	{name: "upstream hangs", run: func(t *testing.T, r *rig) int {
		r.p.SetFault("hang")
		one("/fixture.test/dep01/@v/v1.0.0.info", want{status: 504, code: wire.Timeout, decision: "allow", body: "no response headers within 300ms", upstream: -1})(t, r)
		if n := r.p.Count("hang"); n != 1 {
			t.Errorf("the hung origin was asked %d times, want 1 (a timeout is not retried)", n)
		}
		return 1
	}},
	{name: "circuit opens", run: func(t *testing.T, r *rig) int {
		r.p.SetFault("500")
		// Each request asks for another artifact. A request for the one
		// before it may join that request's single flight, which has told
		// its waiters of the failure but not yet left, and be answered the
		// same failure without an attempt that the breaker counts.
		// Each failing request counts one failure at least (two with its
		// retry, one when a try times out under load): three at most open
		// the circuit, which trips after 3 failures in a row.
		lines, open := 0, false
		for _, m := range []string{"dep01", "dep03", "dep04"} {
			lines++
			if a := r.get(t, "/fixture.test/"+m+"/@v/v1.0.0.info"); a.status == http.StatusServiceUnavailable {
				open = true
				break
			}
		}
		if !open {
			t.Fatalf("the circuit is still closed after %d failing requests (%d origin requests)", lines, r.p.Count("500"))
		}
		before := r.p.Count("500")
		a := r.get(t, "/fixture.test/dep06/@v/v1.0.0.info")
		r.check(t, "open circuit", a, want{status: 503, code: wire.CircuitOpen, decision: "allow", body: "circuit open", upstream: -1}, r.auditLines(t), lines)
		if a.header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
		if n := r.p.Count("500"); n != before {
			t.Errorf("an open circuit still asked the origin (%d more requests)", n-before)
		}
		return lines + 1
	}},
	// The fixtures' zips are small: read ahead whole, a cut one is a
	// failed attempt that the client gets explained (a large one is
	// aborted mid-way: TestBodyCutMidWay).
	{name: "zip cut mid-way", run: func(t *testing.T, r *rig) int {
		r.p.SetFault("reset")
		one("/fixture.test/dep04/@v/v1.0.0.zip", want{status: 502, code: wire.UpstreamFailed, decision: "allow", body: "body cut after", reason: "body cut after", upstream: -1})(t, r)
		return 1
	}},
	{name: "cache hit", run: func(t *testing.T, r *rig) int {
		path := "/fixture.test/dep06/@v/v1.0.0.info"
		r.get(t, path)
		a := r.get(t, path)
		r.check(t, path, a, want{status: 200, decision: "allow", reason: "cache hit", upstream: 1}, r.auditLines(t), 1)
		return 2
	}},
	{name: "single flight", run: func(t *testing.T, r *rig) int {
		r.p.SetFault("slow200")
		path := "/fixture.test/dep07/@v/v1.0.0.zip"
		var wg sync.WaitGroup
		answers := make([]answer, 5)
		for i := range answers {
			wg.Go(func() { answers[i] = r.get(t, path) })
		}
		wg.Wait()
		for i, a := range answers {
			if a.err != nil || a.status != 200 {
				t.Errorf("request %d: %d %v", i, a.status, a.err)
			}
		}
		if n := r.upstreamCount(path); n != 1 {
			t.Errorf("5 concurrent requests made %d origin requests, want 1", n)
		}
		return 5
	}},
	{name: "stale if error", run: func(t *testing.T, r *rig) int {
		path := "/fixture.test/dep08/@v/list"
		r.get(t, path)
		r.clock.Advance(2 * time.Minute) // past list_ttl
		r.p.SetFault("500")
		a := r.get(t, path)
		r.check(t, path, a, want{status: 200, decision: "allow", reason: "stale answer served", body: "v1.0.0", upstream: -1}, r.auditLines(t), 1)
		if n := r.p.Count(""); n != 1 {
			t.Errorf("%d requests reached the healthy origin, want 1", n)
		}
		if !strings.Contains(a.header.Get("Warning"), "Response is Stale") {
			t.Errorf("stale answer without Warning: %v", a.header)
		}
		return 2
	}},
	{name: "loop", origin: loopBack, run: func(t *testing.T, r *rig) int {
		path := "/fixture.test/dep01/@v/v1.0.0.info"
		a := r.get(t, path)
		// Two requests reached modgate: the client's, and the same one
		// back from the upstream, refused first.
		lines := r.auditLines(t)
		if len(lines) != 2 || lines[0]["decision"] != "loop" || lines[0]["reason"] == "" {
			t.Fatalf("audit of a loop: %v", lines)
		}
		r.check(t, path, a, want{status: 508, code: wire.Loop, decision: "loop", upstream: -1}, lines, 1)
		return 2
	}},
}

// lyingOrigin answers every .info with another version and every go.mod
// with another module's, as a broken or hostile proxy might.
func lyingOrigin(string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, ".info"):
			io.WriteString(w, `{"Version":"v9.9.9","Time":"2024-01-01T00:00:00Z"}`)
		case strings.HasSuffix(r.URL.Path, ".mod"):
			io.WriteString(w, "module fixture.test/other\n")
		default:
			http.NotFound(w, r)
		}
	})
}

// loopBack is an origin that passes every request back to modgate, as a
// misconfigured upstream chain would.
func loopBack(gate string) http.Handler {
	if gate == "" {
		return http.NotFoundHandler()
	}
	u, _ := url.Parse(gate)
	return httputil.NewSingleHostReverseProxy(u)
}

// goDownload runs go mod download in the rig's go command.
func goDownload(r *rig, args ...string) (string, error) {
	stdout, stderr, err := r.goc.Run(append([]string{"mod", "download"}, args...)...)
	return stdout + stderr, err
}

func TestCompliance(t *testing.T) {
	for _, mode := range complianceModes {
		t.Run(mode, func(t *testing.T) {
			for _, c := range complianceCases {
				t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
					r := newRig(t, mode, c.origin)
					n := c.run(t, r)
					if lines := r.auditLines(t); n >= 0 && len(lines) != n {
						t.Errorf("%d answers wrote %d audit lines, want one each:\n%v", n, len(lines), lines)
					}
				})
			}
		})
	}
}
