// Package jaegertest runs a real Jaeger for tests, as net/http/httptest runs
// a real HTTP server: on loopback only, on free ports, with in-memory
// storage, stopped when the test ends. Tests export spans to it over OTLP
// and read them back through its query API, so they check what a person
// would see in Jaeger.
//
// The binary comes from the JAEGER_BIN environment variable, which
// `make test` sets after `make jaeger` has built it (once, cached outside the
// repository). Without it, Start skips the test: Jaeger takes minutes to
// build and a plain `go test ./...` should not pay for that. Reading the
// environment is a test helper's privilege; no package of modgate's own does.
package jaegertest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// EnvBinary names the environment variable that holds the path of the
// Jaeger binary.
const EnvBinary = "JAEGER_BIN"

// Jaeger is one running Jaeger.
type Jaeger struct {
	// OTLPHTTP is the base URL of the OTLP/HTTP receiver, the value for
	// OTEL_EXPORTER_OTLP_ENDPOINT, e.g. "http://127.0.0.1:40318".
	OTLPHTTP string
	// OTLPGRPC is the URL of the OTLP/gRPC receiver, for
	// OTEL_EXPORTER_OTLP_ENDPOINT with OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
	OTLPGRPC string
	// QueryURL is the base URL of the query API, e.g.
	// "http://127.0.0.1:46686".
	QueryURL string

	logPath string
	client  *http.Client
}

// Start runs Jaeger for the rest of t and waits until it accepts spans and
// answers queries. It skips t when JAEGER_BIN is not set.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin := os.Getenv(EnvBinary)
	if bin == "" {
		t.Skipf("%s is not set: this test needs a Jaeger binary; `make jaeger` builds one and prints its path, then run with %s=<that path>", EnvBinary, EnvBinary)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s=%s: %v (run `make jaeger`)", EnvBinary, bin, err)
	}
	// A free port is found by listening and closing, so another process
	// may take it before Jaeger does; trying again with new ports makes
	// that race harmless.
	var lastErr error
	for range 3 {
		j, err := start(t, bin)
		if err == nil {
			return j
		}
		lastErr = err
	}
	t.Fatalf("jaegertest: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string) (*Jaeger, error) {
	t.Helper()
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfgPath, []byte(config(ports)), 0o644); err != nil {
		return nil, err
	}
	j := &Jaeger{
		OTLPHTTP: "http://" + ports[0],
		OTLPGRPC: "http://" + ports[1],
		QueryURL: "http://" + ports[2],
		logPath:  filepath.Join(dir, "jaeger.log"),
		client:   &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}},
	}
	health := "http://" + ports[4] + "/status"

	logf, err := os.Create(j.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config", "file:"+cfgPath)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Jaeger must not export its own telemetry anywhere, whatever the
	// test process's environment says.
	cmd.Env = append(os.Environ(), "OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none", "OTEL_METRICS_EXPORTER=none")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}

	deadline := time.Now().Add(60 * time.Second)
	for {
		if j.ready(health) {
			break
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("jaeger exited before it was ready (%v):\n%s", err, j.logTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			j.client.CloseIdleConnections()
			return nil, fmt.Errorf("jaeger not ready within a minute:\n%s", j.logTail())
		}
	}
	t.Cleanup(func() {
		stop()
		j.client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("jaeger log:\n%s", j.logTail())
		}
	})
	return j, nil
}

// ready reports whether Jaeger's health check is OK and its query API
// answers.
func (j *Jaeger) ready(health string) bool {
	for _, u := range []string{health, j.QueryURL + "/api/services"} {
		resp, err := j.client.Get(u)
		if err != nil {
			return false
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
	}
	return true
}

// config is a Jaeger v2 configuration with every listener on loopback and
// nothing but what the tests use: OTLP in, memory storage, the query API.
// ports: OTLP/HTTP, OTLP/gRPC, query HTTP, query gRPC, health check.
func config(ports []string) string {
	return fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: %[5]s
  jaeger_query:
    enable_tracing: false
    storage:
      traces: memstore
    http:
      endpoint: %[3]s
    grpc:
      endpoint: %[4]s
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: %[1]s
      grpc:
        endpoint: %[2]s
processors:
  batch:
    timeout: 20ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, ports[0], ports[1], ports[2], ports[3], ports[4])
}

func freePorts(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func (j *Jaeger) logTail() string {
	b, _ := os.ReadFile(j.logPath)
	const max = 8 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// Trace is one trace as Jaeger's query API returns it.
type Trace struct {
	TraceID string
	Spans   []Span
}

// Span is one span of a Trace, with the process's service name resolved.
type Span struct {
	TraceID       string
	SpanID        string
	OperationName string
	// ParentSpanID is the span this one is a CHILD_OF, or "" for a root.
	ParentSpanID string
	References   []Reference
	// Tags holds the span's attributes (and those Jaeger derives, such as
	// span.kind), as JSON decoded them: strings, float64s, bools.
	Tags        map[string]any
	ServiceName string
	Start       time.Time
	Duration    time.Duration
}

// Reference is a link from a span to another.
type Reference struct {
	RefType string // "CHILD_OF" or "FOLLOWS_FROM"
	TraceID string
	SpanID  string
}

// Span returns the first span of tr named op, or nil.
func (tr Trace) Span(op string) *Span {
	for i := range tr.Spans {
		if tr.Spans[i].OperationName == op {
			return &tr.Spans[i]
		}
	}
	return nil
}

// Traces returns the traces of service that Jaeger has stored, through
// GET /api/traces?service=....
func (j *Jaeger) Traces(service string) ([]Trace, error) {
	q := url.Values{"service": {service}, "limit": {"1000"}, "lookback": {"1h"}}
	return j.getTraces("/api/traces?" + q.Encode())
}

// Trace returns the trace with the given ID (32 hex digits), through GET
// /api/traces/{id}; an empty trace when Jaeger has none of its spans.
func (j *Jaeger) Trace(id string) (Trace, error) {
	trs, err := j.getTraces("/api/traces/" + url.PathEscape(id))
	if err != nil || len(trs) == 0 {
		return Trace{TraceID: id}, err
	}
	return trs[0], nil
}

// WaitForTrace polls Trace until the trace holds at least n spans, or
// timeout passes.
func (j *Jaeger) WaitForTrace(id string, n int, timeout time.Duration) (Trace, error) {
	deadline := time.Now().Add(timeout)
	for {
		tr, err := j.Trace(id)
		if err != nil {
			return tr, err
		}
		if len(tr.Spans) >= n {
			return tr, nil
		}
		if time.Now().After(deadline) {
			return tr, fmt.Errorf("jaegertest: %d spans of trace %s after %s, want %d", len(tr.Spans), id, timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (j *Jaeger) getTraces(path string) ([]Trace, error) {
	resp, err := j.client.Get(j.QueryURL + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data []struct {
			TraceID string `json:"traceID"`
			Spans   []struct {
				TraceID       string      `json:"traceID"`
				SpanID        string      `json:"spanID"`
				OperationName string      `json:"operationName"`
				References    []Reference `json:"references"`
				StartTime     int64       `json:"startTime"` // µs
				Duration      int64       `json:"duration"`  // µs
				Tags          []struct {
					Key   string `json:"key"`
					Value any    `json:"value"`
				} `json:"tags"`
				ProcessID string `json:"processID"`
			} `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
		Errors []struct {
			Msg string `json:"msg"`
		} `json:"errors"`
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(buf.Bytes(), &body); err != nil {
		return nil, fmt.Errorf("jaeger /api/traces: %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		// Jaeger answers 404 when it has not seen the service yet.
		if resp.StatusCode == http.StatusNotFound {
			return nil, nil
		}
		var msgs []string
		for _, e := range body.Errors {
			msgs = append(msgs, e.Msg)
		}
		return nil, fmt.Errorf("jaeger /api/traces: %s: %s", resp.Status, strings.Join(msgs, "; "))
	}
	var traces []Trace
	for _, d := range body.Data {
		tr := Trace{TraceID: d.TraceID}
		for _, s := range d.Spans {
			sp := Span{
				TraceID:       s.TraceID,
				SpanID:        s.SpanID,
				OperationName: s.OperationName,
				References:    s.References,
				Tags:          map[string]any{},
				ServiceName:   d.Processes[s.ProcessID].ServiceName,
				Start:         time.UnixMicro(s.StartTime),
				Duration:      time.Duration(s.Duration) * time.Microsecond,
			}
			for _, r := range s.References {
				if r.RefType == "CHILD_OF" {
					sp.ParentSpanID = r.SpanID
				}
			}
			for _, tag := range s.Tags {
				sp.Tags[tag.Key] = tag.Value
			}
			tr.Spans = append(tr.Spans, sp)
		}
		traces = append(traces, tr)
	}
	return traces, nil
}

// WaitForSpans polls Traces until the traces of service hold at least n
// spans in all, or timeout passes. Jaeger batches what it receives, so a span
// that was exported is stored a moment later.
func (j *Jaeger) WaitForSpans(service string, n int, timeout time.Duration) ([]Trace, error) {
	deadline := time.Now().Add(timeout)
	for {
		traces, err := j.Traces(service)
		if err != nil {
			return nil, err
		}
		count := 0
		for _, tr := range traces {
			count += len(tr.Spans)
		}
		if count >= n {
			return traces, nil
		}
		if time.Now().After(deadline) {
			return traces, fmt.Errorf("jaegertest: %d spans of service %q after %s, want %d", count, service, timeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
