package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elazarl/goproxy"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// ForwardConfig is forward mode: modgate as the HTTP_PROXY / HTTPS_PROXY
// of the go command and git.
type ForwardConfig struct {
	// ConnectPorts a CONNECT may reach. If empty, [443].
	ConnectPorts []int
	// AllowHosts are the hosts (path.Match patterns, e.g. "*.example.test")
	// forward mode reaches. If empty, ["*"]. Whatever the patterns, a host
	// that resolves to a loopback, private, link-local or otherwise
	// non-public address is refused unless it is named here without a
	// wildcard (or pinned with Resolve).
	AllowHosts []string
	// MITMHosts are intercepted: their TLS is ended with a certificate of
	// CA so that each request goes through the pipeline. Needs CA.
	MITMHosts []string
	// CA mints the certificates for MITMHosts.
	CA *mitm.CA
	// PrivateHosts (patterns) may receive private module paths, besides
	// the hosts of private upstreams and hosts the private patterns match.
	PrivateHosts []string
	// Users, if not empty, requires Proxy-Authorization Basic with one of
	// these user names and passwords; the user name is the identity. This
	// is forward.auth_file, the older form of Config.Clients, which forward
	// mode takes too.
	Users map[string]string
	// TunnelIdle closes a tunnel with no traffic either way for that long
	// (checked every eighth of it, so at most an eighth later). If zero,
	// 5 minutes.
	TunnelIdle time.Duration
	// MaxTunnels bounds the CONNECTs open at once (tunnels and
	// intercepted connections); past it a CONNECT gets 503. If zero, 1024.
	MaxTunnels int
	// Origin settings for every host reached in forward mode.
	Timeouts upstream.Timeouts
	Breaker  upstream.BreakerSettings
	Retry    upstream.RetrySettings
}

// forward is the state of forward mode.
type forward struct {
	s      *Server
	cfg    ForwardConfig
	guard  *guard
	opts   upstream.Options
	goprox *goproxy.ProxyHttpServer // parses CONNECT and hands the connection over

	mu      sync.Mutex
	origins map[originKey]*upstream.Upstream

	// hijacked connections (tunnels, intercepted TLS) live outside the
	// listener's http.Server; shutdown reaches them through here.
	hijacked  sync.WaitGroup
	inner     sync.Map // *http.Server of intercepted connections
	tunnelsMu sync.Mutex
	tunnels   map[*relay]struct{} // open tunnels
	// sweep closes idle tunnels. It runs while there are tunnels (it
	// starts with the first and returns when it finds none) until
	// shutdown closes sweepStop.
	sweeping  bool
	closed    bool // shutdown has begun: no sweep starts
	sweepStop chan struct{}
	swept     sync.WaitGroup
	open      atomic.Int64 // hijacked CONNECTs, against MaxTunnels
}

const maxOrigins = 1024

func newForward(s *Server, cfg ForwardConfig, opts upstream.Options) *forward {
	if len(cfg.ConnectPorts) == 0 {
		cfg.ConnectPorts = []int{443}
	}
	if len(cfg.AllowHosts) == 0 {
		cfg.AllowHosts = []string{"*"}
	}
	if cfg.TunnelIdle == 0 {
		cfg.TunnelIdle = 5 * time.Minute
	}
	if cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = 1024
	}
	g := &guard{
		connectPorts: cfg.ConnectPorts,
		explicit:     map[string]bool{},
		resolve:      map[string]string{},
		resolver:     net.DefaultResolver,
		// No Timeout of its own: the guard's callers (a tunnel, an
		// origin's transport) bound the dial with the origin's own.
		dial: (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
	}
	if s.cfg.Dial != nil {
		g.dial, g.resolver = s.cfg.Dial, &net.Resolver{PreferGo: true, Dial: s.cfg.Dial}
	}
	// Host patterns are spelled as hosts are (wire.NormalizeHost), so that
	// each compares with the one normalised host of a request.
	cfg.AllowHosts, cfg.MITMHosts, cfg.PrivateHosts = normalizedPatterns(cfg.AllowHosts), normalizedPatterns(cfg.MITMHosts), normalizedPatterns(cfg.PrivateHosts)
	for _, h := range append(append([]string{}, cfg.AllowHosts...), cfg.MITMHosts...) {
		g.allow = append(g.allow, h)
		if !strings.ContainsAny(h, "*?[") {
			g.explicit[h] = true
		}
	}
	for k, v := range s.cfg.Resolve {
		g.resolve[strings.ToLower(k)] = v
	}
	g.own = []string{s.cfg.Listen}
	if s.cfg.Admin != "" {
		g.own = append(g.own, s.cfg.Admin)
	}
	f := &forward{s: s, cfg: cfg, guard: g, origins: map[originKey]*upstream.Upstream{}, tunnels: map[*relay]struct{}{}, sweepStop: make(chan struct{})}
	opts.Dial = g.Dial
	opts.Resolve = nil         // the guard pins
	opts.MetricName = "origin" // hosts are on the spans, not the metrics
	f.opts = opts

	// goproxy parses CONNECT and hands over the connection. Everything it
	// would otherwise do by default is replaced: no built-in CA, no
	// transport that skips verification or reads proxy variables, no
	// tunnel to any host and port.
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	gp.Verbose = false
	gp.Tr = &http.Transport{Proxy: nil, DialContext: g.Dial, TLSClientConfig: &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12}}
	gp.ConnectDial = func(network, addr string) (net.Conn, error) { return g.Dial(context.Background(), network, addr) }
	gp.NonproxyHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not a CONNECT", http.StatusMethodNotAllowed) // unreachable: only CONNECT comes here
	})
	gp.OnRequest().HandleConnectFunc(f.handleConnect)
	f.goprox = gp
	return f
}

// origin returns the upstream for a host reached in forward mode, made on
// first use: its own breaker, retries and timeouts, redirects passed to
// the client.
func (f *forward) origin(scheme, hostport string) (*upstream.Upstream, error) {
	key := originKey{scheme, hostport}
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.origins[key]; ok {
		return u, nil
	}
	u, err := upstream.New(upstream.Config{
		Name: hostport, URL: scheme + "://" + hostport, PassRedirects: true,
		Timeouts: f.cfg.Timeouts, Breaker: f.cfg.Breaker, Retry: f.cfg.Retry,
	}, f.opts)
	if err != nil {
		return nil, err
	}
	if len(f.origins) >= maxOrigins {
		for k := range f.origins { // forget one: the map is a cache of breakers
			delete(f.origins, k)
			break
		}
	}
	f.origins[key] = u
	return u, nil
}

// originKey is an origin's scheme and host:port.
type originKey struct{ scheme, hostport string }

// closeIdle closes the idle connections to every origin.
func (f *forward) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.origins {
		u.CloseIdle()
	}
}

// isPrivateHost reports whether host (normalised) may receive private
// module paths.
func (f *forward) isPrivateHost(x *exchange, host string) bool {
	for _, u := range f.s.chain.Upstreams() {
		if u.Private && u.URL != nil && normalized(u.URL.Hostname()) == host {
			return true
		}
	}
	if matchHost(f.cfg.PrivateHosts, host) {
		return true
	}
	_, ok := x.pol.IsPrivate(host)
	return ok
}

// matchHost reports whether host matches one of patterns (path.Match),
// both normalised.
func matchHost(patterns []string, host string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, host); ok {
			return true
		}
	}
	return false
}

// normalizedPatterns spells host patterns as wire.NormalizeHost spells
// hosts: a wildcard label stays, every other label is normalised.
func normalizedPatterns(patterns []string) []string {
	out := make([]string, len(patterns))
	for i, p := range patterns {
		labels := strings.Split(strings.TrimSuffix(p, "."), ".")
		for j, l := range labels {
			if strings.ContainsAny(l, "*?[") {
				labels[j] = strings.ToLower(l)
			} else {
				labels[j] = normalized(l)
			}
		}
		out[i] = strings.Join(labels, ".")
	}
	return out
}

// normalized is host as wire.NormalizeHost spells it, or host in lower
// case when it is not a valid name.
func normalized(host string) string {
	if h, err := wire.NormalizeHost(host); err == nil {
		return h
	}
	return strings.ToLower(host)
}

// authenticate checks Proxy-Authorization (or the client certificate of
// the TLS listener) with the identities every way in shares, and returns
// the identity, or the 407 that asks for it (429 after too many failures
// from the client's address). With no users or clients configured
// everyone is nobody in particular ("").
func (f *forward) authenticate(r *http.Request) (identity string, err error) {
	return f.s.clients.authenticate(r, true)
}

// serveAbsolute answers an absolute-form request (GET http://host/path).
// It is served by the pipeline itself rather than goproxy's request hooks:
// those return an *http.Response whose broken body goproxy would end as if
// complete when it is chunked.
func (f *forward) serveAbsolute(w http.ResponseWriter, r *http.Request) {
	x := f.s.newExchange(w, r, wire.ModeForward)
	x.end(f.absolute(x))
}

func (f *forward) absolute(x *exchange) error {
	r := x.r
	identity, err := f.authenticate(r)
	x.setIdentity(identity, err)
	if err != nil {
		return err
	}
	if r.URL.Scheme != "http" {
		return invalid(fmt.Sprintf("scheme %q: send https through CONNECT (HTTPS_PROXY)", r.URL.Scheme))
	}
	host, port, err := wire.NormalizeHostPort(r.URL.Host, "80")
	if err != nil {
		return invalid(err.Error())
	}
	return f.serve(x, "http", host, port)
}

// serve runs one forward-mode request (absolute-form, or inside an
// intercepted CONNECT) through the pipeline, with the origin host as its
// source. host is normalised.
func (f *forward) serve(x *exchange, scheme, host, port string) error {
	r := x.r
	x.host = net.JoinHostPort(host, port)
	if err := f.guard.checkHost(host, port, false); err != nil {
		return refused(fmt.Sprintf("%s %s refused: %v", r.Method, x.host, err))
	}
	req, err := f.s.classify(r, host)
	if err != nil {
		return invalid(err.Error())
	}
	x.req = req
	u, err := f.origin(scheme, x.host)
	if err != nil {
		return fail(wire.UpstreamFailed, fmt.Sprintf("%s %s: %v", r.Method, x.host, err))
	}
	return f.s.pipeline(x, originSource{f: f, u: u, host: host})
}

// serveConnect answers a CONNECT through goproxy (handleConnect): it
// refuses it, tunnels it, or intercepts it. goproxy takes the client's
// connection from net/http but not the bytes net/http had read behind the
// CONNECT (a client may send its request or TLS hello without waiting for
// the 200); keepBehind hands those over with the connection, and they are
// the first the destination gets.
func (f *forward) serveConnect(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w = keepBehind{w} // HTTP/2 has no connection to hand over: goproxy tunnels in the stream
	}
	f.goprox.ServeHTTP(w, r)
}

// handleConnect decides what to do with a CONNECT: refuse it, tunnel it,
// or intercept it.
func (f *forward) handleConnect(target string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	x, span, host, port, err := f.admitConnect(ctx.Req)
	if err != nil {
		a := f.reject(ctx, x, asProblem(err))
		if span != nil {
			span.End()
		}
		return a, target
	}
	ctx.Req = x.r
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(_ *http.Request, c net.Conn, _ *goproxy.ProxyCtx) {
		f.connected(x, span, c, host, port)
	}}, target
}

// connected serves a CONNECT that admitConnect let through, on the
// client's connection c.
func (f *forward) connected(x *exchange, span trace.Span, c net.Conn, host, port string) {
	defer span.End()
	var behind []byte
	if b, ok := c.(*behindConn); ok {
		c, behind = b.Conn, b.behind
	}
	f.hijacked.Add(1)
	defer f.hijacked.Done()
	defer f.open.Add(-1)
	if n := f.open.Add(1); n > int64(f.cfg.MaxTunnels) {
		f.busy(x, c)
		return
	}
	if x.mode == wire.ModeMITM {
		f.intercept(x, c, behind, host, port)
		return
	}
	// The tunnel is the CONNECT's exchange, ended here rather than in a
	// frame below: the access and audit lines are the deepest point of
	// the connection's goroutine, whose stack grows (a copy) if they go
	// past it.
	defer c.Close()
	err := f.tunnel(x, c, behind, x.host)
	if err != nil {
		// Refused before the 200: the answer goes on the connection.
		x.connect = func(p *problem) { connectRefusal(x.r, p).Write(c) }
	}
	x.end(err)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.response.status_code", x.w.status))
	}
}

// admitConnect starts a CONNECT's exchange and span and checks its
// target: an error is the refusal to answer with (and span, when not nil,
// is to be ended once it is answered). Its frame is its own (noinline): a
// tunnel's goroutine, which dials and relays below connected, then needs
// less stack.
//
//go:noinline
func (f *forward) admitConnect(r *http.Request) (x *exchange, span trace.Span, host, port string, err error) {
	target := r.URL.Host
	x = f.s.newExchange(nil, r, wire.ModeForward)
	x.host, x.req.Kind = target, wire.KindTunnel
	identity, err := f.authenticate(r)
	x.setIdentity(identity, err)
	if err != nil {
		return x, nil, "", "", err
	}
	host, port, err = wire.NormalizeHostPort(target, "")
	if err != nil || host == "" {
		// CONNECT names host:port (RFC 9110 9.3.6); guessing a port would
		// only send a name of the client's choosing to the resolver.
		return x, nil, "", "", invalid("a CONNECT target is host:port")
	}
	hostport := net.JoinHostPort(host, port)
	x.host = hostport
	mode := wire.ModeForward
	if f.cfg.CA != nil && matchHost(f.cfg.MITMHosts, host) {
		mode = wire.ModeMITM
	}
	// One span covers the whole CONNECT: the tunnel, or every request
	// intercepted inside it (they are its children).
	tel := f.s.tel
	sctx := tel.Propagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	sctx, span = tel.Tracer().Start(sctx, "CONNECT", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("server.address", host), attribute.String("server.port", port),
		telemetry.AttrRequestKind.String(string(wire.KindTunnel)), telemetry.AttrMode.String(string(mode))))
	x.r = r.WithContext(sctx)
	if err := f.guard.checkHost(host, port, true); err != nil {
		span.SetAttributes(attribute.Int("http.response.status_code", http.StatusForbidden), telemetry.AttrPolicyDecision.String(string(wire.DecisionDeny)))
		return x, span, "", "", refused("CONNECT " + hostport + " refused: " + err.Error())
	}
	if f.s.cfg.Offline && mode != wire.ModeMITM {
		// A tunnel's bytes cannot come from the cache.
		return x, span, "", "", fail(wire.Offline, "CONNECT "+hostport+": modgate is offline and only intercepted hosts are served, from its cache")
	}
	x.mode = mode
	return x, span, host, port, nil
}

// busy refuses a CONNECT past forward.max_tunnels on the client's
// connection c, and closes it.
func (f *forward) busy(x *exchange, c net.Conn) {
	defer c.Close()
	x.connect = func(p *problem) { connectRefusal(x.r, p).Write(c) }
	x.end(fail(wire.Busy, fmt.Sprintf("CONNECT %s: modgate has %d tunnels open, its forward.max_tunnels; try again", x.host, f.cfg.MaxTunnels)).retryAfter(1))
}

// keepBehind is a CONNECT's ResponseWriter as goproxy gets it: its
// Hijack hands over, with the connection, the bytes that came behind the
// request (a behindConn).
type keepBehind struct{ http.ResponseWriter }

func (k keepBehind) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(k.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		return &behindConn{Conn: c, behind: bytes.Clone(b)}, brw, nil
	}
	return c, brw, nil
}

func (k keepBehind) Unwrap() http.ResponseWriter { return k.ResponseWriter }

// behindConn is a hijacked connection with the bytes that came behind the
// CONNECT, which connected takes apart: the tunnel or the interception
// sends them on first.
type behindConn struct {
	net.Conn
	behind []byte
}

// reject answers a refused CONNECT through goproxy.
func (f *forward) reject(ctx *goproxy.ProxyCtx, x *exchange, p *problem) *goproxy.ConnectAction {
	x.connect = func(p *problem) { ctx.Resp = connectRefusal(x.r, p) }
	x.end(p)
	return &goproxy.ConnectAction{Action: goproxy.ConnectReject}
}

// connectRefusal is the answer to a CONNECT refused with p, with the
// reason in the status line: the go command and git print only that.
func connectRefusal(r *http.Request, p *problem) *http.Response {
	msg := string(p.code)
	if len(p.lines) > 0 {
		msg = p.lines[0]
	}
	line := wire.FirstLine(p.code, cleanLine(msg))
	header := http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
	for k, vs := range p.header {
		header[k] = vs
	}
	return &http.Response{
		StatusCode: p.status(), Status: fmt.Sprintf("%d %s", p.status(), line),
		ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header:        header,
		Body:          io.NopCloser(strings.NewReader(line + "\n")),
		ContentLength: int64(len(line) + 1),
		Close:         true,
	}
}

// tunnel dials the destination through the guard and the origin's
// breaker, then relays the tunnel, behind (what the client sent right
// after the CONNECT) first, until both sides are done or the tunnel is
// idle too long.
func (f *forward) tunnel(x *exchange, client net.Conn, behind []byte, hostport string) error {
	u, err := f.origin("https", hostport)
	if err != nil {
		return fail(wire.UpstreamFailed, "CONNECT "+hostport+": "+err.Error())
	}
	x.out.served = u
	report, err := u.Guard()
	if err != nil {
		return fail(wire.CircuitOpen, "CONNECT "+hostport+": "+err.Error())
	}
	dctx, cancel := context.WithTimeout(x.r.Context(), u.Timeouts.Dial)
	server, err := f.guard.Dial(dctx, "tcp", hostport)
	cancel()
	if err != nil {
		if ref, ok := isRefusal(err); ok {
			report(nil) // the destination is not unwell; it is not allowed
			return refused("CONNECT " + hostport + " refused: " + ref.reason)
		}
		report(err)
		return fail(wire.UpstreamFailed, "CONNECT "+hostport+": "+err.Error())
	}
	report(nil)
	defer server.Close()
	x.w.status = http.StatusOK
	client.Write(connectEstablished)
	clock := f.s.clock()
	start := clock.Now()
	t := &relay{client: client, server: server, first: behind, clock: clock}
	t.last.Store(start.UnixNano())
	f.track(t)
	up, down := t.splice()
	f.untrack(t)
	f.s.tel.RecordTunnel(x.r.Context(), clock.Now().Sub(start), up, down)
	x.w.bytes = up + down
	x.out.note = tunnelNote(up, down)
	return nil
}

// connectEstablished is the answer to a CONNECT that is let through.
var connectEstablished = []byte("HTTP/1.1 200 Connection established\r\n\r\n")

// tunnelNote is the audit line's note on a tunnel: "N bytes up, M down".
func tunnelNote(up, down int64) string {
	b := make([]byte, 0, 48)
	b = strconv.AppendInt(b, up, 10)
	b = append(b, " bytes up, "...)
	b = strconv.AppendInt(b, down, 10)
	b = append(b, " down"...)
	return string(b)
}

// track notes an open tunnel, which sweep closes once it is idle and
// shutdown cuts if it outlasts the grace; untrack forgets it.
func (f *forward) track(t *relay) {
	f.tunnelsMu.Lock()
	f.tunnels[t] = struct{}{}
	if !f.sweeping && !f.closed {
		f.sweeping = true
		f.swept.Add(1)
		go f.sweep()
	}
	f.tunnelsMu.Unlock()
}

func (f *forward) untrack(t *relay) {
	f.tunnelsMu.Lock()
	delete(f.tunnels, t)
	f.tunnelsMu.Unlock()
}

// sweep closes the tunnels that have carried nothing either way for
// TunnelIdle, looking every eighth of it, until there are none or
// shutdown. One sweep for every tunnel, rather than a goroutine and a
// timer for each: a build opens many short tunnels (see
// BenchmarkForwardConnectSetup).
func (f *forward) sweep() {
	defer f.swept.Done()
	clock, idle := f.s.clock(), f.cfg.TunnelIdle
	every := max(idle/8, time.Millisecond)
	var idleOnes []*relay
	for {
		fired, stopTimer := clock.After(every)
		select {
		case <-f.sweepStop:
			stopTimer()
			return
		case <-fired:
		}
		now := clock.Now()
		f.tunnelsMu.Lock()
		if len(f.tunnels) == 0 {
			f.sweeping = false
			f.tunnelsMu.Unlock()
			return
		}
		idleOnes = idleOnes[:0]
		for t := range f.tunnels {
			if now.Sub(time.Unix(0, t.last.Load())) >= idle {
				idleOnes = append(idleOnes, t)
			}
		}
		f.tunnelsMu.Unlock()
		for _, t := range idleOnes {
			t.client.Close()
			t.server.Close()
		}
	}
}

// bigBufPool holds the buffers of tunnels that carry bulk data.
var bigBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// relay is one tunnel: it copies client→server (first, then what the
// client sends) and server→client.
type relay struct {
	client, server net.Conn
	first          []byte // sent to the server before what the client sends
	clock          wire.Clock
	last           atomic.Int64 // UnixNano of the last byte either way
	up, down       int64
	upDone         sync.WaitGroup
}

// splice relays both directions, passing each side's end on as a
// half-close, until both are done (or sweep or shutdown closes the
// connections), and returns the bytes sent each way, first included.
func (t *relay) splice() (up, down int64) {
	t.upDone.Add(1)
	go t.copyUp()
	t.copyHalf(t.client, t.server, nil, &t.down)
	t.upDone.Wait()
	return t.up, t.down
}

// copyUp is the client→server direction.
func (t *relay) copyUp() {
	defer t.upDone.Done()
	t.copyHalf(t.server, t.client, t.first, &t.up)
}

// copyHalf writes first to dst, then copies src to dst until either
// fails or src ends, then half-closes dst; n counts the bytes written.
func (t *relay) copyHalf(dst, src net.Conn, first []byte, n *int64) {
	defer func() {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}()
	if len(first) > 0 {
		m, err := dst.Write(first)
		*n += int64(m)
		if err != nil {
			return
		}
	}
	// Reads and writes through user space, not splice(2): with large
	// buffers they carry more on this class of machine (see
	// BenchmarkForwardTunnel). A tunnel starts with a small buffer and
	// takes a large one only once a read fills the small one, so the
	// many short tunnels of a build stay cheap.
	//
	// Tried and not kept (2 cores, medians of 8-12 runs, each variant
	// side by side with a 1 MiB control in one run): 4 MiB buffers
	// +1-2% in modgate's tunnel, while two identical 1 MiB tunnels
	// differ by up to 8%; 2 MiB 0.7×. In a bare relay with this loop:
	// SetReadBuffer/SetWriteBuffer 4 MiB (which ends autotuning) and
	// Nagle on (SetNoDelay(false)) +3-6%, inside the same noise;
	// splice(2) ~0.75× of this loop. Plaintext on loopback is bound by
	// the relay's two extra copies on two cores.
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var big *[]byte
	defer func() {
		if big != nil {
			bigBufPool.Put(big)
		}
	}()
	for {
		m, err := src.Read(buf)
		if m > 0 {
			t.last.Store(t.clock.Now().UnixNano())
			if _, werr := dst.Write(buf[:m]); werr != nil {
				return
			}
			*n += int64(m)
		}
		if err != nil {
			return
		}
		if big == nil && m == len(buf) {
			big = bigBufPool.Get().(*[]byte)
			buf = *big
		}
	}
}

// intercept ends the client's TLS with a certificate for host minted by
// modgate's CA and serves each request inside through the pipeline, with
// the host as its origin.
//
// The CONNECT itself is not an exchange of its own: each request inside it
// is, with its own audit line.
func (f *forward) intercept(connect *exchange, client net.Conn, behind []byte, host, port string) {
	r, identity := connect.r, connect.identity
	hostport := connect.host
	client.Write(connectEstablished)
	if len(behind) > 0 {
		client = &readBehindConn{Conn: client, r: io.MultiReader(bytes.NewReader(behind), client)}
	}
	tconn := tls.Server(client, f.cfg.CA.ServerConfig(host))
	handler := http.HandlerFunc(func(w http.ResponseWriter, in *http.Request) {
		closeAfterChunked(w, in)
		x := f.s.newExchange(w, in, wire.ModeMITM)
		x.identity, x.host = identity, hostport
		if h, _, err := wire.NormalizeHostPort(in.Host, port); err != nil || h != host {
			x.end(invalidAs(wire.Misdirected, fmt.Sprintf("request for %s inside a CONNECT to %s", in.Host, hostport)))
			return
		}
		x.end(f.serve(x, "https", host, port))
	})
	kindOf := func(in *http.Request) wire.Kind {
		req, _ := classifyForward(host, in.URL.Path, in.URL.RawQuery, f.s.sumdbAddr)
		return req.Kind
	}
	srv := &http.Server{
		Handler:           f.s.tel.ServerMiddleware(handler, kindOf),
		BaseContext:       func(net.Listener) context.Context { return r.Context() },
		ReadHeaderTimeout: f.s.cfg.ClientHeader,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes, // the listener's, not net/http's 1 MiB
		ErrorLog:          slog.NewLogLogger(f.s.log.Handler(), slog.LevelDebug),
	}
	f.inner.Store(srv, true)
	defer f.inner.Delete(srv)
	srv.Serve(newOneConnListener(tconn))
}

// shutdown stops intercepted servers gracefully and, once ctx is done,
// cuts the tunnels that are still open; it returns when every hijacked
// connection is finished.
func (f *forward) shutdown(ctx context.Context) {
	f.inner.Range(func(k, _ any) bool {
		go k.(*http.Server).Shutdown(ctx)
		return true
	})
	f.tunnelsMu.Lock()
	if !f.closed {
		f.closed = true
		close(f.sweepStop)
	}
	f.tunnelsMu.Unlock()
	defer f.swept.Wait()
	done := make(chan struct{})
	go func() { f.hijacked.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	f.inner.Range(func(k, _ any) bool { k.(*http.Server).Close(); return true })
	f.tunnelsMu.Lock()
	for t := range f.tunnels {
		t.client.Close()
		t.server.Close()
	}
	f.tunnelsMu.Unlock()
	<-done
}

// oneConnListener hands out one connection, then blocks until it is
// closed, so that http.Server.Serve ends with the connection.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	closed chan struct{}
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{closed: make(chan struct{})}
	l.conn = &notifyConn{Conn: c, closed: l.closed}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.conn })
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

// readBehindConn reads what came behind the CONNECT first, then the
// connection.
type readBehindConn struct {
	net.Conn
	r io.Reader
}

func (c *readBehindConn) Read(p []byte) (int, error) { return c.r.Read(p) }
