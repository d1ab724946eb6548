package sidecar_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// breakerState reads an upstream's breaker state from /debug/upstreams, as
// an operator would.
func breakerState(t *testing.T, s *sidecar.Server, name string) map[string]any {
	t.Helper()
	rec := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/upstreams", nil))
	var doc struct {
		Upstreams []struct {
			Name    string         `json:"name"`
			Breaker map[string]any `json:"breaker"`
		} `json:"upstreams"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("/debug/upstreams: %v\n%s", err, rec.Body)
	}
	for _, u := range doc.Upstreams {
		if u.Name == name {
			return u.Breaker
		}
	}
	t.Fatalf("no upstream %q in /debug/upstreams:\n%s", name, rec.Body)
	return nil
}

// TestFaultSuite breaks one upstream in each way the fake upstream knows,
// and checks what the go command sees, how many requests the bad upstream
// gets, and that the breaker opens, refuses without asking, probes after
// its open period, and closes once the upstream heals.
func TestFaultSuite(t *testing.T) {
	tests := []struct {
		fault  string // modtest fault, or "refused"
		module string
		sees   string // in the go command's output while the upstream is broken
	}{
		{"refused", "fixture.test/dep13@v1.0.0", "connect: connection refused"},
		{"hang", "fixture.test/dep13@v1.0.0", "up: no response headers within 200ms"},
		{"slow2000", "fixture.test/dep13@v1.0.0", "up: no response headers within 200ms"},
		{"500", "fixture.test/dep13@v1.0.0", "up: 500 Internal Server Error"},
		{"503", "fixture.test/dep13@v1.0.0", "up: 503 Service Unavailable"},
		{"429", "fixture.test/dep13@v1.0.0", "up: 429 Too Many Requests"},
		{"429ra1", "fixture.test/dep13@v1.0.0", "up: 429 Too Many Requests"},
		{"stall", "fixture.test/dep14@v1.0.0", "body stalled: no data for 200ms"},
		{"reset", "fixture.test/dep14@v1.0.0", "up: body cut after"},
		{"loop", "fixture.test/dep13@v1.0.0", "redirect loop: "},
	}
	for _, tt := range tests {
		t.Run(tt.fault, func(t *testing.T) {
			e := newEnv(t)
			p := e.proxy(t, true)
			sw, err := modtest.NewRelay(strings.TrimPrefix(p.URL, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sw.Down)
			clock := modtest.NewClock()
			url, srv := startGateServer(t, sidecar.Config{
				Clock: clock,
				Upstreams: []upstream.Config{{
					Name:     "up",
					URL:      "http://" + sw.Addr(),
					Timeouts: upstream.Timeouts{Header: 200 * time.Millisecond, Idle: 200 * time.Millisecond},
					Breaker:  upstream.BreakerSettings{ConsecutiveFailures: 3, OpenFor: 30 * time.Second},
				}},
			})
			e.go_.UseProxy(url, e.db)
			// The checksum database is found while the upstream is healthy.
			if out, err := e.download("fixture.test/dep20@v1.0.0"); err != nil {
				t.Fatalf("healthy download: %v\n%s", err, out)
			}
			badHits := func() int {
				if tt.fault == "refused" {
					return 0
				}
				return p.Count(tt.fault)
			}
			if tt.fault == "refused" {
				sw.Down()
			} else {
				p.SetFault(tt.fault)
			}

			// Broken: each download fails with the reason, until the
			// breaker opens.
			runs := 0
			for ; runs < 6 && breakerState(t, srv, "up")["state"] == "closed"; runs++ {
				out, err := e.download(tt.module)
				if err == nil {
					t.Fatalf("download through a broken upstream succeeded:\n%s", out)
				}
				if runs == 0 && !strings.Contains(out, tt.sees) {
					t.Errorf("go command output lacks %q:\n%s", tt.sees, out)
				}
			}
			st := breakerState(t, srv, "up")
			if st["state"] != "open" {
				t.Fatalf("breaker %v after %d failed downloads; want open", st, runs)
			}
			t.Logf("opened after %d downloads, %d requests to the broken upstream; reason %q", runs, badHits(), st["open_reason"])

			// Open: refused at once, with the reason and when it is probed.
			before := badHits()
			out, err := e.download(tt.module)
			if err == nil || !strings.Contains(out, "503 Service Unavailable") || !strings.Contains(out, "up: circuit open: 3 failures in a row") || !strings.Contains(out, "probed again in ") {
				t.Errorf("download while open: %v\n%s", err, out)
			}
			if badHits() != before {
				t.Errorf("the open breaker let %d requests through", badHits()-before)
			}

			// Healed and past the open period: the probe closes it.
			if tt.fault == "refused" {
				if err := sw.Up(); err != nil {
					t.Fatal(err)
				}
			} else {
				p.SetFault("")
			}
			clock.Advance(31 * time.Second)
			if out, err := e.download(tt.module); err != nil {
				t.Fatalf("download after healing: %v\n%s", err, out)
			}
			if st := breakerState(t, srv, "up"); st["state"] != "closed" {
				t.Errorf("breaker %v after a good probe; want closed", st)
			}
		})
	}
}

func TestFlakyUpstreamIsRetried(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	clock := modtest.NewClock()
	url, srv := startGateServer(t, sidecar.Config{
		Clock: clock,
		Upstreams: []upstream.Config{{
			Name:  "flaky",
			URL:   p.URL,
			Retry: upstream.RetrySettings{Attempts: 6, BudgetRatio: 1},
		}},
	})
	e.go_.UseProxy(url, e.db)
	p.SetFault("flaky30")
	for _, m := range []string{"fixture.test/dep13@v1.0.0", "fixture.test/dep14@v1.0.0", "fixture.test/dep15@v1.0.0", "fixture.test/dep16@v1.0.0"} {
		if out, err := e.download(m); err != nil {
			t.Errorf("download through a 30%% flaky upstream: %v\n%s", err, out)
		}
	}
	if st := breakerState(t, srv, "flaky"); st["state"] != "closed" {
		t.Errorf("breaker %v; a 30%% failure rate is under the 50%% ratio", st)
	}
	t.Logf("%d requests reached the flaky upstream, %d retries waited %v", p.Count("flaky30"), len(clock.Slept()), clock.Slept())
	if len(clock.Slept()) == 0 {
		t.Errorf("no retry happened")
	}
}

// TestDeadOrHungFirstUpstream downloads fixture.test/app's whole graph
// with a first upstream that refuses or hangs and "|" after it: the build
// succeeds, and once the breaker opens the bad upstream is asked no more.
func TestDeadOrHungFirstUpstream(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	for _, bad := range []string{"dead", "hang"} {
		t.Run(bad+"|ok", func(t *testing.T) {
			e := newEnv(t)
			p := e.proxy(t, true)
			badURL := modtest.DeadURL(t)
			if bad == "hang" {
				badURL = p.URL + "/f/hang"
			}
			e.gate(t,
				upstream.Config{Name: bad, URL: badURL, Fallthrough: upstream.OnError, Timeouts: upstream.Timeouts{Header: headerTimeout}},
				upstream.Config{Name: "ok", URL: p.URL},
			)
			e.go_.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
			e.go_.WriteFile("main.go", "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n")
			start := time.Now()
			if _, stderr, err := e.go_.Run("mod", "tidy"); err != nil {
				t.Fatalf("go mod tidy: %v\n%s", err, stderr)
			}
			elapsed := time.Since(start)
			good := p.Count("")
			t.Logf("%d requests served by ok, %d asked of %s, %v in all", good, p.Count("hang"), bad, elapsed.Round(time.Millisecond))
			if good < 60 {
				t.Errorf("only %d requests reached the healthy upstream; want the whole graph", good)
			}
			// Five failures in a row open the breaker; requests already in
			// flight when it opened still count. Nothing after that.
			if bad == "hang" && p.Count("hang") > 5+8 {
				t.Errorf("the hung upstream was asked %d times; the breaker should have stopped that after 5", p.Count("hang"))
			}
			if max := 20 * headerTimeout; elapsed > max {
				t.Errorf("took %v: more than 20 header timeouts, as if every module waited for the hung upstream", elapsed)
			}
		})
	}
}

func TestOpenBreakerFailsFastWithRetryAfter(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	clock := modtest.NewClock()
	url := startGate(t, sidecar.Config{
		Clock: clock,
		Upstreams: []upstream.Config{
			{Name: "broken", URL: p.URL + "/f/500"},
			{Name: "ok", URL: p.URL},
		},
	})
	e.go_.UseProxy(url, e.db)
	out, err := e.download("fixture.test/dep13@v1.0.0")
	if err == nil || !strings.Contains(out, "broken: 500 Internal Server Error") {
		t.Fatalf("500,ok: %v\n%s", err, out)
	}
	// Open the breaker (5 failures in a row, 2 tries a request).
	for p.Count("500") < 5 {
		rawGet(t, url, "/fixture.test/dep13/@v/list")
	}
	hits := p.Count("500")
	start := time.Now()
	status, h, body := rawGet(t, url, "/fixture.test/dep13/@v/list")
	took := time.Since(start)
	if status != 503 || h.Get("Retry-After") != "30" || !strings.Contains(body, "broken: circuit open: 5 failures in a row (last: 500 Internal Server Error); probed again in 30s") {
		t.Errorf("open breaker: %d Retry-After=%q %q", status, h.Get("Retry-After"), body)
	}
	if p.Count("500") != hits || p.Count("") != 0 {
		t.Errorf("a request reached an upstream while the breaker was open")
	}
	clock.Advance(20 * time.Second)
	if _, h, _ := rawGet(t, url, "/fixture.test/dep13/@v/list"); h.Get("Retry-After") != "10" {
		t.Errorf("Retry-After %q after 20 s; want 10", h.Get("Retry-After"))
	}
	t.Logf("refused in %v without asking an upstream", took)
	out, err = e.download("fixture.test/dep13@v1.0.0")
	if err == nil || !strings.Contains(out, "503 Service Unavailable") || !strings.Contains(out, "probed again in 10s") {
		t.Errorf("the go command while open: %v\n%s", err, out)
	}
}

func Test429StormStaysWithinBudget(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	clock := modtest.NewClock()
	url := startGate(t, sidecar.Config{
		Clock: clock,
		Upstreams: []upstream.Config{{
			Name:    "storm",
			URL:     p.URL + "/f/429ra1",
			Retry:   upstream.RetrySettings{Attempts: 3, BudgetRatio: 0.2},
			Breaker: upstream.BreakerSettings{Disabled: true}, // the budget alone
		}},
	})
	const requests = 100
	var wg sync.WaitGroup
	for i := range requests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(url + "/fixture.test/dep" + []string{"01", "02", "03", "04"}[i%4] + "/@v/list")
			if err == nil {
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	limit := requests + requests/5
	t.Logf("%d client requests made %d upstream requests (budget %d)", requests, p.Count("429ra1"), limit)
	if n := p.Count("429ra1"); n > limit {
		t.Errorf("%d upstream requests for %d client requests; the retry budget allows %d", n, requests, limit)
	}
	for _, d := range clock.Slept() {
		if d != time.Second {
			t.Errorf("waited %v; Retry-After said 1s", d)
		}
	}
}

// TestPipeFallsThroughBrokenAnswers: after "|", a small answer that breaks
// off and a checksum database that starts failing both move on to the next
// upstream, as any other failure does.
func TestPipeFallsThroughBrokenAnswers(t *testing.T) {
	for _, fault := range []string{"reset", "stall", "500"} {
		t.Run(fault, func(t *testing.T) {
			e := newEnv(t)
			faulty := e.proxy(t, true)
			healthy := e.proxy(t, true)
			e.gate(t,
				upstream.Config{Name: "faulty", URL: faulty.URL, Fallthrough: upstream.OnError, Timeouts: upstream.Timeouts{Idle: 300 * time.Millisecond}},
				upstream.Config{Name: "healthy", URL: healthy.URL},
			)
			// The checksum database is found on the faulty upstream first.
			if out, err := e.download("fixture.test/dep20@v1.0.0"); err != nil {
				t.Fatalf("healthy download: %v\n%s", err, out)
			}
			faulty.SetFault(fault)
			if out, err := e.download("fixture.test/dep19@v1.0.0"); err != nil {
				t.Errorf("download with the first upstream failing (%s) after |: %v\n%s", fault, err, out)
			}
			// reset and stall cut zips only; 500 fails everything, lookups too.
			want := map[string]string{"reset": "/fixture.test/dep19/@v/v1.0.0.zip", "stall": "/fixture.test/dep19/@v/v1.0.0.zip", "500": "/sumdb/sum.fixture.test/lookup/fixture.test/dep19@v1.0.0"}[fault]
			if healthy.CountMatching(want) != 1 {
				t.Errorf("%s did not move on to the healthy upstream: %v", want, healthy.Requests())
			}
		})
	}
}
