package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sequence answers with each status of statuses in turn, then 200.
func sequence(t *testing.T, header http.Header, statuses ...int) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(hits.Add(1)) - 1
		if n < len(statuses) {
			for k, v := range header {
				w.Header()[k] = v
			}
			w.WriteHeader(statuses[n])
			return
		}
		io.WriteString(w, "ok\n")
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestRetryThenSucceed(t *testing.T) {
	for _, status := range []int{500, 502, 503, 504, 429} {
		clock := newFakeClock()
		srv, hits := sequence(t, nil, status)
		u := newTestUpstream(t, Config{URL: srv.URL, Retry: RetrySettings{Attempts: 3, Base: 100 * time.Millisecond, Cap: time.Second}}, clock)
		if got, err := get(u, "GET"); got != 200 || err != nil {
			t.Errorf("%d then 200: got %d %v", status, got, err)
		}
		slept := clock.Slept()
		if hits.Load() != 2 || len(slept) != 1 || slept[0] < 0 || slept[0] >= 100*time.Millisecond {
			t.Errorf("%d: hits %d, slept %v; want 2 hits and one back-off under the base", status, hits.Load(), slept)
		}
	}
}

func TestRetryGivesUpAfterAttempts(t *testing.T) {
	clock := newFakeClock()
	srv, hits := sequence(t, nil, 503, 503, 503, 503)
	u := newTestUpstream(t, Config{URL: srv.URL, Retry: RetrySettings{Attempts: 3, Base: 100 * time.Millisecond, Cap: 150 * time.Millisecond}}, clock)
	if got, _ := get(u, "GET"); got != 503 || hits.Load() != 3 {
		t.Errorf("got %d after %d tries; want 503 after 3", got, hits.Load())
	}
	slept := clock.Slept()
	if len(slept) != 2 || slept[0] >= 100*time.Millisecond || slept[1] >= 150*time.Millisecond {
		t.Errorf("back-off %v; want [<100ms <150ms] (capped)", slept)
	}
}

func TestRetryOnlyWhatIsSafe(t *testing.T) {
	tests := []struct {
		name   string
		method string
		status int
	}{
		{"HEAD is not retried", "HEAD", 503},
		{"404 is an answer", "GET", 404},
		{"501 will not change", "GET", 501},
		{"400 is the request's fault", "GET", 400},
	}
	for _, tt := range tests {
		srv, hits := sequence(t, nil, tt.status)
		u := newTestUpstream(t, Config{URL: srv.URL, Retry: RetrySettings{Attempts: 3}}, newFakeClock())
		got, _ := get(u, tt.method)
		if got != tt.status || hits.Load() != 1 {
			t.Errorf("%s: got %d after %d tries; want %d after 1", tt.name, got, hits.Load(), tt.status)
		}
	}
}

func TestRetryNotAfterTimeout(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	u := newTestUpstream(t, Config{URL: srv.URL, Timeouts: Timeouts{Header: 50 * time.Millisecond}, Retry: RetrySettings{Attempts: 3}}, newFakeClock())
	_, err := get(u, "GET")
	if !isTimeout(err) || hits.Load() != 1 {
		t.Errorf("err %v after %d tries; want a timeout after 1 (the chain fails over instead)", err, hits.Load())
	}
}

func TestRetryConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	clock := newFakeClock()
	u := newTestUpstream(t, Config{URL: url, Retry: RetrySettings{Attempts: 2}}, clock)
	_, err := get(u, "GET")
	if err == nil || !strings.Contains(err.Error(), "connection refused") || len(clock.Slept()) != 1 {
		t.Errorf("err %v, slept %v; want connection refused after one retry", err, clock.Slept())
	}
}

func TestRetryAfter(t *testing.T) {
	clock := newFakeClock()
	tests := []struct {
		name      string
		header    string
		wantSleep time.Duration
		wantHits  int32
	}{
		{"seconds within the cap", "1", time.Second, 2},
		{"HTTP date within the cap", clock.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat), 2 * time.Second, 2},
		{"longer than the cap fails over", "10", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newFakeClock()
			srv, hits := sequence(t, http.Header{"Retry-After": {tt.header}}, 429)
			u := newTestUpstream(t, Config{URL: srv.URL, Retry: RetrySettings{Attempts: 2, Cap: 2 * time.Second}}, c)
			got, _ := get(u, "GET")
			if hits.Load() != tt.wantHits {
				t.Errorf("hits %d; want %d", hits.Load(), tt.wantHits)
			}
			if tt.wantHits == 1 && got != 429 {
				t.Errorf("got %d; want the 429 itself", got)
			}
			if tt.wantSleep != 0 && (len(c.Slept()) != 1 || c.Slept()[0] != tt.wantSleep) {
				t.Errorf("slept %v; want %v", c.Slept(), tt.wantSleep)
			}
		})
	}
}

func TestRetryBudget(t *testing.T) {
	clock := newFakeClock()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(503)
	}))
	defer srv.Close()
	u := newTestUpstream(t, Config{
		URL:     srv.URL,
		Retry:   RetrySettings{Attempts: 3, BudgetRatio: 0.2, Window: time.Minute},
		Breaker: BreakerSettings{Disabled: true},
	}, clock)
	const requests = 100
	for range requests {
		get(u, "GET")
	}
	// Without a budget, 100 requests of 3 tries would be 300.
	if n := hits.Load(); n > requests+requests/5 {
		t.Errorf("%d requests reached the upstream for %d client requests; the budget allows %d", n, requests, requests+requests/5)
	}
	// A new window brings a new budget.
	clock.Advance(3 * time.Minute)
	before := hits.Load()
	get(u, "GET")
	if hits.Load()-before != 3 {
		t.Errorf("first request of a new window made %d tries; want 3", hits.Load()-before)
	}
}

func TestRedirects(t *testing.T) {
	var cdnHits atomic.Int32
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cdnHits.Add(1)
		io.WriteString(w, "from cdn\n")
	}))
	defer cdn.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/a", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/b", http.StatusFound) })
	mux.HandleFunc("/b", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/a", http.StatusFound) })
	mux.HandleFunc("/cdn", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, cdn.URL+"/x", http.StatusFound) })
	n := 0
	mux.HandleFunc("/far/", func(w http.ResponseWriter, r *http.Request) {
		n++
		http.Redirect(w, r, "/far/"+strings.Repeat("x", n), http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	u := newTestUpstream(t, Config{URL: srv.URL}, newFakeClock())
	for _, c := range []struct{ path, want string }{
		{"/loop", "redirect loop: " + srv.URL + "/loop -> " + srv.URL + "/loop"},
		{"/a", "redirect loop: " + srv.URL + "/a -> " + srv.URL + "/b -> " + srv.URL + "/a"},
		{"/far/", "more than 5 redirects"},
		{"/cdn", "redirect to 127.0.0.1"},
	} {
		_, err := u.Get(context.Background(), "GET", c.path, nil)
		if err == nil || !strings.Contains(describe(err, u), c.want) {
			t.Errorf("%s: %v; want %q", c.path, err, c.want)
		}
		if !errors.Is(err, errRedirect) {
			t.Errorf("%s: not a redirect error: %v", c.path, err)
		}
	}
	if cdnHits.Load() != 0 {
		t.Errorf("followed a redirect to a host not allowed")
	}

	// A host redirect_hosts allows is still refused at a loopback address
	// (see TestRedirectTargetsAreGuarded); a check that allows it lets
	// the redirect through.
	u = newTestUpstream(t, Config{URL: srv.URL, RedirectHosts: []string{"127.0.0.*"}}, newFakeClock())
	if _, err := get2(u, "/cdn"); err == nil || !errors.Is(err, errRedirect) || !strings.Contains(describe(err, u), "a loopback address") {
		t.Errorf("redirect to loopback: %v", err)
	}
	if cdnHits.Load() != 0 {
		t.Errorf("followed a redirect to a loopback address")
	}
	u, err := New(Config{Name: "up", URL: srv.URL, RedirectHosts: []string{"127.0.0.*"}},
		Options{Clock: newFakeClock(), CheckRedirectAddr: func(string, netip.Addr, bool) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := get2(u, "/cdn"); err != nil || got != "from cdn\n" {
		t.Errorf("allowed redirect: %q %v", got, err)
	}
}

func get2(u *Upstream, path string) (string, error) {
	resp, err := u.Get(context.Background(), "GET", path, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
