package sidecar_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// generated adds n small modules fixture.test/genNN v1.0.0 to the
// fixtures and returns their paths.
func generated(t *testing.T, n int) []string {
	t.Helper()
	fx := loadFixtures(t)
	var paths []string
	for i := 1; i <= n; i++ {
		p := fmt.Sprintf("fixture.test/gen%02d", i)
		if _, ok := fx.Lookup(p, "v1.0.0"); !ok {
			m, err := modtest.NewModule(p, "v1.0.0",
				modtest.File{Name: "go.mod", Data: []byte("module " + p + "\n\ngo 1.21\n")},
				modtest.File{Name: "gen.go", Data: []byte(fmt.Sprintf("package gen%02d\n\n// N is the module's number.\nconst N = %d\n", i, i))})
			if err != nil {
				t.Fatal(err)
			}
			fx.Add(m)
		}
		paths = append(paths, p)
	}
	return paths
}

// TestWarmCacheNeedsNoUpstream downloads 50 modules, then again with an
// empty module cache: the second time no request reaches the upstream, and
// it still works with the upstream gone.
func TestWarmCacheNeedsNoUpstream(t *testing.T) {
	gen := generated(t, 27) // with fixture.test/app's graph of 23: 50 modules
	e := newEnv(t)
	p := e.proxy(t, true)
	url := startGate(t, sidecar.Config{
		Cache:     sidecar.CacheConfig{Dir: t.TempDir()},
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}},
	})
	gomod := "module example.test/consumer\n\ngo 1.21\n\nrequire (\n\tfixture.test/app v1.0.0\n"
	for _, g := range gen {
		gomod += "\t" + g + " v1.0.0\n"
	}
	gomod += ")\n"
	first := e.go_
	first.UseProxy(url, e.db)
	first.WriteFile("go.mod", gomod)
	imports := "package main\n\nimport (\n\t_ \"fixture.test/app\"\n"
	for _, g := range gen {
		imports += "\t_ \"" + g + "\"\n"
	}
	first.WriteFile("main.go", imports+")\n\nfunc main() {}\n")
	// go.sum then lists every module; a fresh module cache must fetch them all.
	if _, stderr, err := first.Run("mod", "tidy"); err != nil {
		t.Fatalf("go mod tidy: %v\n%s", err, stderr)
	}
	if _, stderr, err := first.Run("mod", "download", "all"); err != nil { // the .info files too
		t.Fatalf("go mod download: %v\n%s", err, stderr)
	}
	sum, _ := os.ReadFile(filepath.Join(first.Dir(), "go.sum"))
	mod, _ := os.ReadFile(filepath.Join(first.Dir(), "go.mod"))
	if n := strings.Count(string(sum), "/go.mod h1:"); n < 50 {
		t.Fatalf("go.sum lists %d modules; want 50", n)
	}

	again := func() (string, error) {
		g := modtest.NewGo(t)
		g.UseProxy(url, e.db)
		g.WriteFile("go.mod", string(mod))
		g.WriteFile("go.sum", string(sum))
		_, stderr, err := g.Run("mod", "download", "all")
		return stderr, err
	}
	p.Reset()
	if stderr, err := again(); err != nil {
		t.Fatalf("second download: %v\n%s", err, stderr)
	}
	if reqs := p.Requests(); len(reqs) != 0 {
		t.Errorf("a warm cache still asked the upstream %d times: %v", len(reqs), reqs[:min(5, len(reqs))])
	}
	p.Close()
	if stderr, err := again(); err != nil {
		t.Fatalf("download with the upstream down: %v\n%s", err, stderr)
	}
}

// TestStaleAnswersWhenUpstreamsFail serves an expired list from the cache
// when every upstream fails, marked stale.
func TestStaleAnswersWhenUpstreamsFail(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	clock := modtest.NewClock()
	url := startGate(t, sidecar.Config{
		Clock:     clock,
		Cache:     sidecar.CacheConfig{Dir: t.TempDir(), ListTTL: time.Minute, StaleIfError: time.Hour},
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL, Retry: upstream.RetrySettings{Attempts: 1}}},
	})
	e.go_.UseProxy(url, e.db)
	e.go_.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n")
	if _, stderr, err := e.go_.Run("get", "fixture.test/dep05@latest"); err != nil {
		t.Fatalf("go get @latest: %v\n%s", err, stderr)
	}
	// Fresh within the TTL: no upstream request.
	before := len(p.Requests())
	if status, _, body := rawGet(t, url, "/fixture.test/dep05/@v/list"); status != 200 || body != "v1.0.0\nv1.1.0\n" || len(p.Requests()) != before {
		t.Errorf("list within its TTL: %d %q, %d upstream requests", status, body, len(p.Requests())-before)
	}

	clock.Advance(2 * time.Minute)
	p.SetFault("503")
	status, h, body := rawGet(t, url, "/fixture.test/dep05/@v/list")
	if status != 200 || body != "v1.0.0\nv1.1.0\n" || !strings.Contains(h.Get("Warning"), "110") || h.Get("Age") != "120" {
		t.Errorf("stale list: %d %q Warning=%q Age=%q", status, body, h.Get("Warning"), h.Get("Age"))
	}
	g := modtest.NewGo(t)
	g.UseProxy(url, e.db)
	g.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n")
	if _, stderr, err := g.Run("get", "fixture.test/dep05@latest"); err != nil {
		t.Errorf("go get @latest from the stale cache with the upstream failing: %v\n%s", err, stderr)
	}
	// Too old to be served even stale.
	clock.Advance(2 * time.Hour)
	if status, _, _ := rawGet(t, url, "/fixture.test/dep05/@v/list"); status != http.StatusBadGateway {
		t.Errorf("a list older than stale_if_error: %d; want 502", status)
	}
}

// TestSingleFlight sends 50 concurrent requests for one zip: one upstream
// request, every client gets the whole zip.
func TestSingleFlight(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	url := startGate(t, sidecar.Config{
		Cache:     sidecar.CacheConfig{Dir: t.TempDir()},
		Upstreams: []upstream.Config{{Name: "slow", URL: p.URL + "/f/slow300"}},
	})
	want, _ := fx.Lookup("fixture.test/dep07", "v1.0.0")
	var wg sync.WaitGroup
	errs := make(chan string, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(url + "/fixture.test/dep07/@v/v1.0.0.zip")
			if err != nil {
				errs <- err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !bytes.Equal(b, want.Zip) {
				errs <- fmt.Sprintf("%d, %d bytes", resp.StatusCode, len(b))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := p.CountMatching("dep07/@v/v1.0.0.zip"); n != 1 {
		t.Errorf("50 concurrent requests made %d upstream requests; want 1", n)
	}
}

// TestBadZipNotKept: with checksum verification off, a zip that streams
// from the upstream is still checked as a module zip, as the go command
// checks one, before the cache keeps it. One that is not a zip, or is
// another module's, is served to the request that fetched it (the go
// command refuses it) but not kept: the next request fetches it again.
// A good zip is kept.
func TestBadZipNotKept(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	// Every dep04 zip this origin serves is dep03's.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = strings.Replace(r.URL.Path, "/fixture.test/dep04/", "/fixture.test/dep03/", 1)
		resp, err := p.Client().Get(p.URL + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(other.Close)
	dep03, _ := fx.Lookup("fixture.test/dep03", "v1.0.0")
	for _, tt := range []struct {
		name, origin string
		body         []byte // what each request is served
		fetches      int    // of two requests
	}{
		{"not a zip", p.URL + "/f/notzip", []byte("this is not a zip\n"), 2},
		{"zip of another module", other.URL, dep03.Zip, 2},
		{"a module zip", p.URL + "/f/ok", nil, 1},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			p.Reset()
			url, srv := startGateServer(t, sidecar.Config{
				Cache:     sidecar.CacheConfig{Dir: t.TempDir()},
				Upstreams: []upstream.Config{{Name: "origin", URL: tt.origin}},
			})
			if on, _ := srv.Verification(); on {
				t.Fatal("checksum verification is on")
			}
			want := tt.body
			if want == nil {
				m, _ := fx.Lookup("fixture.test/dep04", "v1.0.0")
				want = m.Zip
			}
			for i := range 2 {
				status, _, body := rawGet(t, url, "/fixture.test/dep04/@v/v1.0.0.zip")
				// Every request that joined the flight gets the answer,
				// even when the check then refuses to keep it.
				if status != http.StatusOK || body != string(want) {
					t.Errorf("request %d: %d, %d bytes; want 200 and the %d bytes the upstream sent\n%.200s", i+1, status, len(body), len(want), body)
				}
				srv.Settle()
			}
			if n := p.CountMatching("v1.0.0.zip"); n != tt.fetches {
				t.Errorf("two requests fetched the zip %d times; want %d", n, tt.fetches)
			}
		})
	}
}

// TestPrivateModulesAreNotCachedByDefault keeps private modules out of a
// shared cache unless a private directory is given.
func TestPrivateModulesAreNotCachedByDefault(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	st, _ := policyStore(t, "private: [\"fixture.test/dep08\"]\n")
	shared, private := t.TempDir(), t.TempDir()
	for _, privateDir := range []string{"", private} {
		url := startGate(t, sidecar.Config{
			Policy:    st,
			Cache:     sidecar.CacheConfig{Dir: shared, PrivateDir: privateDir},
			Upstreams: []upstream.Config{{Name: "internal", URL: p.URL, Private: true}},
		})
		for _, m := range []string{"dep08", "dep09"} {
			if status, _, _ := rawGet(t, url, "/fixture.test/"+m+"/@v/v1.0.0.zip"); status != 200 {
				t.Fatalf("%s: %d", m, status)
			}
		}
	}
	// Entries are committed just after the answer: wait for them.
	exists := func(path string) bool {
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(path); err == nil {
				return true
			}
		}
		return false
	}
	if !exists(filepath.Join(shared, "data/fixture.test/dep09/@v/v1.0.0.zip")) {
		t.Errorf("a public module is not in the shared cache")
	}
	if !exists(filepath.Join(private, "data/fixture.test/dep08/@v/v1.0.0.zip")) {
		t.Errorf("the private module is not in the private cache")
	}
	if _, err := os.Stat(filepath.Join(shared, "data/fixture.test/dep08/@v/v1.0.0.zip")); err == nil {
		t.Errorf("a private module is in the shared cache")
	}
}

// TestHedgingCutsTheTail: the first upstream, usually fast, turns slow;
// requests for immutable artifacts are hedged to the second (healthy but
// 200 ms away) after the first's usual p95 (at least 50 ms), so their
// latency stays under twice the healthy upstream's.
// TestHedgingCutsTheTail: when the first upstream has not answered an
// immutable artifact within its hedge delay (its p95, at least 50 ms), the
// next eligible upstream is asked too and the first good answer wins. Time
// moves on a fake clock: the test knows the first upstream holds the
// request and that the hedge timer is armed before it moves time past it.
func TestHedgingCutsTheTail(t *testing.T) {
	fx := loadFixtures(t)
	held := make(chan string, 4)
	first := modtest.NewProxy(t, fx, modtest.WithBlocked(func(fault string) { held <- fault }))
	second := modtest.NewProxy(t, fx)
	tel := newTelemetry(t, nil)
	clock := modtest.NewClock()
	url, srv := startGateServer(t, sidecar.Config{
		Telemetry: tel, Clock: clock,
		Upstreams: []upstream.Config{{Name: "first", URL: first.URL}, {Name: "second", URL: second.URL}},
	})
	mods := []string{"dep01", "dep02", "dep03", "dep04", "dep06", "dep07", "dep08", "dep09", "dep10", "dep11", "dep12", "dep13"}
	// The first upstream's baseline: enough answers for a p95.
	for range 2 {
		for _, m := range mods {
			rawGet(t, url, "/fixture.test/"+m+"/@v/v1.0.0.mod")
		}
	}
	first.SetFault("hang")
	second.Reset()
	type got struct {
		status int
		body   string
	}
	answered := make(chan got, 1)
	go func() {
		status, _, body := rawGet(t, url, "/fixture.test/dep01/@v/v1.0.0.mod")
		answered <- got{status, body}
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the first upstream")
	}
	if !clock.WaitForTimers(1, 10*time.Second) {
		t.Fatal("no hedge timer was armed while the first upstream held the request")
	}
	if second.Count("") != 0 {
		t.Fatalf("the second upstream was asked before the hedge delay: %v", second.Requests())
	}
	clock.Advance(49 * time.Millisecond)
	if second.Count("") != 0 {
		t.Fatalf("hedged before the 50 ms floor: %v", second.Requests())
	}
	clock.Advance(time.Millisecond)
	var a got
	select {
	case a = <-answered:
	case <-time.After(10 * time.Second):
		t.Fatal("no answer after the hedge delay passed")
	}
	if a.status != 200 || !strings.Contains(a.body, "module fixture.test/dep01") {
		t.Fatalf("hedged request: %d %q", a.status, a.body)
	}
	if n := second.CountMatching("dep01/@v/v1.0.0.mod"); n != 1 {
		t.Errorf("the hedge asked the second upstream %d times, want 1", n)
	}
	rec := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/metrics", nil))
	for _, want := range []string{`modgate_upstream_hedges_total{modgate_hedge="sent",modgate_upstream_name="second"`, `modgate_upstream_hedges_total{modgate_hedge="won",modgate_upstream_name="second"`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestOffline: a modgate with offline: true serves a fresh module cache
// from a cache another modgate warmed, asks no upstream, and answers what
// the cache lacks (and any tunnel) with 404 offline.
func TestOffline(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	dir := t.TempDir()
	warm := sidecartest.Start(t, nil, sidecar.Config{SumDB: sumdbName, Cache: sidecar.CacheConfig{Dir: dir}, Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	e.go_.UseProxy(warm.URL, e.db)
	if out, err := e.download("fixture.test/app@v1.0.0", "fixture.test/dep05@v1.1.0"); err != nil {
		t.Fatalf("warming the cache: %v\n%s", err, out)
	}
	warm.Stop() // a zip is kept after it is served
	asked := len(p.Requests())
	offline := startGate(t, sidecar.Config{Offline: true, Cache: sidecar.CacheConfig{Dir: dir},
		Upstreams: []upstream.Config{{Name: "dead", URL: modtest.DeadURL(t)}}})
	fresh := modtest.NewGo(t)
	fresh.UseProxy(offline, e.db)
	if _, stderr, err := fresh.Run("mod", "download", "fixture.test/app@v1.0.0", "fixture.test/dep05@v1.1.0"); err != nil {
		t.Fatalf("a fresh module cache from an offline modgate: %v\n%s", err, stderr)
	}
	if n := len(p.Requests()); n != asked {
		t.Errorf("offline, %d more requests reached the upstream", n-asked)
	}
	_, stderr, err := fresh.Run("mod", "download", "fixture.test/major/v2@v2.0.0")
	if err == nil || !strings.Contains(stderr, "404 Not Found") || !strings.Contains(stderr, "modgate: offline: fixture.test/major/v2@v2.0.0 (.info): modgate is offline: not in modgate's caches") {
		t.Errorf("a module the cache lacks: %v\n%s", err, stderr)
	}
	if got := connect(t, offline, "tls.example.test:443"); !strings.HasPrefix(got, "HTTP/1.1 404 modgate: offline:") {
		t.Errorf("a tunnel offline: %q", got)
	}
}
