package jaegertest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestConfigListensOnLoopbackOnly(t *testing.T) {
	cfg := config([]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5"})
	n := 0
	for _, line := range strings.Split(cfg, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == "endpoint" {
			n++
			if !strings.HasPrefix(strings.TrimSpace(v), "127.0.0.1:") {
				t.Errorf("listener %q is not on loopback", line)
			}
		}
	}
	// Every listener the configuration has: OTLP HTTP and gRPC, query
	// HTTP and gRPC, health check. A listener left to its default would
	// listen on all interfaces.
	if n != 5 {
		t.Errorf("%d endpoints in the configuration, want 5:\n%s", n, cfg)
	}
}

// TestStartAndQuery sends one span over OTLP/HTTP in its JSON encoding, so
// that this package is tested without the OTel SDK, and reads it back.
func TestStartAndQuery(t *testing.T) {
	j := Start(t)
	// The query API looks back an hour from now, so the spans are recent.
	start := time.Now().Add(-time.Second).UnixNano()
	body := fmt.Sprintf(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"jaegertest"}}]},
	"scopeSpans":[{"spans":[
	  {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b7","name":"parent","kind":2,
	   "startTimeUnixNano":"%[1]d","endTimeUnixNano":"%[2]d"},
	  {"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","spanId":"00f067aa0ba902b8","parentSpanId":"00f067aa0ba902b7","name":"child","kind":3,
	   "startTimeUnixNano":"%[3]d","endTimeUnixNano":"%[4]d",
	   "attributes":[{"key":"modgate.upstream.name","value":{"stringValue":"public"}}]}]}]}]}`,
		start, start+int64(time.Second), start+int64(100*time.Millisecond), start+int64(200*time.Millisecond))
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	resp, err := client.Post(j.OTLPHTTP+"/v1/traces", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("OTLP export: %s", resp.Status)
	}
	traces, err := j.WaitForSpans("jaegertest", 2, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(traces) != 1 || traces[0].TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("traces %+v", traces)
	}
	child := traces[0].Span("child")
	if child == nil || child.ParentSpanID != "00f067aa0ba902b7" || child.Tags["modgate.upstream.name"] != "public" ||
		child.ServiceName != "jaegertest" || child.Duration != 100*time.Millisecond {
		t.Errorf("child span %+v", child)
	}
	if traces[0].Span("parent") == nil {
		t.Error("no parent span")
	}
	if missing, err := j.Traces("nobody"); err != nil || len(missing) != 0 {
		t.Errorf("traces of an unknown service: %v, %v", missing, err)
	}
}
