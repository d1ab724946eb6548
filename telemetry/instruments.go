package telemetry

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/wire"
)

// Metric names of the telemetry contract (README.md, Architecture). Prometheus names
// follow the exporter's rules: modgate.upstream.request.duration becomes
// modgate_upstream_request_duration_seconds.
const (
	MetricUpstreamDuration     = "modgate.upstream.request.duration"
	MetricBreakerState         = "modgate.upstream.breaker.state"
	MetricRetries              = "modgate.upstream.retries"
	MetricPolicyDecisions      = "modgate.policy.decisions"
	MetricPolicyReloadFailures = "modgate.policy.reload.failures"
	MetricTunnelDuration       = "modgate.tunnel.duration"
	MetricTunnelBytes          = "modgate.tunnel.bytes"
	MetricCacheRequests        = "modgate.cache.requests"
	MetricCacheSize            = "modgate.cache.size"
	MetricHedges               = "modgate.upstream.hedges"
	MetricCacheEvictions       = "modgate.cache.evictions"
	MetricChecksumVerification = "modgate.checksum.verification"
	MetricChecksumChecks       = "modgate.checksum.checks"
	MetricServerDuration       = "http.server.request.duration"
	MetricServerActive         = "http.server.active_requests"
	MetricClientDuration       = "http.client.request.duration"
)

// latencyBuckets suit requests from a millisecond (a cached .info) to a
// minute (the default header timeout, or a large zip).
var latencyBuckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 20, 30, 60,
}

// tunnelBuckets suit CONNECT tunnels, which live from one small request to a
// whole clone of a large repository over a reused connection.
var tunnelBuckets = []float64{0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// BreakerReading is one upstream's breaker state at the time of a metrics
// collection.
type BreakerReading struct {
	Upstream string
	State    wire.BreakerState
}

type instruments struct {
	upstreamDuration metric.Float64Histogram
	breakerState     metric.Int64ObservableGauge
	retries          metric.Int64Counter
	decisions        metric.Int64Counter
	reloadFailures   metric.Int64Counter
	tunnelDuration   metric.Float64Histogram
	tunnelBytes      metric.Int64Counter
	cacheRequests    metric.Int64Counter
	hedges           metric.Int64Counter
	serverDuration   metric.Float64Histogram

	upstreams    cappedSet
	rules        cappedSet
	retryReasons cappedSet

	// Pre-built option sets for the attributes that never vary, so that
	// recording them allocates nothing.
	up, down *options

	// Pre-built option sets by their (bounded) values.
	upstreamAttrs optionCache[attemptKey]
	decisionAttrs optionCache[[2]string] // decision, rule
	cacheAttrs    optionCache[string]    // result
	serverAttrs   optionCache[serverKey]

	// active counts the requests in flight by method and scheme: an
	// atomic add per request, read when metrics are collected.
	active counters[activeKey]
}

// attemptKey is the attributes of modgate.upstream.request.duration.
type attemptKey struct {
	upstream string
	kind     wire.Kind
	outcome  string
}

// serverKey is the attributes of http.server.request.duration.
type serverKey struct {
	method, scheme, proto string
	kind                  wire.Kind
	status                int
}

// activeKey is the attributes of http.server.active_requests.
type activeKey struct{ method, scheme string }

func (in *instruments) init(m metric.Meter) error {
	in.upstreams = cappedSet{max: maxUpstreams, names: true}
	in.rules = cappedSet{max: maxRules}
	in.retryReasons = cappedSet{max: maxRetryReasons, names: true}
	in.up = newOptions(AttrDirection.String(DirectionUp))
	in.down = newOptions(AttrDirection.String(DirectionDown))
	in.upstreamAttrs.build = func(k attemptKey) []attribute.KeyValue {
		return []attribute.KeyValue{AttrUpstreamName.String(k.upstream), AttrRequestKind.String(string(k.kind)), AttrOutcome.String(k.outcome)}
	}
	in.decisionAttrs.build = func(k [2]string) []attribute.KeyValue {
		return []attribute.KeyValue{AttrPolicyDecision.String(k[0]), AttrPolicyRule.String(k[1])}
	}
	in.cacheAttrs.build = func(k string) []attribute.KeyValue {
		return []attribute.KeyValue{AttrCacheResult.String(k)}
	}
	in.serverAttrs.build = func(k serverKey) []attribute.KeyValue {
		kvs := []attribute.KeyValue{
			semconv.HTTPRequestMethodKey.String(k.method), semconv.URLSchemeKey.String(k.scheme),
			semconv.NetworkProtocolName("http"), semconv.NetworkProtocolVersion(k.proto),
			semconv.HTTPResponseStatusCode(k.status), AttrRequestKind.String(string(k.kind)),
		}
		if k.status >= 500 {
			// semconv: a server error's type is its status code.
			kvs = append(kvs, semconv.ErrorTypeKey.String(strconv.Itoa(k.status)))
		}
		return kvs
	}

	var err error
	try := func(e error) {
		if err == nil && e != nil {
			err = e
		}
	}
	counter := func(name, unit, description string) metric.Int64Counter {
		c, e := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(description))
		try(e)
		return c
	}
	histogram := func(name, description string, buckets []float64) metric.Float64Histogram {
		h, e := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(description),
			metric.WithExplicitBucketBoundaries(buckets...))
		try(e)
		return h
	}
	in.upstreamDuration = histogram(MetricUpstreamDuration,
		"Duration of one attempt at one upstream, from sending the request to the end of the response headers.", latencyBuckets)
	var e error
	in.breakerState, e = m.Int64ObservableGauge(MetricBreakerState, metric.WithUnit("{state}"),
		metric.WithDescription("Circuit breaker state of an upstream: 0 closed, 1 half-open, 2 open."))
	try(e)
	in.retries = counter(MetricRetries, "{retry}", "Requests sent again to the same upstream.")
	in.decisions = counter(MetricPolicyDecisions, "{decision}", "Policy decisions, by decision and rule.")
	in.reloadFailures = counter(MetricPolicyReloadFailures, "{failure}", "Policy reloads that failed and left the previous policy in force.")
	in.tunnelDuration = histogram(MetricTunnelDuration, "Lifetime of CONNECT tunnels that were not intercepted.", tunnelBuckets)
	in.tunnelBytes = counter(MetricTunnelBytes, "By", "Bytes through CONNECT tunnels, up (client to origin) and down.")
	in.hedges = counter(MetricHedges, "{request}", "Hedged requests to an upstream: sent, and won (answered first).")
	in.cacheRequests = counter(MetricCacheRequests, "{request}", "Cache lookups, by result: hit, miss or stale.")
	// The two server metrics of semconv, with otelhttp's names, recorded
	// by ServerMiddleware for sampled and unsampled requests alike.
	in.serverDuration = histogram(MetricServerDuration, "Duration of HTTP server requests.", latencyBuckets)
	activeGauge, e := m.Int64ObservableUpDownCounter(MetricServerActive, metric.WithUnit("{request}"),
		metric.WithDescription("Number of active HTTP server requests."))
	try(e)
	if e == nil {
		in.active.build = func(k activeKey) []attribute.KeyValue {
			return []attribute.KeyValue{semconv.HTTPRequestMethodKey.String(k.method), semconv.URLSchemeKey.String(k.scheme)}
		}
		_, e = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			in.active.each(func(n int64, opt metric.ObserveOption) { o.ObserveInt64(activeGauge, n, opt) })
			return nil
		}, activeGauge)
		try(e)
	}
	if err != nil {
		return fmt.Errorf("telemetry: instruments: %w", err)
	}
	return nil
}

// RecordUpstream records one attempt at one upstream: the
// modgate.upstream.request.duration histogram, and the baseline of
// (upstream, kind). outcome is one of the Outcome constants. Rejected
// attempts never reached the upstream, so they are counted but do not move
// its baseline; error and timeout count as failures, notfound does not.
func (t *Telemetry) RecordUpstream(ctx context.Context, upstream string, kind wire.Kind, outcome string, d time.Duration) {
	if t == nil {
		return
	}
	kind = kind.Normal()
	upstream, outcome = t.inst.upstreams.value(upstream), outcomes.value(outcome)
	t.inst.upstreamDuration.Record(ctx, d.Seconds(), t.inst.upstreamAttrs.get(attemptKey{upstream, kind, outcome}).record...)
	if outcome != OutcomeRejected {
		t.baselines.Observe(upstream, kind, d, outcome == OutcomeError || outcome == OutcomeTimeout)
	}
}

// UpstreamQuantile returns the q-quantile of upstream's latency for kind
// over the baseline window, and the number of requests it rests on.
func (t *Telemetry) UpstreamQuantile(upstream string, kind wire.Kind, q float64) (time.Duration, int64) {
	if t == nil {
		return 0, 0
	}
	return t.baselines.Quantile(t.inst.upstreams.value(upstream), kind, q)
}

// AddHedge counts a hedged request sent to upstream, or one that won.
func (t *Telemetry) AddHedge(ctx context.Context, upstream string, won bool) {
	if t == nil {
		return
	}
	result := "sent"
	if won {
		result = "won"
	}
	t.inst.hedges.Add(ctx, 1, metric.WithAttributes(
		AttrUpstreamName.String(t.inst.upstreams.value(upstream)), AttrHedge.String(result)))
}

// ObserveBreakers makes read the source of the modgate.upstream.breaker.state
// gauge: it is called at each collection (a Prometheus scrape, an OTLP
// export) and must be quick and safe for concurrent use. Call the returned
// function to stop observing, e.g. when the server that owns the breakers
// stops.
func (t *Telemetry) ObserveBreakers(read func() []BreakerReading) (unregister func() error, err error) {
	if t == nil {
		return func() error { return nil }, nil
	}
	reg, err := t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, r := range read() {
			o.ObserveInt64(t.inst.breakerState, int64(r.State),
				metric.WithAttributes(AttrUpstreamName.String(t.inst.upstreams.value(r.Upstream))))
		}
		return nil
	}, t.inst.breakerState)
	if err != nil {
		return nil, fmt.Errorf("telemetry: observe breakers: %w", err)
	}
	return reg.Unregister, nil
}

// CacheReading is what ObserveCache reads: the bytes a cache holds and
// the entries it has evicted so far.
type CacheReading struct {
	Bytes, Evictions int64
}

// ObserveCache makes read the source of the modgate.cache.size gauge and
// the modgate.cache.evictions counter. Call the returned function to stop.
func (t *Telemetry) ObserveCache(read func() CacheReading) (unregister func() error, err error) {
	return t.observeGaugeAndCounter("cache",
		observable{MetricCacheSize, "By", "Bytes held by the artifact cache."},
		observable{MetricCacheEvictions, "{entry}", "Cache entries evicted to stay under max_bytes."},
		func(o metric.Observer, size metric.Int64ObservableGauge, evictions metric.Int64ObservableCounter) {
			r := read()
			o.ObserveInt64(size, r.Bytes)
			o.ObserveInt64(evictions, r.Evictions)
		})
}

// observable names an observable instrument.
type observable struct{ name, unit, description string }

// observeGaugeAndCounter makes a gauge and a counter that observe reads at
// each collection (a Prometheus scrape, an OTLP export). what names them
// in errors. Call the returned function to stop.
func (t *Telemetry) observeGaugeAndCounter(what string, gauge, counter observable,
	observe func(metric.Observer, metric.Int64ObservableGauge, metric.Int64ObservableCounter)) (unregister func() error, err error) {
	if t == nil {
		return func() error { return nil }, nil
	}
	g, err := t.meter.Int64ObservableGauge(gauge.name, metric.WithUnit(gauge.unit), metric.WithDescription(gauge.description))
	if err != nil {
		return nil, err
	}
	c, err := t.meter.Int64ObservableCounter(counter.name, metric.WithUnit(counter.unit), metric.WithDescription(counter.description))
	if err != nil {
		return nil, err
	}
	reg, err := t.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		observe(o, g, c)
		return nil
	}, g, c)
	if err != nil {
		return nil, fmt.Errorf("telemetry: observe %s: %w", what, err)
	}
	return reg.Unregister, nil
}

// VerificationReading is what ObserveVerification reads: whether
// artifacts are verified against the checksum database, and how the
// checks have gone, by result (verified, mismatch, unverified,
// misbehaving).
type VerificationReading struct {
	On      bool
	Results map[string]int64
}

// ObserveVerification makes read the source of the
// modgate.checksum.verification gauge (1 when artifacts are verified
// against the checksum database, 0 when they cannot be) and the
// modgate.checksum.checks counter. Call the returned function to stop.
func (t *Telemetry) ObserveVerification(read func() VerificationReading) (unregister func() error, err error) {
	return t.observeGaugeAndCounter("verification",
		observable{MetricChecksumVerification, "1", "1 when artifacts are verified against the checksum database before they are kept; 0 when they cannot be (no database, or no key for it)."},
		observable{MetricChecksumChecks, "{check}", "Artifacts checked against the checksum database, by result."},
		func(o metric.Observer, on metric.Int64ObservableGauge, checks metric.Int64ObservableCounter) {
			r := read()
			v := int64(0)
			if r.On {
				v = 1
			}
			o.ObserveInt64(on, v)
			for result, n := range r.Results {
				o.ObserveInt64(checks, n, metric.WithAttributes(AttrChecksumResult.String(result)))
			}
		})
}

// AddRetry counts one request sent again to upstream; reason says why
// (a small fixed set chosen by the data plane, e.g. "5xx", "429", "dial").
// Upstream names and reasons must be name-shaped (no '/', '@' or spaces),
// else they are recorded as "other".
func (t *Telemetry) AddRetry(ctx context.Context, upstream, reason string) {
	if t == nil {
		return
	}
	t.inst.retries.Add(ctx, 1, metric.WithAttributes(
		AttrUpstreamName.String(t.inst.upstreams.value(upstream)),
		AttrRetryReason.String(t.inst.retryReasons.value(reason))))
}

// AddPolicyDecision counts one policy decision: decision is
// wire.DecisionAllow or wire.DecisionDeny (any other is recorded as
// "other"), rule the rule that decided as the policy file writes it
// (e.g. "deny github.com/evil/*" or "default allow"; never the module it
// matched), which the file bounds.
func (t *Telemetry) AddPolicyDecision(ctx context.Context, decision wire.Decision, rule string) {
	if t == nil {
		return
	}
	t.inst.decisions.Add(ctx, 1, t.inst.decisionAttrs.get([2]string{decisions.value(decision), t.inst.rules.value(rule)}).add...)
}

// AddPolicyReloadFailure counts a policy reload that failed.
func (t *Telemetry) AddPolicyReloadFailure(ctx context.Context) {
	if t == nil {
		return
	}
	t.inst.reloadFailures.Add(ctx, 1)
}

// RecordTunnel records one CONNECT tunnel that ended: its duration and the
// bytes each way. It also sets the byte counts on the span in ctx (the
// CONNECT span), so that the trace says what the metrics sum up.
func (t *Telemetry) RecordTunnel(ctx context.Context, d time.Duration, bytesUp, bytesDown int64) {
	if t == nil {
		return
	}
	t.inst.tunnelDuration.Record(ctx, d.Seconds())
	t.inst.tunnelBytes.Add(ctx, bytesUp, t.inst.up.add...)
	t.inst.tunnelBytes.Add(ctx, bytesDown, t.inst.down.add...)
	trace.SpanFromContext(ctx).SetAttributes(AttrTunnelBytesUp.Int64(bytesUp), AttrTunnelBytesDown.Int64(bytesDown))
}

// AddCacheRequest counts one cache lookup; result is one of the
// wire.CacheResult values (any other is recorded as "other").
func (t *Telemetry) AddCacheRequest(ctx context.Context, result wire.CacheResult) {
	if t == nil {
		return
	}
	t.inst.cacheRequests.Add(ctx, 1, t.inst.cacheAttrs.get(cacheResults.value(result)).add...)
}
