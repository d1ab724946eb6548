package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// A build's trace context reaches modgate in the URLs the build is given
// (README.md, "Traces and metrics"): the go command sends no traceparent,
// but it keeps a GOPROXY URL's path, and net/http and git send a proxy
// URL's user information as Proxy-Authorization.
const (
	// TracePathElem is the first path element of a GOPROXY URL that
	// carries a build's trace context: http://host/.trace/<traceparent>.
	// A module path's first element never starts with a dot
	// (golang.org/x/mod/module.CheckPath), so it names no module.
	TracePathElem = ".trace"
	// TraceUserPrefix starts the part of a proxy URL's user name that
	// carries a build's trace context: trace-<traceparent>, or
	// <name>+trace-<traceparent> with a clients: identity.
	TraceUserPrefix = "trace-"
	// MaxTraceparent bounds a carried traceparent. Version 00 is 55
	// characters; later versions may append fields.
	MaxTraceparent = 128
)

// ParseTraceparent reads a W3C traceparent as the tracecontext propagator
// does, refusing what it cannot continue.
func ParseTraceparent(s string) (trace.SpanContext, error) {
	if len(s) > MaxTraceparent {
		return trace.SpanContext{}, fmt.Errorf("trace context of %d bytes: a traceparent has at most %d", len(s), MaxTraceparent)
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": s})
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return trace.SpanContext{}, fmt.Errorf("trace context %q is not a W3C traceparent (want 00-<32 hex>-<16 hex>-<2 hex>)", s)
	}
	return sc, nil
}

// FormatTraceparent writes sc as a W3C traceparent.
func FormatTraceparent(sc trace.SpanContext) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	return c["traceparent"]
}

// TraceGOPROXY returns the GOPROXY entry base (modgate's URL) carrying sc.
func TraceGOPROXY(base string, sc trace.SpanContext) string {
	return strings.TrimSuffix(base, "/") + "/" + TracePathElem + "/" + FormatTraceparent(sc)
}

// TraceUser returns the proxy URL user name that carries sc for user (""
// when forward mode asks nobody who they are).
func TraceUser(user string, sc trace.SpanContext) string {
	if user == "" {
		return TraceUserPrefix + FormatTraceparent(sc)
	}
	return user + "+" + TraceUserPrefix + FormatTraceparent(sc)
}

// SplitTraceUser undoes TraceUser: the user name without the context, and
// the context. ok is false when user carries none (or one that does not
// parse, which is then left to authentication like any user name).
func SplitTraceUser(user string) (name string, sc trace.SpanContext, ok bool) {
	i := strings.LastIndex(user, TraceUserPrefix)
	if i < 0 || (i > 0 && user[i-1] != '+') {
		return user, trace.SpanContext{}, false
	}
	sc, err := ParseTraceparent(user[i+len(TraceUserPrefix):])
	if err != nil {
		return user, trace.SpanContext{}, false
	}
	if i > 0 {
		i-- // the '+'
	}
	return user[:i], sc, true
}

// BuildTracing is the tracer provider of `modgate exec`: one root span
// per build, exported as the OTEL_* variables say.
type BuildTracing struct {
	tp *sdktrace.TracerProvider
	// Exporting says where the build's span goes, for messages.
	Exporting string
}

// SetupBuildTracing builds the tracer provider of a build's root span
// from cfg.Getenv (service name, sampler, exporter). The sampler defaults
// to parentbased_always_on: a build is one span, nothing to limit.
func SetupBuildTracing(ctx context.Context, cfg Config) (*BuildTracing, error) {
	env, err := cfg.base(ctx)
	if err != nil {
		return nil, err
	}
	sampler, err := env.sampler(sdktrace.ParentBased(sdktrace.AlwaysSample()))
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(env.res), sdktrace.WithSampler(sampler)}
	bt := &BuildTracing{Exporting: "not exported (OTEL_EXPORTER_OTLP_ENDPOINT is not set)"}
	if name, ok := exporterWanted(env.getenv, "TRACES", env.disabled); ok {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: traces exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithSyncer(exp)) // one span: no batching to wait for
		bt.Exporting = "exported (" + name + ")"
	}
	for _, exp := range cfg.SpanExporters {
		opts = append(opts, sdktrace.WithSyncer(exp))
	}
	bt.tp = sdktrace.NewTracerProvider(opts...)
	return bt, nil
}

// Tracer returns the tracer of the build's span.
func (b *BuildTracing) Tracer() trace.Tracer { return b.tp.Tracer(ScopeName) }

// Shutdown flushes the build's span.
func (b *BuildTracing) Shutdown(ctx context.Context) error { return b.tp.Shutdown(ctx) }

// BuildSummary is what modgate served for one build (the requests of one
// trace), as its admin port's /debug/builds/{trace_id} answers it: the
// counts agree with the audit log, whether or not the trace was sampled.
type BuildSummary struct {
	TraceID string `json:"trace_id"`
	// Name, Command, Dir, Start, End and ExitCode are what `modgate exec`
	// told modgate of the build; empty when nothing did.
	Name     string    `json:"name,omitempty"`
	Command  string    `json:"command,omitempty"`
	Dir      string    `json:"dir,omitempty"`
	Start    time.Time `json:"start,omitzero"`
	End      time.Time `json:"end,omitzero"`
	ExitCode *int      `json:"exit_code,omitempty"`

	// First and Last bound the requests: the first's start, the last's end.
	First time.Time `json:"first_request,omitzero"`
	Last  time.Time `json:"last_request,omitzero"`
	// Requests is the number of requests served for the build: its audit
	// lines.
	Requests int                    `json:"requests"`
	InFlight int                    `json:"in_flight,omitempty"`
	ByKind   map[string]KindSummary `json:"by_kind"`
	// ByOutcome counts ok, notfound, denied, error and gone (the client
	// went away before the answer).
	ByOutcome map[string]int `json:"by_outcome"`
	Bytes     int64          `json:"bytes"`
	CacheHits int            `json:"cache_hits"`
	// WaitMS is the time at least one of the build's requests was in
	// modgate: how long the build waited on its module traffic at most.
	// SumMS adds up every request's time.
	WaitMS float64 `json:"wait_ms"`
	SumMS  float64 `json:"sum_ms"`
	// Upstreams is the time each upstream (or "cache", or a forward-mode
	// host) spent serving the build.
	Upstreams    map[string]UpstreamTime `json:"upstreams,omitempty"`
	Slowest      []ModuleTime            `json:"slowest_modules,omitempty"`
	Failures     []BuildFailure          `json:"failures,omitempty"`
	Fallthroughs int                     `json:"fallthroughs"`
	Breakers     []BreakerOpening        `json:"breaker_openings,omitempty"`
	// Waterfall holds the requests one by one, in the order they
	// started, up to a bound (WaterfallTruncated says it was reached).
	Waterfall          []BuildRequest `json:"waterfall,omitempty"`
	WaterfallTruncated bool           `json:"waterfall_truncated,omitempty"`
}

// KindSummary is one request kind's part of a build.
type KindSummary struct {
	Requests int            `json:"requests"`
	Outcomes map[string]int `json:"outcomes"`
	SumMS    float64        `json:"sum_ms"`
	MeanMS   float64        `json:"mean_ms"`
	MaxMS    float64        `json:"max_ms"`
}

// UpstreamTime is one upstream's part of a build.
type UpstreamTime struct {
	Requests int     `json:"requests"`
	SumMS    float64 `json:"sum_ms"`
}

// ModuleTime is the time a module@version's requests took.
type ModuleTime struct {
	Module   string  `json:"module"`
	Version  string  `json:"version,omitempty"`
	Upstream string  `json:"upstream,omitempty"`
	Requests int     `json:"requests"`
	SumMS    float64 `json:"sum_ms"`
}

// BuildFailure is a request of the build that was not served.
type BuildFailure struct {
	Kind    string `json:"kind"`
	Module  string `json:"module,omitempty"`
	Version string `json:"version,omitempty"`
	Host    string `json:"host,omitempty"`
	Status  int    `json:"status"`
	// Code is modgate's error code; Answer the text/plain body's lines,
	// as the go command quotes them (`modgate explain` reads them).
	Code    string   `json:"code,omitempty"`
	Answer  []string `json:"answer,omitempty"`
	Explain string   `json:"explain,omitempty"`
}

// BreakerOpening is a circuit breaker that opened during the build.
type BreakerOpening struct {
	Time     time.Time `json:"time"`
	Upstream string    `json:"upstream"`
	Reason   string    `json:"reason"`
}

// BuildRequest is one request of a build.
type BuildRequest struct {
	Start      time.Time `json:"start"`
	DurationMS float64   `json:"duration_ms"`
	Method     string    `json:"method"`
	Mode       string    `json:"mode"`
	Kind       string    `json:"kind"`
	Module     string    `json:"module,omitempty"`
	Version    string    `json:"version,omitempty"`
	Host       string    `json:"host,omitempty"`
	Upstream   string    `json:"upstream,omitempty"`
	Cache      string    `json:"cache,omitempty"`
	Status     int       `json:"status"`
	Outcome    string    `json:"outcome"`
	Bytes      int64     `json:"bytes"`
	Code       string    `json:"code,omitempty"`
	SpanID     string    `json:"span_id,omitempty"`
}

// BuildComparison is a build's module traffic against a baseline build's.
type BuildComparison struct {
	// Ratio is the build's WaitMS over the baseline's.
	Ratio float64 `json:"ratio"`
	// Kinds compares the mean latency per request kind.
	Kinds []RatioRow `json:"kinds"`
	// Upstreams compares the time spent at each upstream.
	Upstreams []RatioRow `json:"upstreams"`
	// Worst names the upstream whose time grew the most, if any grew.
	Worst string `json:"worst_upstream,omitempty"`
	// Exceeded lists what went past the ratio allowed.
	Exceeded []string `json:"exceeded,omitempty"`
}

// RatioRow is one line of a BuildComparison.
type RatioRow struct {
	Name       string  `json:"name"`
	BaselineMS float64 `json:"baseline_ms"`
	NowMS      float64 `json:"now_ms"`
	Ratio      float64 `json:"ratio"`
}

// errNoBaseline is returned for a baseline that has no module traffic.
var errNoBaseline = errors.New("the baseline build made no request to modgate")

// minGrowthMS keeps noise out: a time past the ratio counts only when it
// grew by this much too (a 3 ms request that takes 9 ms on a busy CI
// machine is not a slow build).
const minGrowthMS = 100

// CompareBuilds compares now with base. A ratio past maxRatio of the
// build's waiting time, or of a kind's mean latency, is listed in
// Exceeded; Worst is the upstream that added the most time.
func CompareBuilds(base, now BuildSummary, maxRatio float64) (BuildComparison, error) {
	var c BuildComparison
	if base.Requests == 0 {
		return c, errNoBaseline
	}
	ratio := func(b, n float64) float64 {
		if b <= 0 {
			b = 0.001
		}
		return n / b
	}
	c.Ratio = ratio(base.WaitMS, now.WaitMS)
	if c.Ratio > maxRatio && now.WaitMS-base.WaitMS >= minGrowthMS {
		c.Exceeded = append(c.Exceeded, fmt.Sprintf("module time %s, %.1f× the baseline's %s", msText(now.WaitMS), c.Ratio, msText(base.WaitMS)))
	}
	for _, k := range sortedKeys(base.ByKind, now.ByKind) {
		b, n := base.ByKind[k], now.ByKind[k]
		if b.Requests == 0 || n.Requests == 0 {
			continue
		}
		row := RatioRow{Name: k, BaselineMS: b.MeanMS, NowMS: n.MeanMS, Ratio: ratio(b.MeanMS, n.MeanMS)}
		c.Kinds = append(c.Kinds, row)
		if row.Ratio > maxRatio && n.MeanMS-b.MeanMS >= minGrowthMS {
			c.Exceeded = append(c.Exceeded, fmt.Sprintf("%s requests %s on average, %.1f× the baseline's %s", k, msText(n.MeanMS), row.Ratio, msText(b.MeanMS)))
		}
	}
	var worst float64
	for _, u := range sortedKeys(base.Upstreams, now.Upstreams) {
		b, n := base.Upstreams[u], now.Upstreams[u]
		c.Upstreams = append(c.Upstreams, RatioRow{Name: u, BaselineMS: b.SumMS, NowMS: n.SumMS, Ratio: ratio(b.SumMS, n.SumMS)})
		if grew := n.SumMS - b.SumMS; grew > worst && grew >= minGrowthMS {
			worst, c.Worst = grew, u
		}
	}
	return c, nil
}

func sortedKeys[V any](ms ...map[string]V) []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range ms {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

func msText(ms float64) string {
	switch {
	case ms < 10:
		return fmt.Sprintf("%.1f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.1f s", ms/1000)
}
