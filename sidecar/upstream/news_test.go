package upstream

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// news is one call of Options.BreakerNews.
type news struct {
	name   string
	open   bool
	until  time.Time
	reason string
}

// newsUpstream is an upstream whose breaker news go to the returned channel.
func newsUpstream(t *testing.T, url string, clock wire.Clock) (*Upstream, chan news) {
	t.Helper()
	c := make(chan news, 10)
	u, err := New(Config{Name: "up", URL: url, Retry: RetrySettings{Attempts: 1}}, Options{
		Clock: clock,
		BreakerNews: func(name string, open bool, until time.Time, reason string) {
			c <- news{name, open, until, reason}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return u, c
}

func next(t *testing.T, c chan news) news {
	t.Helper()
	select {
	case n := <-c:
		return n
	case <-time.After(5 * time.Second):
		t.Fatal("no breaker news")
		return news{}
	}
}

func TestHoldOpenRefusesAndReportsOpen(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 200)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}}, clock)
	u.HoldOpen(clock.Now().Add(10*time.Second), "5 failures in a row (last: 502 Bad Gateway)")

	_, err := get(u, "GET")
	var open *OpenError
	if !errors.As(err, &open) {
		t.Fatalf("err = %v; want *OpenError", err)
	}
	if want := "opened by another replica: 5 failures in a row (last: 502 Bad Gateway)"; open.Reason != want {
		t.Errorf("reason %q; want %q", open.Reason, want)
	}
	if open.RetryAfterSeconds() != 10 {
		t.Errorf("retry after %ds; want 10", open.RetryAfterSeconds())
	}
	if u.Breaker() != Open {
		t.Errorf("breaker %v; want open", u.Breaker())
	}
	if st := u.Status().Breaker; st.State != "open" || !strings.Contains(st.OpenReason, "another replica") || st.HalfOpenInSecs != 10 {
		t.Errorf("status %+v", st)
	}
	if s.hits.Load() != 0 {
		t.Errorf("%d requests reached the upstream while held open", s.hits.Load())
	}

	clock.Advance(9 * time.Second)
	if _, err := get(u, "GET"); !errors.As(err, &open) {
		t.Fatalf("after 9s: %v; want still open", err)
	}
	clock.Advance(2 * time.Second)
	if status, err := get(u, "GET"); status != 200 || err != nil {
		t.Fatalf("after the held period: %d %v", status, err)
	}
	if u.Breaker() != Closed || u.Status().Breaker.OpenReason != "" {
		t.Errorf("after the held period: breaker %v, status %+v", u.Breaker(), u.Status().Breaker)
	}
}

func TestReleaseHold(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 200)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}}, clock)
	u.HoldOpen(clock.Now().Add(10*time.Second), "")
	if _, err := get(u, "GET"); err == nil || !strings.Contains(err.Error(), "opened by another replica") {
		t.Fatalf("held: %v", err)
	}
	u.ReleaseHold()
	if status, err := get(u, "GET"); status != 200 || err != nil {
		t.Fatalf("released: %d %v", status, err)
	}
}

func TestHoldOpenIsCappedAtOneOpenPeriod(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 200)
	u := newTestUpstream(t, Config{URL: s.URL, Retry: RetrySettings{Attempts: 1}}, clock)
	u.HoldOpen(clock.Now().Add(24*time.Hour), "")
	clock.Advance(31 * time.Second)
	if status, err := get(u, "GET"); status != 200 || err != nil {
		t.Fatalf("one open period (30s) later: %d %v", status, err)
	}
}

func TestBreakerNewsOnOpenAndClose(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 500)
	u, c := newsUpstream(t, s.URL, clock)
	for range 5 {
		get(u, "GET")
	}
	opened := clock.Now()
	n := next(t, c)
	if n.name != "up" || !n.open || !n.until.Equal(opened.Add(30*time.Second)) || !strings.Contains(n.reason, "5 failures in a row") {
		t.Fatalf("news %+v; want up open until %v", n, opened.Add(30*time.Second))
	}
	// Still open: refused requests say nothing new.
	get(u, "GET")
	s.status.Store(200)
	clock.Advance(31 * time.Second)
	if status, err := get(u, "GET"); status != 200 || err != nil {
		t.Fatalf("probe: %d %v", status, err)
	}
	// The next news is the close: the open was told once.
	if n := next(t, c); n.name != "up" || n.open {
		t.Fatalf("news %+v; want up closed", n)
	}
}

func TestHoldOpenTellsNoNews(t *testing.T) {
	clock := newFakeClock()
	s := newSwitchable(t, 200)
	u, c := newsUpstream(t, s.URL, clock)
	u.HoldOpen(clock.Now().Add(10*time.Second), "elsewhere")
	get(u, "GET")
	clock.Advance(11 * time.Second)
	get(u, "GET")
	u.HoldOpen(clock.Now().Add(10*time.Second), "elsewhere")
	u.ReleaseHold()
	// Now this process's own breaker opens: that is the first news.
	s.status.Store(500)
	for range 5 {
		get(u, "GET")
	}
	if n := next(t, c); !n.open || n.reason == "" || strings.Contains(n.reason, "elsewhere") {
		t.Fatalf("first news %+v; want this process's own breaker opening", n)
	}
}

func TestNewsID(t *testing.T) {
	id := func(name, url string) string {
		u, err := New(Config{Name: name, URL: url}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		return u.NewsID()
	}
	a := id("corp", "https://proxy.corp.example.test/go")
	if !regexp.MustCompile(`^corp@[0-9a-f]{12}$`).MatchString(a) {
		t.Fatalf("NewsID %q; want corp@ and 12 hex digits", a)
	}
	if b := id("corp", "https://mirror.corp.example.test/go"); b == a {
		t.Errorf("one name, two URLs: both %q", a)
	}
	if b := id("corp", "https://user:token@proxy.corp.example.test/go"); b != a {
		t.Errorf("credentials change the id: %q, %q", b, a)
	}
	if b := id("other", "https://proxy.corp.example.test/go"); b == a || !strings.HasPrefix(b, "other@") {
		t.Errorf("two names, one URL: %q, %q", b, a)
	}
}
