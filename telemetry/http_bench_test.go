package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/wire"
)

// BenchmarkServerMiddleware measures what the middleware itself costs a
// request under the default sampler (nearly every request not sampled),
// around a handler that only reads its span context, as the audit line
// does.
func BenchmarkServerMiddleware(b *testing.B) {
	tel, err := Setup(context.Background(), Config{Getenv: func(string) string { return "" }})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	var sc trace.SpanContext
	h := tel.ServerMiddleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc = trace.SpanContextFromContext(r.Context())
	}), func(*http.Request) wire.Kind { return wire.KindInfo })
	req := httptest.NewRequest("GET", "/a/@v/v1.0.0.info", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
	if !sc.IsValid() {
		b.Fatal("no span context")
	}
}
