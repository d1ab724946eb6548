// Package telemetry is modgate's OpenTelemetry: the tracer and meter
// providers and their exporters, the instruments of the telemetry contract
// (README.md, Architecture), helpers for the data plane's HTTP edges,
// and per-upstream latency baselines. Of modgate it imports only
// sidecar/wire: request kinds, breaker states, decisions, cache results and
// the clock are wire's words, defined there once.
//
// # Configuration and the environment
//
// Like every package but the CLI, telemetry's own code reads no environment
// variable: the CLI hands it a lookup function, [Config.Getenv] (os.Getenv
// in production, a map in tests). Through it Setup decides what modgate
// adds to the standard OTEL_* variables:
//
//   - whether a signal is exported at all: only when OTEL_EXPORTER_OTLP_ENDPOINT
//     (or the signal's own endpoint) is set, or OTEL_{TRACES,METRICS}_EXPORTER
//     names an exporter that needs none (console, prometheus); never with
//     OTEL_SDK_DISABLED=true;
//   - the sampler: OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as the
//     SDK reads them, and when unset modgate's default, parent-based with at
//     most [Config.MaxTracesPerSecond] new traces a second;
//   - service.name (OTEL_SERVICE_NAME) for the server.address of spans.
//
// The exporters themselves come from go.opentelemetry.io/contrib/exporters/autoexport
// and the resource from the SDK's resource.WithFromEnv, which read the
// process environment, as every OpenTelemetry SDK does: protocol, headers,
// timeouts, compression, certificates, OTEL_RESOURCE_ATTRIBUTES, the
// Prometheus exporter's host and port, the batch processor's and periodic
// reader's settings. That is the libraries' contract; re-implementing their
// parsing here would only drift from it.
//
// The Prometheus exposition ([Telemetry.MetricsHandler]) works whether or
// not anything is exported. The in-process trace view
// ([Telemetry.TracezHandler]) shows the sampled spans; OTEL_SDK_DISABLED=true
// samples none.
//
// # Cost
//
// [Telemetry.ServerMiddleware] asks the sampler before otelhttp: a request
// that is not sampled never enters otelhttp's handler or transport, builds
// no span attribute, and gets only a span context (for the audit log's trace
// ID and the traceparent sent upstream). Metrics are recorded once per
// request with attribute sets and option slices built once, for sampled and
// unsampled requests alike.
//
// # Bounded labels
//
// No metric carries a module path, a version, a host a client named, or any
// other value a client chooses. The recording methods take only bounded
// values: kinds, outcomes, cache results, decisions and directions are
// closed sets (anything else is recorded as "other"); names that come from
// configuration (upstreams, policy rules, retry reasons) are capped per
// attribute, past which they are recorded as "other", and upstream names and
// retry reasons must look like names, not paths. The server metrics carry
// no server.address, server.port or url.* for the same reason; those stay
// on spans, where they belong.
//
// # Nil receiver
//
// A nil *Telemetry records nothing and its HTTP helpers return what they
// were given, so the data plane and its tests can run without telemetry.
package telemetry
