package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/wire"
)

func newFakeClock() *modtest.Clock { return modtest.NewClock() }

// switchable is an upstream whose answer a test changes as it goes.
type switchable struct {
	*httptest.Server
	status atomic.Int32
	header atomic.Value // http.Header added to answers
	hits   atomic.Int32
}

func newSwitchable(t *testing.T, status int) *switchable {
	s := &switchable{}
	s.status.Store(int32(status))
	s.header.Store(http.Header{})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		for k, v := range s.header.Load().(http.Header) {
			w.Header()[k] = v
		}
		w.WriteHeader(int(s.status.Load()))
		io.WriteString(w, "body\n")
	}))
	t.Cleanup(s.Close)
	return s
}

func newTestUpstream(t *testing.T, cfg Config, clock wire.Clock) *Upstream {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "up"
	}
	u, err := New(cfg, Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// get makes one request and reads and closes its body, as the relay does.
func get(u *Upstream, method string) (int, error) {
	resp, err := u.Get(context.Background(), method, "/x.test/a/@v/list", nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestBreakerOpensProbesAndCloses(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 500)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}}, clock)
	for range 5 {
		if status, err := get(u, "GET"); status != 500 || err != nil {
			t.Fatalf("got %d %v", status, err)
		}
	}
	if u.Breaker() != Open {
		t.Fatalf("breaker %v after 5 failures; want open", u.Breaker())
	}
	_, err := get(u, "GET")
	var open *OpenError
	if !errors.As(err, &open) {
		t.Fatalf("err = %v; want *OpenError", err)
	}
	if want := "circuit open: 5 failures in a row (last: 500 Internal Server Error); probed again in 30s"; err.Error() != want {
		t.Errorf("error %q; want %q", err, want)
	}
	if s.hits.Load() != 5 {
		t.Errorf("%d requests reached the upstream; want 5 (none while open)", s.hits.Load())
	}

	clock.Advance(29 * time.Second)
	if _, err := get(u, "GET"); !errors.As(err, &open) || open.RetryAfterSeconds() != 1 {
		t.Fatalf("after 29s: %v; want open with 1s left", err)
	}
	// The probe fails: open again for another period.
	clock.Advance(2 * time.Second)
	if u.Breaker() != HalfOpen {
		t.Errorf("breaker %v after the open period; want half-open", u.Breaker())
	}
	if status, _ := get(u, "GET"); status != 500 || s.hits.Load() != 6 {
		t.Fatalf("probe: %d, hits %d", status, s.hits.Load())
	}
	if _, err := get(u, "GET"); !errors.As(err, &open) || !strings.Contains(err.Error(), "the probe failed") {
		t.Fatalf("after a failed probe: %v", err)
	}
	// The probe succeeds: closed.
	s.status.Store(200)
	clock.Advance(31 * time.Second)
	if status, err := get(u, "GET"); status != 200 || err != nil {
		t.Fatalf("probe: %d %v", status, err)
	}
	if u.Breaker() != Closed {
		t.Errorf("breaker %v after a good probe; want closed", u.Breaker())
	}
	st := u.Status()
	if st.Breaker.State != "closed" || len(st.Breaker.Recent) != 6 || st.Breaker.Recent[0].Reason != "500 Internal Server Error" {
		t.Errorf("status %+v", st.Breaker)
	}
}

func TestBreakerFailureRatio(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 200)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1},
		Breaker: BreakerSettings{ConsecutiveFailures: 100, FailureRatio: 0.5, MinRequests: 10}}, clock)
	for i := range 10 {
		s.status.Store(int32([]int{200, 503}[i%2]))
		get(u, "GET")
	}
	if u.Breaker() != Open {
		t.Fatalf("breaker %v after 5 of 10 failed; want open", u.Breaker())
	}
	if _, err := get(u, "GET"); err == nil || !strings.Contains(err.Error(), "5 of 10 requests failed") {
		t.Errorf("err = %v", err)
	}
}

func TestBreakerCountsNotFoundAsSuccess(t *testing.T) {
	for _, status := range []int{404, 410, 403, 304} {
		s := newSwitchable(t, status)
		u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}}, newFakeClock())
		for range 20 {
			get(u, "GET")
		}
		if u.Breaker() != Closed {
			t.Errorf("%d: breaker %v; want closed", status, u.Breaker())
		}
	}
}

func TestBreakerIgnoresClientHangUp(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	u := newTestUpstream(t, Config{URL: srv.URL}, newFakeClock())
	for range 10 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(time.Millisecond); cancel() }()
		if _, err := u.Get(ctx, "GET", "/x", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	}
	if u.Breaker() != Closed {
		t.Errorf("breaker %v after client hang-ups; want closed", u.Breaker())
	}
	// A 200 whose body the client abandons is no failure either.
	s := newSwitchable(t, 200)
	u = newTestUpstream(t, Config{URL: s.URL}, newFakeClock())
	for range 10 {
		resp, err := u.Get(context.Background(), "GET", "/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if st := u.Status().Breaker; st.State != "closed" || st.Failures != 0 {
		t.Errorf("abandoned bodies: %+v", st)
	}
}

func TestBreakerCountsBrokenBodies(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	u := newTestUpstream(t, Config{URL: srv.URL, Timeouts: Timeouts{Idle: 20 * time.Millisecond}}, newFakeClock())
	for range 5 {
		resp, err := u.Get(context.Background(), "GET", "/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(resp.Body); !errors.Is(err, ErrStalled) {
			t.Fatalf("read: %v", err)
		}
		resp.Body.Close()
	}
	if u.Breaker() != Open {
		t.Errorf("breaker %v after 5 stalled bodies; want open", u.Breaker())
	}
	if r := u.Status().Breaker.Recent; len(r) != 5 || !strings.Contains(r[0].Reason, "body stalled") {
		t.Errorf("recent failures %+v", r)
	}
}

func TestBreakerHalfOpenAdmitsOneProbe(t *testing.T) {
	clock := newFakeClock()
	release := make(chan struct{})
	var hits atomic.Int32
	var fail atomic.Bool
	fail.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if fail.Load() {
			w.WriteHeader(503)
			return
		}
		<-release // the probe hangs until the test lets it go
	}))
	defer srv.Close()
	u := newTestUpstream(t, Config{URL: srv.URL, Retry: RetrySettings{Attempts: 1}}, clock)
	for range 5 {
		get(u, "GET")
	}
	fail.Store(false)
	clock.Advance(31 * time.Second)
	probe := make(chan int)
	go func() { status, _ := get(u, "GET"); probe <- status }()
	for hits.Load() != 6 {
		time.Sleep(time.Millisecond)
	}
	_, err := get(u, "GET")
	if err == nil || !strings.Contains(err.Error(), "a probe is in flight") {
		t.Errorf("second request during the probe: %v", err)
	}
	close(release)
	if status := <-probe; status != 200 {
		t.Errorf("probe %d", status)
	}
	if hits.Load() != 6 || u.Breaker() != Closed {
		t.Errorf("hits %d, breaker %v", hits.Load(), u.Breaker())
	}
}

func TestBreakerDisabled(t *testing.T) {
	s := newSwitchable(t, 500)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}, Breaker: BreakerSettings{Disabled: true}}, newFakeClock())
	for range 20 {
		get(u, "GET")
	}
	if s.hits.Load() != 20 || u.Status().Breaker.State != "disabled" {
		t.Errorf("hits %d, state %s", s.hits.Load(), u.Status().Breaker.State)
	}
}
