package upstream

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// TestTraceParentWhenNotSampled: a request whose server span is not
// sampled still passes its trace upstream, marked not sampled, so that a
// parent-based sampler there agrees; a sampled one passes its client
// span.
func TestTraceParentWhenNotSampled(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get("traceparent"))
		io.WriteString(w, "ok\n")
	}))
	defer srv.Close()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{HostName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	u, err := New(Config{Name: "up", URL: srv.URL}, Options{Clock: newFakeClock(), Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	unsampled := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	sampled, span := tel.Tracer().Start(context.Background(), "GET info")
	defer span.End()
	for _, ctx := range []context.Context{unsampled, sampled} {
		resp, err := u.Get(ctx, "GET", "/x/@v/list", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if len(got) != 2 || got[0] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" {
		t.Fatalf("traceparents %q; want the unsampled trace first, flags 00", got)
	}
	if want := "00-" + span.SpanContext().TraceID().String() + "-"; !strings.HasPrefix(got[1], want) || strings.Contains(got[1], span.SpanContext().SpanID().String()) || !strings.HasSuffix(got[1], "-01") {
		t.Errorf("sampled traceparent %q: want the trace with the client span as parent, sampled", got[1])
	}
}

// TestWithKind: the kind comes back as it went in, and naming a known
// kind costs the context alone.
func TestWithKind(t *testing.T) {
	for _, k := range []wire.Kind{wire.KindInfo, wire.KindZip, "unheard-of"} {
		if got := KindFrom(WithKind(context.Background(), k)); got != k {
			t.Errorf("KindFrom(WithKind(%q)) = %q", k, got)
		}
	}
	kind := wire.KindInfo
	if n := testing.AllocsPerRun(100, func() { WithKind(context.Background(), kind) }); n != 1 {
		t.Errorf("WithKind: %.0f allocations, want 1 (the context)", n)
	}
}
