// Package telemetry is modgate's OpenTelemetry: the tracer and meter
// providers and their exporters, the instruments of the telemetry contract
// (DESIGN.md, "Telemetry contract"), helpers for the data plane's HTTP edges,
// and per-upstream latency baselines. It imports nothing else of modgate.
//
// # Configuration and the environment
//
// Like every package but the CLI, telemetry reads no environment variable
// itself. The CLI hands it a lookup function, [Config.Getenv] (os.Getenv in
// production, a map in tests), and Setup reads the standard OTEL_* variables
// through it:
//
//   - OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED
//   - OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT
//   - OTEL_EXPORTER_OTLP_[{TRACES,METRICS}_]PROTOCOL (http/protobuf, the
//     default, or grpc), _HEADERS, _TIMEOUT, _COMPRESSION, _INSECURE
//   - OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER (otlp or none)
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
//   - OTEL_METRIC_EXPORT_INTERVAL, OTEL_METRIC_EXPORT_TIMEOUT
//
// Whether anything leaves the process is decided from Getenv alone: without
// an endpoint there (or with Getenv nil) no exporter is built, whatever the
// process environment says. Once an exporter is built, the OTel SDK still
// applies the variables it reads on its own and that Setup does not pass
// explicitly (client certificates, batch processor and span limits, metric
// temporality), exactly as the SDK documents; values Setup read through
// Getenv always win over those.
//
// The Prometheus exposition ([Telemetry.MetricsHandler]) and the in-process
// trace view ([Telemetry.TracezHandler]) work whether or not anything is
// exported; OTEL_SDK_DISABLED=true turns off OTLP export, not them.
//
// # Bounded labels
//
// No metric carries a module path, a version, a host a client named, or any
// other value a client chooses. The recording methods take only bounded
// values: kinds, outcomes, cache results, decisions and directions are
// closed sets (anything else is recorded as "other"); names that come from
// configuration (upstreams, policy rules, retry reasons) are capped per
// attribute, past which they are recorded as "other", and upstream names and
// retry reasons must look like names, not paths. The HTTP helpers drop
// server.address, server.port and url.* from the otelhttp metrics for the
// same reason; those stay on spans, where they belong.
//
// # Nil receiver
//
// A nil *Telemetry records nothing and its HTTP helpers return what they
// were given, so the data plane and its tests can run without telemetry.
package telemetry
