package telemetry

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/modgate/modgate/sidecar/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// envOf returns a Config.Getenv that knows only vars.
func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// otelEnv sets vars in the process environment too, for the test: Setup
// decides from Getenv whether to export, and autoexport and the SDK then
// read the details from the process environment.
func otelEnv(t *testing.T, vars map[string]string) func(string) string {
	for k, v := range vars {
		t.Setenv(k, v)
	}
	return envOf(vars)
}

// setup runs Setup with a manual metric reader and shuts it down at the end
// of the test.
func setup(t *testing.T, cfg Config) (*Telemetry, *sdkmetric.ManualReader) {
	t.Helper()
	r := sdkmetric.NewManualReader()
	cfg.reader = r
	if cfg.HostName == "" {
		cfg.HostName = "host.example.test"
	}
	tel, err := Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return tel, r
}

// otlpReceiver is an OTLP/HTTP receiver: it keeps every export request.
type otlpReceiver struct {
	*httptest.Server
	mu      sync.Mutex
	traces  []*coltracepb.ExportTraceServiceRequest
	metrics []*colmetricpb.ExportMetricsServiceRequest
	paths   []string
	headers []http.Header
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	rc := &otlpReceiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.paths = append(rc.paths, r.URL.Path)
		rc.headers = append(rc.headers, r.Header.Clone())
		var resp proto.Message
		switch {
		case strings.HasSuffix(r.URL.Path, "traces"):
			req := &coltracepb.ExportTraceServiceRequest{}
			if err := proto.Unmarshal(body, req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rc.traces = append(rc.traces, req)
			resp = &coltracepb.ExportTraceServiceResponse{}
		case strings.HasSuffix(r.URL.Path, "metrics"):
			req := &colmetricpb.ExportMetricsServiceRequest{}
			if err := proto.Unmarshal(body, req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rc.metrics = append(rc.metrics, req)
			resp = &colmetricpb.ExportMetricsServiceResponse{}
		default:
			http.NotFound(w, r)
			return
		}
		b, _ := proto.Marshal(resp)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(b)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *otlpReceiver) counts() (traces, metrics int, paths []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.traces), len(rc.metrics), append([]string(nil), rc.paths...)
}

// spanNames lists the names of every exported span.
func (rc *otlpReceiver) spanNames() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var names []string
	for _, req := range rc.traces {
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					names = append(names, s.Name)
				}
			}
		}
	}
	return names
}

func resourceAttr(attrs []*commonpb.KeyValue, key string) string {
	for _, kv := range attrs {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

func TestSetupExportsOverOTLPHTTP(t *testing.T) {
	rc := newOTLPReceiver(t)
	tel, err := Setup(context.Background(), Config{
		Version:  "v1.2.3",
		HostName: "host.example.test",
		Getenv: otelEnv(t, map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
			"OTEL_EXPORTER_OTLP_HEADERS":  "authorization=Bearer%20token,x-tenant=builds",
			"OTEL_RESOURCE_ATTRIBUTES":    "deployment.environment.name=ci,service.name=ignored",
			"OTEL_SERVICE_NAME":           "modgate-test",
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := tel.Exporting(); !strings.Contains(got, "traces (OTLP http/protobuf to "+rc.URL) || !strings.Contains(got, "metrics (OTLP http/protobuf to "+rc.URL) {
		t.Errorf("Exporting() = %q, want both signals to %s", got, rc.URL)
	}
	ctx, parent := tel.Tracer().Start(context.Background(), "GET info")
	_, child := tel.Tracer().Start(ctx, "GET info", trace.WithSpanKind(trace.SpanKindClient))
	child.End()
	parent.End()
	tel.RecordUpstream(ctx, "public", wire.KindInfo, OutcomeOK, 12*time.Millisecond)

	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	traces, metrics, paths := rc.counts()
	if traces < 1 || metrics < 1 {
		t.Fatalf("receiver got %d trace and %d metric exports (paths %v), want at least one of each after Shutdown", traces, metrics, paths)
	}
	for _, p := range paths {
		if p != "/v1/traces" && p != "/v1/metrics" {
			t.Errorf("export to %s, want /v1/traces or /v1/metrics", p)
		}
	}
	if names := rc.spanNames(); len(names) != 2 {
		t.Errorf("exported spans %v, want 2", names)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	h := rc.headers[0]
	if h.Get("Authorization") != "Bearer token" || h.Get("X-Tenant") != "builds" {
		t.Errorf("export headers %v, want those of OTEL_EXPORTER_OTLP_HEADERS", h)
	}
	res := rc.traces[0].ResourceSpans[0].Resource.Attributes
	for key, want := range map[string]string{
		"service.name":                "modgate-test", // OTEL_SERVICE_NAME wins over everything
		"service.version":             "v1.2.3",
		"host.name":                   "host.example.test",
		"deployment.environment.name": "ci",
		"telemetry.sdk.language":      "go",
	} {
		if got := resourceAttr(res, key); got != want {
			t.Errorf("resource %s = %q, want %q", key, got, want)
		}
	}
}

func TestSetupSignalSpecificEndpoints(t *testing.T) {
	rc := newOTLPReceiver(t)
	tel, err := Setup(context.Background(), Config{Getenv: otelEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rc.URL + "/collector/traces", // used as given
		"OTEL_METRICS_EXPORTER":              "none",
		"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://127.0.0.1:1",
	})})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(context.Background(), "CONNECT")
	span.End()
	tel.AddCacheRequest(context.Background(), wire.CacheHit)
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	traces, metrics, paths := rc.counts()
	if traces != 1 || metrics != 0 || len(paths) != 1 || paths[0] != "/collector/traces" {
		t.Errorf("exports: %d traces, %d metrics, paths %v; want one trace export to /collector/traces and no metrics", traces, metrics, paths)
	}
}

// TestSetupNoEndpointExportsNothing sets the endpoint in the process
// environment, where autoexport would look, but not in Config.Getenv: the
// decision to export follows Getenv.
func TestSetupNoEndpointExportsNothing(t *testing.T) {
	rc := newOTLPReceiver(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rc.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rc.URL+"/v1/traces")
	for _, getenv := range []func(string) string{nil, envOf(nil)} {
		tel, err := Setup(context.Background(), Config{Getenv: getenv})
		if err != nil {
			t.Fatal(err)
		}
		if got := tel.Exporting(); !strings.Contains(got, "no export") {
			t.Errorf("Exporting() = %q", got)
		}
		_, span := tel.Tracer().Start(context.Background(), "GET zip")
		span.End()
		tel.RecordUpstream(context.Background(), "public", wire.KindZip, OutcomeOK, time.Second)

		// /metrics and /debug/tracez work all the same.
		rec := httptest.NewRecorder()
		tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if !strings.Contains(rec.Body.String(), "modgate_upstream_request_duration_seconds_bucket") {
			t.Errorf("/metrics lacks the upstream histogram:\n%s", rec.Body)
		}
		rec = httptest.NewRecorder()
		tel.TracezHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/tracez", nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), "GET zip") {
			t.Errorf("/debug/tracez: %d, span name missing:\n%.500s", rec.Code, rec.Body)
		}
		if err := tel.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if traces, metrics, _ := rc.counts(); traces+metrics != 0 {
		t.Errorf("receiver got %d trace and %d metric exports, want none", traces, metrics)
	}
}

// TestSetupSDKDisabled: OTEL_SDK_DISABLED=true exports nothing and records
// no span, while /metrics keeps working.
func TestSetupSDKDisabled(t *testing.T) {
	rc := newOTLPReceiver(t)
	tel, err := Setup(context.Background(), Config{Getenv: otelEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": rc.URL,
		"OTEL_SDK_DISABLED":           "true",
	})})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(context.Background(), "x")
	if span.IsRecording() {
		t.Error("a span records with OTEL_SDK_DISABLED=true")
	}
	span.End()
	tel.AddCacheRequest(context.Background(), wire.CacheHit)
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "modgate_cache_requests_total") {
		t.Errorf("/metrics lacks the cache counter with the SDK disabled:\n%.1000s", rec.Body)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if traces, metrics, _ := rc.counts(); traces+metrics != 0 {
		t.Errorf("receiver got %d trace and %d metric exports with OTEL_SDK_DISABLED=true", traces, metrics)
	}
}

type grpcReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	colmetricpb.UnimplementedMetricsServiceServer
	mu              sync.Mutex
	traces, metrics int
	service         string
}

func (g *grpcReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.traces++
	g.service = resourceAttr(req.ResourceSpans[0].Resource.Attributes, "service.name")
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type grpcMetrics struct{ *grpcReceiver }

func (g grpcMetrics) Export(context.Context, *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.metrics++
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func TestSetupExportsOverOTLPGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rcv := &grpcReceiver{}
	coltracepb.RegisterTraceServiceServer(srv, rcv)
	colmetricpb.RegisterMetricsServiceServer(srv, grpcMetrics{rcv})
	go srv.Serve(ln)
	defer srv.Stop()

	tel, err := Setup(context.Background(), Config{Getenv: otelEnv(t, map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + ln.Addr().String(),
		"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
	})})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer().Start(context.Background(), "GET mod")
	span.End()
	tel.AddRetry(context.Background(), "public", "5xx")
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.traces != 1 || rcv.metrics < 1 || rcv.service != DefaultServiceName {
		t.Errorf("gRPC receiver got %d trace exports (service %q) and %d metric exports", rcv.traces, rcv.service, rcv.metrics)
	}
}

func TestSetupRejectsBadSettings(t *testing.T) {
	for _, vars := range []map[string]string{
		{"OTEL_TRACES_SAMPLER": "sometimes"},
		{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
		{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
		{"OTEL_TRACES_EXPORTER": "zipkin"},
		{"OTEL_METRICS_EXPORTER": "statsd"},
	} {
		t.Run(fmt.Sprint(vars), func(t *testing.T) {
			tel, err := Setup(context.Background(), Config{Getenv: otelEnv(t, vars)})
			if err == nil {
				tel.Shutdown(context.Background())
				t.Errorf("Setup with %v: no error", vars)
			}
		})
	}
}

func TestSampler(t *testing.T) {
	for _, tc := range []struct{ sampler, arg, want string }{
		{"", "", "ParentBased{root:RateLimited{7/s}"},
		{"parentbased_always_on", "", "ParentBased{root:AlwaysOnSampler"},
		{"always_off", "", "AlwaysOffSampler"},
		{"always_on", "", "AlwaysOnSampler"},
		{"traceidratio", "0.25", "TraceIDRatioBased{0.25}"},
		{"parentbased_traceidratio", "0.5", "ParentBased{root:TraceIDRatioBased{0.5}"},
		{"parentbased_always_off", "", "ParentBased{root:AlwaysOffSampler"},
	} {
		s, err := samplerFrom(envOf(map[string]string{"OTEL_TRACES_SAMPLER": tc.sampler, "OTEL_TRACES_SAMPLER_ARG": tc.arg}), sdktrace.ParentBased(newRateLimited(7, wire.SystemClock{})))
		if err != nil {
			t.Errorf("%s(%s): %v", tc.sampler, tc.arg, err)
			continue
		}
		if got := s.Description(); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s(%s) = %s, want %s...", tc.sampler, tc.arg, got, tc.want)
		}
	}
}

func TestExporterWanted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		vars   map[string]string
		signal string
		ok     bool
		how    string
	}{
		{"none set", nil, "TRACES", false, ""},
		{"otlp without endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, "TRACES", false, ""},
		{"general endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c.example.test:4318"}, "METRICS", true, "OTLP http/protobuf to http://c.example.test:4318"},
		{"specific endpoint and protocol", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c.example.test:4317", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "TRACES", true, "OTLP grpc to http://c.example.test:4317"},
		{"signal off", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a.example.test", "OTEL_TRACES_EXPORTER": "none"}, "TRACES", false, ""},
		{"prometheus needs no endpoint", map[string]string{"OTEL_METRICS_EXPORTER": "prometheus"}, "METRICS", true, "prometheus"},
		{"console", map[string]string{"OTEL_TRACES_EXPORTER": "console"}, "TRACES", true, "console"},
		{"disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a.example.test", "OTEL_SDK_DISABLED": "true"}, "TRACES", false, ""},
	} {
		how, ok := exporterWanted(envOf(tc.vars), tc.signal, tc.vars["OTEL_SDK_DISABLED"] == "true")
		if ok != tc.ok || how != tc.how {
			t.Errorf("%s: got %v %q, want %v %q", tc.name, ok, how, tc.ok, tc.how)
		}
	}
}

func TestPropagatorContinuesTraceAndBaggage(t *testing.T) {
	tel, _ := setup(t, Config{})
	h := http.Header{}
	h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Set("baggage", "build=1234")
	ctx := tel.Propagator().Extract(context.Background(), propagation.HeaderCarrier(h))
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || !sc.IsRemote() {
		t.Errorf("extracted span context %v", sc)
	}
	if got := baggage.FromContext(ctx).Member("build").Value(); got != "1234" {
		t.Errorf("baggage build = %q", got)
	}
	ctx, span := tel.Tracer().Start(ctx, "GET list")
	defer span.End()
	out := http.Header{}
	tel.Propagator().Inject(ctx, propagation.HeaderCarrier(out))
	if !strings.HasPrefix(out.Get("traceparent"), "00-4bf92f3577b34da6a3ce929d0e0e4736-") || out.Get("baggage") != "build=1234" {
		t.Errorf("injected %v", out)
	}
}

func TestNilTelemetryIsANoOp(t *testing.T) {
	var tel *Telemetry
	ctx := context.Background()
	tel.RecordUpstream(ctx, "a", wire.KindZip, OutcomeOK, time.Second)
	tel.AddRetry(ctx, "a", "5xx")
	tel.AddPolicyDecision(ctx, "deny", "r")
	tel.AddPolicyReloadFailure(ctx)
	tel.RecordTunnel(ctx, time.Second, 1, 2)
	tel.AddCacheRequest(ctx, wire.CacheHit)
	stop, err := tel.ObserveBreakers(func() []BreakerReading { return nil })
	if err != nil || stop() != nil {
		t.Error("ObserveBreakers on nil")
	}
	h := http.NotFoundHandler()
	if tel.ServerMiddleware(h, nil) == nil || tel.ClientTransport(nil) != http.DefaultTransport {
		t.Error("HTTP helpers on nil must pass through")
	}
	_, span := tel.Tracer().Start(ctx, "x")
	span.End()
	if tel.Shutdown(ctx) != nil || tel.Baselines().Snapshot().Rows == nil {
		t.Error("nil Shutdown/Baselines")
	}
}

// collect returns every metric the reader holds, by name.
func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// attrSets returns the attribute sets of every data point of m.
func attrSets(m metricdata.Metrics) []attribute.Set {
	var sets []attribute.Set
	switch d := m.Data.(type) {
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Histogram[int64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			sets = append(sets, p.Attributes)
		}
	}
	return sets
}
