package sidecar_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// Regression tests for the drift between reverse and forward mode that
// the one pipeline removed (issue "One pipeline for every way in").

// TestEveryRefusalIsAudited: each answer modgate gives, refusals of the
// forward mode's own included, writes exactly one audit line that says
// what was decided and why.
func TestEveryRefusalIsAudited(t *testing.T) {
	audit, auditPath := newAudit(t)
	gate := startGate(t, sidecar.Config{
		Audit:     audit,
		Upstreams: []upstream.Config{{URL: "off"}},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{"*.example.test"}, Users: map[string]string{"alice": "s3cret"}},
	})
	alice := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")) + "\r\n"
	tests := []struct {
		name, request        string
		status               string
		decision, inReason   string
		identity, mode, kind string
	}{
		{"407 absolute-form", "GET http://mods.example.test/x.example.test/m/@v/list HTTP/1.1\r\nHost: mods.example.test\r\n\r\n",
			"407", "deny", "no Proxy-Authorization", "", "forward", "other"},
		{"407 wrong password", "GET http://mods.example.test/x.example.test/m/@v/list HTTP/1.1\r\nHost: mods.example.test\r\nProxy-Authorization: Basic " +
			base64.StdEncoding.EncodeToString([]byte("alice:nope")) + "\r\n\r\n",
			"407", "deny", "wrong user name or password", "claimed:alice", "forward", "other"},
		{"407 CONNECT", "CONNECT mods.example.test:443 HTTP/1.1\r\nHost: mods.example.test:443\r\n\r\n",
			"407", "deny", "no Proxy-Authorization", "", "forward", "tunnel"},
		{"400 forward invalid path", "GET http://mods.example.test/x.example.test/M/@v/list HTTP/1.1\r\nHost: mods.example.test\r\n" + alice + "\r\n",
			"400", "invalid", "capital", "alice", "forward", "other"},
		{"400 forward scheme", "GET ftp://mods.example.test/x HTTP/1.1\r\nHost: mods.example.test\r\n" + alice + "\r\n",
			"400", "invalid", "send https through CONNECT", "alice", "forward", "other"},
		{"403 host not allowed", "GET http://evil.example.invalid/x HTTP/1.1\r\nHost: evil.example.invalid\r\n" + alice + "\r\n",
			"403", "deny", "not in allow_hosts", "alice", "forward", "other"},
		{"400 CONNECT without port", "CONNECT mods.example.test HTTP/1.1\r\nHost: mods.example.test\r\n" + alice + "\r\n",
			"400", "invalid", "host:port", "alice", "forward", "tunnel"},
		{"403 CONNECT port", "CONNECT mods.example.test:22 HTTP/1.1\r\nHost: mods.example.test:22\r\n" + alice + "\r\n",
			"403", "deny", "port 22 is not in connect_ports", "alice", "forward", "tunnel"},
		{"405 reverse", "POST /x.example.test/m/@v/list HTTP/1.1\r\nHost: modgate\r\nContent-Length: 0\r\n\r\n",
			"405", "invalid", "method POST not allowed", "", "reverse", "list"},
		{"404 reverse not a module path", "GET /favicon.ico HTTP/1.1\r\nHost: modgate\r\n\r\n",
			"404", "invalid", "is not a module proxy path", "", "reverse", "other"},
		{"403 off", "GET /x.example.test/m/@v/list HTTP/1.1\r\nHost: modgate\r\n\r\n",
			"403", "allow", "off", "", "reverse", "list"},
	}
	for i, tt := range tests {
		c, err := net.Dial("tcp", strings.TrimPrefix(gate, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, tt.request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		resp.Body.Close()
		if got := fmt.Sprint(resp.StatusCode); got != tt.status {
			t.Errorf("%s: status %s, want %s", tt.name, got, tt.status)
		}
		if tt.status == "407" && resp.Header.Get("Proxy-Authenticate") == "" {
			t.Errorf("%s: 407 without Proxy-Authenticate", tt.name)
		}
		lines := readAudit(t, auditPath)
		if len(lines) != i+1 {
			t.Fatalf("%s: %d audit lines after %d answers: %v", tt.name, len(lines), i+1, lines)
		}
		l := lines[i]
		reason, _ := l["reason"].(string)
		if c, ok := l["claimed_identity"]; ok {
			// A refused login names who it claimed to be, never as its identity.
			if _, both := l["identity"]; both {
				t.Errorf("%s: audit line with both identity and claimed_identity: %v", tt.name, l)
			}
			l["identity"] = "claimed:" + fmt.Sprint(c)
		}
		if fmt.Sprint(l["status"]) != tt.status || l["decision"] != tt.decision || !strings.Contains(reason, tt.inReason) ||
			fmt.Sprint(l["mode"]) != tt.mode || fmt.Sprint(l["kind"]) != tt.kind || (tt.identity != "" && l["identity"] != tt.identity) {
			t.Errorf("%s: audit line %v; want status %s, decision %s, reason with %q, mode %s, kind %s, identity %q",
				tt.name, l, tt.status, tt.decision, tt.inReason, tt.mode, tt.kind, tt.identity)
		}
		if strings.Contains(fmt.Sprint(l), "s3cret") {
			t.Errorf("%s: the password is in the audit line", tt.name)
		}
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
