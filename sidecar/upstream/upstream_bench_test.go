package upstream

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkBreakerOverhead measures a healthy small request through an
// upstream with its breaker and retries on, against the same upstream with
// both off, alternating request by request in one run so that the ratio
// holds on a noisy machine. It reports ns per request for each and
// "on/off-throughput" (target: at least 0.98).
func BenchmarkBreakerOverhead(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
	}))
	defer srv.Close()
	on, err := New(Config{Name: "on", URL: srv.URL}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	off, err := New(Config{Name: "off", URL: srv.URL, Breaker: BreakerSettings{Disabled: true}, Retry: RetrySettings{Attempts: 1}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	fetch := func(u *Upstream) time.Duration {
		start := time.Now()
		resp, err := u.Get(context.Background(), http.MethodGet, "/fixture.test/a/@v/v1.0.0.info", nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start)
	}
	for range 100 { // warm up connections
		fetch(on)
		fetch(off)
	}
	var tOn, tOff time.Duration
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			tOn += fetch(on)
			tOff += fetch(off)
		} else {
			tOff += fetch(off)
			tOn += fetch(on)
		}
		n++
	}
	b.ReportMetric(float64(tOn.Nanoseconds())/float64(n), "on-ns/req")
	b.ReportMetric(float64(tOff.Nanoseconds())/float64(n), "off-ns/req")
	b.ReportMetric(float64(tOff)/float64(tOn), "on/off-throughput")
}
