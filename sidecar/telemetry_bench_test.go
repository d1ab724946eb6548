package sidecar

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// BenchmarkTelemetryOverhead sends small requests through three modgates
// in turn — telemetry off, on with every trace sampled and exported over
// OTLP to a local receiver, and on with 1% sampled — and reports ns per
// request for each and the throughput ratios against off (targets: at
// least 0.85 for 100%, 0.95 for 1%).
func BenchmarkTelemetryOverhead(b *testing.B) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
	}))
	defer origin.Close()
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	b.Cleanup(collector.Close) // after the telemetry's flush: cleanups run last first
	gate := func(env map[string]string) *httptest.Server {
		var tel *telemetry.Telemetry
		if env != nil {
			var err error
			tel, err = telemetry.Setup(context.Background(), telemetry.Config{Getenv: func(k string) string { return env[k] }})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				tel.Shutdown(ctx)
			})
		}
		s, err := New(Config{Telemetry: tel, Upstreams: []upstream.Config{{Name: "origin", URL: origin.URL}}})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		b.Cleanup(srv.Close)
		return srv
	}
	export := func(sampler, arg string) map[string]string {
		return map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL,
			"OTEL_TRACES_SAMPLER":         sampler, "OTEL_TRACES_SAMPLER_ARG": arg,
		}
	}
	// Setup decides from Getenv to export; the exporter (autoexport) reads
	// where to from the process environment.
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	gates := []*httptest.Server{gate(nil), gate(export("always_on", "")), gate(export("traceidratio", "0.01"))}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	fetch := func(g *httptest.Server) time.Duration {
		start := time.Now()
		resp, err := client.Get(g.URL + "/fixture.test/a/@v/v1.0.0.info")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return time.Since(start)
	}
	for range 200 {
		for _, g := range gates {
			fetch(g)
		}
	}
	var spent [3]time.Duration
	n := 0
	for b.Loop() {
		for i := range gates {
			j := (i + n) % len(gates) // rotate who goes first
			spent[j] += fetch(gates[j])
		}
		n++
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(n), "off-ns/req")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(n), "on100-ns/req")
	b.ReportMetric(float64(spent[2].Nanoseconds())/float64(n), "on1-ns/req")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "on100/off-throughput")
	b.ReportMetric(float64(spent[0])/float64(spent[2]), "on1/off-throughput")
}
