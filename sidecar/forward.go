package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
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
	// these user names and passwords; the user name is the identity.
	Users map[string]string
	// TunnelIdle closes a tunnel with no traffic either way for that long.
	// If zero, 5 minutes.
	TunnelIdle time.Duration
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
	users  map[string][32]byte // user → sha256(password)
	goprox *goproxy.ProxyHttpServer

	mu      sync.Mutex
	origins map[string]*upstream.Upstream // by scheme://host:port

	// hijacked connections (tunnels, intercepted TLS) live outside the
	// listener's http.Server; shutdown reaches them through here.
	hijacked sync.WaitGroup
	inner    sync.Map // *http.Server of intercepted connections
	tunnels  sync.Map // net.Conn pairs of open tunnels
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
	g := &guard{
		connectPorts: cfg.ConnectPorts,
		explicit:     map[string]bool{},
		resolve:      map[string]string{},
		resolver:     net.DefaultResolver,
		dialer:       &net.Dialer{Timeout: upstream.DefaultTimeouts.Dial, KeepAlive: 30 * time.Second},
	}
	for _, h := range append(append([]string{}, cfg.AllowHosts...), cfg.MITMHosts...) {
		h = strings.ToLower(h)
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
	f := &forward{s: s, cfg: cfg, guard: g, origins: map[string]*upstream.Upstream{}}
	opts.Dial = g.Dial
	opts.Resolve = nil         // the guard pins
	opts.MetricName = "origin" // hosts are on the spans, not the metrics
	f.opts = opts
	if len(cfg.Users) > 0 {
		f.users = map[string][32]byte{}
		for u, p := range cfg.Users {
			f.users[u] = sha256.Sum256([]byte(p))
		}
	}

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
	key := scheme + "://" + hostport
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.origins[key]; ok {
		return u, nil
	}
	u, err := upstream.New(upstream.Config{
		Name: hostport, URL: key, PassRedirects: true,
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

// closeIdle closes the idle connections to every origin.
func (f *forward) closeIdle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range f.origins {
		u.CloseIdle()
	}
}

// isPrivateHost reports whether host may receive private module paths.
func (f *forward) isPrivateHost(x *exchange, host string) bool {
	host = strings.ToLower(host)
	for _, u := range f.s.chain.Upstreams() {
		if u.Private && u.URL != nil && strings.EqualFold(u.URL.Hostname(), host) {
			return true
		}
	}
	for _, p := range f.cfg.PrivateHosts {
		if ok, _ := path.Match(strings.ToLower(p), host); ok {
			return true
		}
	}
	_, ok := x.pol.IsPrivate(host)
	return ok
}

// authenticate checks Proxy-Authorization and returns the identity. With
// no users configured everyone is anonymous.
func (f *forward) authenticate(r *http.Request) (identity string, ok bool) {
	if f.users == nil {
		return "", true
	}
	user, pass, found := parseBasic(r.Header.Get("Proxy-Authorization"))
	want, known := f.users[user]
	got := sha256.Sum256([]byte(pass))
	// Compare even for unknown users, so timing tells nothing.
	match := subtle.ConstantTimeCompare(got[:], want[:]) == 1
	return user, found && known && match
}

func parseBasic(h string) (user, pass string, ok bool) {
	scheme, cred, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}

// serveAbsolute answers an absolute-form request (GET http://host/path).
// It is served by the pipeline itself rather than goproxy's request hooks:
// those return an *http.Response whose broken body goproxy would end as if
// complete when it is chunked.
func (f *forward) serveAbsolute(w http.ResponseWriter, r *http.Request) {
	identity, ok := f.authenticate(r)
	if !ok {
		w.Header().Set("Proxy-Authenticate", `Basic realm="modgate"`)
		writeError(w, http.StatusProxyAuthRequired, wire.AuthRequired, "proxy authentication required")
		return
	}
	if r.URL.Scheme != "http" {
		writeError(w, http.StatusBadRequest, wire.BadRequest, fmt.Sprintf("scheme %q: send https through CONNECT (HTTPS_PROXY)", r.URL.Scheme))
		return
	}
	hostport := r.URL.Host
	if r.URL.Port() == "" {
		hostport = net.JoinHostPort(r.URL.Hostname(), "80")
	}
	f.serve(w, r, "forward", "http", hostport, identity)
}

// serve runs one forward-mode request through the pipeline, with the
// origin host as its only upstream.
func (f *forward) serve(w http.ResponseWriter, r *http.Request, mode, scheme, hostport, identity string) {
	x := f.s.newExchange(w, r, mode)
	x.identity, x.host = identity, hostport
	defer x.finish()
	host, port, _ := net.SplitHostPort(hostport)
	if err := f.guard.checkHost(host, port, false); err != nil {
		x.decision, x.reason = "deny", err.Error()
		writeError(x.w, http.StatusForbidden, wire.Refused, fmt.Sprintf("%s %s refused: %v", r.Method, hostport, err))
		return
	}
	req, err := classifyForward(host, r.URL.Path, r.URL.RawQuery, f.s.cfg.SumDB)
	if err != nil {
		x.decision, x.reason = "invalid", err.Error()
		writeError(x.w, http.StatusBadRequest, wire.BadRequest, err.Error())
		return
	}
	x.req = req
	if !x.decide() {
		return
	}
	if x.private != "" && !f.isPrivateHost(x, host) {
		x.decision, x.ruleText = "deny", "private "+x.private
		x.reason = "private module path to a host that is not private"
		writeError(x.w, http.StatusForbidden, wire.PrivateHost,
			fmt.Sprintf("%s refused: %s is private (pattern %s) and %s is not a private host", describeRequest(req), req.Module, x.private, host),
			"mark the host private (an upstream with private: true, or forward.private_hosts), or set GONOPROXY/GOPRIVATE so that the go command fetches it directly")
		return
	}
	u, err := f.origin(scheme, hostport)
	if err != nil {
		writeError(x.w, http.StatusBadGateway, wire.UpstreamFailed, err.Error())
		return
	}
	var body io.Reader
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		body = r.Body
	}
	resp, err := u.Do(x.ctx(), upstream.Request{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		Header: forwardHeader(r), Body: body, ContentLength: r.ContentLength,
	})
	if err != nil {
		if ref, ok := isRefusal(err); ok {
			x.decision, x.reason = "deny", ref.reason
			writeError(x.w, http.StatusForbidden, wire.Refused, fmt.Sprintf("%s %s refused: %s", r.Method, hostport, ref.reason))
			return
		}
		f.s.writeChainError(x, upstream.Result{Attempts: []upstream.Attempt{{Upstream: u, Err: err}}})
		return
	}
	x.served = u
	f.s.relay(x, resp)
}

// forwardHeader passes the client's end-to-end headers on (git needs
// Authorization, Git-Protocol, Content-Type), without hop-by-hop and proxy
// headers.
func forwardHeader(r *http.Request) http.Header {
	h := http.Header{}
	copyHeader(h, r.Header)
	h.Del("Proxy-Authorization")
	h.Del("Proxy-Authenticate")
	return h
}

// handleConnect decides what to do with a CONNECT: refuse it, tunnel it,
// or intercept it.
func (f *forward) handleConnect(hostport string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	r := ctx.Req
	identity, ok := f.authenticate(r)
	if !ok {
		return &goproxy.ConnectAction{Action: goproxy.ConnectProxyAuthHijack, Hijack: func(r *http.Request, c net.Conn, _ *goproxy.ProxyCtx) {
			io.WriteString(c, "Proxy-Authenticate: Basic realm=\"modgate\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			c.Close()
		}}, hostport
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		// CONNECT names host:port (RFC 9110 9.3.6); guessing a port would
		// only send a name of the client's choosing to the resolver.
		return f.reject(ctx, r, identity, hostport, http.StatusBadRequest, "a CONNECT target is host:port")
	}
	action, mode := f.tunnel, "forward"
	if f.cfg.CA != nil && f.isMITM(host) {
		action, mode = f.intercept, "mitm"
	}
	// One span covers the whole CONNECT: the tunnel, or every request
	// intercepted inside it (they are its children).
	tel := f.s.tel
	sctx := tel.Propagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	sctx, span := tel.Tracer().Start(sctx, "CONNECT", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("server.address", host), attribute.String("server.port", port),
		telemetry.AttrRequestKind.String(string(KindTunnel)), telemetry.AttrMode.String(mode)))
	r = r.WithContext(sctx)
	ctx.Req = r
	if err := f.guard.checkHost(host, port, true); err != nil {
		span.SetAttributes(attribute.Int("http.response.status_code", http.StatusForbidden), telemetry.AttrPolicyDecision.String("deny"))
		defer span.End()
		return f.reject(ctx, r, identity, hostport, http.StatusForbidden, err.Error())
	}
	return &goproxy.ConnectAction{Action: goproxy.ConnectHijack, Hijack: func(_ *http.Request, c net.Conn, _ *goproxy.ProxyCtx) {
		f.hijacked.Add(1)
		defer f.hijacked.Done()
		defer span.End()
		action(r, c, net.JoinHostPort(host, port), identity)
	}}, hostport
}

func (f *forward) isMITM(host string) bool {
	host = strings.ToLower(host)
	for _, p := range f.cfg.MITMHosts {
		if ok, _ := path.Match(strings.ToLower(p), host); ok {
			return true
		}
	}
	return false
}

// reject answers a CONNECT with code and the reason in the status line:
// the go command and git print only that.
func (f *forward) reject(ctx *goproxy.ProxyCtx, r *http.Request, identity, hostport string, code int, reason string) (*goproxy.ConnectAction, string) {
	x := f.s.newExchange(nil, r, "forward")
	x.identity, x.host, x.req.Kind = identity, hostport, KindTunnel
	x.decision, x.reason, x.w.status = "deny", reason, code
	x.finish()
	line := wire.FirstLine(wire.Refused, "CONNECT "+hostport+" refused: "+cleanLine(reason))
	ctx.Resp = &http.Response{
		StatusCode: code, Status: fmt.Sprintf("%d %s", code, line),
		ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(line + "\n")),
		ContentLength: int64(len(line) + 1),
		Close:         true,
	}
	return &goproxy.ConnectAction{Action: goproxy.ConnectReject}, hostport
}

// writeConnectStatus answers a hijacked CONNECT.
func writeConnectStatus(c net.Conn, code int, reason string) {
	line := cleanLine(reason)
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		code, line, len(line)+1, line)
}

// tunnel connects the client to hostport and copies bytes both ways until
// both sides are done or the tunnel is idle too long.
func (f *forward) tunnel(r *http.Request, client net.Conn, hostport, identity string) {
	defer client.Close()
	x := f.s.newExchange(nil, r, "forward")
	x.identity, x.host, x.req.Kind = identity, hostport, KindTunnel
	defer func() {
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.Int("http.response.status_code", x.w.status))
		x.finish()
	}()
	u, err := f.origin("https", hostport)
	if err != nil {
		x.w.status = http.StatusBadGateway
		writeConnectStatus(client, http.StatusBadGateway, wire.FirstLine(wire.UpstreamFailed, err.Error()))
		return
	}
	x.served = u
	report, err := u.Guard()
	if err != nil {
		x.w.status, x.reason = http.StatusServiceUnavailable, err.Error()
		writeConnectStatus(client, http.StatusServiceUnavailable, wire.FirstLine(wire.CircuitOpen, "CONNECT "+hostport+": "+err.Error()))
		return
	}
	dctx, cancel := context.WithTimeout(r.Context(), u.Timeouts.Dial)
	server, err := f.guard.Dial(dctx, "tcp", hostport)
	cancel()
	if ref, ok := isRefusal(err); ok {
		report(nil) // the destination is not unwell; it is not allowed
		x.decision, x.reason, x.w.status = "deny", ref.reason, http.StatusForbidden
		writeConnectStatus(client, http.StatusForbidden, wire.FirstLine(wire.Refused, "CONNECT "+hostport+" refused: "+ref.reason))
		return
	}
	report(err)
	if err != nil {
		x.w.status, x.reason = http.StatusBadGateway, err.Error()
		writeConnectStatus(client, http.StatusBadGateway, wire.FirstLine(wire.UpstreamFailed, "CONNECT "+hostport+": "+err.Error()))
		return
	}
	defer server.Close()
	x.w.status = http.StatusOK
	io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n")
	f.tunnels.Store(client, server)
	defer f.tunnels.Delete(client)
	start := time.Now()
	up, down := splice(client, server, f.cfg.TunnelIdle)
	f.s.tel.RecordTunnel(r.Context(), time.Since(start), up, down)
	x.w.bytes = up + down
	x.reason = fmt.Sprintf("%d bytes up, %d down", up, down)
}

// bigBufPool holds the buffers of tunnels that carry bulk data.
var bigBufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// splice copies client→server and server→client, passing each side's end
// on as a half-close, until both directions are done or neither has moved
// for idle. It returns the bytes sent each way.
func splice(client, server net.Conn, idle time.Duration) (up, down int64) {
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() { // the idle watchdog
		defer close(watched)
		t := time.NewTimer(idle)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if left := idle - time.Since(time.Unix(0, last.Load())); left > 0 {
					t.Reset(left)
					continue
				}
				client.Close()
				server.Close()
				return
			}
		}
	}()
	copyHalf := func(dst, src net.Conn, n *int64) {
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
		buf, big := *bp, false
		defer func() {
			if big {
				bigBufPool.Put(&buf)
			}
			bufPool.Put(bp)
		}()
		for {
			m, err := src.Read(buf)
			if m > 0 {
				last.Store(time.Now().UnixNano())
				if _, werr := dst.Write(buf[:m]); werr != nil {
					break
				}
				*n += int64(m)
			}
			if err != nil {
				break
			}
			if !big && m == len(buf) {
				buf, big = *bigBufPool.Get().(*[]byte), true
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	upDone := make(chan struct{})
	go func() { defer close(upDone); copyHalf(server, client, &up) }()
	copyHalf(client, server, &down)
	<-upDone
	close(stop)
	<-watched
	return up, down
}

// intercept ends the client's TLS with a certificate for host minted by
// modgate's CA and serves each request inside through the pipeline, with
// the host as the upstream.
func (f *forward) intercept(r *http.Request, client net.Conn, hostport, identity string) {
	host, _, _ := net.SplitHostPort(hostport)
	io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n")
	tconn := tls.Server(client, f.cfg.CA.ServerConfig(host))
	handler := http.HandlerFunc(func(w http.ResponseWriter, in *http.Request) {
		if h, _, err := net.SplitHostPort(in.Host); (err == nil && !strings.EqualFold(h, host)) || (err != nil && !strings.EqualFold(in.Host, host)) {
			writeError(w, http.StatusMisdirectedRequest, wire.Misdirected, fmt.Sprintf("request for %s inside a CONNECT to %s", in.Host, hostport))
			return
		}
		f.serve(w, in, "mitm", "https", hostport, identity)
	})
	kindOf := func(in *http.Request) string {
		req, _ := classifyForward(host, in.URL.Path, in.URL.RawQuery, f.s.cfg.SumDB)
		return string(req.Kind)
	}
	srv := &http.Server{
		Handler:           f.s.tel.ServerMiddleware(handler, kindOf),
		BaseContext:       func(net.Listener) context.Context { return r.Context() },
		ReadHeaderTimeout: f.s.cfg.ClientHeader,
		IdleTimeout:       120 * time.Second,
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
	done := make(chan struct{})
	go func() { f.hijacked.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	f.inner.Range(func(k, _ any) bool { k.(*http.Server).Close(); return true })
	f.tunnels.Range(func(k, v any) bool {
		k.(net.Conn).Close()
		v.(net.Conn).Close()
		return true
	})
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
