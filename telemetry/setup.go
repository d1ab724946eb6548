package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/runtime"
	"go.opentelemetry.io/contrib/zpages"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of modgate's own spans and
// instruments.
const ScopeName = "github.com/modgate/modgate"

// DefaultServiceName is service.name when neither Config.ServiceName nor
// OTEL_SERVICE_NAME says otherwise.
const DefaultServiceName = "modgate"

// Config is what Setup needs, as plain values.
type Config struct {
	// ServiceName is the service.name resource attribute. If empty,
	// DefaultServiceName. OTEL_SERVICE_NAME, when Getenv returns it, wins.
	ServiceName string
	// Version is the service.version resource attribute. If empty, the
	// attribute is left out.
	Version string
	// Getenv looks up the OTEL_* variables listed in the package comment.
	// If nil, every variable is unset: nothing is exported over OTLP.
	Getenv func(string) string
	// HostName is the host.name resource attribute. If empty, os.Hostname.
	HostName string
	// ServerName is the server.address that ServerMiddleware reports for
	// every request. Pinning it keeps a client's Host header (in forward
	// mode, any host on the internet) out of spans and metrics. If empty,
	// the service name.
	ServerName string
	// BaselineWindow is how far back the baselines reach. If zero,
	// DefaultBaselineWindow.
	BaselineWindow time.Duration
	// Clock tells time to the baselines. If nil, the system clock.
	Clock Clock

	// SpanExporters receive every sampled span too, batched like the OTLP
	// exporter's: an in-process consumer (a benchmark's counter, an
	// embedding program's own pipeline). Shutdown shuts them down.
	SpanExporters []sdktrace.SpanExporter

	// reader, if set, is one more metric reader: tests collect from it.
	reader sdkmetric.Reader
}

// Telemetry holds the providers, exporters and instruments of one modgate.
// Create it with Setup and end it with Shutdown. Its methods are safe for
// concurrent use; on a nil *Telemetry they record nothing.
type Telemetry struct {
	tp         *sdktrace.TracerProvider
	mp         *sdkmetric.MeterProvider
	prop       propagation.TextMapPropagator
	tracer     trace.Tracer
	meter      metric.Meter
	metrics    http.Handler
	tracez     http.Handler
	baselines  *Baselines
	serverName string
	exporting  string

	inst instruments

	shutdownOnce sync.Once
	shutdownErr  error
}

// Setup builds the providers: traces go to the in-process trace view and,
// when an OTLP endpoint is configured, to it; metrics go to the Prometheus
// handler and, when an endpoint is configured, to it. Go runtime metrics are
// started. The caller must call Shutdown, which flushes what is buffered.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	env := cfg.Getenv
	if env == nil {
		env = func(string) string { return "" }
	}
	getenv := func(k string) string { return strings.TrimSpace(env(k)) }

	res, err := newResource(cfg, getenv)
	if err != nil {
		return nil, err
	}
	sampler, err := samplerFrom(getenv)
	if err != nil {
		return nil, err
	}
	disabled := strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true")

	t := &Telemetry{
		prop:       propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		serverName: cfg.ServerName,
	}
	if t.serverName == "" {
		t.serverName = serviceName(cfg, getenv)
	}
	var exporting []string

	// Traces.
	zp := zpages.NewSpanProcessor()
	topts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sampler),
		sdktrace.WithSpanProcessor(zp),
	}
	if ep, ok := otlpEndpoint(getenv, "TRACES", disabled); ok {
		exp, err := newTraceExporter(ctx, ep)
		if err != nil {
			return nil, err
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
		exporting = append(exporting, "traces to "+ep.String())
	}
	for _, exp := range cfg.SpanExporters {
		topts = append(topts, sdktrace.WithBatcher(exp))
	}
	t.tp = sdktrace.NewTracerProvider(topts...)
	t.tracez = zpages.NewTracezHandler(zp)

	// Metrics. Prometheus gets a registry of its own: the global one would
	// mix in whatever else the process registers and break a second Setup
	// in the same process (tests).
	reg := prometheus.NewRegistry()
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.tp.Shutdown(ctx)
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	t.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	mopts := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(promExp),
		sdkmetric.WithView(boundedView),
		// A backstop behind the bounded attributes: should a series
		// explosion slip through anyway, the SDK folds the excess into
		// one overflow series instead of growing without end.
		sdkmetric.WithCardinalityLimit(2000),
	}
	if cfg.reader != nil {
		mopts = append(mopts, sdkmetric.WithReader(cfg.reader))
	}
	if ep, ok := otlpEndpoint(getenv, "METRICS", disabled); ok {
		exp, err := newMetricExporter(ctx, ep)
		if err != nil {
			t.tp.Shutdown(ctx)
			return nil, err
		}
		var ropts []sdkmetric.PeriodicReaderOption
		if d, err := millis(getenv, "OTEL_METRIC_EXPORT_INTERVAL"); err != nil {
			t.tp.Shutdown(ctx)
			return nil, err
		} else if d > 0 {
			ropts = append(ropts, sdkmetric.WithInterval(d))
		}
		if d, err := millis(getenv, "OTEL_METRIC_EXPORT_TIMEOUT"); err != nil {
			t.tp.Shutdown(ctx)
			return nil, err
		} else if d > 0 {
			ropts = append(ropts, sdkmetric.WithTimeout(d))
		}
		mopts = append(mopts, sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, ropts...)))
		exporting = append(exporting, "metrics to "+ep.String())
	}
	t.mp = sdkmetric.NewMeterProvider(mopts...)

	t.tracer = t.tp.Tracer(ScopeName, trace.WithInstrumentationVersion(cfg.Version))
	t.meter = t.mp.Meter(ScopeName, metric.WithInstrumentationVersion(cfg.Version))
	if err := t.inst.init(t.meter); err != nil {
		t.Shutdown(ctx)
		return nil, err
	}
	if err := runtime.Start(runtime.WithMeterProvider(t.mp)); err != nil {
		t.Shutdown(ctx)
		return nil, fmt.Errorf("telemetry: runtime metrics: %w", err)
	}
	t.baselines = NewBaselines(cfg.BaselineWindow, cfg.Clock)

	if len(exporting) == 0 {
		t.exporting = "no OTLP export (OTEL_EXPORTER_OTLP_ENDPOINT is not set)"
		if disabled {
			t.exporting = "no OTLP export (OTEL_SDK_DISABLED=true)"
		}
	} else {
		t.exporting = "OTLP export of " + strings.Join(exporting, ", ")
	}
	return t, nil
}

// Shutdown flushes buffered spans and metrics to the exporters and stops
// them. It is safe to call more than once; later calls return the first
// call's error.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	t.shutdownOnce.Do(func() {
		// Spans first: the metric flush that follows then also carries
		// whatever ending those spans recorded.
		var errs []error
		if err := t.tp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("traces: %w", err))
		}
		if t.mp != nil {
			if err := t.mp.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("metrics: %w", err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			t.shutdownErr = fmt.Errorf("telemetry: shutdown: %w", err)
		}
	})
	return t.shutdownErr
}

// TracerProvider returns the tracer provider, for instrumentation that
// takes one (otelhttp, gRPC).
func (t *Telemetry) TracerProvider() trace.TracerProvider {
	if t == nil {
		return nil
	}
	return t.tp
}

// MeterProvider returns the meter provider.
func (t *Telemetry) MeterProvider() metric.MeterProvider {
	if t == nil {
		return nil
	}
	return t.mp
}

// Propagator returns the W3C tracecontext and baggage propagator: Extract
// continues an incoming traceparent, Inject passes the trace on upstream.
// ServerMiddleware and ClientTransport already use it.
func (t *Telemetry) Propagator() propagation.TextMapPropagator {
	if t == nil {
		return propagation.NewCompositeTextMapPropagator()
	}
	return t.prop
}

// Tracer returns modgate's tracer, for the spans the data plane starts
// itself (the CONNECT span of a tunnel, policy and cache steps).
func (t *Telemetry) Tracer() trace.Tracer {
	if t == nil {
		return noop.NewTracerProvider().Tracer(ScopeName)
	}
	return t.tracer
}

// MetricsHandler serves the metrics in the Prometheus text format, for the
// admin listener's /metrics.
func (t *Telemetry) MetricsHandler() http.Handler {
	if t == nil {
		return http.NotFoundHandler()
	}
	return t.metrics
}

// TracezHandler serves the in-process trace view (zPages tracez): recent
// spans by name, latency bucket and error, for the admin listener's
// /debug/tracez.
func (t *Telemetry) TracezHandler() http.Handler {
	if t == nil {
		return http.NotFoundHandler()
	}
	return t.tracez
}

// Baselines returns the per-upstream latency baselines that RecordUpstream
// feeds.
func (t *Telemetry) Baselines() *Baselines {
	if t == nil {
		return nil
	}
	return t.baselines
}

// Exporting says in a few words where spans and metrics go, for the
// start-up log line.
func (t *Telemetry) Exporting() string {
	if t == nil {
		return "telemetry off"
	}
	return t.exporting
}

func serviceName(cfg Config, getenv func(string) string) string {
	if n := getenv("OTEL_SERVICE_NAME"); n != "" {
		return n
	}
	if cfg.ServiceName != "" {
		return cfg.ServiceName
	}
	return DefaultServiceName
}

// newResource describes this process. It is built from explicit attributes
// rather than resource.WithFromEnv, which would read the process
// environment behind Getenv's back.
func newResource(cfg Config, getenv func(string) string) (*resource.Resource, error) {
	attrs, err := parseKeyValues(getenv("OTEL_RESOURCE_ATTRIBUTES"))
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	kvs := make([]attribute.KeyValue, 0, len(attrs)+3)
	for k, v := range attrs {
		kvs = append(kvs, attribute.String(k, v))
	}
	host := cfg.HostName
	if host == "" {
		host, _ = os.Hostname()
	}
	if host != "" {
		kvs = append(kvs, semconv.HostName(host))
	}
	if cfg.Version != "" {
		kvs = append(kvs, semconv.ServiceVersion(cfg.Version))
	}
	// Last, so that it wins over OTEL_RESOURCE_ATTRIBUTES as the
	// specification says OTEL_SERVICE_NAME does.
	kvs = append(kvs, semconv.ServiceName(serviceName(cfg, getenv)))
	sdk, err := resource.New(context.Background(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return resource.Merge(sdk, resource.NewWithAttributes(semconv.SchemaURL, kvs...))
}

// parseKeyValues parses the k=v,k=v lists of OTEL_RESOURCE_ATTRIBUTES and
// OTEL_EXPORTER_OTLP_HEADERS, with percent-encoded values, as the SDK does.
func parseKeyValues(s string) (map[string]string, error) {
	m := map[string]string{}
	if s == "" {
		return m, nil
	}
	for _, pair := range strings.Split(s, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", pair)
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("value of %s: %w", k, err)
		}
		m[k] = dv
	}
	return m, nil
}

// samplerFrom mirrors the SDK's reading of OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG; the default is parentbased_always_on, so that a
// go command or CI system that samples a trace gets modgate's part of it.
func samplerFrom(getenv func(string) string) (sdktrace.Sampler, error) {
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
	case "", "parentbased_always_on":
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
	return nil, fmt.Errorf("telemetry: OTEL_TRACES_SAMPLER=%q: want always_on, always_off, traceidratio or their parentbased_ forms", name)
}

// endpoint is where one signal is exported, as the OTEL_EXPORTER_OTLP_*
// variables say.
type endpoint struct {
	signal      string // "TRACES" or "METRICS"
	protocol    string // "http/protobuf" or "grpc"
	url         string // full URL for HTTP (path included); URL or host:port for gRPC
	headers     map[string]string
	timeout     time.Duration
	compression string // "gzip" or ""
	insecure    bool   // only for a gRPC endpoint given without a scheme
	err         error  // reported by the exporter constructors
}

func (e endpoint) String() string { return e.url + " (" + e.protocol + ")" }

// otlpEndpoint reads the configuration of one signal; ok is false when that
// signal is not to be exported.
func otlpEndpoint(getenv func(string) string, signal string, disabled bool) (ep endpoint, ok bool) {
	if disabled {
		return endpoint{}, false
	}
	exporterVar := "OTEL_" + signal + "_EXPORTER"
	switch v := strings.ToLower(getenv(exporterVar)); v {
	case "", "otlp":
	case "none":
		return endpoint{}, false
	default:
		return endpoint{signal: signal, err: fmt.Errorf("telemetry: %s=%q: want otlp or none", exporterVar, v)}, true
	}
	// Signal-specific settings win over the general ones.
	get := func(name string) string {
		if v := getenv("OTEL_EXPORTER_OTLP_" + signal + "_" + name); v != "" {
			return v
		}
		return getenv("OTEL_EXPORTER_OTLP_" + name)
	}
	ep = endpoint{signal: signal, protocol: strings.ToLower(get("PROTOCOL"))}
	if ep.protocol == "" {
		ep.protocol = "http/protobuf"
	}
	specific := getenv("OTEL_EXPORTER_OTLP_" + signal + "_ENDPOINT")
	general := getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	switch {
	case specific != "":
		// Used as given: the specification says so for HTTP, and gRPC
		// has no path to add.
		ep.url = specific
	case general != "":
		ep.url = general
		if ep.protocol != "grpc" {
			// The general endpoint is a base URL; each signal has its
			// path under it.
			ep.url = strings.TrimRight(general, "/") + "/v1/" + strings.ToLower(signal)
		}
	default:
		return endpoint{}, false
	}
	var errs []error
	switch ep.protocol {
	case "http/protobuf", "grpc":
	default:
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: want http/protobuf or grpc", ep.protocol))
	}
	headers, err := parseKeyValues(getenv("OTEL_EXPORTER_OTLP_HEADERS"))
	if err != nil {
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_HEADERS: %w", err))
	}
	specificHeaders, err := parseKeyValues(getenv("OTEL_EXPORTER_OTLP_" + signal + "_HEADERS"))
	if err != nil {
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_%s_HEADERS: %w", signal, err))
	}
	for k, v := range specificHeaders {
		headers[k] = v
	}
	ep.headers = headers
	if v := get("TIMEOUT"); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms <= 0 {
			errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_TIMEOUT=%q: want milliseconds", v))
		}
		ep.timeout = time.Duration(ms) * time.Millisecond
	}
	switch v := strings.ToLower(get("COMPRESSION")); v {
	case "", "none":
	case "gzip":
		ep.compression = v
	default:
		errs = append(errs, fmt.Errorf("OTEL_EXPORTER_OTLP_COMPRESSION=%q: want gzip or none", v))
	}
	if !strings.Contains(ep.url, "://") {
		if ep.protocol != "grpc" {
			errs = append(errs, fmt.Errorf("OTLP endpoint %q: want a URL such as http://collector.example.test:4318", ep.url))
		}
		ep.insecure = strings.EqualFold(get("INSECURE"), "true")
	} else if u, err := url.Parse(ep.url); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("OTLP endpoint %q: want an http:// or https:// URL", ep.url))
	}
	if err := errors.Join(errs...); err != nil {
		ep.err = fmt.Errorf("telemetry: %s export: %w", strings.ToLower(signal), err)
	}
	return ep, true
}

func newTraceExporter(ctx context.Context, ep endpoint) (sdktrace.SpanExporter, error) {
	if ep.err != nil {
		return nil, ep.err
	}
	if ep.protocol == "grpc" {
		opts := []otlptracegrpc.Option{otlptracegrpc.WithHeaders(ep.headers)}
		if strings.Contains(ep.url, "://") {
			opts = append(opts, otlptracegrpc.WithEndpointURL(ep.url))
		} else {
			opts = append(opts, otlptracegrpc.WithEndpoint(ep.url))
			if ep.insecure {
				opts = append(opts, otlptracegrpc.WithInsecure())
			}
		}
		if ep.timeout > 0 {
			opts = append(opts, otlptracegrpc.WithTimeout(ep.timeout))
		}
		if ep.compression != "" {
			opts = append(opts, otlptracegrpc.WithCompressor(ep.compression))
		}
		return otlptracegrpc.New(ctx, opts...)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(ep.url), otlptracehttp.WithHeaders(ep.headers)}
	if ep.timeout > 0 {
		opts = append(opts, otlptracehttp.WithTimeout(ep.timeout))
	}
	if ep.compression == "gzip" {
		opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
	} else {
		opts = append(opts, otlptracehttp.WithCompression(otlptracehttp.NoCompression))
	}
	return otlptracehttp.New(ctx, opts...)
}

func newMetricExporter(ctx context.Context, ep endpoint) (sdkmetric.Exporter, error) {
	if ep.err != nil {
		return nil, ep.err
	}
	if ep.protocol == "grpc" {
		opts := []otlpmetricgrpc.Option{otlpmetricgrpc.WithHeaders(ep.headers)}
		if strings.Contains(ep.url, "://") {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(ep.url))
		} else {
			opts = append(opts, otlpmetricgrpc.WithEndpoint(ep.url))
			if ep.insecure {
				opts = append(opts, otlpmetricgrpc.WithInsecure())
			}
		}
		if ep.timeout > 0 {
			opts = append(opts, otlpmetricgrpc.WithTimeout(ep.timeout))
		}
		if ep.compression != "" {
			opts = append(opts, otlpmetricgrpc.WithCompressor(ep.compression))
		}
		return otlpmetricgrpc.New(ctx, opts...)
	}
	opts := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpointURL(ep.url), otlpmetrichttp.WithHeaders(ep.headers)}
	if ep.timeout > 0 {
		opts = append(opts, otlpmetrichttp.WithTimeout(ep.timeout))
	}
	if ep.compression == "gzip" {
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
	} else {
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.NoCompression))
	}
	return otlpmetrichttp.New(ctx, opts...)
}

func millis(getenv func(string) string, name string) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	ms, err := strconv.Atoi(v)
	if err != nil || ms <= 0 {
		return 0, fmt.Errorf("telemetry: %s=%q: want milliseconds", name, v)
	}
	return time.Duration(ms) * time.Millisecond, nil
}
