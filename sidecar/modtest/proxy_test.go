package modtest

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestProxyProtocol(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	p := NewProxy(t, fx)
	app, _ := fx.Lookup("fixture.test/app", "v1.0.0")
	upper, _ := fx.Lookup("fixture.test/UpperCase", "v1.0.0")
	pre, _ := fx.Lookup("fixture.test/pre", "v1.0.0")
	rc, _ := fx.Lookup("fixture.test/pre", "v1.1.0-rc.1")
	pseudo, _ := fx.Lookup("fixture.test/pseudo", "v0.0.0-20240102030405-0123456789ab")
	const (
		text = "text/plain; charset=utf-8"
		js   = "application/json"
	)
	for _, tc := range []struct {
		path, ctype string
		code        int
		body        string // exact for 200, a prefix otherwise
	}{
		{"/fixture.test/dep05/@v/list", text, 200, "v1.0.0\nv1.1.0\n"},
		{"/fixture.test/pre/@v/list", text, 200, "v1.0.0\nv1.1.0-rc.1\n"},
		{"/fixture.test/pseudo/@v/list", text, 200, ""},
		{"/fixture.test/app/@v/v1.0.0.info", js, 200, string(app.Info)},
		{"/fixture.test/app/@v/v1.0.0.mod", text, 200, string(app.Mod)},
		{"/fixture.test/app/@v/v1.0.0.zip", "application/zip", 200, string(app.Zip)},
		{"/fixture.test/app/@latest", js, 200, string(app.Info)},
		{"/fixture.test/pre/@latest", js, 200, string(pre.Info)},
		{"/fixture.test/pre/@v/v1.1.0-rc.1.info", js, 200, string(rc.Info)},
		{"/fixture.test/!upper!case/@v/list", text, 200, "v1.0.0\n"},
		{"/fixture.test/!upper!case/@v/v1.0.0.zip", "application/zip", 200, string(upper.Zip)},
		{"/fixture.test/!upper!case/@latest", js, 200, string(upper.Info)},
		{"/fixture.test/pseudo/@latest", js, 200, string(pseudo.Info)},

		{"/fixture.test/nosuch/@v/list", text, 404, "not found: "},
		{"/fixture.test/nosuch/@latest", text, 404, "not found: "},
		{"/fixture.test/app/@v/v9.9.9.info", text, 404, "not found: "},
		{"/fixture.test/app/@v/master.mod", text, 404, "not found: "},
		{"/fixture.test/app/@v/v1.0.0.txt", text, 404, "not found: "},
		{"/", text, 404, "not found: "},
		{"/fixture.test/app", text, 404, "not found: "},
		{"/sumdb/sum.fixture.test/supported", text, 404, "not found: "},

		// Upper-case letters must be escaped; "!" must be followed by a lower-case letter.
		{"/fixture.test/UpperCase/@v/list", text, 400, "bad request: "},
		{"/fixture.test/UpperCase/@latest", text, 400, "bad request: "},
		{"/fixture.test/!!x/@v/v1.0.0.mod", text, 400, "bad request: "},
		{"/fixture.test/pre/@v/v1.1.0-RC.1.info", text, 400, "bad request: "},
		{"/nodot/@v/list", text, 400, "bad request: "},
	} {
		r := mustGet(t, p.Client(), p.URL+tc.path)
		if r.code != tc.code || r.header.Get("Content-Type") != tc.ctype {
			t.Errorf("GET %s: %d %q, want %d %q; body %q", tc.path, r.code, r.header.Get("Content-Type"), tc.code, tc.ctype, r.body)
		}
		if r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
			t.Errorf("GET %s: Content-Length %q for a %d-byte body", tc.path, r.header.Get("Content-Length"), len(r.body))
		}
		if tc.code == 200 && r.body != tc.body || !strings.HasPrefix(r.body, tc.body) {
			t.Errorf("GET %s: body %q, want %q", tc.path, r.body, tc.body)
		}
		if tc.code != 200 && (strings.Count(r.body, "\n") != 1 || len(r.body) > 200) {
			t.Errorf("GET %s: error body %q is not one short line", tc.path, r.body)
		}
	}

	// HEAD gets the headers alone; other methods are refused.
	resp, err := p.Client().Head(p.URL + "/fixture.test/app/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(app.Zip)) {
		t.Errorf("HEAD zip: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	resp, err = p.Client().Post(p.URL+"/fixture.test/app/@v/list", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", resp.StatusCode)
	}
}

func TestProxyAddWhileServing(t *testing.T) {
	t.Parallel()
	var fx Fixtures
	p := NewProxy(t, &fx)
	if r := mustGet(t, p.Client(), p.URL+"/example.test/gen/@v/list"); r.code != 404 {
		t.Fatalf("list before Add: %d", r.code)
	}
	m, err := NewModule("example.test/gen", "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	fx.Add(m)
	if r := mustGet(t, p.Client(), p.URL+"/example.test/gen/@v/list"); r.code != 200 || r.body != "v1.2.3\n" {
		t.Fatalf("list after Add: %d %q", r.code, r.body)
	}
}

func TestProxyCounters(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, testFixtures(t))
	paths := []string{
		"/fixture.test/app/@v/list",
		"/f/ok/fixture.test/app/@v/v1.0.0.info",
		"/f/500/fixture.test/app/@v/v1.0.0.mod",
		"/f/500/fixture.test/app/@v/v1.0.0.zip",
		"/fixture.test/!upper!case/@v/list",
	}
	for _, path := range paths {
		mustGet(t, p.Client(), p.URL+path)
	}
	if got := p.Requests(); !slices.Equal(got, paths) {
		t.Errorf("Requests() = %q, want %q", got, paths)
	}
	for fault, want := range map[string]int{"": 2, "ok": 1, "500": 2, "503": 0} {
		if got := p.Count(fault); got != want {
			t.Errorf("Count(%q) = %d, want %d", fault, got, want)
		}
	}
	for substr, want := range map[string]int{"/@v/list": 2, "fixture.test/app/": 4, ".zip": 1, "!upper!case": 1, "nothing": 0} {
		if got := p.CountMatching(substr); got != want {
			t.Errorf("CountMatching(%q) = %d, want %d", substr, got, want)
		}
	}
	reqs := p.Requests()
	reqs[0] = "changed"
	if p.Requests()[0] != paths[0] {
		t.Errorf("Requests() does not return a copy")
	}
	p.Reset()
	if len(p.Requests()) != 0 || p.Count("500") != 0 || p.CountMatching("/") != 0 {
		t.Errorf("after Reset: %q, Count(500) = %d", p.Requests(), p.Count("500"))
	}
}

func TestProxySumDB(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	plain := NewProxy(t, fx)
	p := NewProxy(t, fx, WithSumDB(db))
	if r := mustGet(t, plain.Client(), plain.URL+"/sumdb/sum.fixture.test/supported"); r.code != 404 {
		t.Errorf("supported without WithSumDB: %d", r.code)
	}
	want, _ := fx.GoSumLines("fixture.test/dep01", "v1.0.0")
	for _, tc := range []struct {
		path string
		code int
		body string
	}{
		{"/sumdb/sum.fixture.test/supported", 200, ""},
		{"/sumdb/sum.fixture.test/lookup/fixture.test/dep01@v1.0.0", 200, string(want)},
		{"/sumdb/sum.fixture.test/latest", 200, "go.sum database tree\n"},
		{"/sumdb/sum.fixture.test/tile/8/0/000.p/1", 200, ""},
		{"/sumdb/sum.fixture.test/lookup/fixture.test/nosuch@v1.0.0", 404, ""},
		{"/sumdb/sum.other.test/supported", 404, "not found: "},
		{"/sumdb/sum.other.test/latest", 404, "not found: "},
		{"/f/503/sumdb/sum.fixture.test/supported", 503, "service unavailable: "},
		{"/f/ok/sumdb/sum.fixture.test/supported", 200, ""},
	} {
		r := mustGet(t, p.Client(), p.URL+tc.path)
		if r.code != tc.code || !strings.Contains(r.body, tc.body) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, r.code, r.body, tc.code, tc.body)
		}
	}
	if db.CountMatching("") != 0 {
		t.Errorf("requests through the proxy were counted by the database: %q", db.Requests())
	}
}

func TestProxyTLS(t *testing.T) {
	t.Parallel()
	p := NewProxyTLS(t, testFixtures(t))
	if !strings.HasPrefix(p.URL, "https://127.0.0.1:") {
		t.Errorf("URL = %s", p.URL)
	}
	if r := mustGet(t, p.Client(), p.URL+"/fixture.test/app/@v/list"); r.code != 200 || r.body != "v1.0.0\n" {
		t.Errorf("GET list: %d %q", r.code, r.body)
	}
	block, _ := pem.Decode(p.CAPEM())
	if block == nil {
		t.Fatalf("CAPEM() = %q", p.CAPEM())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: p.CertPool(), DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("certificate does not verify against CertPool: %v", err)
	}
	// A client that does not trust the certificate fails.
	if _, err := get(t, &http.Client{}, p.URL+"/fixture.test/app/@v/list"); err == nil {
		t.Errorf("an untrusting client reached the TLS proxy")
	}

	plain := NewProxy(t, nil)
	if plain.CAPEM() != nil || plain.CertPool() != nil {
		t.Errorf("a plain proxy has a certificate")
	}
}

func TestProxyClose(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, testFixtures(t))
	p.Close()
	p.Close()
	if _, err := get(t, p.Client(), p.URL+"/fixture.test/app/@v/list"); err == nil {
		t.Errorf("GET after Close succeeded")
	}
}
