package sidecar

import (
	"context"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// statusSetup is a modgate serving on loopback with a chain that has
// something to show: a private upstream, a mirror whose breaker opens, a
// public upstream, direct; telemetry on; a policy that denies.
type statusSetup struct {
	s            *Server
	url, admin   string // base URLs of the module and admin listeners
	tel          *telemetry.Telemetry
	moduleClient *http.Client
}

const statusPolicy = `private: ["fixture.test/dep1*"]
routes:
  - modules: ["fixture.test/dep1*"]
    upstreams: [internal]
  - modules: ["fixture.test/*"]
    upstreams: [mirror, public]
rules:
  - deny: "fixture.test/dep03"
    reason: "malware, see SEC-123"
  - deny: "fixture.test/dep05"
    versions: "<v1.1.0"
    reason: "CVE fixed in v1.1.0"
  - allow: "*"
contact: "ask #platform-builds"
`

func newStatusSetup(t *testing.T, withTelemetry bool) *statusSetup {
	t.Helper()
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	// The policy is named as a user names it, relative to where modgate
	// runs; the page shows the name.
	t.Chdir(t.TempDir())
	if err := os.WriteFile("policy.yaml", []byte(statusPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := policy.NewStore("policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tel *telemetry.Telemetry
	if withTelemetry {
		tel, err = telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "modgate", Version: "test", Getenv: func(string) string { return "" }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tel.Shutdown(ctx)
		})
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{
		Listen: ln.Addr().String(), Admin: adminLn.Addr().String(), SumDB: "sum.fixture.test", Version: "v0.9.0-test",
		Policy: st, Telemetry: tel,
		Upstreams: []upstream.Config{
			{Name: "internal", URL: p.URL, Private: true},
			{Name: "mirror", URL: p.URL + "/f/500", Fallthrough: upstream.OnError,
				Breaker: upstream.BreakerSettings{ConsecutiveFailures: 3}, Retry: upstream.RetrySettings{Attempts: 1}},
			{Name: "public", URL: p.URL},
			{URL: "direct"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, adminLn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	return &statusSetup{s: s, url: "http://" + ln.Addr().String(), admin: "http://" + adminLn.Addr().String(), tel: tel, moduleClient: client}
}

// traffic sends a mix of requests: served, denied, not found, invalid.
func (su *statusSetup) traffic(t *testing.T) {
	t.Helper()
	for _, path := range []string{
		"/fixture.test/dep01/@v/list",
		"/fixture.test/dep01/@v/v1.0.0.info",
		"/fixture.test/dep01/@v/v1.0.0.mod",
		"/fixture.test/dep01/@v/v1.0.0.zip",
		"/fixture.test/dep02/@v/v1.0.0.info",
		"/fixture.test/dep02/@v/v1.0.0.zip",
		"/fixture.test/dep03/@v/v1.0.0.info", // denied
		"/fixture.test/dep05/@v/v1.0.0.zip",  // denied version
		"/fixture.test/dep05/@v/v1.1.0.zip",
		"/fixture.test/dep11/@v/v1.0.0.info", // private: internal only
		"/fixture.test/dep12/@v/v1.0.0.mod",
		"/fixture.test/nothere/@v/list",   // 404
		"/fixture.test/dep01/@v/v1.0.mod", // 400
		"/fixture.test/pre/@latest",
	} {
		resp, err := su.moduleClient.Get(su.url + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func (su *statusSetup) page(t *testing.T, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	su.s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1"+path, nil))
	return rec.Code, rec.Header(), rec.Body.String()
}

func TestStatusPage(t *testing.T) {
	su := newStatusSetup(t, true)
	su.traffic(t)
	// A module path and a reason that are HTML: the page must show them as
	// text. (A real request with such a path is refused before it gets a
	// module path; the ring takes whatever finish hands it.)
	r := httptest.NewRequest("GET", "/x", nil)
	x := &exchange{s: su.s, w: &responseRecorder{status: 403}, r: r, start: time.Now(), mode: "reverse",
		req:     Request{Kind: wire.KindZip, Module: `example.test/<script>alert(1)</script>`, Version: "v1.0.0"},
		verdict: verdict{decision: "deny", ruleText: `deny <b>bold</b>`, reason: `"><img src=x onerror=alert(2)>`}}
	su.s.recent().record(x, x.ending())

	code, header, body := su.page(t, "/")
	if code != 200 || !strings.HasPrefix(header.Get("Content-Type"), "text/html") {
		t.Fatalf("/: %d %s", code, header.Get("Content-Type"))
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="5">`,
		"v0.9.0-test", su.s.cfg.Listen, su.s.cfg.Admin, "sum.fixture.test",
		"internal", "mirror", "public", "direct", "internal,mirror|public,direct",
		"/fixture.test/dep01/@v/v1.0.mod",          // the invalid request's path
		`<span class="badge open">open</span>`,     // mirror's breaker
		`<span class="badge closed">closed</span>`, // public's
		"probe in ",
		"500 Internal Server Error", // mirror's recent failures
		"fixture.test/dep01@v1.0.0", "fixture.test/dep11@v1.0.0",
		"malware, see SEC-123", "CVE fixed in v1.1.0", "deny fixture.test/dep03",
		`href="metrics"`, `href="debug/upstreams"`, `href="debug/baseline"`, `href="debug/tracez"`,
		`href="debug/tracez?zlatencybucket=`,
		"ms</td>", // a baseline percentile
		"example.test/&lt;script&gt;alert(1)&lt;/script&gt;@v1.0.0",
		"deny &lt;b&gt;bold&lt;/b&gt;",
		"&#34;&gt;&lt;img src=x onerror=alert(2)&gt;",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if !strings.Contains(html.UnescapeString(body), "&zspanname=GET+zip&ztype=1") {
		t.Errorf("no link to the samples of a zip request's span")
	}
	for _, bad := range []string{"<script>", "<img", "<b>bold"} {
		if strings.Contains(body, bad) {
			t.Errorf("status page has unescaped %q", bad)
		}
	}
	// No script, and nothing from elsewhere: links are relative, so the
	// page also works behind a port-forward or a path prefix.
	if strings.Contains(body, "<script") || strings.Contains(body, `href="http`) || strings.Contains(body, `src="`) {
		t.Errorf("status page loads a script or links elsewhere")
	}

	// The page is "/" only: anything else unknown is still 404.
	for _, path := range []string{"/nope", "/index.html", "/debug/"} {
		if code, _, _ := su.page(t, path); code != 404 {
			t.Errorf("%s = %d; want 404", path, code)
		}
	}
}

func TestStatusPageTelemetryOff(t *testing.T) {
	su := newStatusSetup(t, false)
	su.traffic(t)
	code, _, body := su.page(t, "/")
	if code != 200 {
		t.Fatalf("/: %d", code)
	}
	for _, want := range []string{"telemetry off", "/metrics (telemetry off)", "fixture.test/dep01@v1.0.0", `<span class="badge open">open</span>`} {
		if !strings.Contains(body, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(body, `href="debug/tracez`) {
		t.Errorf("links to the trace view with telemetry off")
	}
}

func TestRecentLogRing(t *testing.T) {
	s, err := New(Config{Upstreams: []upstream.Config{{URL: "off"}}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/x", nil)
	x := &exchange{s: s, w: &responseRecorder{}, r: r, start: time.Now(), req: Request{Kind: wire.KindInfo}}
	for i := range 130 {
		x.req.Version = "v1.0." + string(rune('0'+i%10))
		x.verdict.decision = "allow"
		if i%3 == 0 {
			x.verdict.decision = "deny"
		}
		x.w.status = 200 + i // a way to tell them apart
		s.recent().record(x, x.ending())
	}
	reqs, denials, total := s.recent().snapshot()
	if total != 130 || len(reqs) != recentRequestsKept || len(denials) != recentDenialsKept {
		t.Fatalf("total %d, %d requests, %d denials", total, len(reqs), len(denials))
	}
	if reqs[0].status != 200+129 || reqs[len(reqs)-1].status != 200+130-recentRequestsKept {
		t.Errorf("requests not newest first: first %d, last %d", reqs[0].status, reqs[len(reqs)-1].status)
	}
	if denials[0].status != 200+129 || denials[1].status != 200+126 {
		t.Errorf("denials: %d, %d", denials[0].status, denials[1].status)
	}
	// Readers get copies: changing one changes nothing in the log.
	reqs[0].status = 0
	if again, _, _ := s.recent().snapshot(); again[0].status != 200+129 {
		t.Errorf("snapshot shares the ring")
	}
	// Each request pays a struct copy, nothing more.
	if n := testing.AllocsPerRun(1000, func() { s.recent().record(x, x.ending()) }); n != 0 {
		t.Errorf("recording allocates %v times", n)
	}

	fresh, _ := New(Config{Upstreams: []upstream.Config{{URL: "off"}}})
	if reqs, denials, total := fresh.recent().snapshot(); len(reqs)+len(denials) != 0 || total != 0 {
		t.Errorf("a new server shares another's log")
	}
}

// chromiumPath is Debian's headless-capable browser (`make chromium`).
const chromiumPath = "/usr/bin/chromium"

// chromium runs headless Chromium with args and returns its standard
// output. Its profile lives in a temporary folder and everything that
// would reach the network on its own is off: the page under test is on
// loopback and loads nothing else.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromiumPath, append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run",
		"--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + filepath.Join(home, "profile"),
	}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_CACHE_HOME="+home)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestStatusPageInChromium renders the page in a real browser. With
// MODGATE_SCREENSHOTS=1 it also saves deploy/screenshots/status-page.png
// for the README.
func TestStatusPageInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (make chromium installs it): %v", chromiumPath, err)
	}
	// Found before the set-up moves to its own folder.
	shot, err := filepath.Abs(filepath.Join("..", "deploy", "screenshots", "status-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	su := newStatusSetup(t, true)
	su.traffic(t)
	dom := chromium(t, "--dump-dom", su.admin+"/")
	for _, want := range []string{"<title>modgate v0.9.0-test", "internal", "mirror", "public", "fixture.test/dep02@v1.0.0", "malware, see SEC-123", "Recent requests"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %q:\n%s", want, dom)
		}
	}
	if os.Getenv("MODGATE_SCREENSHOTS") != "1" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
		t.Fatal(err)
	}
	chromium(t, "--screenshot="+shot, "--window-size=1200,900", su.admin+"/")
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
}
