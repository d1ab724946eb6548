// Package sidecar is modgate's data plane: the listener, request
// classification, the pipeline that serves module requests from the
// upstream chain, and the admin endpoints.
package sidecar

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/verify"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// Config is everything the data plane needs, as plain values.
type Config struct {
	// Listen is the address of the module listener, e.g. "127.0.0.1:7070".
	Listen string
	// Admin is the address of the admin listener. If empty, there is none.
	Admin string
	// AdminHosts are the Host names (path.Match patterns) the admin
	// listener answers besides IP literals and localhost; any other Host
	// is answered 421 (DNS rebinding). If empty, only those.
	AdminHosts []string
	// PProf serves /debug/pprof/ on the admin listener. If false, there
	// is none.
	PProf bool
	// CommandLine is what /debug/pprof/cmdline shows, its secrets hidden
	// (the process's own arguments, which the CLI sets). If nil, nothing.
	CommandLine []string
	// Upstreams is the chain, in order.
	Upstreams []upstream.Config
	// SumDB is the name of the checksum database served under /sumdb/
	// ("sum.example.test", or with a path: "sum.example.test/sumdb"). If
	// empty, /sumdb/ answers 404.
	SumDB string
	// SumDBURL is where the database answers when no upstream serves it
	// (GOSUMDB's "name+key URL" form). If empty, https://<SumDB>.
	SumDBURL string
	// SumDBKey is the database's verifier key (GOSUMDB's "name+key"
	// form): public modules' go.mod files and zips, and the database's
	// own tiles and lookups, are verified against it before they are kept
	// (README, "Trust"). If empty, nothing is verified.
	SumDBKey string
	// VerifyFirstMax is the largest zip that is received whole and
	// verified before its first byte is relayed (so that a mismatch can
	// fall through); a larger one streams and is verified as it is kept.
	// If zero, 16 MiB.
	VerifyFirstMax int64
	// RootCAs verifies upstream certificates. If nil, the system pool is used.
	RootCAs *x509.CertPool
	// Resolve maps "host:port" to the address to dial instead.
	Resolve map[string]string
	// ShutdownGrace is how long in-flight requests may run after a
	// shutdown starts. If zero, 10 s.
	ShutdownGrace time.Duration
	// ClientHeader is how long a client may take to send its request
	// headers (slowloris). If zero, 10 s.
	ClientHeader time.Duration
	// ClientIdle is the longest a client may leave an answer unread before
	// modgate gives up on it. If zero, 60 s.
	ClientIdle time.Duration
	// Logger receives the server's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// LogRequests writes one access log line per request to Logger, at
	// info level. If false, only the audit log records requests.
	LogRequests bool
	// Version is reported in the User-Agent of upstream requests.
	Version string
	// Clock tells time to breakers and retries. If nil, the system clock.
	Clock wire.Clock
	// Dial, if not nil, opens every connection modgate makes to
	// upstreams, origins and checksum databases once its own checks
	// (forward mode's guard, redirect checks) allowed the address, and
	// carries the DNS queries of those checks. If nil, a net.Dialer and
	// the system's resolver. Tests pass one that reaches loopback only
	// (modtest.LoopbackDial), so that no test reaches the network even
	// when a check regresses.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Policy holds the current policy. If nil, everything is allowed and
	// nothing is private.
	Policy *policy.Store
	// Audit receives one line per request. If nil, there is no audit log.
	Audit *policy.AuditLog
	// Forward configures forward mode (HTTP_PROXY / HTTPS_PROXY); the zero
	// value tunnels CONNECTs to port 443 of public hosts.
	Forward ForwardConfig
	// Telemetry records spans and metrics. If nil, nothing is recorded.
	Telemetry *telemetry.Telemetry
	// Cache is the artifact cache; the zero value caches nothing.
	Cache CacheConfig
	// Fleet coordinates the replicas of a fleet through Redis: one fetch
	// per artifact that the shared store lacks, and breaker news. The
	// zero value: each replica on its own.
	Fleet FleetConfig
	// Offline serves only from the cache: what it lacks is 404, and no
	// upstream or origin is asked (air-gapped builds).
	Offline bool
	// TLS makes the module listener HTTPS. If empty, it is plain HTTP.
	TLS ListenerTLS
	// Clients says who may use the module listener (reverse mode, and
	// forward mode besides Forward.Users). The zero value lets everyone in
	// as nobody in particular.
	Clients ClientsConfig
	// TraceURL links a trace ID to a trace viewer: "{trace_id}" is
	// replaced, e.g. "http://jaeger.example.test:16686/trace/{trace_id}".
	// If empty, the status page links builds to its own pages only.
	TraceURL string
	// MaxConnections bounds the module listener's open connections,
	// tunnels and intercepted CONNECTs included; past it, new connections
	// wait to be accepted. If zero, DefaultMaxConnections.
	MaxConnections int
	// MaxConnectionsPerClient bounds the open connections of one client
	// address; past it, new ones are closed at once. If zero,
	// DefaultMaxConnectionsPerClient.
	MaxConnectionsPerClient int
	// BufferBudget bounds the bytes of small answers held whole (to be
	// checked, filtered or explained) across all requests; a request past
	// it gets 503. If zero, DefaultBufferBudget.
	BufferBudget int64
}

// Server is one modgate. Create it with New.
type Server struct {
	cfg   Config
	log   *slog.Logger
	chain *upstream.Chain
	sumdb *sumDB
	// verifier checks artifacts against the checksum database; nil when
	// its key is not known.
	verifier *verify.Verifier
	// checks counts the verifier's verdicts on artifacts.
	checks checkCounts
	// sumdbAddr is the database's direct address, which forward mode
	// recognises.
	sumdbAddr sumDBAddress
	via       string // this process's Via token

	// ready is set once the server has started serving.
	ready atomic.Bool

	audit   *policy.AuditLog
	fwd     *forward
	clients *clients    // who is asking, for every way in
	tlsCfg  *tls.Config // the module listener's, nil for plain HTTP
	tel     *telemetry.Telemetry

	cacheCfg  CacheConfig
	cache     *cache.Cache // nil when off
	privCache *cache.Cache // nil unless private modules may be cached
	flightMu  sync.Mutex
	flights   map[string]*flight
	// flying counts the fetches under way, which outlive their requests;
	// stopFlights cancels them (flightsCtx) when shutdown's grace is over.
	flying      sync.WaitGroup
	flightsCtx  context.Context
	stopFlights context.CancelFunc

	buffers budget // whole-read answers, against Config.BufferBudget
	leases  leaseCounts

	recentLog recentLog    // the status page's recent requests and denials
	builds    buildTracker // per-build summaries, for modgate exec and the status page
	adminAddr atomic.Value // string: the admin listener's address, for the module listener's / page
	hedges    hedgeBudget
	hedgers   map[wire.Kind]*upstream.Hedge // by immutable kind; nil without telemetry
}

// defaultPolicy is the policy of a server given none: allow everything.
var defaultPolicy = policy.Default()

// policy returns the policy in force now.
func (s *Server) policy() *policy.Policy {
	if s.cfg.Policy == nil {
		return defaultPolicy
	}
	return s.cfg.Policy.Load()
}

// New checks cfg and builds the server. It refuses an upstream that is the
// server's own listener: every request would loop.
func New(cfg Config) (*Server, error) {
	s := &Server{cfg: cfg, log: cfg.Logger, via: "modgate-" + randomToken(), audit: cfg.Audit, tel: cfg.Telemetry}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.cfg.ShutdownGrace == 0 {
		s.cfg.ShutdownGrace = 10 * time.Second
	}
	if s.cfg.ClientHeader == 0 {
		s.cfg.ClientHeader = 10 * time.Second
	}
	if s.cfg.ClientIdle == 0 {
		s.cfg.ClientIdle = 60 * time.Second
	}
	s.flightsCtx, s.stopFlights = context.WithCancel(context.Background())
	s.hedgers = s.newHedgers()
	s.buffers.max = cfg.BufferBudget
	if s.buffers.max == 0 {
		s.buffers.max = DefaultBufferBudget
	}
	ua := "modgate"
	if cfg.Version != "" {
		ua += "/" + cfg.Version
	}
	opts := upstream.Options{RootCAs: cfg.RootCAs, Resolve: cfg.Resolve, Via: s.via, UserAgent: ua, Clock: cfg.Clock, Logger: s.log, Telemetry: cfg.Telemetry, NetDial: cfg.Dial}
	chainOpts := opts // only the chain's breakers make news, not forward mode's origins
	s.chainNews(&chainOpts)
	s.noteBreakers(&chainOpts)
	chain, err := upstream.NewChain(cfg.Upstreams, chainOpts)
	if err != nil {
		return nil, err
	}
	if cfg.Listen != "" {
		for _, u := range chain.Upstreams() {
			if u.URL != nil && pointsAt(u.URL, cfg.Listen, cfg.Resolve) {
				return nil, fmt.Errorf("upstream %s (%s) is modgate's own listener %s: every request would loop", u.Name, u.URL, cfg.Listen)
			}
		}
	}
	s.chain = chain
	if err := s.checkRoutes(s.policy()); err != nil {
		return nil, err
	}
	if s.sumdbAddr, err = newSumDBAddress(cfg.SumDB, cfg.SumDBURL); err != nil {
		return nil, err
	}
	if s.sumdb, err = newSumDB(cfg.SumDB, cfg.SumDBURL, chain, opts, upstream.Timeouts{}); err != nil {
		return nil, err
	}
	if len(cfg.Forward.MITMHosts) > 0 && cfg.Forward.CA == nil {
		return nil, errors.New("mitm hosts are set but there is no CA: run `modgate ca init` and give --ca-dir")
	}
	if cfg.Clients.ClientCAFile != "" && !cfg.TLS.Enabled() {
		return nil, errors.New("clients: client certificates (client_ca_file) need HTTPS on the listener (tls)")
	}
	if s.clients, err = newClients(cfg.Clients, cfg.Forward.Users, s.clock(), s.log); err != nil {
		return nil, err
	}
	if cfg.TLS.Enabled() {
		if s.tlsCfg, err = s.clients.tlsConfig(cfg.TLS, s.log); err != nil {
			return nil, err
		}
	}
	s.fwd = newForward(s, cfg.Forward, opts)
	if err := s.openCaches(cfg.Cache); err != nil {
		return nil, err
	}
	if s.verifier, err = s.newVerifier(cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// openCaches opens the artifact caches the config asks for.
func (s *Server) openCaches(cc CacheConfig) error {
	if cc.ListTTL == 0 {
		cc.ListTTL = 60 * time.Second
	}
	if cc.StaleIfError == 0 {
		cc.StaleIfError = 24 * time.Hour
	}
	s.cacheCfg, s.flights = cc, map[string]*flight{}
	var err error
	if cc.Dir != "" {
		if s.cache, err = cache.Open(cc.Dir, cc.MaxBytes, s.now); err != nil {
			return fmt.Errorf("cache: %w", err)
		}
	}
	if cc.Shared != nil && cc.Dir == "" {
		return errors.New("cache: the shared store (cache.shared) needs a local cache (cache.dir) to copy artifacts through")
	}
	if cc.SharedPrivate != nil && cc.PrivateDir == "" {
		return errors.New("cache: the private shared store (cache.shared_private) needs a local cache of private modules (cache.private_dir)")
	}
	if cc.PrivateDir != "" {
		if cc.PrivateDir == cc.Dir {
			return errors.New("cache: private modules need a directory of their own (private_dir), not the shared one")
		}
		if s.privCache, err = cache.Open(cc.PrivateDir, cc.MaxBytes, s.now); err != nil {
			return fmt.Errorf("private cache: %w", err)
		}
	}
	return nil
}

// checkRoutes refuses a policy whose routes name upstreams that do not
// exist: the modules they route could never be served.
func (s *Server) checkRoutes(p *policy.Policy) error {
	var names []string
	for _, u := range s.chain.Upstreams() {
		names = append(names, u.Name)
	}
	for _, name := range p.Upstreams() {
		if !slices.Contains(names, name) {
			return fmt.Errorf("policy routes name upstream %q, which is not configured (upstreams: %s)", name, strings.Join(names, ", "))
		}
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// pointsAt reports whether u would be served by a listener on listen.
func pointsAt(u *url.URL, listen string, resolve map[string]string) bool {
	if u.Scheme != "http" && u.Scheme != "https" {
		return false
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	hostport := net.JoinHostPort(u.Hostname(), port)
	if to, ok := resolve[hostport]; ok {
		hostport = to
	}
	lhost, lport, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	host, port, _ := net.SplitHostPort(hostport)
	if port != lport {
		return false
	}
	lip := net.ParseIP(lhost)
	listensEverywhere := lhost == "" || (lip != nil && lip.IsUnspecified())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false // an unknown host cannot be us
	}
	for _, a := range addrs {
		if a.IP.IsLoopback() && (listensEverywhere || (lip != nil && lip.IsLoopback())) {
			return true
		}
		if lip != nil && a.IP.Equal(lip) {
			return true
		}
	}
	return false
}

// Handler returns the module listener's handler: a build's trace context
// taken from the URL (carryBuild), telemetry, loop protection, then the
// pipeline. A CONNECT gets a span of its own that
// covers the whole tunnel.
func (s *Server) Handler() http.Handler {
	if s.tel == nil {
		return s.carryBuild(http.HandlerFunc(s.serveHTTP))
	}
	// The span's name needs the request's kind before the pipeline runs:
	// classifyInto classifies once, into the request's context, for both.
	traced := telemetry.ServerMiddlewareOf(s.tel, http.HandlerFunc(s.serveHTTP), s.classifyInto)
	return s.carryBuild(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			s.serveHTTP(w, r)
			return
		}
		traced.ServeHTTP(w, r)
	}))
}

// classified is a request's classification, made once for the span and
// metrics (classifyInto) and the pipeline (classify); the request's context
// carries it (telemetry.Carried).
type classified struct {
	done bool
	req  Request
	err  error
}

// classify classifies a request to modgate as a GOPROXY (host empty) or
// to host (normalised) in forward mode, reusing classifyInto's work when
// it was done.
func (s *Server) classify(r *http.Request, host string) (Request, error) {
	c := telemetry.Carried[classified](r.Context())
	if c != nil && c.done {
		return c.req, c.err
	}
	var req Request
	var err error
	if host != "" {
		req, err = classifyForward(host, r.URL.Path, r.URL.RawQuery, s.sumdbAddr)
	} else {
		req, err = ClassifyReverse(r.URL.Path)
	}
	if c != nil {
		c.req, c.err, c.done = req, err, true
	}
	return req, err
}

// classifyInto classifies a request into c, which the request's context
// carries on to classify, and returns its kind for the span's name and the
// metrics.
func (s *Server) classifyInto(r *http.Request, c *classified) wire.Kind {
	host := ""
	if r.URL.IsAbs() {
		host = normalized(r.URL.Hostname())
	}
	var err error
	c.req, err = s.classify(r, host)
	c.err, c.done = err, true
	if err != nil && host == "" {
		return wire.KindOther
	}
	return c.req.Kind
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	for _, v := range r.Header.Values("Via") {
		if strings.Contains(v, s.via) {
			mode := wire.ModeReverse
			if r.URL.IsAbs() || r.Method == http.MethodConnect {
				mode = wire.ModeForward
			}
			s.newExchange(w, r, mode).end(loop("Via: "+v,
				"request loop: this request has already passed through this modgate (Via: "+v+")",
				"an upstream of modgate leads back to modgate; check the upstream chain"))
			return
		}
	}
	closeAfterChunked(w, r)
	switch {
	case r.Method == http.MethodConnect:
		s.fwd.serveConnect(w, r)
	case r.URL.IsAbs():
		s.fwd.serveAbsolute(w, r)
	default:
		s.serveReverse(w, r)
	}
}

// Ready reports why the server cannot serve, or nil: it must be serving
// and have at least one upstream that can answer (not off, breaker not
// open).
func (s *Server) Ready() error {
	if !s.ready.Load() {
		return errors.New("not serving yet")
	}
	var open []string
	for _, u := range s.chain.Upstreams() {
		switch {
		case u.Kind == upstream.Off:
		case u.Breaker() == upstream.Open:
			open = append(open, u.Name)
		default:
			return nil
		}
	}
	if len(open) > 0 {
		return fmt.Errorf("every upstream's circuit is open (%s)", strings.Join(open, ", "))
	}
	return errors.New("no usable upstream: the chain is off")
}

// Run listens on the configured addresses and serves until ctx is done,
// then stops accepting and lets in-flight requests finish for up to the
// shutdown grace.
func (s *Server) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	var adminLn net.Listener
	if s.cfg.Admin != "" {
		if adminLn, err = net.Listen("tcp", s.cfg.Admin); err != nil {
			ln.Close()
			return err
		}
	}
	return s.Serve(ctx, ln, adminLn)
}

// Serve is Run on listeners the caller made. adminLn may be nil. With
// Config.TLS, ln is served HTTPS.
func (s *Server) Serve(ctx context.Context, ln, adminLn net.Listener) error {
	// Counted below TLS: a handshake that never ends holds a slot too.
	ln = newConnLimiter(ln, s.cfg.MaxConnections, s.cfg.MaxConnectionsPerClient)
	if s.tlsCfg != nil {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	servers := []*http.Server{{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.cfg.ClientHeader,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          errLog,
	}}
	listeners := []net.Listener{ln}
	if adminLn != nil {
		s.adminAddr.Store(adminLn.Addr().String())
		servers = append(servers, &http.Server{Handler: s.AdminHandler(), ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes, ErrorLog: errLog})
		listeners = append(listeners, adminLn)
	}
	stop, err := s.observe()
	if err != nil {
		return err
	}
	defer stop()
	// Ready before the first request is served: one that has been
	// answered implies readiness.
	s.ready.Store(true)
	errc := make(chan error, len(servers))
	for i, srv := range servers {
		go func() { errc <- srv.Serve(listeners[i]) }()
	}
	s.logServing(ln, adminLn)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.shutdown(servers)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// observe registers the server's readings with telemetry and, in a fleet,
// listens to the other replicas; stop undoes it all.
func (s *Server) observe() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	observers := []func() (func() error, error){
		func() (func() error, error) { return s.tel.ObserveBreakers(s.breakerReadings) },
		func() (func() error, error) { return s.tel.ObserveVerification(s.verificationReading) },
	}
	if s.cache != nil || s.privCache != nil {
		observers = append(observers, func() (func() error, error) { return s.tel.ObserveCache(s.cacheReading) })
	}
	if len(s.sharedStores()) > 0 || s.cfg.Fleet.Fleet != nil {
		observers = append(observers, func() (func() error, error) { return s.tel.ObserveFleet(s.fleetReading) })
	}
	for _, observe := range observers {
		unobserve, err := observe()
		if err != nil {
			stop()
			return nil, err
		}
		stops = append(stops, func() { unobserve() })
	}
	if f := s.cfg.Fleet.Fleet; f != nil {
		stops = append(stops, f.Subscribe(s.heed), s.watchRedis(f))
	}
	return stop, nil
}

// logServing says what the server serves, and warns when artifacts are
// not verified.
func (s *Server) logServing(ln, adminLn net.Listener) {
	attrs := []any{"listen", ln.Addr().String(), "upstreams", upstream.FormatChain(s.chain.Upstreams(), func(u *upstream.Upstream) string { return u.Source }), "sumdb", s.cfg.SumDB, "verified", s.verifier != nil}
	if adminLn != nil {
		attrs = append(attrs, "admin", adminLn.Addr().String())
	}
	if s.tlsCfg != nil {
		attrs = append(attrs, "tls", s.cfg.TLS.CertFile)
	}
	if s.cfg.Clients.Enabled() {
		attrs = append(attrs, "clients", s.clients.describe())
	}
	s.log.Info("modgate serving", attrs...)
	if on, why := s.Verification(); !on {
		s.log.Warn("artifacts are not verified against a checksum database: "+why, "sumdb", s.cfg.SumDB)
	}
}

// shutdown stops the servers gracefully within Config.ShutdownGrace: the
// requests in flight, then the tunnels, then the cache's fetches that
// outlived their requests; then it lets the upstreams' idle connections
// go.
func (s *Server) shutdown(servers []*http.Server) {
	s.ready.Store(false)
	s.log.Info("shutting down", "grace", s.cfg.ShutdownGrace.String())
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	for _, srv := range servers {
		if serr := srv.Shutdown(sctx); serr != nil {
			s.log.Warn("in-flight requests cut at the end of the grace period", "err", serr)
			srv.Close()
		}
	}
	s.fwd.shutdown(sctx) // tunnels and intercepted connections
	// Fetches for the cache that outlived their requests finish their
	// entries, within the grace period.
	flown := make(chan struct{})
	go func() { s.flying.Wait(); close(flown) }()
	select {
	case <-flown:
	case <-sctx.Done():
		s.stopFlights()
		<-flown
	}
	// Nothing more will be asked of the upstreams: let their kept-alive
	// connections go now rather than at their idle timeout.
	for _, u := range s.chain.Upstreams() {
		u.CloseIdle()
	}
	if s.sumdb != nil {
		s.sumdb.direct.CloseIdle()
	}
	s.fwd.closeIdle()
}

// cacheReading sums the caches for the size and eviction metrics.
func (s *Server) cacheReading() telemetry.CacheReading {
	var r telemetry.CacheReading
	for _, c := range []*cache.Cache{s.cache, s.privCache} {
		if c != nil {
			r.Bytes += c.Size()
			r.Evictions += c.Evictions()
		}
	}
	return r
}

// breakerReadings reads the chain's breakers for the state gauge.
func (s *Server) breakerReadings() []telemetry.BreakerReading {
	var rs []telemetry.BreakerReading
	for _, u := range s.chain.Upstreams() {
		if u.Kind == upstream.Proxy {
			rs = append(rs, telemetry.BreakerReading{Upstream: u.Name, State: u.Breaker()})
		}
	}
	return rs
}

func (s *Server) now() time.Time { return s.clock().Now() }

// clock is the server's clock: Config.Clock, or the system's.
func (s *Server) clock() wire.Clock {
	if s.cfg.Clock != nil {
		return s.cfg.Clock
	}
	return wire.SystemClock{}
}
