package sidecar_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
	"github.com/modgate/modgate/telemetry/jaegertest"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// newTelemetry sets up telemetry with the given OTEL_* variables (none:
// nothing exported) and shuts it down when the test ends. With variables,
// the test must not be parallel.
func newTelemetry(t *testing.T, env map[string]string) *telemetry.Telemetry {
	t.Helper()
	// Setup decides from Getenv whether to export; the exporter (autoexport)
	// then reads its settings from the process environment.
	for k, v := range env {
		t.Setenv(k, v)
	}
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{
		ServiceName: "modgate", Version: "test",
		Getenv: func(k string) string { return env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tel.Shutdown(ctx)
	})
	return tel
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestMetricsOnAdmin(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	tel := newTelemetry(t, nil)
	st, _ := policyStore(t, "rules:\n  - deny: \"fixture.test/dep02\"\n    reason: no\n")
	url, srv := startGateServer(t, sidecar.Config{
		Telemetry: tel, Policy: st,
		Cache:     sidecar.CacheConfig{Dir: t.TempDir()},
		Upstreams: []upstream.Config{{Name: "first", URL: p.URL + "/f/404"}, {Name: "second", URL: p.URL}},
	})
	for _, path := range []string{"/fixture.test/dep01/@v/v1.0.0.info", "/fixture.test/dep01/@v/list", "/fixture.test/dep02/@v/v1.0.0.info", "/fixture.test/dep01/@v/list"} {
		get(t, url+path)
	}
	rec := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/metrics", nil))
	metrics := rec.Body.String()
	for _, want := range []string{
		`modgate_upstream_request_duration_seconds_bucket{modgate_outcome="notfound",modgate_request_kind="info",modgate_upstream_name="first"`,
		`modgate_upstream_request_duration_seconds_bucket{modgate_outcome="ok",modgate_request_kind="info",modgate_upstream_name="second"`,
		`modgate_policy_decisions_total{modgate_policy_decision="deny",modgate_policy_rule="deny fixture.test/dep02"`,
		`modgate_policy_decisions_total{modgate_policy_decision="allow",modgate_policy_rule="default allow"`,
		`modgate_upstream_breaker_state{modgate_upstream_name="first"`,
		`http_server_request_duration_seconds_bucket{`,
		`modgate_request_kind="list"`,
		`http_server_active_requests{`,
		`modgate_cache_requests_total{modgate_cache_result="hit"`,
		`modgate_cache_requests_total{modgate_cache_result="miss"`,
		`modgate_cache_size_bytes{`,
		`modgate_cache_evictions_total{`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "fixture.test/dep01") {
		t.Errorf("a module path became a metric label")
	}

	rec = httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/baseline", nil))
	var report telemetry.BaselineReport
	if err := json.Unmarshal(rec.Body.Bytes(), &report); err != nil {
		t.Fatalf("/debug/baseline: %v\n%s", err, rec.Body)
	}
	var found bool
	for _, row := range report.Rows {
		found = found || (row.Upstream == "second" && row.Kind == "info" && row.Count == 1)
	}
	if !found {
		t.Errorf("/debug/baseline has no row for (second, info): %+v", report.Rows)
	}
	rec = httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/tracez", nil))
	if rec.Code != 200 {
		t.Errorf("/debug/tracez: %d", rec.Code)
	}
}

// TestTraceContextContinues checks that an incoming traceparent is
// continued, and that the upstream request carries the same trace.
func TestTraceContextContinues(t *testing.T) {
	var got atomic.Value
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Traceparent"))
		io.WriteString(w, "v1.0.0\n")
	}))
	defer origin.Close()
	tel := newTelemetry(t, nil)
	url := startGate(t, sidecar.Config{Telemetry: tel, Upstreams: []upstream.Config{{URL: origin.URL}}})
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, _ := http.NewRequest("GET", url+"/fixture.test/dep01/@v/list", nil)
	req.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tp, _ := got.Load().(string)
	if !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
		t.Errorf("upstream got traceparent %q; want the same trace with modgate's span as parent", tp)
	}
}

// TestTracesInJaeger runs the go command through modgate exporting to a
// real Jaeger, and reads the traces back from Jaeger's API.
func TestTracesInJaeger(t *testing.T) {
	j := jaegertest.Start(t) // skips without JAEGER_BIN
	e := newEnv(t)
	p := e.proxy(t, true)
	tel := newTelemetry(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": j.OTLPHTTP,
		"OTEL_SERVICE_NAME":           "modgate-jaeger-test",
		"OTEL_METRICS_EXPORTER":       "none",      // Jaeger takes traces only
		"OTEL_TRACES_SAMPLER":         "always_on", // every request's trace, not the default's rate
	})
	st, _ := policyStore(t, "rules:\n  - deny: \"fixture.test/dep02\"\n    reason: \"malware, see SEC-123\"\n")
	url := startGate(t, sidecar.Config{
		Telemetry: tel, Policy: st,
		Upstreams: []upstream.Config{{Name: "first", URL: p.URL + "/f/404"}, {Name: "second", URL: p.URL}},
	})
	e.go_.UseProxy(url, e.db)
	if out, err := e.download("fixture.test/dep01@v1.0.0"); err != nil {
		t.Fatalf("go mod download: %v\n%s", err, out)
	}
	if out, err := e.download("fixture.test/dep02@v1.0.0"); err == nil {
		t.Fatalf("denied module downloaded:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil { // flush
		t.Fatal(err)
	}
	traces, err := j.WaitForSpans("modgate-jaeger-test", 10, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var sawZip, sawDeny bool
	for _, tr := range traces {
		server := serverSpan(tr, "GET zip")
		if server != nil && server.Tags["modgate.module.path"] == "fixture.test/dep01" {
			sawZip = true
			if server.Tags["modgate.module.version"] != "v1.0.0" || server.Tags["modgate.mode"] != "reverse" {
				t.Errorf("zip server span tags: %v", server.Tags)
			}
			// The fall-through: one client span per upstream, children of
			// the server span.
			var clients []string
			for _, s := range tr.Spans {
				if s.ParentSpanID == server.SpanID && strings.HasPrefix(s.OperationName, "GET ") {
					clients = append(clients, fmt.Sprint(s.Tags["modgate.upstream.name"]))
				}
			}
			if strings.Join(clients, ",") != "first,second" && strings.Join(clients, ",") != "second,first" {
				t.Errorf("client spans under the zip request: %v; want first and second", clients)
			}
		}
		if s := serverSpan(tr, "GET info"); s != nil && s.Tags["modgate.module.path"] == "fixture.test/dep02" {
			sawDeny = s.Tags["modgate.policy.decision"] == "deny" && s.Tags["modgate.policy.rule"] == "deny fixture.test/dep02"
			if !sawDeny {
				t.Errorf("denied request's span tags: %v", s.Tags)
			}
		}
	}
	if !sawZip || !sawDeny {
		var ops []string
		for _, tr := range traces {
			for _, s := range tr.Spans {
				ops = append(ops, s.OperationName)
			}
		}
		t.Errorf("zip trace found: %v, denial found: %v; spans: %v", sawZip, sawDeny, ops)
	}
}

// serverSpan returns the trace's server span named op (client spans of
// upstream attempts share the name).
func serverSpan(tr jaegertest.Trace, op string) *jaegertest.Span {
	for i, s := range tr.Spans {
		if s.OperationName == op && s.Tags["span.kind"] == "server" {
			return &tr.Spans[i]
		}
	}
	return nil
}

// An upstream's 403 fails the request (only 404 and 410 let the chain move
// on), so its attempt is an error in the metric and in the baseline the
// status page shows, never "ok".
func TestUpstreamForbiddenCountsAsError(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	tel := newTelemetry(t, nil)
	url, srv := startGateServer(t, sidecar.Config{
		Telemetry: tel,
		Upstreams: []upstream.Config{{Name: "walled", URL: p.URL + "/f/403"}},
	})
	if code, body := get(t, url+"/fixture.test/dep01/@v/v1.0.0.info"); code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502 from a chain whose only upstream answers 403:\n%s", code, body)
	}
	rec := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/metrics", nil))
	want := `modgate_upstream_request_duration_seconds_count{modgate_outcome="error",modgate_request_kind="info",modgate_upstream_name="walled"`
	if !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics lacks %s", want)
	}
	rec = httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/baseline", nil))
	var report telemetry.BaselineReport
	if err := json.Unmarshal(rec.Body.Bytes(), &report); err != nil {
		t.Fatal(err)
	}
	for _, row := range report.Rows {
		if row.Upstream == "walled" && row.ErrorRate != 1 {
			t.Errorf("baseline of walled: error rate %v, want 1 (every attempt was a 403)", row.ErrorRate)
		}
	}
}

// TestCacheHitSpanHasBodySize: a cache hit goes to the client through
// ReadFrom (sendfile(2)), which otelhttp does not count; its server span
// still says how large the body was.
func TestCacheHitSpanHasBodySize(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Getenv: func(k string) string {
		return map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}[k]
	}, SpanExporters: []sdktrace.SpanExporter{spans}})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	url, srv := startGateServer(t, sidecar.Config{Telemetry: tel, Cache: sidecar.CacheConfig{Dir: t.TempDir()},
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	m, _ := fx.Lookup("fixture.test/dep01", "v1.0.0")
	for range 2 {
		if _, body := get(t, url+"/fixture.test/dep01/@v/v1.0.0.zip"); body != string(m.Zip) {
			t.Fatalf("zip: %d bytes, want %d", len(body), len(m.Zip))
		}
		srv.Settle() // kept once checked
	}
	if err := tel.TracerProvider().(*sdktrace.TracerProvider).ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	var hits int
	for _, s := range spans.GetSpans() {
		attrs := map[attribute.Key]attribute.Value{}
		for _, a := range s.Attributes {
			attrs[a.Key] = a.Value
		}
		if s.SpanKind != trace.SpanKindServer || attrs["modgate.cache.result"].AsString() != "hit" {
			continue
		}
		hits++
		if got := attrs["http.response.body.size"].AsInt64(); got != int64(len(m.Zip)) {
			t.Errorf("cache hit's span: http.response.body.size %d, want %d", got, len(m.Zip))
		}
	}
	if hits != 1 {
		t.Errorf("%d cache hits among the server spans, want 1", hits)
	}
}
