package sidecar_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// adminGet asks the admin handler for path with the Host header host.
func adminGet(t *testing.T, h http.Handler, host, path string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	req.Host = host
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestAdminAnswersOnlyItsHosts: a page on another site may point a name
// of its own at 127.0.0.1 (DNS rebinding) and read the admin pages from
// the developer's browser; the admin listener answers only the Host names
// it knows.
func TestAdminAnswersOnlyItsHosts(t *testing.T) {
	s, err := sidecar.New(sidecar.Config{
		Upstreams:  []upstream.Config{{URL: "https://a.example.test"}},
		AdminHosts: []string{"modgate.corp.example.test", "*.svc.example.test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	h := s.AdminHandler()
	for _, host := range []string{"127.0.0.1:7071", "127.0.0.1", "[::1]:7071", "10.1.2.3:7071", "localhost:7071", "LocalHost.",
		"modgate.corp.example.test", "MODGATE.corp.example.test:7071", "modgate.svc.example.test:7071"} {
		if rec := adminGet(t, h, host, "/healthz"); rec.Code != http.StatusOK {
			t.Errorf("Host %q: %d %q; want 200", host, rec.Code, rec.Body)
		}
	}
	for _, host := range []string{"rebind.example.test", "rebind.example.test:7071", "localhost.example.test", "127.0.0.1.example.test",
		"svc.example.test", "", "modgate.corp.example.test.example.test"} {
		for _, path := range []string{"/healthz", "/debug/upstreams", "/", "/nothing"} {
			rec := adminGet(t, h, host, path)
			body := rec.Body.String()
			if rec.Code != http.StatusMisdirectedRequest || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") ||
				!strings.HasPrefix(body, "modgate: ") || !strings.Contains(body, "admin_hosts") {
				t.Errorf("Host %q %s: %d %q %q; want 421 with a text/plain reason", host, path, rec.Code, rec.Header().Get("Content-Type"), body)
			}
		}
	}

	// Without admin_hosts only addresses and localhost.
	s, err = sidecar.New(sidecar.Config{Upstreams: []upstream.Config{{URL: "https://a.example.test"}}})
	if err != nil {
		t.Fatal(err)
	}
	if rec := adminGet(t, s.AdminHandler(), "modgate.corp.example.test", "/healthz"); rec.Code != http.StatusMisdirectedRequest {
		t.Errorf("a name not listed: %d", rec.Code)
	}
}

// externalResource finds what a page would load from a host of its own
// choosing: src, href, CSS url() and @import with an absolute or
// scheme-relative URL.
var externalResource = regexp.MustCompile(`(?i)(?:\b(?:src|href|action|poster|data)\s*=\s*["']?|url\(\s*["']?|@import\s+["']?)(?:https?:)?//`)

// TestAdminPagesLoadNothingFromElsewhere: the trace view and the status
// page are served whole by modgate; a browser that opens them asks no
// other host for anything (and the pages say so to it).
func TestAdminPagesLoadNothingFromElsewhere(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	tel := newTelemetry(t, nil)
	url, srv := startGateServer(t, sidecar.Config{Telemetry: tel, Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	for _, path := range []string{"/fixture.test/dep01/@v/list", "/fixture.test/nothere/@v/list"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	h := srv.AdminHandler()
	pages := []string{"/", "/debug/tracez"}
	tracez := adminGet(t, h, "127.0.0.1", "/debug/tracez").Body.String()
	for _, m := range regexp.MustCompile(`href="tracez(\?[^"]+)"`).FindAllStringSubmatch(tracez, -1) {
		pages = append(pages, "/debug/tracez"+strings.ReplaceAll(m[1], "&amp;", "&"))
	}
	if len(pages) < 4 {
		t.Fatalf("the trace view lists no spans:\n%s", tracez)
	}
	for _, path := range pages {
		rec := adminGet(t, h, "127.0.0.1:7071", path)
		if rec.Code != http.StatusOK {
			t.Errorf("%s: %d", path, rec.Code)
		}
		if loc := externalResource.FindStringIndex(rec.Body.String()); loc != nil {
			body := rec.Body.String()
			t.Errorf("%s loads from another host: ...%s...", path, body[max(0, loc[0]-80):min(len(body), loc[1]+80)])
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", path, csp)
		}
	}
	if !strings.Contains(tracez, "<style>") || !strings.Contains(tracez, "Trace Spans") {
		t.Errorf("the trace view lost its page:\n%s", tracez)
	}
}

// TestPProfOnlyWhenAsked: /debug/pprof/ is on the admin listener with
// PProf only, and never on the module listener.
func TestPProfOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		url, s := startGateServer(t, sidecar.Config{PProf: on, Upstreams: []upstream.Config{{URL: "off"}}})
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"} {
			if rec := adminGet(t, s.AdminHandler(), "127.0.0.1", path); rec.Code != want {
				t.Errorf("pprof %v: admin %s: %d; want %d", on, path, rec.Code, want)
			}
			resp, err := http.Get(url + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "profile") {
				t.Errorf("pprof %v: the module listener answers %s: %d %.80q", on, path, resp.StatusCode, body)
			}
		}
	}
}
