package telemetry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/wire"
)

// DefaultMaxTracesPerSecond is the rate of new traces (root spans) the
// default sampler lets through when Config.MaxTracesPerSecond is zero.
const DefaultMaxTracesPerSecond = 100

// samplerFrom reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as the
// SDK does. The SDK builds its sampler from them inside NewTracerProvider and
// does not hand it out; ServerMiddleware needs the sampler itself, to decide
// before otelhttp runs, so the six names are read here. Unset, it is def:
// for the server, modgate's default, where a sampled parent is followed and
// new traces are limited to a rate (a build of thousands of modules then
// costs a bounded number of spans, however fast it goes).
func samplerFrom(getenv func(string) string, def sdktrace.Sampler) (sdktrace.Sampler, error) {
	name := strings.ToLower(getenv("OTEL_TRACES_SAMPLER"))
	arg := getenv("OTEL_TRACES_SAMPLER_ARG")
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER_ARG=%q: want a ratio between 0 and 1", arg)
		}
		return r, nil
	}
	switch name {
	case "":
		return def, nil
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		r, err := ratio()
		return sdktrace.TraceIDRatioBased(r), err
	case "parentbased_traceidratio":
		r, err := ratio()
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), err
	}
	return nil, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio or their parentbased_ forms (unset: parent-based, at most telemetry.max_traces_per_second new traces)", name)
}

// rateLimited samples spans while a token bucket has tokens: rate tokens
// a second, and a burst of a tenth of a second's worth (at least one), so
// that the samples of a busy second are spread over it rather than spent
// on its first requests (and a build that starts after a pause does not
// pay for a whole second of traces at once).
type rateLimited struct {
	rate, burst float64
	clock       wire.Clock

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newRateLimited(rate float64, clock wire.Clock) *rateLimited {
	burst := max(1, rate/10)
	if rate <= 0 {
		burst = 0
	}
	return &rateLimited{rate: rate, burst: burst, clock: clock, tokens: burst, last: clock.Now()}
}

func (s *rateLimited) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	now, ok := requestStart(p.ParentContext)
	if !ok {
		now = s.clock.Now()
	}
	d := sdktrace.Drop
	if s.take(now) {
		d = sdktrace.RecordAndSample
	}
	return sdktrace.SamplingResult{Decision: d, Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState()}
}

// take takes a token, if there is one at now.
func (s *rateLimited) take(now time.Time) bool {
	if s.rate <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el := now.Sub(s.last); el > 0 {
		s.tokens = min(s.burst, s.tokens+el.Seconds()*s.rate)
		s.last = now
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

func (s *rateLimited) Description() string {
	return fmt.Sprintf("RateLimited{%g/s}", s.rate)
}

// A decision is ServerMiddleware's sampling decision for the server span
// it is about to let otelhttp start: the sampler runs once per request,
// before otelhttp, so that a request that is not sampled never enters
// otelhttp at all. earlySampler and idGenerator hand the decision and its
// trace ID to the SDK when otelhttp starts the span.
type decision struct {
	parent  trace.SpanContext // the (remote) parent the decision was made under
	traceID trace.TraceID
	result  sdktrace.SamplingResult
	kind    wire.Kind // the request's, for the span's name and attribute
}

type decisionKey struct{}

// earlySampler returns the decision ServerMiddleware made for the span
// being started, and asks inner about every other span (client spans,
// CONNECT spans).
type earlySampler struct{ inner sdktrace.Sampler }

func (s earlySampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	if d, ok := p.ParentContext.Value(decisionKey{}).(*decision); ok &&
		d.traceID == p.TraceID && trace.SpanContextFromContext(p.ParentContext).Equal(d.parent) {
		return d.result
	}
	return s.inner.ShouldSample(p)
}

func (s earlySampler) Description() string { return s.inner.Description() }

// idGenerator makes random IDs, except that a root span started under a
// decision takes the decision's trace ID (a traceidratio sampler decided
// on that ID).
type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if d, ok := ctx.Value(decisionKey{}).(*decision); ok && !d.parent.IsValid() {
		return d.traceID, newSpanID()
	}
	return newTraceID(), newSpanID()
}

func (idGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return newSpanID() }

// newTraceID and newSpanID use math/rand/v2's global source, which is
// seeded from the operating system, needs no lock and does not allocate.
func newTraceID() trace.TraceID {
	var id trace.TraceID
	for !id.IsValid() {
		a, b := rand.Uint64(), rand.Uint64()
		for i := range 8 {
			id[i], id[8+i] = byte(a>>(8*i)), byte(b>>(8*i))
		}
	}
	return id
}

func newSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		a := rand.Uint64()
		for i := range 8 {
			id[i] = byte(a >> (8 * i))
		}
	}
	return id
}
