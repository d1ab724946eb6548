package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/textproto"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/modgate/modgate/sidecar/wire"
)

// ServerMiddleware wraps the module listener's handler: it continues an
// incoming traceparent, starts the server span named "{METHOD} {kind}",
// records http.server.request.duration with modgate.request.kind, and keeps
// http.server.active_requests. kindOf classifies a request (a kind outside
// wire's set is recorded as "other"); it is called once per request, before
// h.
//
// The sampler decides first. A sampled request goes through otelhttp's
// handler, which makes the span; a request that is not sampled (most of
// them, under the default sampler's rate limit) never enters otelhttp: it
// gets a span context of its own (its trace ID for the audit log and
// upstream requests, not sampled) and nothing more. Either way the metrics
// are recorded here, once, with pre-built attribute sets.
//
// server.address is pinned to Config.ServerName: in forward mode the Host
// header names an arbitrary origin, and it must not become a span or metric
// dimension of ours.
func (t *Telemetry) ServerMiddleware(h http.Handler, kindOf func(*http.Request) wire.Kind) http.Handler {
	return ServerMiddlewareOf(t, h, func(r *http.Request, _ *struct{}) wire.Kind { return kindOf(r) })
}

// ServerMiddlewareOf is ServerMiddleware whose classifier also fills in a
// T, which the request's context then carries to h (Carried): a handler
// that needs more of the classification than its kind does not classify
// again. The T lives in the one context a request gets from the
// middleware (serverContext), beside its span context and sampling
// decision, so carrying it costs no allocation of its own.
func ServerMiddlewareOf[T any](t *Telemetry, h http.Handler, classify func(r *http.Request, into *T) wire.Kind) http.Handler {
	if t == nil {
		return h
	}
	// The server span exists only inside otelhttp's handler, so the kind
	// is set on it from in there.
	tagged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace.SpanFromContext(r.Context()).SetAttributes(AttrRequestKind.String(string(kindFrom(r.Context()))))
		h.ServeHTTP(w, r)
	})
	traced := otelhttp.NewHandler(tagged, t.serverName,
		otelhttp.WithTracerProvider(t.tp),
		// The metrics are recorded below, for every request alike.
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithPropagators(t.prop),
		otelhttp.WithServerName(t.serverName),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return spanName(r.Method, kindFrom(r.Context()))
		}),
	)
	extractFrom := headerKeys(t.prop.Fields())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := new(serverContext[T])
		c.start = t.clock.Now()
		kind := classify(r, &c.carried).Normal()
		method := metricMethod(r.Method)
		active := t.inst.active.get(activeKey{method, scheme(r)})
		active.Add(1)
		sw := getStatusWriter(w)

		c.Context = r.Context()
		if hasAny(r.Header, extractFrom) {
			c.Context = t.prop.Extract(c.Context, headerCarrier(r.Header))
		}
		switch {
		case t.disabled:
			// No span: an incoming trace context passes through as it came.
			h.ServeHTTP(sw, r.WithContext(c))
		default:
			parent := trace.SpanContextFromContext(c.Context)
			tid := parent.TraceID()
			if !parent.IsValid() {
				tid = newTraceID()
			}
			res := t.sampler.ShouldSample(sdktrace.SamplingParameters{
				// c, not c.Context: the same parent, and the request's
				// start for the default sampler's clock (requestStart).
				ParentContext: c, TraceID: tid, Name: spanName(r.Method, kind), Kind: trace.SpanKindServer,
			})
			if res.Decision == sdktrace.Drop {
				c.span.sc = trace.NewSpanContext(trace.SpanContextConfig{
					TraceID: tid, SpanID: newSpanID(), TraceState: res.Tracestate,
					TraceFlags: parent.TraceFlags().WithSampled(false),
				})
				h.ServeHTTP(sw, r.WithContext(c.withSpan()))
				break
			}
			c.dec = &decision{parent: parent, traceID: tid, result: res, kind: kind}
			traced.ServeHTTP(sw, r.WithContext(c))
		}

		status := sw.status
		if status == 0 {
			status = http.StatusOK // a handler that wrote nothing
		}
		putStatusWriter(sw)
		active.Add(-1)
		// Recorded under the request's incoming trace context (a sampled
		// parent's exemplar), not the span of its own.
		t.inst.serverDuration.Record(c.Context, t.clock.Now().Sub(c.start).Seconds(),
			t.inst.serverAttrs.get(serverKey{method: method, scheme: scheme(r), proto: protoVersion(r), kind: kind, status: status}).record...)
	})
}

// Carried returns the T that ServerMiddlewareOf's classifier filled in for
// the request whose context ctx is (or derives from), or nil when the
// request did not pass ServerMiddlewareOf[T].
func Carried[T any](ctx context.Context) *T {
	c, _ := ctx.Value(carriedKey[T]{}).(*T)
	return c
}

type (
	carriedKey[T any] struct{}
	startKey          struct{}
)

// requestStart returns the time ServerMiddleware took a request's start
// at, if ctx is (or derives from) the request's context: the default
// sampler, asked about the request's span, takes that for now rather than
// reading the clock again.
func requestStart(ctx context.Context) (time.Time, bool) {
	if t, ok := ctx.Value(startKey{}).(*time.Time); ok {
		return *t, true
	}
	return time.Time{}, false
}

// serverContext is the context ServerMiddlewareOf gives each request: the
// request's own (with an incoming trace context extracted), the
// classifier's T, and either the span context of a request that is not
// sampled or the decision for otelhttp's span. One allocation, and one
// lookup deep, where a context.WithValue for each of them (and the
// request copy each new context needs) cost six allocations a request.
type serverContext[T any] struct {
	context.Context
	carried T
	start   time.Time
	span    unsampledSpan // valid when the request is not sampled
	dec     *decision     // set when it is (rarely: kept out of every request's allocation)
}

func (c *serverContext[T]) Value(key any) any {
	switch key {
	case carriedKey[T]{}:
		return &c.carried
	case startKey{}:
		return &c.start
	case decisionKey{}:
		if c.dec != nil {
			return c.dec
		}
	case spanKey:
		if spanKeyOK && c.span.sc.IsValid() {
			return &c.span
		}
	}
	return c.Context.Value(key)
}

// withSpan returns c as the context of an unsampled request's handler.
// serverContext answers trace's own key for the current span itself
// (spanKey); should that key not have been learnt, the span goes into a
// context of its own, as trace.ContextWithSpanContext would put it.
func (c *serverContext[T]) withSpan() context.Context {
	if spanKeyOK {
		return c
	}
	return trace.ContextWithSpan(c, &c.span)
}

// unsampledSpan is the span of a request that is not sampled: its span
// context and nothing else, as trace.ContextWithSpanContext's span is
// (tracenoop.Span's methods, which cannot be given a span context of our
// own). It lives in its serverContext, so a context can carry it without
// an allocation of its own.
type unsampledSpan struct {
	embedded.Span
	sc trace.SpanContext
}

func (s *unsampledSpan) SpanContext() trace.SpanContext        { return s.sc }
func (*unsampledSpan) IsRecording() bool                       { return false }
func (*unsampledSpan) SetStatus(codes.Code, string)            {}
func (*unsampledSpan) SetAttributes(...attribute.KeyValue)     {}
func (*unsampledSpan) End(...trace.SpanEndOption)              {}
func (*unsampledSpan) RecordError(error, ...trace.EventOption) {}
func (*unsampledSpan) AddEvent(string, ...trace.EventOption)   {}
func (*unsampledSpan) AddLink(trace.Link)                      {}
func (*unsampledSpan) SetName(string)                          {}
func (*unsampledSpan) TracerProvider() trace.TracerProvider    { return tracenoop.TracerProvider{} }

// spanKey is the key under which otel's trace package keeps the current
// span in a context (trace.ContextWithSpan stores it there,
// trace.SpanFromContext looks it up). The key is unexported; it is learnt
// once, from what SpanFromContext asks a context for, and spanKeyOK says
// whether ContextWithSpan really stores a span under it. If it does not
// (a later otel), serverContext leaves the key alone and withSpan adds a
// context for the span: slower, the same behaviour.
var spanKey, spanKeyOK = learnSpanKey()

func learnSpanKey() (any, bool) {
	var p keyProbe
	trace.SpanFromContext(&p)
	if p.keys != 1 || p.key == nil {
		return nil, false
	}
	s := new(unsampledSpan)
	got := trace.ContextWithSpan(context.Background(), s).Value(p.key)
	if got != trace.Span(s) {
		return nil, false
	}
	return p.key, true
}

// keyProbe is a context that remembers the keys it is asked for.
type keyProbe struct {
	context.Context
	key  any
	keys int
}

func (p *keyProbe) Value(key any) any {
	p.key = key
	p.keys++
	return nil
}

// headerKeys returns the canonical header names of a propagator's fields.
func headerKeys(fields []string) []string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = canonicalKey(f)
	}
	return keys
}

// hasAny reports whether h has any of keys (canonical): a request without
// traceparent, tracestate or baggage has nothing to extract, which the
// propagators would find out only header by header, through interfaces.
func hasAny(h http.Header, keys []string) bool {
	for _, k := range keys {
		if len(h[k]) > 0 {
			return true
		}
	}
	return false
}

// statusWriter remembers the status of the answer, for the metrics. It
// passes on what the server's own ResponseWriter offers beyond Write:
// Flush, ReadFrom (sendfile for cached files) and Unwrap (for
// http.ResponseController).
type statusWriter struct {
	w      http.ResponseWriter
	status int
}

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

func getStatusWriter(w http.ResponseWriter) *statusWriter {
	sw := statusWriters.Get().(*statusWriter)
	sw.w, sw.status = w, 0
	return sw
}

func putStatusWriter(sw *statusWriter) {
	sw.w = nil
	statusWriters.Put(sw)
}

func (s *statusWriter) Header() http.Header { return s.w.Header() }

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code
	}
	s.w.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.w.Write(b)
}

func (s *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if rf, ok := s.w.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{s.w}, r)
}

func (s *statusWriter) Flush() {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	http.NewResponseController(s.w).Flush()
}

// Unwrap lets http.ResponseController reach the server's ResponseWriter.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.w }

// headerCarrier is propagation.HeaderCarrier without the allocation of
// canonicalising the propagators' own header names on every request.
type headerCarrier http.Header

func canonicalKey(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "baggage":
		return "Baggage"
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

func (c headerCarrier) Get(k string) string {
	if v := c[canonicalKey(k)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c headerCarrier) Set(k, v string) { c[canonicalKey(k)] = []string{v} }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectTrace writes the trace context of ctx (traceparent, tracestate,
// baggage) into h, the header of a request modgate is about to send
// upstream. A sampled attempt's ClientTransport span replaces it with its
// own; a request that is not sampled still passes its trace ID on, marked
// not sampled, so that a parent-based sampler upstream agrees.
func (t *Telemetry) InjectTrace(ctx context.Context, h http.Header) {
	if t == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	t.prop.Inject(ctx, headerCarrier(h))
}

// ClientTransport wraps rt (if nil, http.DefaultTransport) so that each
// request it sends under a recording span is a client span named
// "{METHOD} {kind}" with server.address, url.full,
// http.response.status_code, modgate.upstream.name and the attempt's
// attributes (WithAttempt, WithClientAttributes), and carries the trace
// upstream in traceparent. A request whose server span is not recording
// goes straight to rt. The name and kind come from WithAttempt on the
// request's context; without it they are "other". Attempts are measured by
// RecordUpstream, by upstream, kind and outcome, never by destination host.
//
// Each RoundTrip is one attempt, so put ClientTransport inside retries: each
// try is then a span of its own.
func (t *Telemetry) ClientTransport(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	if t == nil {
		return rt
	}
	return &clientTransport{
		traced: otelhttp.NewTransport(annotatingTransport{rt},
			otelhttp.WithTracerProvider(t.tp),
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelhttp.WithPropagators(t.prop),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
				return spanName(r.Method, upstreamFrom(r.Context()).kind)
			}),
		),
		rt: rt,
	}
}

// WithUpstream returns a context that names, for ClientTransport's span,
// the upstream a request goes to and its kind. name is the upstream's
// configured name (in forward mode, use a fixed name such as "origin": the
// host is on the span as server.address already).
//
// WithUpstream, WithAttempt and WithClientAttributes return ctx itself
// when its span is not recording: ClientTransport makes no span under it,
// and a span that is not recording never starts again.
func WithUpstream(ctx context.Context, name string, kind wire.Kind) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	u := upstreamFrom(ctx)
	u.name, u.kind = name, kind.Normal()
	return context.WithValue(ctx, upstreamKey{}, u)
}

// WithAttempt is WithUpstream for one attempt: it also gives the breaker's
// state (modgate.breaker.state) and how many times the request was sent
// before (http.request.resend_count). They are kept as plain values and
// become span attributes only when the attempt's span is recording.
func WithAttempt(ctx context.Context, name string, kind wire.Kind, breaker wire.BreakerState, resends int) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	u := upstreamFrom(ctx)
	u.name, u.kind, u.breaker, u.resends, u.attempt = name, kind.Normal(), breaker, resends, true
	return context.WithValue(ctx, upstreamKey{}, u)
}

// WithClientAttributes returns a context whose ClientTransport span also
// carries attrs (e.g. AttrHedge). They go on the span only, never on a
// metric.
func WithClientAttributes(ctx context.Context, attrs ...attribute.KeyValue) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	u := upstreamFrom(ctx)
	u.attrs = append(u.attrs[:len(u.attrs):len(u.attrs)], attrs...)
	return context.WithValue(ctx, upstreamKey{}, u)
}

type upstreamKey struct{}

type upstreamInfo struct {
	name    string
	kind    wire.Kind
	breaker wire.BreakerState
	resends int
	attempt bool // breaker and resends are set
	attrs   []attribute.KeyValue
}

// kindFrom returns the kind of the request whose server span is being
// started (ServerMiddleware's decision carries it).
func kindFrom(ctx context.Context) wire.Kind {
	if d, ok := ctx.Value(decisionKey{}).(*decision); ok {
		return d.kind
	}
	return wire.KindOther
}

func upstreamFrom(ctx context.Context) upstreamInfo {
	if u, ok := ctx.Value(upstreamKey{}).(upstreamInfo); ok {
		return u
	}
	return upstreamInfo{name: otherValue, kind: wire.KindOther}
}

// annotatingTransport runs inside otelhttp's transport, where the client
// span is in the request's context.
type annotatingTransport struct{ rt http.RoundTripper }

func (a annotatingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		u := upstreamFrom(ctx)
		// One call: each SetAttributes may grow the span's slice anew.
		attrs := make([]attribute.KeyValue, 0, 4+len(u.attrs))
		attrs = append(attrs, AttrUpstreamName.String(u.name), AttrRequestKind.String(string(u.kind)))
		if u.attempt {
			attrs = append(attrs, AttrBreakerState.String(u.breaker.String()), semconv.HTTPRequestResendCount(u.resends))
		}
		span.SetAttributes(append(attrs, u.attrs...)...)
	}
	return a.rt.RoundTrip(r)
}

// clientTransport sends a request through otelhttp only when its parent
// span is recording, and keeps CloseIdleConnections, which otelhttp's
// transport does not pass on: http.Client.CloseIdleConnections and a
// server's shutdown rely on it.
type clientTransport struct {
	traced *otelhttp.Transport
	rt     http.RoundTripper
}

func (c *clientTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if trace.SpanFromContext(r.Context()).IsRecording() {
		return c.traced.RoundTrip(r)
	}
	return c.rt.RoundTrip(r)
}

// CloseIdleConnections closes the idle connections of the wrapped transport.
func (c *clientTransport) CloseIdleConnections() {
	if ci, ok := c.rt.(interface{ CloseIdleConnections() }); ok {
		ci.CloseIdleConnections()
	}
}

var knownMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodConnect: true,
	http.MethodOptions: true, http.MethodTrace: true,
}

// spanNames holds every "{METHOD} {kind}" there is, so that naming a span
// allocates nothing.
var spanNames = func() map[spanNameKey]string {
	m := map[spanNameKey]string{}
	for _, kind := range wire.Kinds() {
		for method := range knownMethods {
			m[spanNameKey{method, kind}] = method + " " + string(kind)
		}
		m[spanNameKey{"HTTP", kind}] = "HTTP " + string(kind)
	}
	return m
}()

type spanNameKey struct {
	method string
	kind   wire.Kind
}

// spanName is "{METHOD} {kind}"; a made-up method would be a new span name
// per request, so it is "HTTP" as semconv says.
func spanName(method string, kind wire.Kind) string {
	if !knownMethods[method] {
		method = "HTTP"
	}
	return spanNames[spanNameKey{method, kind.Normal()}]
}

// metricMethod is the method as the http.request.method attribute of
// metrics takes it ("_OTHER" for a made-up one, as semconv says).
func metricMethod(m string) string {
	if knownMethods[m] {
		return m
	}
	return "_OTHER"
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// protoVersion is network.protocol.version: "1.1", "2", "1.0".
func protoVersion(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return "1.1"
	case r.ProtoMajor == 2:
		return "2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0"
	}
	return "_OTHER"
}
