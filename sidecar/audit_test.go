package sidecar_test

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/upstream"
)

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
