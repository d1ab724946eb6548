package telemetry

import (
	"context"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// ServerMiddleware wraps the module listener's handler: it continues an
// incoming traceparent, starts the server span named "{METHOD} {kind}",
// records http.server.request.duration with modgate.request.kind, and keeps
// http.server.active_requests. kindOf classifies a request (one of the Kind
// constants; anything else is "other"); it is called once per request,
// before h.
//
// server.address is pinned to Config.ServerName: in forward mode the Host
// header names an arbitrary origin, and it must not become a span or metric
// dimension of ours.
func (t *Telemetry) ServerMiddleware(h http.Handler, kindOf func(*http.Request) string) http.Handler {
	if t == nil {
		return h
	}
	// The server span exists only inside otelhttp's handler, so the kind
	// is set on it from in there.
	tagged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace.SpanFromContext(r.Context()).SetAttributes(AttrRequestKind.String(kindFrom(r.Context())))
		h.ServeHTTP(w, r)
	})
	inner := otelhttp.NewHandler(tagged, t.serverName,
		otelhttp.WithTracerProvider(t.tp),
		otelhttp.WithMeterProvider(t.mp),
		otelhttp.WithPropagators(t.prop),
		otelhttp.WithServerName(t.serverName),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			return spanMethod(r.Method) + " " + kindFrom(r.Context())
		}),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := NormalizeKind(kindOf(r))
		ctx := context.WithValue(r.Context(), kindKey{}, kind)
		// otelhttp adds the labeler's attributes to its metrics; this is
		// the way in that its v0.72 does not deprecate.
		labeler := &otelhttp.Labeler{}
		labeler.Add(AttrRequestKind.String(kind))
		ctx = otelhttp.ContextWithLabeler(ctx, labeler)

		active := t.inst.activeAttrs.get([2]string{metricMethod(r.Method), scheme(r)})
		t.inst.activeRequests.Add(ctx, 1, active)
		defer t.inst.activeRequests.Add(context.WithoutCancel(ctx), -1, active)
		inner.ServeHTTP(w, r.WithContext(ctx))
	})
}

// ClientTransport wraps rt (if nil, http.DefaultTransport) so that each
// request it sends is a client span named "{METHOD} {kind}" with
// server.address, url.full, http.response.status_code,
// modgate.upstream.name and whatever WithClientAttributes added, carries the
// trace upstream in traceparent, and counts in http.client.request.duration
// by upstream name and kind — never by destination host. The name and kind
// come from WithUpstream on the request's context; without it they are
// "other".
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
	inner := &annotatingTransport{rt: rt, upstreams: &t.inst.upstreams}
	return &clientTransport{
		Transport: otelhttp.NewTransport(inner,
			otelhttp.WithTracerProvider(t.tp),
			// No http.client.* metrics: modgate.upstream.request.duration
			// says the same by upstream, kind and outcome, and measuring
			// twice per attempt is a cost on the hot path.
			otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
			otelhttp.WithPropagators(t.prop),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
				return spanMethod(r.Method) + " " + upstreamFrom(r.Context()).kind
			}),
		),
		rt: rt,
	}
}

// WithUpstream returns a context that names, for ClientTransport's span and
// metrics, the upstream a request goes to and its kind. name is the
// upstream's configured name (in forward mode, use a fixed name such as
// "origin": the host is on the span as server.address already).
func WithUpstream(ctx context.Context, name, kind string) context.Context {
	u := upstreamFrom(ctx)
	u.name, u.kind = name, NormalizeKind(kind)
	return context.WithValue(ctx, upstreamKey{}, u)
}

// WithClientAttributes returns a context whose ClientTransport span also
// carries attrs — per attempt, e.g. AttrBreakerState and
// semconv's http.request.resend_count. They go on the span only, never on
// a metric.
func WithClientAttributes(ctx context.Context, attrs ...attribute.KeyValue) context.Context {
	u := upstreamFrom(ctx)
	u.attrs = append(u.attrs[:len(u.attrs):len(u.attrs)], attrs...)
	return context.WithValue(ctx, upstreamKey{}, u)
}

type (
	kindKey     struct{}
	upstreamKey struct{}
)

type upstreamInfo struct {
	name, kind string
	attrs      []attribute.KeyValue
}

func kindFrom(ctx context.Context) string {
	if k, ok := ctx.Value(kindKey{}).(string); ok {
		return k
	}
	return KindOther
}

func upstreamFrom(ctx context.Context) upstreamInfo {
	if u, ok := ctx.Value(upstreamKey{}).(upstreamInfo); ok {
		return u
	}
	return upstreamInfo{name: otherValue, kind: KindOther}
}

// annotatingTransport runs inside otelhttp's transport, where the client
// span and the client labeler are in the request's context.
type annotatingTransport struct {
	rt        http.RoundTripper
	upstreams *cappedSet
}

func (a *annotatingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	u := upstreamFrom(ctx)
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		// One call: each SetAttributes may grow the span's slice anew.
		attrs := make([]attribute.KeyValue, 0, 2+len(u.attrs))
		span.SetAttributes(append(append(attrs, AttrUpstreamName.String(u.name), AttrRequestKind.String(u.kind)), u.attrs...)...)
	}
	if l, ok := otelhttp.ClientLabelerFromContext(ctx); ok {
		l.Add(AttrUpstreamName.String(a.upstreams.value(u.name)), AttrRequestKind.String(u.kind))
	}
	return a.rt.RoundTrip(r)
}

// clientTransport keeps CloseIdleConnections, which otelhttp's transport
// does not pass on: http.Client.CloseIdleConnections and a server's
// shutdown rely on it.
type clientTransport struct {
	*otelhttp.Transport
	rt http.RoundTripper
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

// spanMethod is the method as span names use it: a made-up method would be
// a new span name per request, so it is "HTTP" as semconv says.
func spanMethod(m string) string {
	if knownMethods[m] {
		return m
	}
	return "HTTP"
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
