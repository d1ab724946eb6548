package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/wire"
)

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
}

// stubRT answers every request with status and remembers the requests.
type stubRT struct {
	status int
	mu     sync.Mutex
	reqs   []*http.Request
	closed bool
}

func stubTransport(status int) *stubRT { return &stubRT{status: status} }

func (s *stubRT) RoundTrip(r *http.Request) (*http.Response, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r)
	s.mu.Unlock()
	return &http.Response{StatusCode: s.status, Body: io.NopCloser(strings.NewReader("body")), Header: http.Header{}, Request: r}, nil
}

func (s *stubRT) CloseIdleConnections() { s.closed = true }

func recordSpans(tel *Telemetry) *tracetest.SpanRecorder {
	sr := tracetest.NewSpanRecorder()
	tel.tp.RegisterSpanProcessor(sr)
	return sr
}

func spanAttr(s sdktrace.ReadOnlySpan, k attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value.String()
		}
	}
	return ""
}

func TestServerMiddleware(t *testing.T) {
	tel, r := setup(t, Config{})
	sr := recordSpans(tel)
	var inner trace.SpanContext
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "GET" {
			inner = trace.SpanContextFromContext(r.Context())
		}
		w.WriteHeader(http.StatusNotFound)
	}), func(r *http.Request) wire.Kind {
		if strings.HasSuffix(r.URL.Path, ".info") {
			return wire.KindInfo
		}
		return "unheard-of"
	})

	req := httptest.NewRequest("GET", "http://origin.fixture.test/fixture.test/a/@v/v1.0.0.info", nil)
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.ServeHTTP(httptest.NewRecorder(), req)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("PURGE", "/x", nil))

	spans := sr.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	s := spans[0]
	if s.Name() != "GET info" || s.SpanKind() != trace.SpanKindServer {
		t.Errorf("span %q kind %v, want server span GET info", s.Name(), s.SpanKind())
	}
	if s.Parent().SpanID().String() != "00f067aa0ba902b7" || s.SpanContext().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("span did not continue the incoming trace: parent %v", s.Parent())
	}
	if inner.SpanID() != s.SpanContext().SpanID() {
		t.Error("the handler does not see the server span in its context")
	}
	if got := spanAttr(s, AttrRequestKind); got != string(wire.KindInfo) {
		t.Errorf("span modgate.request.kind = %q", got)
	}
	if got := spanAttr(s, semconv.ServerAddressKey); got != DefaultServiceName {
		t.Errorf("server.address = %q, want the pinned %q (not the Host header)", got, DefaultServiceName)
	}
	if spans[1].Name() != "HTTP other" {
		t.Errorf("made-up method and kind: span %q, want \"HTTP other\"", spans[1].Name())
	}

	m := collect(t, r)[MetricServerDuration]
	sets := attrSets(m)
	if len(sets) != 2 {
		t.Fatalf("%s: %d series, want 2", MetricServerDuration, len(sets))
	}
	for _, set := range sets {
		for _, k := range []attribute.Key{semconv.ServerAddressKey, semconv.ServerPortKey, "url.path", "url.full"} {
			if set.HasValue(k) {
				t.Errorf("%s carries %s", MetricServerDuration, k)
			}
		}
		if !set.HasValue(AttrRequestKind) {
			t.Errorf("%s lacks %s: %s", MetricServerDuration, AttrRequestKind, keysOf(set))
		}
	}
	if b := m.Data.(metricdata.Histogram[float64]).DataPoints[0].Bounds; b[len(b)-1] != 60 {
		t.Errorf("%s buckets %v, want up to 60 s", MetricServerDuration, b)
	}
}

func TestServerMiddlewareActiveRequests(t *testing.T) {
	tel, r := setup(t, Config{})
	entered, release := make(chan struct{}), make(chan struct{})
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	}), func(*http.Request) wire.Kind { return wire.KindZip })
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.zip", nil))
	}()
	<-entered
	active := func() int64 {
		m, ok := collect(t, r)[MetricServerActive]
		if !ok {
			t.Fatalf("no %s", MetricServerActive)
		}
		var n int64
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			n += p.Value
			if got := keysOf(p.Attributes); got != "http.request.method,url.scheme" {
				t.Errorf("%s attributes %s", MetricServerActive, got)
			}
		}
		return n
	}
	if n := active(); n != 1 {
		t.Errorf("active requests during a request = %d, want 1", n)
	}
	close(release)
	<-done
	if n := active(); n != 0 {
		t.Errorf("active requests after = %d, want 0", n)
	}
}

func TestClientTransport(t *testing.T) {
	tel, r := setup(t, Config{})
	sr := recordSpans(tel)
	stub := stubTransport(http.StatusOK)
	client := &http.Client{Transport: tel.ClientTransport(stub)}

	ctx, parent := tel.Tracer().Start(context.Background(), "GET zip", trace.WithSpanKind(trace.SpanKindServer))
	ctx = WithUpstream(ctx, "public", wire.KindZip)
	ctx = WithClientAttributes(ctx, AttrBreakerState.String(wire.HalfOpen.String()), semconv.HTTPRequestResendCount(1))
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://proxy.fixture.test/fixture.test/a/@v/v1.0.0.zip", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	parent.End()

	sent := stub.reqs[0]
	if tp := sent.Header.Get("traceparent"); !strings.Contains(tp, parent.SpanContext().TraceID().String()) {
		t.Errorf("upstream request traceparent %q does not carry the trace", tp)
	}
	var span sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			span = s
		}
	}
	if span == nil {
		t.Fatal("no client span")
	}
	if span.Name() != "GET zip" || span.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("client span %q parent %v", span.Name(), span.Parent())
	}
	for k, want := range map[attribute.Key]string{
		AttrUpstreamName:                  "public",
		AttrRequestKind:                   string(wire.KindZip),
		AttrBreakerState:                  "half-open",
		semconv.HTTPRequestResendCountKey: "1",
		semconv.ServerAddressKey:          "proxy.fixture.test",
		semconv.URLFullKey:                "https://proxy.fixture.test/fixture.test/a/@v/v1.0.0.zip",
		semconv.HTTPResponseStatusCodeKey: "200",
	} {
		if got := spanAttr(span, k); got != want {
			t.Errorf("client span %s = %q, want %q", k, got, want)
		}
	}

	// Attempts are measured by modgate.upstream.request.duration alone.
	if m, ok := collect(t, r)[MetricClientDuration]; ok && len(attrSets(m)) > 0 {
		t.Errorf("%s is recorded: every attempt would be measured twice", MetricClientDuration)
	}

	client.CloseIdleConnections()
	if !stub.closed {
		t.Error("CloseIdleConnections did not reach the wrapped transport")
	}
}

func TestClientTransportWithoutUpstream(t *testing.T) {
	tel, _ := setup(t, Config{})
	sr := recordSpans(tel)
	rt := tel.ClientTransport(stubTransport(http.StatusNotFound))
	ctx, parent := tel.Tracer().Start(context.Background(), "HEAD other")
	resp, err := rt.RoundTrip(httptest.NewRequestWithContext(ctx, "HEAD", "http://proxy.fixture.test/x", nil))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	parent.End()
	var names []string
	for _, s := range sr.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			names = append(names, s.Name())
		}
	}
	if len(names) != 1 || names[0] != "HEAD other" {
		t.Errorf("client spans %v, want one named \"HEAD other\"", names)
	}
}

// TestClientTransportNotSampled: under a server span that does not record,
// the request goes to the wrapped transport as it is (no clone, no span),
// and InjectTrace has already passed the trace on, marked not sampled.
func TestClientTransportNotSampled(t *testing.T) {
	tel, _ := setup(t, Config{Getenv: envOf(map[string]string{"OTEL_TRACES_SAMPLER": "always_off"})})
	sr := recordSpans(tel)
	stub := stubTransport(http.StatusOK)
	rt := tel.ClientTransport(stub)
	var sc trace.SpanContext
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc = trace.SpanContextFromContext(r.Context())
		req := httptest.NewRequestWithContext(WithAttempt(r.Context(), "public", wire.KindInfo, wire.Closed, 0), "GET", "http://proxy.fixture.test/x", nil)
		tel.InjectTrace(req.Context(), req.Header)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if stub.reqs[0] != req {
			t.Error("the request was copied on its way to the wrapped transport")
		}
	}), func(*http.Request) wire.Kind { return wire.KindInfo })
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil))
	if n := len(sr.Ended()); n != 0 {
		t.Errorf("%d spans recorded with always_off", n)
	}
	if !sc.IsValid() || sc.IsSampled() {
		t.Fatalf("handler's span context %v: want a valid one, not sampled (the audit log's trace id)", sc)
	}
	want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-00"
	if got := stub.reqs[0].Header.Get("traceparent"); got != want {
		t.Errorf("upstream traceparent %q, want %q", got, want)
	}
}

// TestDefaultSamplerLimitsNewTraces: with OTEL_TRACES_SAMPLER unset, new
// traces are limited to MaxTracesPerSecond (a burst of a tenth of them), a sampled
// parent is always followed and an unsampled one never, and every request
// has a trace ID all the same.
func TestDefaultSamplerLimitsNewTraces(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	tel, _ := setup(t, Config{MaxTracesPerSecond: 30, Clock: clock})
	sr := recordSpans(tel)
	ids := map[trace.TraceID]bool{}
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ids[trace.SpanContextFromContext(r.Context()).TraceID()] = true
	}), func(*http.Request) wire.Kind { return wire.KindInfo })
	serve := func(n int, traceparent string) {
		for range n {
			req := httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)
			if traceparent != "" {
				req.Header.Set("traceparent", traceparent)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	serve(10, "")
	if n := len(sr.Ended()); n != 3 {
		t.Errorf("%d of 10 new traces recorded at once, want the burst of 3", n)
	}
	if len(ids) != 10 {
		t.Errorf("%d distinct trace IDs for 10 requests", len(ids))
	}
	serve(2, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	serve(2, "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	if n := len(sr.Ended()); n != 5 {
		t.Errorf("%d spans after 2 sampled and 2 unsampled parents, want 5", n)
	}
	clock.Advance(50 * time.Millisecond) // 1.5 tokens
	serve(10, "")
	if n := len(sr.Ended()); n != 6 {
		t.Errorf("%d spans 50 ms later, want 6 (1 more)", n)
	}
	clock.Advance(time.Second) // the bucket fills up to its burst
	serve(10, "")
	if n := len(sr.Ended()); n != 9 {
		t.Errorf("%d spans a second later, want 9 (the burst of 3 more)", n)
	}
	for _, s := range sr.Ended() {
		if s.Name() != "GET info" || !s.SpanContext().IsSampled() {
			t.Errorf("span %q sampled %v", s.Name(), s.SpanContext().IsSampled())
		}
	}
}

// TestServerMetricsForEveryRequest: http.server.request.duration counts
// sampled and unsampled requests alike, with the same attributes.
func TestServerMetricsForEveryRequest(t *testing.T) {
	tel, r := setup(t, Config{MaxTracesPerSecond: 1, Clock: &fakeClock{now: time.Unix(1e9, 0)}})
	sr := recordSpans(tel)
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}), func(*http.Request) wire.Kind { return wire.KindMod })
	for range 4 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.mod", nil))
	}
	if n := len(sr.Ended()); n != 1 {
		t.Fatalf("%d spans, want 1", n)
	}
	m := collect(t, r)[MetricServerDuration]
	points := m.Data.(metricdata.Histogram[float64]).DataPoints
	if len(points) != 1 || points[0].Count != 4 {
		t.Fatalf("%s: %d series (want 1) or count != 4: %+v", MetricServerDuration, len(points), points)
	}
	want := "error.type,http.request.method,http.response.status_code,modgate.request.kind,network.protocol.name,network.protocol.version,url.scheme"
	if got := keysOf(points[0].Attributes); got != want {
		t.Errorf("attributes %s, want %s", got, want)
	}
}

// TestServerMiddlewareKeepsWriterInterfaces: the handler's writer still
// flushes and still takes io.Copy's ReadFrom (sendfile for cached files).
func TestServerMiddlewareKeepsWriterInterfaces(t *testing.T) {
	tel, _ := setup(t, Config{})
	var flusher, readerFrom bool
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, flusher = w.(http.Flusher)
		_, readerFrom = w.(io.ReaderFrom)
		http.NewResponseController(w).Flush()
	}), func(*http.Request) wire.Kind { return wire.KindZip })
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/a/@v/v1.0.0.zip")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !flusher || !readerFrom {
		t.Errorf("writer is Flusher %v, ReaderFrom %v; want both", flusher, readerFrom)
	}
}

// TestUnsampledRequestCostsLittle counts what ServerMiddleware adds to a
// request that is not sampled, and with the SDK disabled: no otelhttp, no
// attributes, two allocations (the request's context, which holds its span
// context too, and the request copy that carries it) and none per metric.
func TestUnsampledRequestCostsLittle(t *testing.T) {
	for _, vars := range []map[string]string{{"OTEL_TRACES_SAMPLER": "always_off"}, {"OTEL_SDK_DISABLED": "true"}} {
		tel, _ := setup(t, Config{Getenv: envOf(vars)})
		h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), func(*http.Request) wire.Kind { return wire.KindInfo })
		req := httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req) // builds the attribute sets once
		if n := testing.AllocsPerRun(200, func() { h.ServeHTTP(w, req) }); n > maxUnsampledAllocs {
			t.Errorf("%v: %.0f allocations per request, want at most %d", vars, n, maxUnsampledAllocs)
		}
	}
}

const maxUnsampledAllocs = 2

// TestServerContext: the one context ServerMiddlewareOf gives a request
// carries the classifier's value, the span context of a request that is
// not sampled (answering trace's own key, learnt from the trace package),
// and passes everything else on to the request's context.
func TestServerContext(t *testing.T) {
	if !spanKeyOK {
		t.Fatal("trace's context key for spans was not learnt: every unsampled request pays for a context of its own")
	}
	type carried struct{ n int }
	type outerKey struct{}
	tel, _ := setup(t, Config{Getenv: envOf(map[string]string{"OTEL_TRACES_SAMPLER": "always_off"})})
	var got *carried
	var sc trace.SpanContext
	var outer any
	h := ServerMiddlewareOf(tel, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = Carried[carried](r.Context())
		sc = trace.SpanContextFromContext(context.WithValue(r.Context(), outerKey{}, 2))
		outer = r.Context().Value(outerKey{})
	}), func(r *http.Request, c *carried) wire.Kind {
		c.n = 42
		return wire.KindInfo
	})
	req := httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)
	h.ServeHTTP(httptest.NewRecorder(), req.WithContext(context.WithValue(req.Context(), outerKey{}, 1)))
	if got == nil || got.n != 42 {
		t.Errorf("Carried = %v, want the classifier's value", got)
	}
	if !sc.IsValid() || sc.IsSampled() {
		t.Errorf("span context %v: want a valid one, not sampled", sc)
	}
	if outer != 1 {
		t.Errorf("the request's own context value = %v, want 1", outer)
	}
	if Carried[int](req.Context()) != nil {
		t.Error("Carried outside ServerMiddlewareOf is not nil")
	}
}

// TestServerMiddlewareExtractsBaggageAlone: a request with baggage and no
// traceparent still has its baggage extracted (the middleware skips the
// propagator only when none of its fields is there).
func TestServerMiddlewareExtractsBaggageAlone(t *testing.T) {
	tel, _ := setup(t, Config{Getenv: envOf(map[string]string{"OTEL_TRACES_SAMPLER": "always_off"})})
	var got string
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = baggage.FromContext(r.Context()).Member("build").Value()
	}), func(*http.Request) wire.Kind { return wire.KindInfo })
	req := httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)
	req.Header.Set("baggage", "build=42")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got != "42" {
		t.Errorf("baggage member build = %q, want 42", got)
	}
}

// TestWithAttemptNotRecording: under a span that does not record, the
// attempt's annotations are not kept (ClientTransport makes no span there)
// and cost nothing.
func TestWithAttemptNotRecording(t *testing.T) {
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: newTraceID(), SpanID: newSpanID(),
	}))
	if n := testing.AllocsPerRun(100, func() {
		c := WithAttempt(ctx, "public", wire.KindInfo, wire.Closed, 1)
		c = WithUpstream(c, "public", wire.KindInfo)
		_ = WithClientAttributes(c, AttrHedge.Bool(true))
	}); n != 0 {
		t.Errorf("%.0f allocations under a span that does not record, want 0", n)
	}
}

// countingClock is a fakeClock that counts its readings.
type countingClock struct {
	*fakeClock
	reads int
}

func (c *countingClock) Now() time.Time {
	c.reads++
	return c.fakeClock.Now()
}

// TestServerMiddlewareReadsClockTwice: a request's start and end are the
// only clock readings the middleware makes; the default sampler takes the
// request's start for its now.
func TestServerMiddlewareReadsClockTwice(t *testing.T) {
	clock := &countingClock{fakeClock: &fakeClock{now: time.Unix(1e9, 0)}}
	tel, _ := setup(t, Config{MaxTracesPerSecond: 1, Clock: clock})
	sr := recordSpans(tel)
	h := tel.ServerMiddleware(okHandler(), func(*http.Request) wire.Kind { return wire.KindInfo })
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)) // the one token
	clock.reads = 0
	for range 3 {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil))
	}
	if clock.reads != 6 {
		t.Errorf("%d clock readings for 3 unsampled requests, want 6", clock.reads)
	}
	clock.Advance(time.Second)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil))
	if n := len(sr.Ended()); n != 2 {
		t.Errorf("%d spans after the bucket refilled, want 2", n)
	}
}
