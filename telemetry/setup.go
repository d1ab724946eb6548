package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/instrumentation/runtime"
	"go.opentelemetry.io/contrib/zpages"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/modgate/modgate/sidecar/wire"
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
	// If nil, every variable is unset: nothing is exported.
	Getenv func(string) string
	// MaxTracesPerSecond bounds the new traces (root spans) that the
	// default sampler records, when OTEL_TRACES_SAMPLER is unset; spans
	// under a sampled parent are always recorded. If zero,
	// DefaultMaxTracesPerSecond; if negative, no new trace is recorded.
	MaxTracesPerSecond float64
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
	// Clock tells time to the baselines, the default sampler's rate limit
	// and the server metrics. If nil, wire.SystemClock.
	Clock wire.Clock

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
	sampler    sdktrace.Sampler // as configured; ServerMiddleware asks it before otelhttp
	disabled   bool             // OTEL_SDK_DISABLED=true
	clock      wire.Clock

	inst instruments

	shutdownOnce sync.Once
	shutdownErr  error
}

// getenv returns cfg.Getenv with values trimmed, reading nothing when
// Getenv is nil.
func (cfg Config) getenv() func(string) string {
	env := cfg.Getenv
	if env == nil {
		return func(string) string { return "" }
	}
	return func(k string) string { return strings.TrimSpace(env(k)) }
}

// Setup builds the providers: traces go to the in-process trace view and,
// when an exporter is configured, to it; metrics go to the Prometheus
// handler and, when an exporter is configured, to it. Go runtime metrics are
// started. The caller must call Shutdown, which flushes what is buffered.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	env, err := cfg.base(ctx)
	if err != nil {
		return nil, err
	}
	clock := cfg.Clock
	if clock == nil {
		clock = wire.SystemClock{}
	}
	maxTraces := cfg.MaxTracesPerSecond
	if maxTraces == 0 {
		maxTraces = DefaultMaxTracesPerSecond
	}
	sampler, err := env.sampler(sdktrace.ParentBased(newRateLimited(maxTraces, clock)))
	if err != nil {
		return nil, err
	}
	t := &Telemetry{
		prop:       propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		serverName: cfg.ServerName,
		sampler:    sampler,
		disabled:   env.disabled,
		clock:      clock,
	}
	if t.serverName == "" {
		t.serverName = serviceName(cfg, env.getenv)
	}
	traces, err := t.setupTraces(ctx, cfg, env)
	if err != nil {
		return nil, err
	}
	metrics, err := t.setupMetrics(ctx, cfg, env)
	if err != nil {
		t.tp.Shutdown(ctx)
		return nil, err
	}
	if err := t.startInstruments(cfg.Version); err != nil {
		t.Shutdown(ctx)
		return nil, err
	}
	t.baselines = NewBaselines(cfg.BaselineWindow, clock)
	t.exporting = describeExport(env.disabled, append(traces, metrics...), sampler)
	return t, nil
}

// providerBase is what both tracer providers (Setup's and SetupBuildTracing's)
// start from.
type providerBase struct {
	getenv   func(string) string // Config.getenv
	res      *resource.Resource
	disabled bool // OTEL_SDK_DISABLED=true
}

func (cfg Config) base(ctx context.Context) (providerBase, error) {
	getenv := cfg.getenv()
	res, err := newResource(ctx, cfg, getenv)
	if err != nil {
		return providerBase{}, err
	}
	return providerBase{getenv: getenv, res: res, disabled: strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true")}, nil
}

// sampler is the sampler OTEL_TRACES_SAMPLER names, def when it names
// none, and one that records no span at all when the SDK is disabled
// (/metrics keeps working then).
func (e providerBase) sampler(def sdktrace.Sampler) (sdktrace.Sampler, error) {
	sampler, err := samplerFrom(e.getenv, def)
	if err != nil {
		return nil, err
	}
	if e.disabled {
		return sdktrace.NeverSample(), nil
	}
	return sampler, nil
}

// setupTraces makes the tracer provider: sampled spans go to the
// in-process trace view, the exporter the environment names (if any) and
// cfg.SpanExporters. It returns what is exported, for Exporting.
func (t *Telemetry) setupTraces(ctx context.Context, cfg Config, env providerBase) (exporting []string, err error) {
	zp := zpages.NewSpanProcessor()
	topts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(env.res),
		sdktrace.WithSampler(earlySampler{t.sampler}),
		sdktrace.WithIDGenerator(idGenerator{}),
		sdktrace.WithSpanProcessor(zp),
	}
	if name, ok := exporterWanted(env.getenv, "TRACES", env.disabled); ok {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: traces exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
		exporting = append(exporting, "traces ("+name+")")
	}
	for _, exp := range cfg.SpanExporters {
		topts = append(topts, sdktrace.WithBatcher(exp))
	}
	t.tp = sdktrace.NewTracerProvider(topts...)
	t.tracez = zpages.NewTracezHandler(zp)
	return exporting, nil
}

// setupMetrics makes the meter provider: metrics go to the Prometheus
// handler and to the exporter the environment names (if any). Prometheus
// gets a registry of its own: the global one would mix in whatever else
// the process registers and break a second Setup in the same process
// (tests). It returns what is exported, for Exporting.
func (t *Telemetry) setupMetrics(ctx context.Context, cfg Config, env providerBase) (exporting []string, err error) {
	reg := prometheus.NewRegistry()
	promExp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	t.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	mopts := []sdkmetric.Option{
		sdkmetric.WithResource(env.res),
		sdkmetric.WithReader(promExp),
		// A backstop behind the bounded attributes: should a series
		// explosion slip through anyway, the SDK folds the excess into
		// one overflow series instead of growing without end.
		sdkmetric.WithCardinalityLimit(2000),
	}
	if cfg.reader != nil {
		mopts = append(mopts, sdkmetric.WithReader(cfg.reader))
	}
	if name, ok := exporterWanted(env.getenv, "METRICS", env.disabled); ok {
		r, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: metrics exporter: %w", err)
		}
		mopts = append(mopts, sdkmetric.WithReader(r))
		exporting = append(exporting, "metrics ("+name+")")
	}
	t.mp = sdkmetric.NewMeterProvider(mopts...)
	return exporting, nil
}

// startInstruments makes modgate's tracer, meter and instruments, and
// starts the Go runtime metrics.
func (t *Telemetry) startInstruments(version string) error {
	t.tracer = t.tp.Tracer(ScopeName, trace.WithInstrumentationVersion(version))
	t.meter = t.mp.Meter(ScopeName, metric.WithInstrumentationVersion(version))
	if err := t.inst.init(t.meter); err != nil {
		return err
	}
	// Each collection (a scrape, an export) reads the runtime's metrics
	// afresh: runtime/metrics costs microseconds and only runs then, and a
	// 15 s old allocation count (the library's default, also what it makes
	// of 0) misleads.
	if err := runtime.Start(runtime.WithMeterProvider(t.mp), runtime.WithMinimumReadMemStatsInterval(time.Millisecond)); err != nil {
		return fmt.Errorf("telemetry: runtime metrics: %w", err)
	}
	return nil
}

// describeExport says in a few words where spans and metrics go, for
// Exporting.
func describeExport(disabled bool, exporting []string, sampler sdktrace.Sampler) string {
	var s string
	switch {
	case disabled:
		s = "no export, no spans (OTEL_SDK_DISABLED=true)"
	case len(exporting) == 0:
		s = "no export (OTEL_EXPORTER_OTLP_ENDPOINT is not set)"
	default:
		s = "export of " + strings.Join(exporting, ", ")
	}
	return s + "; sampler " + sampler.Description()
}

// exporterWanted says whether a signal ("TRACES" or "METRICS") is to be
// exported, and how, for the start-up log. That decision is modgate's own
// (autoexport would send OTLP to localhost when nothing is set); it rests
// on Getenv alone:
//
//   - OTEL_SDK_DISABLED=true, or OTEL_<SIGNAL>_EXPORTER=none: no;
//   - OTEL_<SIGNAL>_EXPORTER unset or otlp: only when
//     OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT
//     is set;
//   - any other exporter (console, prometheus): yes.
//
// The exporter itself is then built by autoexport, which reads the OTEL_*
// variables from the process environment, as the OpenTelemetry SDKs all do
// (protocol, headers, timeouts, compression, TLS, the Prometheus host and
// port): that is the library's contract, and re-implementing it here would
// be the same parsing again, worse. In production Getenv is os.Getenv, so
// both read the same values.
func exporterWanted(getenv func(string) string, signal string, disabled bool) (how string, ok bool) {
	if disabled {
		return "", false
	}
	switch name := strings.ToLower(getenv("OTEL_" + signal + "_EXPORTER")); name {
	case "none":
		return "", false
	case "", "otlp":
		ep := getenv("OTEL_EXPORTER_OTLP_" + signal + "_ENDPOINT")
		if ep == "" {
			ep = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
		}
		if ep == "" {
			return "", false
		}
		proto := getenv("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL")
		if proto == "" {
			proto = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		if proto == "" {
			proto = "http/protobuf"
		}
		return "OTLP " + proto + " to " + ep, true
	default:
		return name, true
	}
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

// newResource describes this process: service.name, service.version and
// host.name as modgate knows them, then OTEL_RESOURCE_ATTRIBUTES and
// OTEL_SERVICE_NAME, which the SDK's resource.WithFromEnv reads from the
// process environment (the SDK's contract, like autoexport's), so that
// they win as the specification says.
func newResource(ctx context.Context, cfg Config, getenv func(string) string) (*resource.Resource, error) {
	var kvs []attribute.KeyValue
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
	kvs = append(kvs, semconv.ServiceName(serviceName(cfg, getenv)))
	res, err := resource.New(ctx, resource.WithTelemetrySDK(), resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(kvs...), resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}
