package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry/jaegertest"
)

// TestExportToJaeger runs a request through ServerMiddleware, an explicit
// child span and ClientTransport, exports over OTLP/HTTP to a real Jaeger,
// and finds the trace there as a person would: parent links, names,
// attributes and the service name.
func TestExportToJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	const service = "modgate-jaeger-test"
	tel, err := Setup(context.Background(), Config{
		Version: "v0.0.0-test",
		Getenv: otelEnv(t, map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": j.OTLPHTTP,
			"OTEL_SERVICE_NAME":           service,
			"OTEL_METRICS_EXPORTER":       "none", // Jaeger takes traces only
		}),
	})
	if err != nil {
		t.Fatal(err)
	}

	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"Version":"v1.0.0"}`)
	}))
	defer upstream.Close()
	rt := tel.ClientTransport(&http.Transport{})
	client := &http.Client{Transport: rt}
	defer client.CloseIdleConnections()

	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, span := tel.Tracer().Start(r.Context(), "policy")
		span.SetAttributes(AttrPolicyDecision.String(string(wire.DecisionAllow)), AttrModulePath.String("fixture.test/a"))
		span.End()
		ctx := WithUpstream(r.Context(), "public", wire.KindInfo)
		req, _ := http.NewRequestWithContext(ctx, "GET", upstream.URL+"/fixture.test/a/@v/v1.0.0.info", nil)
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		io.Copy(w, resp.Body)
	}), func(*http.Request) wire.Kind { return wire.KindInfo })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/fixture.test/a/@v/v1.0.0.info", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("request: %d %s", rec.Code, rec.Body)
	}
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	traces, err := j.WaitForSpans(service, 3, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(traces) != 1 {
		t.Fatalf("%d traces, want 1", len(traces))
	}
	tr := traces[0]
	var server, clientSpan, policy *jaegertest.Span
	for i := range tr.Spans {
		s := &tr.Spans[i]
		switch {
		case s.OperationName == "policy":
			policy = s
		case s.OperationName == "GET info" && s.Tags["span.kind"] == "server":
			server = s
		case s.OperationName == "GET info" && s.Tags["span.kind"] == "client":
			clientSpan = s
		}
	}
	if server == nil || clientSpan == nil || policy == nil {
		t.Fatalf("spans %+v, want a server and a client span named \"GET info\" and one named policy", tr.Spans)
	}
	if server.ParentSpanID != "" {
		t.Errorf("server span has parent %s, want a root", server.ParentSpanID)
	}
	if policy.ParentSpanID != server.SpanID || clientSpan.ParentSpanID != server.SpanID {
		t.Errorf("parents: policy %s, client %s; want both %s (the server span)", policy.ParentSpanID, clientSpan.ParentSpanID, server.SpanID)
	}
	for _, c := range []struct {
		span      *jaegertest.Span
		key, want string
	}{
		{server, "modgate.request.kind", "info"},
		{policy, "modgate.policy.decision", "allow"},
		{policy, "modgate.module.path", "fixture.test/a"},
		{clientSpan, "modgate.upstream.name", "public"},
		{clientSpan, "modgate.request.kind", "info"},
		{clientSpan, "url.full", upstream.URL + "/fixture.test/a/@v/v1.0.0.info"},
	} {
		if got := c.span.Tags[c.key]; got != c.want {
			t.Errorf("%s span: %s = %v, want %q", c.span.OperationName, c.key, got, c.want)
		}
	}
	if got := clientSpan.Tags["http.response.status_code"]; got != 200.0 {
		t.Errorf("client span status code %v", got)
	}
	if server.ServiceName != service {
		t.Errorf("service name %q", server.ServiceName)
	}
}
