package sidecar

import (
	"math/rand/v2"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// TestTraceIDs: the audit line's IDs are the ones the span's String
// methods write, which is what Jaeger and the status page show.
func TestTraceIDs(t *testing.T) {
	for range 100 {
		var tid trace.TraceID
		var sid trace.SpanID
		for i := range tid {
			tid[i] = byte(rand.N(256))
		}
		for i := range sid {
			sid[i] = byte(rand.N(256))
		}
		sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})
		gotT, gotS := traceIDs(sc)
		if gotT != tid.String() || gotS != sid.String() {
			t.Fatalf("traceIDs = %s %s, want %s %s", gotT, gotS, tid, sid)
		}
	}
}
