package sidecar

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// TestClassifiedOnce: the pipeline's classify takes the classification the
// telemetry middleware made for the span (carried in the request's
// context) instead of classifying the request again.
func TestClassifiedOnce(t *testing.T) {
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	s, err := New(Config{Upstreams: []upstream.Config{{URL: "off"}}, Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	var got Request
	h := telemetry.ServerMiddlewareOf(tel, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = s.classify(r, "")
	}), func(r *http.Request, c *classified) wire.Kind {
		calls++
		kind := s.classifyInto(r, c)
		// Mark what was carried, to tell it from a second classification.
		c.req.Module = "carried.example.test/m"
		return kind
	})
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/fixture.test/a/@v/v1.0.0.info", nil))
	if calls != 1 || got.Module != "carried.example.test/m" || got.Kind != wire.KindInfo {
		t.Errorf("classifier called %d times, pipeline classified %+v; want the carried classification, made once", calls, got)
	}
}
