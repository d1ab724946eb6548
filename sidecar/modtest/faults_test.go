package modtest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// blockingProxy returns a proxy and a channel that receives the fault name
// each time a hang or stall handler blocks.
func blockingProxy(t *testing.T, useTLS bool) (*Proxy, <-chan string) {
	blocked := make(chan string, 10)
	opt := WithBlocked(func(fault string) { blocked <- fault })
	if useTLS {
		return NewProxyTLS(t, testFixtures(t), opt), blocked
	}
	return NewProxy(t, testFixtures(t), opt), blocked
}

// waitOrFail receives from c, failing the test if that takes a whole
// minute: something is stuck.
func waitOrFail[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

const zipPath = "/fixture.test/app/@v/v1.0.0.zip"

func TestFaultStatuses(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, testFixtures(t))
	for _, tc := range []struct {
		fault      string
		code       int
		retryAfter string
	}{
		{"404", 404, ""},
		{"410", 410, ""},
		{"500", 500, ""},
		{"503", 503, ""},
		{"429", 429, ""},
		{"429ra7", 429, "7"},
		{"429ra0", 429, "0"},
		{"flaky100", 500, ""},
		{"bogus", 400, ""},
		{"slowx", 400, ""},
		{"429rax", 400, ""},
		{"flaky101", 400, ""},
		{"flaky-1", 400, ""},
		{"slow-5", 400, ""},
	} {
		for _, path := range []string{"/fixture.test/app/@v/list", zipPath, "/sumdb/sum.fixture.test/supported"} {
			url := p.URL + "/f/" + tc.fault + path
			r := mustGet(t, p.Client(), url)
			if r.code != tc.code || r.header.Get("Retry-After") != tc.retryAfter {
				t.Errorf("GET %s: %d, Retry-After %q; want %d, %q", url, r.code, r.header.Get("Retry-After"), tc.code, tc.retryAfter)
			}
			if r.header.Get("Content-Type") != "text/plain; charset=utf-8" ||
				strings.Count(r.body, "\n") != 1 || !strings.HasSuffix(r.body, "\n") || len(r.body) > 120 {
				t.Errorf("GET %s: %s body %q, want one short text/plain line", url, r.header.Get("Content-Type"), r.body)
			}
		}
		if got := p.Count(tc.fault); got != 3 {
			t.Errorf("Count(%q) = %d, want 3", tc.fault, got)
		}
	}
	// The body names the fault, so a developer reading the go command's
	// "server response:" knows where it came from.
	if r := mustGet(t, p.Client(), p.URL+"/f/503/fixture.test/app/@v/list"); r.body != "service unavailable: injected by modtest /f/503/\n" {
		t.Errorf("503 body = %q", r.body)
	}
	if p.Count("") != 0 {
		t.Errorf("Count(\"\") = %d, want 0", p.Count(""))
	}
	// "/f//" names no fault: the path is taken as it is, and is not a
	// module path.
	if r := mustGet(t, p.Client(), p.URL+"/f//fixture.test/app/@v/list"); r.code != 400 || p.Count("") != 1 {
		t.Errorf("GET /f//...: %d, Count(\"\") = %d", r.code, p.Count(""))
	}
}

func TestFaultOKAndSlow(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	p := NewProxy(t, fx)
	app, _ := fx.Lookup("fixture.test/app", "v1.0.0")
	for _, fault := range []string{"ok", "slow0", "slow60", "flaky0", "reset", "stall"} {
		// reset and stall affect only .zip answers.
		start := time.Now()
		r := mustGet(t, p.Client(), p.URL+"/f/"+fault+"/fixture.test/app/@v/v1.0.0.mod")
		if r.code != 200 || r.body != string(app.Mod) {
			t.Errorf("%s: GET .mod: %d %q", fault, r.code, r.body)
		}
		if d := time.Since(start); fault == "slow60" && d < 60*time.Millisecond {
			t.Errorf("slow60 answered after %v", d)
		}
		if got := p.Count(fault); got != 1 {
			t.Errorf("Count(%q) = %d, want 1", fault, got)
		}
	}
	// A failing answer under reset is served whole.
	if r := mustGet(t, p.Client(), p.URL+"/f/reset/fixture.test/app/@v/v9.0.0.zip"); r.code != 404 {
		t.Errorf("reset of a missing zip: %d", r.code)
	}
}

func TestFaultSlowClientGone(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, testFixtures(t))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", p.URL+"/f/slow600000"+zipPath, nil)
	if _, err := p.Client().Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow request with a short deadline: %v", err)
	}
}

func TestFaultHang(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			p, blocked := blockingProxy(t, useTLS)

			// The client gives up: the handler returns.
			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "GET", p.URL+"/f/hang/fixture.test/app/@v/list", nil)
				resp, err := p.Client().Do(req)
				if err == nil {
					resp.Body.Close()
				}
				errc <- err
			}()
			waitOrFail(t, blocked, "hang to block")
			cancel()
			if err := waitOrFail(t, errc, "the client"); !errors.Is(err, context.Canceled) {
				t.Errorf("hung request: %v, want context.Canceled", err)
			}

			// The proxy closes under a hung request: Close returns, the client
			// sees an error and never a response.
			go func() {
				resp, err := p.Client().Get(p.URL + "/f/hang" + zipPath)
				if err == nil {
					resp.Body.Close()
					err = errors.New("got a response: " + resp.Status)
				}
				errc <- err
			}()
			waitOrFail(t, blocked, "hang to block")
			closed := make(chan bool)
			go func() { p.Close(); close(closed) }()
			waitOrFail(t, closed, "Close")
			if err := waitOrFail(t, errc, "the client"); err == nil || strings.Contains(err.Error(), "got a response") {
				t.Errorf("request hung until Close: %v, want a transport error", err)
			}
			if p.Count("hang") != 2 {
				t.Errorf("Count(hang) = %d, want 2", p.Count("hang"))
			}
		})
	}
}

// readPartial starts a GET of the app's zip under fault and checks that the
// headers promise the whole zip. It returns the response.
func readPartial(t *testing.T, ctx context.Context, p *Proxy, fault string) (*http.Response, []byte) {
	t.Helper()
	fx := testFixtures(t)
	app, _ := fx.Lookup("fixture.test/app", "v1.0.0")
	req, _ := http.NewRequestWithContext(ctx, "GET", p.URL+"/f/"+fault+zipPath, nil)
	resp, err := p.Client().Do(req)
	if err != nil {
		t.Fatalf("%s: %v", fault, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(app.Zip)) ||
		resp.Header.Get("Content-Type") != "application/zip" {
		t.Fatalf("%s: %s, length %d, type %q; want 200, %d, application/zip",
			fault, resp.Status, resp.ContentLength, resp.Header.Get("Content-Type"), len(app.Zip))
	}
	return resp, app.Zip
}

func TestFaultReset(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			p, _ := blockingProxy(t, useTLS)
			for range 5 {
				resp, zip := readPartial(t, t.Context(), p, "reset")
				got, err := io.ReadAll(resp.Body)
				if err == nil || len(got) >= len(zip) {
					t.Fatalf("reading a reset zip: %d of %d bytes, err %v; want an error", len(got), len(zip), err)
				}
				if string(got) != string(zip[:len(got)]) {
					t.Errorf("the partial body is not a prefix of the zip")
				}
				t.Logf("read %d of %d bytes: %v", len(got), len(zip), err)
			}
			if p.Count("reset") != 5 {
				t.Errorf("Count(reset) = %d", p.Count("reset"))
			}
		})
	}
}

func TestFaultStall(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run("tls="+strconv.FormatBool(useTLS), func(t *testing.T) {
			p, blocked := blockingProxy(t, useTLS)

			// The client gives up.
			ctx, cancel := context.WithCancel(t.Context())
			resp, zip := readPartial(t, ctx, p, "stall")
			half := make([]byte, len(zip)/2)
			if _, err := io.ReadFull(resp.Body, half); err != nil || string(half) != string(zip[:len(half)]) {
				t.Fatalf("reading the first half: %v", err)
			}
			waitOrFail(t, blocked, "stall to block")
			cancel()
			if _, err := io.ReadAll(resp.Body); err == nil {
				t.Errorf("reading a stalled body after cancel succeeded")
			}

			// The proxy closes under a stalled body.
			resp, _ = readPartial(t, t.Context(), p, "stall")
			waitOrFail(t, blocked, "stall to block")
			closed := make(chan bool)
			go func() { p.Close(); close(closed) }()
			waitOrFail(t, closed, "Close")
			got, err := io.ReadAll(resp.Body)
			if err == nil || len(got) != len(zip)/2 {
				t.Errorf("reading a stalled body after Close: %d bytes, %v; want %d and an error", len(got), err, len(zip)/2)
			}
		})
	}
}

func TestFaultLoop(t *testing.T) {
	t.Parallel()
	p := NewProxy(t, testFixtures(t))
	url := p.URL + "/f/loop/fixture.test/app/@v/list"
	_, err := get(t, p.Client(), url)
	if err == nil || !strings.Contains(err.Error(), "stopped after 10 redirects") {
		t.Errorf("GET %s: %v, want a redirect loop", url, err)
	}
	// The client gives up after 10 requests, all to the same URL.
	if p.Count("loop") != 10 || p.CountMatching("/f/loop/fixture.test/app/@v/list") != 10 {
		t.Errorf("Count(loop) = %d, requests %q", p.Count("loop"), p.Requests())
	}
	client := *p.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r := mustGet(t, &client, url)
	if r.code != http.StatusFound || r.header.Get("Location") != "/f/loop/fixture.test/app/@v/list" {
		t.Errorf("loop: %d, Location %q", r.code, r.header.Get("Location"))
	}
}

func TestFaultFlaky(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	run := func(p *Proxy, fault string) string {
		var b strings.Builder
		for range 200 {
			r := mustGet(t, p.Client(), p.URL+"/f/"+fault+"/fixture.test/app/@v/list")
			switch {
			case r.code == 500:
				b.WriteByte('x')
			case r.code == 200 && r.body == "v1.0.0\n":
				b.WriteByte('.')
			default:
				t.Fatalf("%s: %d %q", fault, r.code, r.body)
			}
		}
		return b.String()
	}
	p1, p2 := NewProxy(t, fx), NewProxy(t, fx)
	seq := run(p1, "flaky30")
	if n := strings.Count(seq, "x"); n < 40 || n > 80 {
		t.Errorf("flaky30 failed %d of 200 requests: %s", n, seq)
	}
	if other := run(p2, "flaky30"); other != seq {
		t.Errorf("flaky30 differs between proxies:\n%s\n%s", seq, other)
	}
	p1.Reset()
	if again := run(p1, "flaky30"); again != seq {
		t.Errorf("flaky30 differs after Reset:\n%s\n%s", seq, again)
	}
	if s := run(p1, "flaky0"); strings.Contains(s, "x") {
		t.Errorf("flaky0 failed: %s", s)
	}
	if s := run(p1, "flaky100"); strings.Contains(s, ".") {
		t.Errorf("flaky100 succeeded: %s", s)
	}
	if p1.Count("flaky30") != 200 || p2.Count("flaky30") != 200 {
		t.Errorf("Count(flaky30) = %d, %d", p1.Count("flaky30"), p2.Count("flaky30"))
	}
}

func TestFaultBandwidthAndSlowClose(t *testing.T) {
	fx := testFixtures(t)
	p := NewProxy(t, fx)
	mod, _ := fx.Lookup("fixture.test/dep01", "v1.0.0")
	for _, c := range []struct {
		fault string
		min   time.Duration
	}{
		// The zip is a few hundred bytes: at 1 KiB/s, one tenth-second step.
		{"bw1", 100 * time.Millisecond},
		{"slowclose300", 300 * time.Millisecond},
	} {
		start := time.Now()
		resp, err := http.Get(p.URL + "/f/" + c.fault + "/fixture.test/dep01/@v/v1.0.0.zip")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != 200 || !bytes.Equal(b, mod.Zip) || took < c.min {
			t.Errorf("%s: %d, %d bytes, %v; want the zip after at least %v", c.fault, resp.StatusCode, len(b), took, c.min)
		}
		if p.Count(c.fault) != 1 {
			t.Errorf("%s counted %d times", c.fault, p.Count(c.fault))
		}
	}
}
