package sidecar_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

const (
	buildTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	buildTP      = "00-" + buildTraceID + "-00f067aa0ba902b7-01"
)

// TestBuildContextInGOPROXYPath: a GOPROXY path /.trace/<traceparent>/ is
// stripped before classification (module and checksum-database requests
// alike) and its trace continues, in the audit log and in the per-build
// summary, with telemetry on or off; a malformed or oversized context is
// refused with a clear 400.
func TestBuildContextInGOPROXYPath(t *testing.T) {
	for _, withTel := range []bool{false, true} {
		fx := loadFixtures(t)
		db := modtest.NewSumDB(t, sumdbName, fx)
		p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
		audit, auditPath := newAudit(t)
		cfg := sidecar.Config{Audit: audit, SumDB: sumdbName, Admin: "127.0.0.1:0", Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}}
		if withTel {
			cfg.Telemetry = newTelemetry(t, nil)
		}
		g := sidecartest.Start(t, nil, cfg)
		base := g.URL + "/" + telemetry.TracePathElem + "/" + buildTP
		for _, path := range []string{
			"/fixture.test/dep01/@v/list",
			"/fixture.test/dep01/@v/v1.0.0.info",
			"/sumdb/" + sumdbName + "/supported",
			"/sumdb/" + sumdbName + "/lookup/fixture.test/dep01@v1.0.0",
		} {
			if code, body := get(t, base+path); code != http.StatusOK {
				t.Errorf("telemetry %v: GET %s under the trace path: %d %s", withTel, path, code, body)
			}
		}
		for _, bad := range []string{"zzz", "00-" + buildTraceID + "-00f067aa0ba902b7", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", strings.Repeat("0", 300)} {
			code, body := get(t, g.URL+"/"+telemetry.TracePathElem+"/"+bad+"/fixture.test/dep01/@v/list")
			if code != http.StatusBadRequest || !strings.HasPrefix(body, "modgate: bad-request: GOPROXY path /.trace/: ") {
				t.Errorf("trace context %.20q: %d %q; want 400 and why", bad, code, body)
			}
		}
		audit.Flush()
		var traced int
		for _, l := range readAudit(t, auditPath) {
			if l["status"] == float64(200) {
				traced++
				if l["trace_id"] != buildTraceID {
					t.Errorf("telemetry %v: audit line %v %v: trace %v; want %s", withTel, l["kind"], l["module"], l["trace_id"], buildTraceID)
				}
			}
		}
		if traced != 4 {
			t.Errorf("%d audit lines of the build; want 4", traced)
		}
		resp, err := http.Get("http://" + g.AdminAddr + "/debug/builds/" + buildTraceID)
		if err != nil {
			t.Fatal(err)
		}
		var sum telemetry.BuildSummary
		json.NewDecoder(resp.Body).Decode(&sum)
		resp.Body.Close()
		if sum.Requests != 4 || sum.ByKind["sumdb-supported"].Requests != 1 || sum.ByKind["info"].Requests != 1 {
			t.Errorf("telemetry %v: build summary: %d requests, by kind %v", withTel, sum.Requests, sum.ByKind)
		}
	}
}

// TestBuildContextInProxyUser: forward mode reads the context from the
// Proxy-Authorization user name and authenticates with what is left.
func TestBuildContextInProxyUser(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(p.URL, "http://"))
	portN, _ := strconv.Atoi(port)
	host := "127.0.0.1:" + port
	audit, auditPath := newAudit(t)
	url := startGate(t, sidecar.Config{
		Audit: audit, Upstreams: []upstream.Config{{URL: "off"}},
		Forward: sidecar.ForwardConfig{AllowHosts: []string{"127.0.0.1"}, ConnectPorts: []int{portN}, Users: map[string]string{"alice": "pw"}},
	})
	for _, c := range []struct {
		user, pass string
		want       int
	}{
		{"alice+" + telemetry.TraceUserPrefix + buildTP, "pw", http.StatusOK},
		{telemetry.TraceUserPrefix + buildTP, "", http.StatusProxyAuthRequired},
		{"alice+" + telemetry.TraceUserPrefix + buildTP, "wrong", http.StatusProxyAuthRequired},
	} {
		code, _, body := rawGet(t, url, "http://"+host+"/fixture.test/dep01/@v/list",
			"Proxy-Authorization: Basic "+base64.StdEncoding.EncodeToString([]byte(c.user+":"+c.pass))+"\r\n")
		if code != c.want {
			t.Errorf("user %q: %d %s; want %d", c.user, code, body, c.want)
		}
	}
	audit.Flush()
	lines := readAudit(t, auditPath)
	if len(lines) != 3 {
		t.Fatalf("%d audit lines; want 3", len(lines))
	}
	if l := lines[0]; l["identity"] != "alice" || l["trace_id"] != buildTraceID {
		t.Errorf("audit line: identity %v, trace %v; want alice in trace %s", l["identity"], l["trace_id"], buildTraceID)
	}
}

// TestBuildContextAlwaysSampled: under a rate limit of one new trace a
// second, every request of a sampled build context is recorded.
func TestBuildContextAlwaysSampled(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{MaxTracesPerSecond: 1, SpanExporters: []sdktrace.SpanExporter{spans}})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	url := startGate(t, sidecar.Config{Telemetry: tel, Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	const n = 50
	for range n {
		get(t, url+"/"+telemetry.TracePathElem+"/"+buildTP+"/fixture.test/dep01/@v/list")
		get(t, url+"/fixture.test/dep01/@v/list") // a trace of modgate's own, limited
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Flushed, not shut down: shutting down empties the exporter.
	if err := tel.TracerProvider().(*sdktrace.TracerProvider).ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	var build, own int
	for _, s := range spans.GetSpans() {
		if s.SpanKind != trace.SpanKindServer {
			continue
		}
		if s.SpanContext.TraceID().String() == buildTraceID {
			build++
		} else {
			own++
		}
	}
	if build != n {
		t.Errorf("%d server spans of the build recorded; want all %d", build, n)
	}
	if own >= n/2 {
		t.Errorf("%d of %d server spans of modgate's own traces recorded; want the rate limit to hold", own, n)
	}
}

// TestBuildSummaryBreakersAndFallthroughs: a build's summary counts the
// requests the chain moved past its first upstream for, and the breaker
// that opened while the build ran, with the upstream's time.
func TestBuildSummaryBreakersAndFallthroughs(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	g := sidecartest.Start(t, nil, sidecar.Config{Admin: "127.0.0.1:0", Upstreams: []upstream.Config{
		{Name: "flaky", URL: p.URL + "/f/500", Fallthrough: upstream.OnError,
			Breaker: upstream.BreakerSettings{ConsecutiveFailures: 2}, Retry: upstream.RetrySettings{Attempts: 1}},
		{Name: "public", URL: p.URL},
	}})
	base := g.URL + "/" + telemetry.TracePathElem + "/" + buildTP
	for _, m := range []string{"dep01", "dep02", "dep03", "dep04"} {
		if code, body := get(t, base+"/fixture.test/"+m+"/@v/v1.0.0.info"); code != http.StatusOK {
			t.Fatalf("%s: %d %s", m, code, body)
		}
	}
	var sum telemetry.BuildSummary
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		// The breaker's news is delivered from a goroutine of its own.
		resp, err := http.Get("http://" + g.AdminAddr + "/debug/builds/" + buildTraceID)
		if err != nil {
			t.Fatal(err)
		}
		sum = telemetry.BuildSummary{}
		json.NewDecoder(resp.Body).Decode(&sum)
		resp.Body.Close()
		if len(sum.Breakers) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if sum.Requests != 4 || sum.Fallthroughs != 4 {
		t.Errorf("summary: %d requests, %d fall-throughs; want 4 and 4", sum.Requests, sum.Fallthroughs)
	}
	if len(sum.Breakers) != 1 || sum.Breakers[0].Upstream != "flaky" {
		t.Errorf("summary's breaker openings: %+v; want flaky's", sum.Breakers)
	}
	if sum.Upstreams["public"].Requests != 4 || len(sum.Slowest) != 4 || sum.Slowest[0].Upstream != "public" {
		t.Errorf("summary: upstreams %v, slowest %+v", sum.Upstreams, sum.Slowest)
	}
}
