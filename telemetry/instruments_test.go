package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/modgate/modgate/sidecar/wire"
)

// keysOf returns the sorted attribute keys of a set.
func keysOf(s attribute.Set) string {
	var keys []string
	for _, kv := range s.ToSlice() {
		keys = append(keys, string(kv.Key))
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// TestInstrumentsFollowTheContract checks names, units and attribute keys
// against the telemetry contract (README.md, Architecture; the metric table
// in Traces and metrics).
func TestInstrumentsFollowTheContract(t *testing.T) {
	tel, r := setup(t, Config{})
	ctx := context.Background()
	tel.RecordUpstream(ctx, "public", wire.KindZip, OutcomeOK, 40*time.Millisecond)
	tel.AddRetry(ctx, "public", "5xx")
	tel.AddPolicyDecision(ctx, "deny", "github.com/evil/*")
	tel.AddPolicyReloadFailure(ctx)
	tel.RecordTunnel(ctx, 3*time.Second, 100, 2000)
	tel.AddCacheRequest(ctx, wire.CacheStale)
	stop, err := tel.ObserveBreakers(func() []BreakerReading {
		return []BreakerReading{{"internal", wire.Closed}, {"public", wire.Open}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	got := collect(t, r)
	for _, want := range []struct{ name, unit, keys string }{
		{MetricUpstreamDuration, "s", "modgate.outcome,modgate.request.kind,modgate.upstream.name"},
		{MetricBreakerState, "{state}", "modgate.upstream.name"},
		{MetricRetries, "{retry}", "modgate.retry.reason,modgate.upstream.name"},
		{MetricPolicyDecisions, "{decision}", "modgate.policy.decision,modgate.policy.rule"},
		{MetricPolicyReloadFailures, "{failure}", ""},
		{MetricTunnelDuration, "s", ""},
		{MetricTunnelBytes, "By", "modgate.direction"},
		{MetricCacheRequests, "{request}", "modgate.cache.result"},
	} {
		m, ok := got[want.name]
		if !ok {
			t.Errorf("no metric %s", want.name)
			continue
		}
		if m.Unit != want.unit {
			t.Errorf("%s: unit %q, want %q", want.name, m.Unit, want.unit)
		}
		sets := attrSets(m)
		if len(sets) == 0 {
			t.Errorf("%s: no data points", want.name)
		}
		for _, s := range sets {
			if k := keysOf(s); k != want.keys {
				t.Errorf("%s: attributes %s, want %s", want.name, k, want.keys)
			}
		}
	}

	gauge := got[MetricBreakerState].Data.(metricdata.Gauge[int64])
	states := map[string]int64{}
	for _, p := range gauge.DataPoints {
		v, _ := p.Attributes.Value(AttrUpstreamName)
		states[v.AsString()] = p.Value
	}
	if states["internal"] != 0 || states["public"] != 2 {
		t.Errorf("breaker gauge %v, want internal 0 and public 2", states)
	}
	bytes := got[MetricTunnelBytes].Data.(metricdata.Sum[int64])
	dir := map[string]int64{}
	for _, p := range bytes.DataPoints {
		v, _ := p.Attributes.Value(AttrDirection)
		dir[v.AsString()] = p.Value
	}
	if dir["up"] != 100 || dir["down"] != 2000 {
		t.Errorf("tunnel bytes %v", dir)
	}
	hist := got[MetricUpstreamDuration].Data.(metricdata.Histogram[float64])
	if b := hist.DataPoints[0].Bounds; b[0] != 0.001 || b[len(b)-1] != 60 {
		t.Errorf("upstream duration buckets %v, want 1 ms to 60 s", b)
	}

	// Unregistering stops the observations.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if m, ok := collect(t, r)[MetricBreakerState]; ok && len(attrSets(m)) > 0 {
		t.Errorf("breaker gauge still observed after unregister: %v", attrSets(m))
	}
}

func TestRecordUpstreamFeedsBaselines(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	tel, _ := setup(t, Config{Clock: clock})
	ctx := context.Background()
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeOK, 10*time.Millisecond)
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeNotFound, 10*time.Millisecond)
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeTimeout, 10*time.Second)
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeRejected, 0) // never reached the upstream
	rows := tel.Baselines().Snapshot().Rows
	if len(rows) != 1 || rows[0].Count != 3 || rows[0].Errors != 1 {
		t.Errorf("baseline rows %+v, want one row of 3 requests with 1 error", rows)
	}
}

// TestMetricsCarryNoUnboundedLabel throws module paths, versions, hosts and
// thousands of distinct names at every way into the metrics, then checks
// that no attribute value carries any of them and that series stay few.
func TestMetricsCarryNoUnboundedLabel(t *testing.T) {
	tel, r := setup(t, Config{})
	ctx := context.Background()
	const n = 1000
	for i := range n {
		mod := fmt.Sprintf("fixture.test/mod%d", i)
		tel.RecordUpstream(ctx, mod, wire.Kind(mod+"/@v/list"), "v1.0."+fmt.Sprint(i), time.Millisecond)
		tel.AddRetry(ctx, mod, mod)
		tel.AddPolicyDecision(ctx, wire.Decision(mod), mod)
		tel.AddCacheRequest(ctx, wire.CacheResult(mod))
	}
	stop, err := tel.ObserveBreakers(func() []BreakerReading {
		var rs []BreakerReading
		for i := range n {
			rs = append(rs, BreakerReading{Upstream: fmt.Sprintf("host%d.fixture.test", i)})
		}
		return rs
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	// The HTTP edges: every request names another module and another host.
	srv := tel.ServerMiddleware(okHandler(), func(*http.Request) wire.Kind { return "" })
	client := tel.ClientTransport(stubTransport(200))
	for i := range 200 {
		mod := fmt.Sprintf("fixture.test/mod%d", i)
		req := httptest.NewRequest("GET", "http://origin"+fmt.Sprint(i)+".fixture.test/"+mod+"/@v/v1.0.0.info", nil)
		srv.ServeHTTP(httptest.NewRecorder(), req)
		creq := httptest.NewRequest("GET", "http://origin"+fmt.Sprint(i)+".fixture.test/"+mod+"/@v/list", nil).
			WithContext(WithUpstream(ctx, "origin"+fmt.Sprint(i)+".fixture.test", wire.KindList))
		creq.RequestURI = ""
		resp, err := client.RoundTrip(creq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	for name, m := range collect(t, r) {
		sets := attrSets(m)
		// Each open attribute is capped, so no metric may come near one
		// series per request.
		if len(sets) > maxRules+1 {
			t.Errorf("%s has %d series", name, len(sets))
		}
		for _, s := range sets {
			for _, kv := range s.ToSlice() {
				v := kv.Value.String()
				if strings.Contains(v, "/@v/") || strings.Contains(v, "v1.0.") || (strings.Contains(v, "fixture.test/") && kv.Key != AttrPolicyRule) {
					t.Errorf("%s carries %s=%q", name, kv.Key, v)
				}
			}
		}
	}
	got := collect(t, r)
	for _, c := range []struct {
		metric string
		key    attribute.Key
		max    int
	}{
		{MetricUpstreamDuration, AttrUpstreamName, maxUpstreams + 1},
		{MetricBreakerState, AttrUpstreamName, maxUpstreams + 1},
		{MetricRetries, AttrRetryReason, maxRetryReasons + 1},
		{MetricPolicyDecisions, AttrPolicyDecision, 1},
		{MetricPolicyDecisions, AttrPolicyRule, maxRules + 1},
		{MetricUpstreamDuration, AttrUpstreamName, maxUpstreams + 1},
		{MetricServerDuration, AttrRequestKind, 1},
		{MetricCacheRequests, AttrCacheResult, 1},
	} {
		values := map[string]bool{}
		for _, s := range attrSets(got[c.metric]) {
			v, _ := s.Value(c.key)
			values[v.String()] = true
		}
		if len(values) == 0 || len(values) > c.max {
			t.Errorf("%s: %d values of %s, want 1..%d", c.metric, len(values), c.key, c.max)
		}
		if len(values) > 1 && !values[otherValue] {
			t.Errorf("%s: %s past its cap is not %q", c.metric, c.key, otherValue)
		}
	}
}

func TestCappedSet(t *testing.T) {
	c := cappedSet{max: 2}
	for _, tc := range []struct{ in, want string }{
		{"a", "a"}, {"b", "b"}, {"c", otherValue}, {"a", "a"}, {"", otherValue},
	} {
		if got := c.value(tc.in); got != tc.want {
			t.Errorf("value(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	names := cappedSet{max: 10, names: true}
	for in, want := range map[string]string{
		"proxy.example.test": "proxy.example.test", "5xx": "5xx", "fixture.test/a": otherValue,
		"a@v1.0.0": otherValue, "https://proxy.example.test": otherValue, "two words": otherValue,
	} {
		if got := names.value(in); got != want {
			t.Errorf("names.value(%q) = %q, want %q", in, got, want)
		}
	}
	if wire.Kind("zip").Normal() != wire.KindZip || wire.Kind("/evil/@v/list").Normal() != wire.KindOther {
		t.Error("Kind.Normal")
	}
}

func TestPrometheusNames(t *testing.T) {
	tel, _ := setup(t, Config{})
	ctx := context.Background()
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeOK, 10*time.Millisecond)
	tel.RecordTunnel(ctx, time.Second, 1, 2)
	tel.AddCacheRequest(ctx, wire.CacheHit)
	tel.AddPolicyReloadFailure(ctx)
	stop, _ := tel.ObserveBreakers(func() []BreakerReading { return []BreakerReading{{"public", wire.HalfOpen}} })
	defer stop()
	tel.ServerMiddleware(okHandler(), func(*http.Request) wire.Kind { return wire.KindList }).
		ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/fixture.test/a/@v/list", nil))

	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`modgate_upstream_request_duration_seconds_bucket{modgate_outcome="ok",modgate_request_kind="info",modgate_upstream_name="public"`,
		`modgate_upstream_breaker_state{modgate_upstream_name="public"`,
		`modgate_tunnel_bytes_total{modgate_direction="down"`,
		`modgate_tunnel_duration_seconds_count`,
		`modgate_cache_requests_total{modgate_cache_result="hit"`,
		`modgate_policy_reload_failures_total`,
		`http_server_request_duration_seconds_bucket{`,
		`modgate_request_kind="list"`,
		`http_server_active_requests{`,
		`go_goroutine_count`,
		`target_info{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// TestRecordingAllocatesNothing: the per-request instruments record with
// pre-built attribute sets and option slices.
func TestRecordingAllocatesNothing(t *testing.T) {
	tel, _ := setup(t, Config{})
	ctx := context.Background()
	record := func() {
		tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeOK, time.Millisecond)
		tel.AddPolicyDecision(ctx, wire.DecisionAllow, "allow *")
		tel.AddCacheRequest(ctx, wire.CacheHit)
	}
	record() // builds the sets once
	if n := testing.AllocsPerRun(100, record); n != 0 {
		t.Errorf("%.0f allocations per request's records, want 0", n)
	}
}
