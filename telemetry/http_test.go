package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
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
	}), func(r *http.Request) string {
		if strings.HasSuffix(r.URL.Path, ".info") {
			return KindInfo
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
	if got := spanAttr(s, AttrRequestKind); got != KindInfo {
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
	}), func(*http.Request) string { return KindZip })
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
	ctx = WithUpstream(ctx, "public", KindZip)
	ctx = WithClientAttributes(ctx, AttrBreakerState.String(BreakerHalfOpen.String()), semconv.HTTPRequestResendCount(1))
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
		AttrRequestKind:                   KindZip,
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
	resp, err := rt.RoundTrip(httptest.NewRequest("HEAD", "http://proxy.fixture.test/x", nil))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if s := sr.Ended(); len(s) != 1 || s[0].Name() != "HEAD other" {
		t.Errorf("spans %v, want one named \"HEAD other\"", s)
	}
}
