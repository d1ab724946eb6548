package sidecar_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

const proxyHost = "proxy.fixture.test"

// newCA makes a modgate CA and returns it with its certificate's PEM.
func newCA(t *testing.T) (*mitm.CA, []byte) {
	t.Helper()
	dir := t.TempDir()
	if err := mitm.Init(dir); err != nil {
		t.Fatal(err)
	}
	ca, err := mitm.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(mitm.CertPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	return ca, pem
}

// readAudit returns the audit log's entries.
func readAudit(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// newAudit opens an audit log in a temporary file that writes each line at
// once, and returns it with its path.
func newAudit(t *testing.T) (*policy.AuditLog, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	audit, err := policy.NewAuditLog(path, policy.AuditOptions{FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	return audit, path
}

// fwdSetup is a TLS fake module proxy named proxy.fixture.test, a go
// command whose GOPROXY is that host and whose HTTPS_PROXY is modgate.
type fwdSetup struct {
	e     *env
	p     *modtest.Proxy
	url   string
	audit string
	store *policy.Store
}

// newFwdSetup intercepts proxy.fixture.test when intercept is set, and asks
// for proxy credentials when users is not empty.
func newFwdSetup(t *testing.T, intercept bool, users map[string]string) *fwdSetup {
	e := newEnv(t)
	p := modtest.NewProxyTLS(t, e.fx, modtest.WithSumDB(e.db), modtest.WithTLSNames(proxyHost))
	st, _ := policyStore(t, "{}\n")
	audit, auditPath := newAudit(t)
	cfg := sidecar.Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		RootCAs:   p.CertPool(),
		Resolve:   map[string]string{proxyHost + ":443": strings.TrimPrefix(p.URL, "https://")},
		Policy:    st,
		Audit:     audit,
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{proxyHost}, Users: users},
	}
	if intercept {
		ca, pem := newCA(t)
		cfg.Forward.MITMHosts, cfg.Forward.CA = []string{proxyHost}, ca
		e.go_.TrustPEM(pem)
	} else {
		e.go_.TrustPEM(p.CAPEM())
	}
	url := startGate(t, cfg)
	e.go_.UseProxy("https://"+proxyHost, e.db)
	e.go_.Setenv("HTTPS_PROXY", url)
	e.go_.Setenv("https_proxy", url)
	return &fwdSetup{e: e, p: p, url: url, audit: auditPath, store: st}
}

func TestForwardMITMGoModDownload(t *testing.T) {
	f := newFwdSetup(t, true, nil)
	g := f.e.go_
	g.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
	g.WriteFile("main.go", "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n")
	if _, stderr, err := g.Run("mod", "tidy"); err != nil {
		t.Fatalf("go mod tidy through MITM: %v\n%s", err, stderr)
	}
	if stdout, stderr, err := g.Run("mod", "verify"); err != nil {
		t.Fatalf("go mod verify: %v\n%s%s", err, stdout, stderr)
	}
	if n := f.p.CountMatching(".zip"); n < 20 {
		t.Errorf("%d zips through modgate; want the whole graph", n)
	}
	kinds := map[string]int{}
	for _, e := range readAudit(t, f.audit) {
		if e["mode"] == "mitm" {
			kinds[e["kind"].(string)]++
			if e["kind"] == "zip" && (e["module"] == nil || e["host"] != proxyHost+":443") {
				t.Errorf("zip audit line without module or host: %v", e)
			}
		}
	}
	if kinds["zip"] < 20 || kinds["sumdb-lookup"] == 0 {
		t.Errorf("audit kinds in mitm mode: %v", kinds)
	}

	// Now dep01 is private: it may not go to proxy.fixture.test, which is
	// not a private host.
	os.WriteFile(f.store.Path(), []byte("private: [\"fixture.test/dep01\"]\n"), 0o644)
	if err := f.store.Reload(); err != nil {
		t.Fatal(err)
	}
	g2 := modtest.NewGo(t)
	g2.UseProxy("https://"+proxyHost, f.e.db)
	g2.Setenv("HTTPS_PROXY", f.url)
	g2.Setenv("GONOSUMDB", "fixture.test/dep01")
	caPEM, err := os.ReadFile(g.Getenv("SSL_CERT_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	g2.TrustPEM(caPEM)
	before := len(requestsFor(f.p.Requests(), "fixture.test/dep01"))
	_, stderr, err := g2.Run("mod", "download", "fixture.test/dep01@v1.0.0")
	if err == nil || !strings.Contains(stderr, "403 Forbidden") || !strings.Contains(stderr, "fixture.test/dep01 is private (pattern fixture.test/dep01) and proxy.fixture.test is not a private host") {
		t.Errorf("private path to a public host: %v\n%s", err, stderr)
	}
	if after := len(requestsFor(f.p.Requests(), "fixture.test/dep01")); after != before {
		t.Errorf("a private module path reached the public host in forward mode")
	}
}

func TestForwardTunnel(t *testing.T) {
	f := newFwdSetup(t, false, nil)
	if out, err := f.e.download("fixture.test/dep06@v1.0.0", "fixture.test/dep07@v1.0.0"); err != nil {
		t.Fatalf("go mod download through a tunnel: %v\n%s", err, out)
	}
	// A tunnel's audit line is written when it closes, a moment after the
	// go command has exited.
	var tunnels int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		tunnels = 0
		for _, e := range readAudit(t, f.audit) {
			if e["kind"] == "tunnel" && e["status"] == 200.0 {
				tunnels++
			}
		}
		if tunnels > 0 {
			break
		}
	}
	for _, e := range readAudit(t, f.audit) {
		if e["kind"] == "tunnel" && e["status"] == 200.0 {
			if e["bytes"] == nil || e["host"] != proxyHost+":443" {
				t.Errorf("tunnel audit line: %v", e)
			}
		}
		if e["mode"] == "mitm" {
			t.Errorf("a request was intercepted without MITM: %v", e)
		}
	}
	if tunnels == 0 {
		t.Errorf("no tunnel in the audit log")
	}
}

// connect sends a CONNECT for target (and optional headers) and returns
// the status line.
func connect(t *testing.T, gate, target string, header ...string) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(gate, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", target, target, strings.Join(header, ""))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func TestForwardRefusals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	_, adminPort, _ := net.SplitHostPort(admin)
	var port int
	fmt.Sscan(adminPort, &port)
	url := startGate(t, sidecar.Config{
		Admin:     admin,
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"*", "127.0.0.1"}, ConnectPorts: []int{443, port}},
	})
	tests := []struct{ target, want string }{
		{"ssh.example.test:22", "403 modgate: refused: CONNECT ssh.example.test:22 refused: port 22 is not in connect_ports"},
		{"[::1]:443", "403 modgate: refused: CONNECT [::1]:443 refused: ::1 resolves to ::1, a loopback address"},
		{"0x7f.1:443", "403 modgate: refused: CONNECT 0x7f.1:443 refused: 0x7f.1 resolves to 127.0.0.1, a loopback address"},
		{"2130706433:443", "403 modgate: refused: CONNECT 2130706433:443 refused: 2130706433 resolves to 127.0.0.1, a loopback address"},
		{"017700000001:443", "a loopback address"},
		{"localhost:443", "a loopback address"},
		{"169.254.169.254:443", "169.254.169.254 resolves to 169.254.169.254, a link-local address"},
		{"10.1.2.3:443", "a private address"},
		{"192.168.0.1:443", "a private address"},
		{"[fd00::1]:443", "a private address"},
		{"100.64.0.1:443", "a carrier-grade NAT address"},
		{"0.0.0.0:443", "an unspecified address"},
		{"[::ffff:127.0.0.1]:443", "an IPv4-mapped IPv6 address"},
		{admin, "is modgate itself"},
	}
	for _, tt := range tests {
		got := connect(t, url, tt.target)
		if !strings.HasPrefix(got, "HTTP/1.1 403 ") || !strings.Contains(got, tt.want) {
			t.Errorf("CONNECT %s: %q; want 403 with %q", tt.target, got, tt.want)
		}
	}

	// Absolute-form requests pass the same guard.
	status, _, body := rawGet(t, url, "http://169.254.169.254/latest/meta-data")
	if status != 403 || !strings.Contains(body, "a link-local address") {
		t.Errorf("absolute-form to the metadata address: %d %q", status, body)
	}

	// An allowlist refuses everything else before resolving anything.
	url = startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}, Forward: sidecar.ForwardConfig{AllowHosts: []string{"*.example.test"}}})
	if got := connect(t, url, "evil.example.invalid:443"); !strings.Contains(got, "403 modgate: refused: CONNECT evil.example.invalid:443 refused: host evil.example.invalid is not in allow_hosts") {
		t.Errorf("host not allowed: %q", got)
	}
}

func TestForwardProxyAuth(t *testing.T) {
	f := newFwdSetup(t, true, map[string]string{"alice": "s3cret"})
	if got := connect(t, f.url, proxyHost+":443"); !strings.HasPrefix(got, "HTTP/1.1 407") {
		t.Errorf("CONNECT without credentials: %q", got)
	}
	bad := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wrong")) + "\r\n"
	if got := connect(t, f.url, proxyHost+":443", bad); !strings.HasPrefix(got, "HTTP/1.1 407") {
		t.Errorf("CONNECT with a wrong password: %q", got)
	}
	good := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")) + "\r\n"
	if got := connect(t, f.url, proxyHost+":443", good); got != "HTTP/1.1 200 Connection established" {
		t.Errorf("CONNECT with credentials: %q", got)
	}
	// The go command sends the credentials in the proxy URL.
	authURL := strings.Replace(f.url, "http://", "http://alice:s3cret@", 1)
	f.e.go_.Setenv("HTTPS_PROXY", authURL)
	if out, err := f.e.download("fixture.test/dep08@v1.0.0"); err != nil {
		t.Fatalf("go mod download with proxy credentials: %v\n%s", err, out)
	}
	var alice int
	for _, e := range readAudit(t, f.audit) {
		if e["identity"] == "alice" && e["mode"] == "mitm" {
			alice++
		}
	}
	if alice == 0 {
		t.Errorf("no audit line with identity alice")
	}
}

// TestForwardGoGetAndGit fetches a module straight from its git host, as
// GOPROXY=direct does: ?go-get=1 discovery, then git's smart HTTP, both
// intercepted, with the module path in the audit log.
func TestForwardGoGetAndGit(t *testing.T) {
	const host = "git.fixture.test"
	const mod = host + "/lib"
	origin := modtest.NewGitOrigin(t, mod, map[string]string{"go.mod": "module " + mod + "\n\ngo 1.21\n",
		"lib.go": "package lib\n\n// Name names the module.\nfunc Name() string { return \"lib\" }\n"})
	addr, pool := tlsServerFor(t, host, origin)
	audit, auditPath := newAudit(t)
	ca, pem := newCA(t)
	url := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		RootCAs:   pool,
		Resolve:   map[string]string{host + ":443": addr},
		Audit:     audit,
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{host}, MITMHosts: []string{host}, CA: ca},
	})
	g := modtest.NewGo(t)
	g.TrustPEM(pem)
	g.Setenv("GOPROXY", "direct")
	g.Setenv("GOPRIVATE", host)
	g.Setenv("HTTPS_PROXY", url)
	g.Setenv("https_proxy", url)
	if _, stderr, err := g.Run("mod", "download", "-x", mod+"@v1.0.0"); err != nil {
		t.Fatalf("go mod download direct through modgate: %v\n%s", err, stderr)
	}
	audit.Flush()
	kinds := map[string]bool{}
	for _, e := range readAudit(t, auditPath) {
		if e["mode"] == "mitm" && e["module"] == mod {
			kinds[e["kind"].(string)] = true
		}
	}
	if !kinds["go-get"] || !kinds["vcs"] {
		t.Errorf("audit lines with module %s by kind: %v; want go-get and vcs", mod, kinds)
	}
}

// TestMaxTunnels: past forward.max_tunnels open CONNECTs, another is
// answered 503 (and audited) instead of taking one more connection and
// goroutine pair.
func TestMaxTunnels(t *testing.T) {
	origin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { origin.Close() })
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	audit, auditPath := newAudit(t)
	host := "tls.example.test"
	url := startGate(t, sidecar.Config{
		Audit:     audit,
		Upstreams: []upstream.Config{{URL: "off"}},
		Resolve:   map[string]string{host + ":443": origin.Addr().String()},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{host}, MaxTunnels: 2},
	})
	open := func() (net.Conn, string) {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n", host, host)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return c, strings.TrimSpace(line)
	}
	for i := range 2 {
		c, line := open()
		defer c.Close()
		if line != "HTTP/1.1 200 Connection established" {
			t.Fatalf("tunnel %d: %q", i+1, line)
		}
	}
	c, line := open()
	defer c.Close()
	if !strings.HasPrefix(line, "HTTP/1.1 503 modgate: busy: CONNECT tls.example.test:443: modgate has 2 tunnels open") {
		t.Errorf("a third tunnel: %q", line)
	}
	var refused int
	for _, l := range readAudit(t, auditPath) {
		if l["status"] == float64(503) && l["kind"] == "tunnel" {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d audit lines for the refused tunnel, want 1", refused)
	}
}

// TestForwardAsksForWholeArtifacts: through absolute-form and MITM, a
// client's Range and conditional headers on a module's .mod or .zip do
// not reach the origin (modgate fetches an artifact whole, to check and
// keep it), and the client gets the whole artifact with a 200.
func TestForwardAsksForWholeArtifacts(t *testing.T) {
	fx := loadFixtures(t)
	inner := modtest.NewProxy(t, fx)
	partial := []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"}
	for _, mode := range []string{"forward", "mitm"} {
		t.Run(mode, func(t *testing.T) {
			var (
				mu   sync.Mutex
				seen = map[string]http.Header{} // by path
			)
			origin := func(string) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					seen[r.URL.Path] = r.Header.Clone()
					mu.Unlock()
					resp, err := inner.Client().Get(inner.URL + r.URL.Path)
					if err != nil {
						http.Error(w, err.Error(), http.StatusBadGateway)
						return
					}
					defer resp.Body.Close()
					body, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != http.StatusOK {
						w.WriteHeader(resp.StatusCode)
						w.Write(body)
						return
					}
					// An origin that honours ranges and conditions, as
					// real ones do: the client's headers would get it a
					// 206 or a 304.
					w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
					w.Header().Set("ETag", `"v1"`)
					http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
				})
			}
			r := newRig(t, mode, origin)
			m, _ := fx.Lookup("fixture.test/dep01", "v1.0.0")
			for path, want := range map[string][]byte{
				"/fixture.test/dep01/@v/v1.0.0.mod": m.Mod,
				"/fixture.test/dep01/@v/v1.0.0.zip": m.Zip,
			} {
				req, _ := http.NewRequest(http.MethodGet, r.base+path, nil)
				req.Header.Set("Range", "bytes=0-9")
				req.Header.Set("If-Range", `"v1"`)
				req.Header.Set("If-Match", `"v1"`)
				req.Header.Set("If-None-Match", `"v1"`)
				req.Header.Set("If-Modified-Since", "Mon, 02 Jan 2006 15:04:05 GMT")
				req.Header.Set("If-Unmodified-Since", "Mon, 02 Jan 2006 15:04:05 GMT")
				resp, err := r.client.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
					t.Errorf("%s: %d, %d bytes (%v); want 200 and the whole %d bytes", path, resp.StatusCode, len(body), err, len(want))
				}
				mu.Lock()
				h, asked := seen[path]
				mu.Unlock()
				if !asked {
					t.Errorf("%s never reached the origin", path)
					continue
				}
				for _, k := range partial {
					if v := h.Get(k); v != "" {
						t.Errorf("%s: the origin got %s: %s", path, k, v)
					}
				}
			}
		})
	}
}

// TestMITMHostWithTrailingDot: "host." is the same host as "host"; a
// trailing dot must not turn an intercepted host into a blind tunnel that
// skips path policy and the private-module guard.
func TestMITMHostWithTrailingDot(t *testing.T) {
	f := newFwdSetup(t, true, nil)
	if err := os.WriteFile(f.store.Path(), []byte("rules:\n  - deny: \"fixture.test/dep02\"\n    reason: \"malware\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Reload(); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(f.e.go_.Getenv("SSL_CERT_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	gate, _ := url.Parse(f.url)
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(gate), TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	for _, host := range []string{proxyHost + ".", strings.ToUpper(proxyHost)} {
		resp, err := client.Get("https://" + host + "/fixture.test/dep02/@v/v1.0.0.info")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(string(body), "modgate: denied: ") {
			t.Errorf("https://%s/ through MITM: %d %q; want the policy's 403", host, resp.StatusCode, body)
		}
	}
	lines := readAudit(t, f.audit)
	var mitm int
	for _, l := range lines {
		if l["mode"] == "mitm" && l["decision"] == "deny" && l["host"] == proxyHost+":443" {
			mitm++
		}
	}
	if mitm != 2 {
		t.Errorf("%d intercepted denials with host %s:443 in the audit log, want 2: %v", mitm, proxyHost, lines)
	}
}

// TestGuardRefusalIsNotAnUpstreamFailure: a destination the SSRF guard
// refuses is modgate's own decision; however often a client asks, it is a
// 403, never an open circuit.
func TestGuardRefusalIsNotAnUpstreamFailure(t *testing.T) {
	gate := startGate(t, sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}})
	for i := range 8 {
		status, _, body := rawGet(t, gate, "http://127.1/fixture.test/dep01/@v/list")
		if status != http.StatusForbidden || !strings.Contains(body, "modgate: refused:") || !strings.Contains(body, "a loopback address") {
			t.Fatalf("request %d to a loopback address: %d %q", i+1, status, body)
		}
	}
}

// TestNoTestReachesTheNetwork: the modgates that tests start dial through
// modtest.LoopbackDial (sidecartest sets sidecar.Config.Dial), so a
// destination the guard lets through is still not reached unless it is
// loopback, and no name is looked up in DNS: no test leaves the machine,
// even when the guard under test regresses.
func TestNoTestReachesTheNetwork(t *testing.T) {
	// 192.0.2.1 is TEST-NET-1: listed, so that the guard lets it through.
	url := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"192.0.2.1", "nowhere.example.test"}},
	})
	const refusedByTestDialer = "test dialer: only loopback may be dialled, not 192.0.2.1"
	if got := connect(t, url, "192.0.2.1:443"); !strings.Contains(got, refusedByTestDialer) {
		t.Errorf("CONNECT 192.0.2.1:443: %q; want the test dialer's refusal", got)
	}
	if status, _, body := rawGet(t, url, "http://192.0.2.1/example.test/m/@v/list"); status != http.StatusBadGateway || !strings.Contains(body, refusedByTestDialer) {
		t.Errorf("absolute-form to 192.0.2.1: %d %q; want 502 with the test dialer's refusal", status, body)
	}
	if got := connect(t, url, "nowhere.example.test:443"); !strings.Contains(got, "test dialer: no DNS in tests") && !strings.Contains(got, "test dialer: only loopback may be dialled") {
		t.Errorf("CONNECT to a name: %q; want the test dialer to refuse its DNS query", got)
	}
}

// TestConnectBytesBehindTheRequest: what a client sends right behind its
// CONNECT, without waiting for the 200 (a request, or a TLS hello), is the
// first thing the destination gets, not dropped with the buffer the
// CONNECT was read into.
func TestConnectBytesBehindTheRequest(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "origin saw "+r.URL.Path)
	}))
	defer origin.Close()
	addr := origin.Listener.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	gate := startGate(t, sidecar.Config{
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"127.0.0.1"}, ConnectPorts: []int{p}},
	})
	c, err := net.Dial("tcp", strings.TrimPrefix(gate, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// One write: the CONNECT and the request behind it arrive together.
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nGET /behind HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr, addr, addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request behind the CONNECT got no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "origin saw /behind" {
		t.Errorf("the request behind the CONNECT: %d %q", resp.StatusCode, body)
	}
}

// TestInterceptBytesBehindTheRequest: a TLS hello that comes right behind
// the CONNECT of an intercepted host is the start of the handshake.
func TestInterceptBytesBehindTheRequest(t *testing.T) {
	f := newFwdSetup(t, true, nil)
	caPEM, err := os.ReadFile(f.e.go_.Getenv("SSL_CERT_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	target := proxyHost + ":443"
	pc := &connectFirst{Conn: c, br: bufio.NewReader(c), connect: []byte("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n\r\n")}
	tc := tls.Client(pc, &tls.Config{RootCAs: roots, ServerName: proxyHost})
	fmt.Fprintf(tc, "GET /fixture.test/app/@v/list HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", proxyHost)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		t.Fatalf("a TLS hello behind the CONNECT: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "v1.0.0") {
		t.Errorf("list inside the interception: %d %q", resp.StatusCode, body)
	}
}

// connectFirst sends connect in the same write as the first bytes written
// to it, and reads the CONNECT's 200 before the first bytes read.
type connectFirst struct {
	net.Conn
	br      *bufio.Reader
	connect []byte
	read    bool
}

func (c *connectFirst) Write(p []byte) (int, error) {
	if c.connect != nil {
		b := append(c.connect, p...)
		c.connect = nil
		if _, err := c.Conn.Write(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *connectFirst) Read(p []byte) (int, error) {
	if !c.read {
		c.read = true
		resp, err := http.ReadResponse(c.br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			return 0, err
		}
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("CONNECT: %s", resp.Status)
		}
	}
	return c.br.Read(p)
}

// TestTunnelIdle: a tunnel with no traffic either way for
// forward.tunnel_idle is closed; traffic keeps it open.
func TestTunnelIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	clock := modtest.NewClock()
	const idle = 100 * time.Second
	gate := startGate(t, sidecar.Config{
		Clock:     clock,
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"127.0.0.1"}, ConnectPorts: []int{p}, TunnelIdle: idle},
	})
	c, err := net.Dial("tcp", strings.TrimPrefix(gate, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v, %v", resp, err)
	}
	echo := func(msg string) error {
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(br, got); err != nil {
			return err
		}
		if string(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	// advance moves the clock once the tunnel waits on it.
	advance := func(d time.Duration) {
		t.Helper()
		if !clock.WaitForTimers(1, 5*time.Second) {
			t.Fatal("the tunnel waits on no timer")
		}
		clock.Advance(d)
	}
	advance(idle * 6 / 10)
	if err := echo("ping"); err != nil {
		t.Fatalf("a tunnel idle for less than tunnel_idle: %v", err)
	}
	advance(idle * 6 / 10) // 1.2 idle since the start, 0.6 since the ping
	if err := echo("pong"); err != nil {
		t.Fatalf("a tunnel with traffic within tunnel_idle was cut: %v", err)
	}
	advance(idle * 12 / 10)
	if n, err := br.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a tunnel idle for longer than tunnel_idle; want it closed", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a tunnel idle for longer than tunnel_idle is still open")
	}
}
