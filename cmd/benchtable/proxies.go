package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// benchPolicy is the policy modgate runs with: the README's example and a
// few more rules. Every fixture request is allowed, by the last rule, after
// the deny rules before it have been tried; the version rule on
// fixture.test/dep05 makes list answers go through the version filter.
const benchPolicy = `# modgate bench: every fixture request passes all rules to "allow *".
private: ["*.corp.example.test", "github.com/acme/*"]
routes:
  - modules: ["*.corp.example.test"]
    upstreams: [origin]
rules:
  - deny: "github.com/evil/*"
    reason: "malware, see SEC-123"
  - deny: "example.test/lib"
    versions: "<v1.4.2"
    reason: "CVE fixed in v1.4.2"
  - deny: "example.test/range"
    versions: ">=v1.0.0, <v1.2.0"
    reason: "broken releases"
  - deny: "fixture.test/dep05"
    versions: "<v1.0.0"
    reason: "never released"
  - deny: "*"
    kinds: [vcs, go-get]
    hosts: ["*.untrusted.example.test"]
    reason: "no direct fetches from untrusted hosts"
  - allow: "*"
default: deny
contact: "ask #platform-builds"
`

// floorTransport is the floor's way to the origin: http.DefaultTransport's
// settings, except that no proxy is read from the environment and up to 64
// idle connections are kept per host, as modgate's upstream transport does
// (the default keeps 2, and the floor would then spend its time dialing at
// 16 and 64 clients instead of proxying).
func floorTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.MaxIdleConnsPerHost = 64
	return t
}

// newFloor is the floor: httputil.ReverseProxy with Rewrite and nothing
// else. An origin-form request goes to the origin (reverse mode); an
// absolute-form one goes where its URL says (a plain forwarder); a CONNECT
// becomes a bare tunnel (hijack, dial, io.Copy both ways), which
// ReverseProxy does not do.
func newFloor(originURL string) (http.Handler, error) {
	target, err := url.Parse(originURL)
	if err != nil {
		return nil, err
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			if r.In.URL.IsAbs() {
				r.Out.URL = r.In.URL
				return
			}
			r.SetURL(target)
		},
		Transport: floorTransport(),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			floorTunnel(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	}), nil
}

// floorTunnel is the least a CONNECT proxy written with net/http does.
func floorTunnel(w http.ResponseWriter, r *http.Request) {
	s, err := net.DialTimeout("tcp", r.Host, 10*time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer s.Close()
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	if n := brw.Reader.Buffered(); n > 0 { // sent right behind the CONNECT
		b, _ := brw.Reader.Peek(n)
		if _, err := s.Write(b); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(s, c)
		s.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, s)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

// gateConfig is what an in-process modgate (the hot-path row) is built
// from.
type gateConfig struct {
	Origin string // base URL of the origin
	// AlwaysOn samples every request and sends the spans to a counter in
	// this process, batched as the OTLP exporter does. If false, the
	// telemetry of `modgate run` with no OTEL_* variable: the default
	// sampler, nothing exported.
	AlwaysOn bool
	Policy   string // policy file
	Audit    string // audit log file
}

// gate is a running modgate in this process, built the way `modgate run`
// builds it (cmd/modgate/internal/cli/run.go): telemetry, a policy store
// that watches its file, an audit log, the server with its admin listener.
type gate struct {
	ln, admin net.Listener
	done      chan error
	stop      context.CancelFunc
	spans     *spanCounter // with AlwaysOn, else nil
}

// startGate starts a modgate with everything that exists turned on: the
// policy (with its watcher), the audit log to a file, a breaker and
// retries on the upstream and on every forward-mode origin, and telemetry
// (see gateConfig.AlwaysOn).
func startGate(cfg gateConfig) (*gate, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		return nil, err
	}
	g := &gate{ln: ln, admin: admin, done: make(chan error, 1)}
	fail := func(err error) (*gate, error) {
		ln.Close()
		admin.Close()
		return nil, err
	}
	u, err := url.Parse(cfg.Origin)
	if err != nil {
		return fail(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return fail(fmt.Errorf("origin %s: no port", cfg.Origin))
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop = cancel
	tc := telemetry.Config{Version: "bench", HostName: "bench"}
	if cfg.AlwaysOn {
		g.spans = &spanCounter{}
		tc.Getenv = func(k string) string { return map[string]string{"OTEL_TRACES_SAMPLER": "always_on"}[k] }
		tc.SpanExporters = []sdktrace.SpanExporter{g.spans}
	}
	tel, err := telemetry.Setup(ctx, tc)
	if err != nil {
		cancel()
		return fail(fmt.Errorf("telemetry: %w", err))
	}
	store, err := policy.NewStore(cfg.Policy)
	if err != nil {
		cancel()
		return fail(err)
	}
	audit, err := policy.NewAuditLog(cfg.Audit, policy.AuditOptions{})
	if err != nil {
		cancel()
		return fail(err)
	}
	s, err := sidecar.New(sidecar.Config{
		Listen:    ln.Addr().String(),
		Admin:     admin.Addr().String(),
		Upstreams: []upstream.Config{{Name: "origin", URL: cfg.Origin}},
		// The logger of `modgate run` (JSON, info); allowed requests log nothing.
		Logger:    slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Version:   "bench",
		Policy:    store,
		Audit:     audit,
		Telemetry: tel,
		Forward: sidecar.ForwardConfig{
			// Named without a wildcard, the loopback origin is trusted.
			AllowHosts:   []string{"127.0.0.1"},
			ConnectPorts: []int{port},
		},
	})
	if err != nil {
		cancel()
		audit.Close()
		return fail(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { store.Watch(ctx, func(error) {}) })
	go func() {
		err := s.Serve(ctx, ln, admin)
		wg.Wait()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		tel.Shutdown(sctx)
		cancel()
		g.done <- errors.Join(err, audit.Close())
	}()
	return g, nil
}

// URL is the base URL of the gate's module listener.
func (g *gate) URL() string { return "http://" + g.ln.Addr().String() }

// Close stops the gate and waits for it to flush its audit log and
// telemetry.
func (g *gate) Close() error {
	g.stop()
	return <-g.done
}

// writePolicy writes benchPolicy into dir and returns its path.
func writePolicy(dir string) (string, error) {
	p := filepath.Join(dir, "policy.yaml")
	return p, os.WriteFile(p, []byte(benchPolicy), 0o644)
}

// spanCounter is the in-process exporter: the SDK does all its work (the
// span, its attributes, the batch) and the export counts the spans.
type spanCounter struct{ n atomic.Int64 }

func (c *spanCounter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	c.n.Add(int64(len(spans)))
	return nil
}

func (c *spanCounter) Shutdown(context.Context) error { return nil }
