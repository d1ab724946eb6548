package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/crypto/bcrypt"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// Secrets of the tests below: none of them may appear in any log, page,
// span or audit line.
const (
	alicePassword = "alice-Pw-7Qx2v"
	bobPassword   = "bob-Pw-9Zk4m"
	ciToken       = "tok-ci-3f9a8c7d6e5b"
)

// lockedBuffer is a bytes.Buffer for concurrent writers (a logger).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// tenantRig is modgate on an HTTPS listener with a certificate from its
// own CA (as `modgate ca issue` makes), a fake module proxy behind it, an
// audit log, debug logs and spans kept for the secret check, and a go
// command that trusts the certificate.
// keptSpans is an in-memory exporter whose spans outlive the telemetry's
// shutdown (which flushes them).
type keptSpans struct{ *tracetest.InMemoryExporter }

func (keptSpans) Shutdown(context.Context) error { return nil }

type tenantRig struct {
	e        *env
	p        *modtest.Proxy
	ca       *mitm.CA
	caPEM    []byte
	dir      string
	url      string // https://127.0.0.1:port
	host     string // 127.0.0.1:port, the netrc machine
	audit    string
	logs     *lockedBuffer
	spans    *tracetest.InMemoryExporter
	tel      *telemetry.Telemetry
	srv      *sidecar.Server
	certFile string
	keyFile  string
}

// newTenantRig starts the rig; setup writes its files in r.dir and sets
// the clients section (and anything else) of cfg.
func newTenantRig(t *testing.T, policyText string, setup func(r *tenantRig, cfg *sidecar.Config)) *tenantRig {
	t.Helper()
	r := &tenantRig{e: newEnv(t), dir: t.TempDir(), logs: &lockedBuffer{}, spans: tracetest.NewInMemoryExporter()}
	r.p = r.e.proxy(t, true)
	r.ca, r.caPEM = newCA(t)
	cert, key, err := r.ca.IssueServer([]string{"modgate.corp.example.test", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	r.certFile, r.keyFile = filepath.Join(r.dir, "modgate.crt"), filepath.Join(r.dir, "modgate.key")
	writeFile(t, r.certFile, string(cert))
	writeFile(t, r.keyFile, string(key))
	st, _ := policyStore(t, policyText)
	audit, auditPath := newAudit(t)
	r.audit = auditPath
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "modgate", Getenv: func(k string) string {
		return map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}[k]
	}, SpanExporters: []sdktrace.SpanExporter{keptSpans{r.spans}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	r.tel = tel
	cfg := sidecar.Config{
		SumDB:     sumdbName,
		Upstreams: []upstream.Config{{Name: "fixtures", URL: r.p.URL}},
		Policy:    st, Audit: audit, Telemetry: tel,
		Logger: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		TLS:    sidecar.ListenerTLS{CertFile: r.certFile, KeyFile: r.keyFile},
	}
	setup(r, &cfg)
	g := sidecartest.Start(t, nil, cfg)
	r.srv, r.host = g.Server, g.Addr
	r.url = "https://" + g.Addr
	r.e.go_.TrustPEM(r.caPEM)
	r.e.go_.UseProxy(r.url, r.e.db)
	return r
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func htpasswdLine(t *testing.T, user, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + string(h) + "\n"
}

// netrc gives the go command user's netrc for modgate (GOAUTH=netrc).
func (r *tenantRig) netrc(t *testing.T, user, pass string) {
	t.Helper()
	name := filepath.Join(r.dir, "netrc-"+user)
	writeFile(t, name, fmt.Sprintf("machine %s login %s password %s\n", r.host, user, pass))
	r.e.go_.Setenv("GOAUTH", "netrc")
	r.e.go_.Setenv("NETRC", name)
}

// client is an HTTPS client that trusts modgate's certificate.
func (r *tenantRig) client(certs ...tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
}

// get asks modgate for path with the header ("Name: value") if any.
func (r *tenantRig) get(t *testing.T, c *http.Client, path, header string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.url+path, nil)
	if k, v, ok := strings.Cut(header, ": "); ok {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// identities returns the audit lines' identities and statuses, in order.
func (r *tenantRig) identities(t *testing.T) []string {
	var out []string
	for _, e := range readAudit(t, r.audit) {
		id := e["identity"]
		if c, ok := e["claimed_identity"]; ok {
			if id != nil {
				t.Errorf("audit line with both identity and claimed_identity: %v", e)
			}
			id = "claimed:" + c.(string)
		}
		out = append(out, fmt.Sprintf("%v %v %v", id, e["status"], e["module"]))
	}
	return out
}

// noSecrets looks for each secret in everything the run left: logs, audit
// lines, spans (attributes and events), the admin pages and the go
// command's output.
func (r *tenantRig) noSecrets(t *testing.T, outputs []string, secrets ...string) {
	t.Helper()
	r.tel.Shutdown(context.Background()) // flush the spans
	var spans strings.Builder
	for _, s := range r.spans.GetSpans() {
		fmt.Fprintf(&spans, "%s %v %v %v\n", s.Name, s.Attributes, s.Events, s.Status)
	}
	audit, _ := os.ReadFile(r.audit)
	places := map[string]string{"logs": r.logs.String(), "audit": string(audit), "spans": spans.String(), "go output": strings.Join(outputs, "\n")}
	for _, page := range []string{"/", "/metrics", "/debug/upstreams", "/debug/tracez"} {
		rec := httptest.NewRecorder()
		r.srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1"+page, nil))
		places["admin "+page] = rec.Body.String()
	}
	for where, text := range places {
		for _, s := range secrets {
			forms := []string{s, base64.StdEncoding.EncodeToString([]byte(s))}
			for _, user := range []string{"alice", "bob"} { // as a Basic header carries it
				forms = append(forms, base64.StdEncoding.EncodeToString([]byte(user+":"+s)))
			}
			for _, form := range forms {
				if strings.Contains(text, form) {
					t.Errorf("a secret appears in %s", where)
				}
			}
		}
	}
	if m := places["admin /metrics"]; strings.Contains(m, "alice") || strings.Contains(m, "bob") {
		t.Error("an identity is a metric label")
	}
}

// spanUsers returns the enduser.id of the server spans.
func (r *tenantRig) spanUsers() map[string]int {
	users := map[string]int{}
	for _, s := range r.spans.GetSpans() {
		for _, a := range s.Attributes {
			if a.Key == "enduser.id" {
				users[a.Value.AsString()]++
			}
		}
	}
	return users
}

// TestTenantsOverHTTPS: the go command with GOAUTH=netrc against modgate's
// HTTPS listener. alice downloads; a wrong password gets 401 with modgate's
// explanation; bob is refused alice's module by an identities rule; the
// audit log and spans name both; no password appears anywhere.
func TestTenantsOverHTTPS(t *testing.T) {
	const pol = `rules:
  - allow: "fixture.test/dep08"
    identities: [alice]
  - deny: "fixture.test/dep08"
    reason: "team A's module"
`
	r := newTenantRig(t, pol, func(r *tenantRig, cfg *sidecar.Config) {
		f := filepath.Join(r.dir, "htpasswd")
		writeFile(t, f, htpasswdLine(t, "alice", alicePassword)+htpasswdLine(t, "bob", bobPassword))
		cfg.Clients = sidecar.ClientsConfig{HtpasswdFile: f}
	})
	g := r.e.go_
	var outputs []string

	// Without credentials: 401, and the go command prints why.
	out, err := r.e.download("fixture.test/dep01@v1.0.0")
	outputs = append(outputs, out)
	if err == nil || !strings.Contains(out, "401 Unauthorized") || !strings.Contains(out, "modgate: auth-required: authentication required: no credentials") || !strings.Contains(out, "GOAUTH=netrc") {
		t.Errorf("no credentials: err %v\n%s", err, out)
	}

	r.netrc(t, "alice", alicePassword)
	out, err = r.e.download("fixture.test/dep08@v1.0.0", "fixture.test/dep01@v1.0.0")
	outputs = append(outputs, out)
	if err != nil {
		t.Fatalf("alice: %v\n%s", err, out)
	}

	r.netrc(t, "alice", "not-"+alicePassword)
	g.Setenv("GOMODCACHE", filepath.Join(r.dir, "modcache-wrong"))
	out, err = r.e.download("fixture.test/dep02@v1.0.0")
	outputs = append(outputs, out)
	if err == nil || !strings.Contains(out, "401 Unauthorized") || !strings.Contains(out, "modgate: auth-required: authentication required: wrong user name or password") {
		t.Errorf("wrong password: err %v\n%s", err, out)
	}

	r.netrc(t, "bob", bobPassword)
	g.Setenv("GOMODCACHE", filepath.Join(r.dir, "modcache-bob"))
	out, err = r.e.download("fixture.test/dep08@v1.0.0")
	outputs = append(outputs, out)
	if err == nil || !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "modgate: denied: fixture.test/dep08@v1.0.0 denied by policy rule 2 (deny fixture.test/dep08): team A's module") {
		t.Errorf("bob, alice's module: err %v\n%s", err, out)
	}
	if out, err := r.e.download("fixture.test/dep03@v1.0.0"); err != nil {
		t.Errorf("bob, a module for everyone: %v\n%s", err, out)
	}

	lines := strings.Join(r.identities(t), "\n")
	for _, want := range []string{"alice 200 fixture.test/dep08", "bob 403 fixture.test/dep08", "bob 200 fixture.test/dep03", "claimed:alice 401 <nil>", "<nil> 401 <nil>"} {
		if !strings.Contains(lines, want) {
			t.Errorf("no audit line %q in:\n%s", want, lines)
		}
	}
	r.noSecrets(t, outputs, alicePassword, "not-"+alicePassword, bobPassword)
	if users := r.spanUsers(); users["alice"] == 0 || users["bob"] == 0 {
		t.Errorf("server spans' enduser.id: %v", users)
	}
}

// TestBearerTokens: a token names its holder; a wrong one is 401 and
// counts against the client's failed logins; the tokens file is read again
// when it changes.
func TestBearerTokens(t *testing.T) {
	var tokens string
	r := newTenantRig(t, "{}\n", func(r *tenantRig, cfg *sidecar.Config) {
		tokens = filepath.Join(r.dir, "tokens")
		writeFile(t, tokens, "# name token\nci "+ciToken+"\n")
		cfg.Clients = sidecar.ClientsConfig{TokensFile: tokens}
	})
	c := r.client()
	const path = "/fixture.test/dep01/@v/v1.0.0.info"
	if status, h, body := r.get(t, c, path, ""); status != 401 || h.Get("Www-Authenticate") != `Bearer realm="modgate"` || !strings.HasPrefix(body, "modgate: auth-required: ") {
		t.Errorf("no token: %d %v %q", status, h, body)
	}
	if status, _, body := r.get(t, c, path, "Authorization: Bearer "+ciToken); status != 200 {
		t.Errorf("token: %d %q", status, body)
	}
	if status, _, body := r.get(t, c, path, "Authorization: Bearer wrong-"+ciToken); status != 401 || !strings.Contains(body, "unknown token") {
		t.Errorf("wrong token: %d %q", status, body)
	}
	// A new file takes over; the old token no longer works.
	writeFile(t, tokens, "ci2 new-"+ciToken+"\n")
	future := time.Now().Add(time.Minute)
	os.Chtimes(tokens, future, future)
	if status, _, _ := r.get(t, c, path, "Authorization: Bearer "+ciToken); status != 401 {
		t.Errorf("old token after the file changed: %d", status)
	}
	if status, _, _ := r.get(t, c, path, "Authorization: Bearer new-"+ciToken); status != 200 {
		t.Errorf("new token after the file changed: %d", status)
	}
	lines := strings.Join(r.identities(t), "\n")
	for _, want := range []string{"ci 200 fixture.test/dep01", "ci2 200 fixture.test/dep01", "<nil> 401 <nil>"} {
		if !strings.Contains(lines, want) {
			t.Errorf("no audit line %q in:\n%s", want, lines)
		}
	}
	// Failed tokens are failed logins: after 10 the address waits.
	for range 10 {
		r.get(t, c, path, "Authorization: Bearer guess")
	}
	if status, _, body := r.get(t, c, path, "Authorization: Bearer new-"+ciToken); status != 429 || !strings.HasPrefix(body, "modgate: too-many-logins: ") {
		t.Errorf("after 10 wrong tokens: %d %q", status, body)
	}
	r.noSecrets(t, nil, ciToken, "new-"+ciToken)
	if users := r.spanUsers(); users["ci"] == 0 {
		t.Errorf("server spans' enduser.id: %v", users)
	}
}

// TestClientCertificates: with client_ca_file, a certificate signed by
// that CA is its subject CN's identity, with the go command too (through
// GOAUTH-less mutual TLS is not something the go command does, so a Go
// client asks); without one, modgate asks for credentials.
func TestClientCertificates(t *testing.T) {
	var clientCA *mitm.CA
	r := newTenantRig(t, "rules:\n  - allow: \"fixture.test/dep08\"\n    identities: [\"build-*\"]\n  - deny: \"fixture.test/dep08\"\n", func(r *tenantRig, cfg *sidecar.Config) {
		var pem []byte
		clientCA, pem = newCA(t)
		f := filepath.Join(r.dir, "client-ca.pem")
		writeFile(t, f, string(pem))
		cfg.Clients = sidecar.ClientsConfig{ClientCAFile: f}
	})
	certFor := func(ca *mitm.CA, name string) tls.Certificate {
		c, k, err := ca.IssueClient(name)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	const path = "/fixture.test/dep08/@v/v1.0.0.info"
	if status, _, body := r.get(t, r.client(certFor(clientCA, "build-7")), path, ""); status != 200 {
		t.Errorf("build-7's certificate: %d %q", status, body)
	}
	if status, _, body := r.get(t, r.client(certFor(clientCA, "laptop-3")), path, ""); status != 403 || !strings.Contains(body, "rule 2") {
		t.Errorf("laptop-3's certificate: %d %q", status, body)
	}
	if status, _, body := r.get(t, r.client(), path, ""); status != 401 || !strings.Contains(body, "client certificate") {
		t.Errorf("no certificate: %d %q", status, body)
	}
	// A certificate from another CA is not an identity (the handshake
	// refuses it).
	if resp, err := r.client(certFor(r.ca, "build-8")).Get(r.url + path); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("a certificate of another CA: %d", resp.StatusCode)
		}
	}
	lines := strings.Join(r.identities(t), "\n")
	for _, want := range []string{"build-7 200 fixture.test/dep08", "laptop-3 403 fixture.test/dep08"} {
		if !strings.Contains(lines, want) {
			t.Errorf("no audit line %q in:\n%s", want, lines)
		}
	}
	if strings.Contains(lines, "build-8") {
		t.Errorf("another CA's certificate became an identity:\n%s", lines)
	}
}

// TestForwardOverTLSListener: HTTPS_PROXY=https://user:password@modgate,
// the go command's CONNECT inside TLS to modgate, with the htpasswd
// identities in Proxy-Authorization.
func TestForwardOverTLSListener(t *testing.T) {
	var origin *modtest.Proxy
	r := newTenantRig(t, "{}\n", func(r *tenantRig, cfg *sidecar.Config) {
		f := filepath.Join(r.dir, "htpasswd")
		writeFile(t, f, htpasswdLine(t, "alice", alicePassword))
		cfg.Clients = sidecar.ClientsConfig{HtpasswdFile: f}
		// The origin the go command reaches through the tunnel: a TLS
		// module proxy named proxy.fixture.test, pinned by resolve.
		origin = modtest.NewProxyTLS(t, r.e.fx, modtest.WithSumDB(r.e.db), modtest.WithTLSNames(proxyHost))
		cfg.Resolve = map[string]string{proxyHost + ":443": strings.TrimPrefix(origin.URL, "https://")}
		cfg.Forward = sidecar.ForwardConfig{AllowHosts: []string{proxyHost}}
	})
	g := r.e.go_
	g.TrustPEM(origin.CAPEM())
	g.UseProxy("https://"+proxyHost, r.e.db)
	g.Setenv("HTTPS_PROXY", strings.Replace(r.url, "https://", "https://alice:"+alicePassword+"@", 1))
	out, err := r.e.download("fixture.test/dep08@v1.0.0")
	if err != nil {
		t.Fatalf("go mod download through HTTPS_PROXY=https://modgate: %v\n%s", err, out)
	}
	g.Setenv("HTTPS_PROXY", strings.Replace(r.url, "https://", "https://alice:wrong@", 1))
	g.Setenv("GOMODCACHE", filepath.Join(r.dir, "modcache-wrong"))
	out, err = r.e.download("fixture.test/dep01@v1.0.0")
	if err == nil || !strings.Contains(out, "modgate: auth-required: proxy authentication required: wrong user name or password") {
		t.Errorf("wrong proxy password: err %v\n%s", err, out)
	}
	tunnels := 0
	for _, e := range readAudit(t, r.audit) {
		if e["kind"] == "tunnel" && e["identity"] == "alice" && e["status"] == float64(200) {
			tunnels++
		}
	}
	if tunnels == 0 {
		t.Errorf("no tunnel of alice in the audit log:\n%s", strings.Join(r.identities(t), "\n"))
	}
	r.noSecrets(t, []string{out}, alicePassword)
}

// TestAnonymousClients: with anonymous, a request without credentials is
// "anonymous" (and policy can tell it apart); wrong credentials are still
// refused.
func TestAnonymousClients(t *testing.T) {
	pol := "rules:\n  - deny: \"fixture.test/dep08\"\n    identities: [anonymous]\n    reason: log in for this one\n" +
		"  - allow: \"fixture.test/dep05\"\n    identities: [\"*\"]\n  - deny: \"fixture.test/dep05\"\n    reason: for those who said who they are\n"
	r := newTenantRig(t, pol, func(r *tenantRig, cfg *sidecar.Config) {
		f := filepath.Join(r.dir, "htpasswd")
		writeFile(t, f, htpasswdLine(t, "alice", alicePassword))
		cfg.Clients = sidecar.ClientsConfig{HtpasswdFile: f, Anonymous: true}
	})
	c := r.client()
	if status, _, body := r.get(t, c, "/fixture.test/dep01/@v/v1.0.0.info", ""); status != 200 {
		t.Errorf("anonymous: %d %q", status, body)
	}
	if status, _, body := r.get(t, c, "/fixture.test/dep08/@v/v1.0.0.info", ""); status != 403 || !strings.Contains(body, "log in for this one") {
		t.Errorf("anonymous, a module for those who log in: %d %q", status, body)
	}
	basic := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:"+alicePassword))
	if status, _, body := r.get(t, c, "/fixture.test/dep08/@v/v1.0.0.info", basic); status != 200 {
		t.Errorf("alice: %d %q", status, body)
	}
	// identities: ["*"] never applies without an identity, and anonymous
	// is none (README.md, "Shared modgate for a team"): only alice gets dep05.
	if status, _, body := r.get(t, c, "/fixture.test/dep05/@v/v1.0.0.info", ""); status != 403 || !strings.Contains(body, "for those who said who they are") {
		t.Errorf("anonymous, a module for identities [\"*\"]: %d %q", status, body)
	}
	if status, _, body := r.get(t, c, "/fixture.test/dep05/@v/v1.0.0.info", basic); status != 200 {
		t.Errorf("alice, a module for identities [\"*\"]: %d %q", status, body)
	}
	wrong := "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wrong"))
	if status, h, _ := r.get(t, c, "/fixture.test/dep01/@v/v1.0.0.info", wrong); status != 401 || h.Get("Www-Authenticate") != `Basic realm="modgate"` {
		t.Errorf("wrong password with anonymous on: %d %v", status, h)
	}
	lines := strings.Join(r.identities(t), "\n")
	for _, want := range []string{"anonymous 200 fixture.test/dep01", "anonymous 403 fixture.test/dep08", "alice 200 fixture.test/dep08", "anonymous 403 fixture.test/dep05", "alice 200 fixture.test/dep05", "claimed:alice 401 <nil>"} {
		if !strings.Contains(lines, want) {
			t.Errorf("no audit line %q in:\n%s", want, lines)
		}
	}
}

// TestListenerCertificateReload: a new certificate in the files is
// served from the next handshake on, without a restart.
func TestListenerCertificateReload(t *testing.T) {
	r := newTenantRig(t, "{}\n", func(*tenantRig, *sidecar.Config) {})
	serial := func() string {
		t.Helper()
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.caPEM)
		conn, err := tls.Dial("tcp", r.host, &tls.Config{RootCAs: pool, ServerName: "modgate.corp.example.test"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	cert, key, err := r.ca.IssueServer([]string{"modgate.corp.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, r.keyFile, string(key))
	writeFile(t, r.certFile, string(cert))
	future := time.Now().Add(time.Minute)
	os.Chtimes(r.certFile, future, future)
	after := serial()
	if after == before {
		t.Errorf("the listener still serves the old certificate (serial %s)", after)
	}
	// A half-written pair does not take the listener down: the last good
	// certificate stays.
	writeFile(t, r.certFile, "not a certificate")
	if got := serial(); got != after {
		t.Errorf("after a bad file: serial %s, want the last good one %s", got, after)
	}
}

// TestFailedLoginsAreRateLimited: after ten wrong passwords from one
// address, that address gets 429 (credentials not even checked) until its
// bucket refills; every try is audited, no password is.
func TestFailedLoginsAreRateLimited(t *testing.T) {
	audit, auditPath := newAudit(t)
	clock := modtest.NewClock()
	gate := startGate(t, sidecar.Config{
		Audit: audit, Clock: clock,
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"*.example.test"}, Users: map[string]string{"alice": "s3cret"}},
	})
	try := func(password string) *http.Response {
		t.Helper()
		c, err := net.Dial("tcp", strings.TrimPrefix(gate, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "CONNECT mods.example.test:443 HTTP/1.1\r\nHost: mods.example.test:443\r\nProxy-Authorization: Basic %s\r\n\r\n",
			base64.StdEncoding.EncodeToString([]byte("alice:"+password)))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for i := range 10 {
		if resp := try(fmt.Sprintf("guess%d", i)); resp.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("wrong password %d: %s", i+1, resp.Status)
		}
	}
	resp := try("s3cret")
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(resp.Status, "modgate: too-many-logins:") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the right password after ten wrong ones, at once: %s %v", resp.Status, resp.Header)
	}
	clock.Advance(6 * time.Second)
	if resp := try("guess10"); resp.StatusCode != http.StatusProxyAuthRequired {
		t.Errorf("a try after the bucket refilled by one: %s", resp.Status)
	}
	if resp := try("s3cret"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the bucket is empty again: %s", resp.Status)
	}
	clock.Advance(6 * time.Second)
	if resp := try("s3cret"); resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusProxyAuthRequired {
		t.Errorf("the right password once the bucket refilled: %s", resp.Status)
	}
	// The refusals are audited before they are answered (the last,
	// allowed CONNECT's line comes when its tunnel ends).
	lines := readAudit(t, auditPath)
	statuses := map[float64]int{}
	for _, l := range lines {
		statuses[l["status"].(float64)]++
	}
	if statuses[407] != 11 || statuses[429] != 2 {
		t.Errorf("audited %v; want 11 × 407 and 2 × 429", statuses)
	}
	for _, l := range lines {
		if s := fmt.Sprint(l); strings.Contains(s, "guess") || strings.Contains(s, "s3cret") {
			t.Errorf("a password in the audit log: %v", l)
		}
	}
}
