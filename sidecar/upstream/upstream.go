// Package upstream is one module proxy (or checksum database) that modgate
// forwards to, and the chain of them walked with the go command's GOPROXY
// semantics.
package upstream

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// Fallthrough says when the chain may move past an upstream that did not
// answer 200, as the separator after it does in GOPROXY.
type Fallthrough int

const (
	// OnNotFound moves on only after 404 or 410 (GOPROXY ",").
	OnNotFound Fallthrough = iota
	// OnError moves on after any failure (GOPROXY "|").
	OnError
)

func (f Fallthrough) String() string {
	if f == OnError {
		return "error"
	}
	return "notfound"
}

// Kind is what an upstream entry is.
type Kind int

const (
	// Proxy is an http, https or file upstream that speaks the GOPROXY protocol.
	Proxy Kind = iota
	// Direct ends the chain with "go direct": modgate answers 404 so that the
	// go command fetches from the origin itself.
	Direct
	// Off ends the chain with "module lookup disabled": modgate answers 403.
	Off
)

// Timeouts bound each phase of an upstream request. The go command has no
// timeout of its own, so these are what keeps a stalled upstream from
// hanging a build. A zero field takes its default from DefaultTimeouts.
type Timeouts struct {
	Dial   time.Duration // TCP connect
	TLS    time.Duration // TLS handshake
	Header time.Duration // from request written to response headers read
	Idle   time.Duration // longest pause between two reads of the body
}

// DefaultTimeouts returns the timeouts of an upstream whose config gives
// none: long enough for a large module over a slow link, short enough
// that a dead upstream does not hang a build.
func DefaultTimeouts() Timeouts {
	return Timeouts{Dial: 10 * time.Second, TLS: 10 * time.Second, Header: 60 * time.Second, Idle: 60 * time.Second}
}

func (t Timeouts) withDefaults() Timeouts {
	d := DefaultTimeouts()
	return Timeouts{
		Dial:   positiveOr(t.Dial, d.Dial),
		TLS:    positiveOr(t.TLS, d.TLS),
		Header: positiveOr(t.Header, d.Header),
		Idle:   positiveOr(t.Idle, d.Idle),
	}
}

// Config describes one upstream. It is plain data, filled by the CLI.
type Config struct {
	// Name identifies the upstream in logs, error answers and telemetry.
	// If empty, it is derived from the URL's host.
	Name string
	// URL is an http://, https:// or file:// base URL, or "direct" or "off".
	URL string
	// Private upstreams may receive private module paths.
	Private bool
	// Fallthrough says when the chain moves past this upstream.
	Fallthrough Fallthrough
	// Timeouts bound each phase of a request to this upstream.
	Timeouts Timeouts
	// Breaker and Retry set the upstream's circuit breaker and retries.
	Breaker BreakerSettings
	Retry   RetrySettings
	// RedirectHosts are the hosts (path.Match patterns) other than the
	// upstream's own that its redirects may lead to, e.g. a CDN.
	RedirectHosts []string
	// PassRedirects returns redirects to the caller instead of following
	// them, as a forward proxy must.
	PassRedirects bool
	// Auth is how modgate authenticates to the upstream. If empty, with
	// the URL's user information if it has some (as basic
	// authentication), else not at all.
	Auth Auth
}

// Options are the settings shared by every upstream of a process.
type Options struct {
	// RootCAs verifies upstream certificates. If nil, the system pool is used.
	RootCAs *x509.CertPool
	// Resolve maps "host:port" to the "addr:port" to dial instead, like
	// curl --resolve. Certificates are still checked against host.
	Resolve map[string]string
	// Via is the token added to the Via header of every upstream request, so
	// that a request that comes back to this process can be recognised.
	Via string
	// UserAgent is sent with every upstream request. If empty, "modgate".
	UserAgent string
	// Clock tells time to breakers, retries and budgets. If nil,
	// wire.SystemClock.
	Clock wire.Clock
	// Logger receives breaker state changes. If nil, they are discarded.
	Logger *slog.Logger
	// Dial, if set, makes every connection (forward mode's guarded dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// NetDial, if set, opens the connections (and carries the DNS
	// queries) to the addresses the checks allowed. If nil, a net.Dialer
	// and the system's resolver. Tests pass one that reaches loopback
	// only, so that no test reaches the network even when a check
	// regresses.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Telemetry records a client span and the attempt metrics of every
	// try. If nil, nothing is recorded.
	Telemetry *telemetry.Telemetry
	// MetricName, if set, names every upstream in metrics (forward mode's
	// origins: a host per series would be unbounded).
	MetricName string
	// CheckRedirectAddr says why a redirect target may not be reached at
	// addr, or "" if it may: it is asked, before anything is dialled, for
	// every address that the host of a redirect to another host than the
	// upstream's own resolves to, and the connection goes to an address
	// it allowed. explicit is set when RedirectHosts names the host
	// without a wildcard. The upstream itself may be anywhere (on
	// loopback, in a private network); its redirects may not. If nil,
	// RedirectAddrCheck. Unused when Dial is set (Dial guards every
	// connection) and for hosts that Resolve pins.
	CheckRedirectAddr func(host string, addr netip.Addr, explicit bool) string
	// BreakerNews, if set, is told when this process's breaker for an
	// upstream opens (open, with the end of the open period on Clock and
	// why) and when it closes again after a good probe (open false), for
	// the other replicas of a fleet (HoldOpen is their side). name is the
	// upstream's Name; its NewsID identifies it to other replicas. It is
	// called from a goroutine of its own, in order, one call at a time;
	// never for the open periods that HoldOpen sets. If nil, nobody is
	// told.
	BreakerNews func(name string, open bool, until time.Time, reason string)
}

// thisNetwork is 0.0.0.0/8, which reaches this host on some systems.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// RedirectAddrCheck is the default Options.CheckRedirectAddr: a redirect
// may lead to a public address, or to a private one (not loopback, not
// this machine) of a host that redirect_hosts names without a wildcard.
func RedirectAddrCheck(host string, a netip.Addr, explicit bool) string {
	a = a.WithZone("")
	u := a.Unmap()
	switch {
	case u.IsLoopback() || u.IsUnspecified() || thisNetwork.Contains(u):
		return SpecialAddr(u)
	case ThisMachine().Has(u):
		return "an address of this machine"
	case explicit && MetadataAddr(a) != "":
		return MetadataAddr(a)
	case explicit && !a.Is4In6():
		return ""
	}
	return SpecialAddr(a)
}

// Upstream is one entry of the chain. Its methods are safe for concurrent use.
type Upstream struct {
	Name   string
	Kind   Kind
	Source string   // the URL as configured, credentials hidden (RedactURL)
	URL    *url.URL // nil for Direct and Off; never holds credentials

	Private     bool
	Fallthrough Fallthrough
	Timeouts    Timeouts

	client    *http.Client
	auth      string // the kind of credentials (Auth.Kind, AuthURL), "" for none
	via       string
	userAgent string
	retry     RetrySettings
	breaker   *breaker
	budget    *budget
	clock     wire.Clock
	tel       *telemetry.Telemetry
	metric    string // the name metrics use
	urlHash   string // of the URL without credentials, for NewsID
}

// New returns the upstream that cfg describes.
func New(cfg Config, opts Options) (*Upstream, error) {
	u := &Upstream{
		Name:        cfg.Name,
		Source:      RedactURL(cfg.URL),
		Private:     cfg.Private,
		Fallthrough: cfg.Fallthrough,
		Timeouts:    cfg.Timeouts.withDefaults(),
		via:         opts.Via,
		userAgent:   cmp.Or(opts.UserAgent, "modgate"),
		clock:       opts.Clock,
		tel:         opts.Telemetry,
		urlHash:     hashURL(cfg.URL),
	}
	if u.clock == nil {
		u.clock = wire.SystemClock{}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	switch cfg.URL {
	case "direct":
		u.Kind = Direct
	case "off":
		u.Kind = Off
	}
	if u.Kind != Proxy {
		u.Name = cmp.Or(u.Name, cfg.URL)
		return u, nil
	}
	rt, base, err := u.transport(cfg, opts, logger)
	if err != nil {
		return nil, err
	}
	u.URL = base
	if u.Name == "" {
		u.Name = base.Host
		if base.Scheme == "file" {
			u.Name = "file:" + u.Source[len("file://"):]
		}
	}
	u.metric = cmp.Or(opts.MetricName, u.Name)
	if u.client, err = u.httpClient(rt, cfg); err != nil {
		return nil, err
	}
	bs := cfg.Breaker.withDefaults()
	u.breaker = newBreaker(u.Name, bs, u.clock, logger, func(err error) string { return describe(err, u) })
	if news := opts.BreakerNews; news != nil {
		u.breaker.news = func(open bool, until time.Time, reason string) { news(u.Name, open, until, reason) }
	}
	u.retry = cfg.Retry.withDefaults(bs.Window)
	u.budget = &budget{ratio: u.retry.BudgetRatio, window: u.retry.Window, clock: u.clock}
	return u, nil
}

// transport returns the round tripper that reaches the upstream of cfg,
// and its base URL (without credentials, which the transport adds to each
// request to the upstream's own origin).
func (u *Upstream) transport(cfg Config, opts Options, logger *slog.Logger) (http.RoundTripper, *url.URL, error) {
	base, err := url.Parse(cfg.URL)
	if err != nil {
		// url.Parse's error repeats the URL, credentials and all.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("upstream %q: %v", u.Source, err)
	}
	var rt http.RoundTripper
	switch base.Scheme {
	case "http", "https":
		if base.Host == "" {
			return nil, nil, fmt.Errorf("upstream %q: no host", u.Source)
		}
		if base.RawQuery != "" || base.Fragment != "" {
			return nil, nil, fmt.Errorf("upstream %q: a proxy URL has no query or fragment", u.Source)
		}
		if base.User != nil && cfg.Auth.Kind() != "" {
			return nil, nil, fmt.Errorf("upstream %q: the URL carries credentials and auth is set too: give one or the other", u.Source)
		}
		// The credentials leave the URL, which is shown and traced
		// (url.full), and the transport adds them beneath the client span.
		next := http.RoundTripper(newTransport(u.Timeouts, opts, redirectGuard(base, cfg.RedirectHosts, opts)))
		next, u.auth, err = credentialTransport(base.String(), cfg.Auth, next, logger.With("upstream", cmp.Or(cfg.Name, base.Host)), u.clock)
		if err != nil {
			return nil, nil, fmt.Errorf("upstream %q: %v", u.Source, err)
		}
		base.User = nil
		rt = opts.Telemetry.ClientTransport(next)
	case "file":
		dir := base.Path
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, nil, fmt.Errorf("upstream %q: %s is not a directory", u.Source, dir)
		}
		rt = http.NewFileTransportFS(os.DirFS(dir))
		// The file transport joins paths under "/"; keep only that part.
		base = &url.URL{Scheme: "file", Path: "/"}
	default:
		return nil, nil, fmt.Errorf("upstream %q: scheme must be http, https or file (or the words direct, off)", u.Source)
	}
	base.Path = strings.TrimSuffix(base.Path, "/")
	base.RawPath = ""
	return rt, base, nil
}

// httpClient returns the client of the upstream, with its redirect policy:
// redirects to its own host and cfg.RedirectHosts; in forward mode
// (PassRedirects) they go back to the client, except where modgate
// fetches an artifact whole to check and keep it.
func (u *Upstream) httpClient(rt http.RoundTripper, cfg Config) (*http.Client, error) {
	for _, p := range cfg.RedirectHosts {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("upstream %s: redirect host pattern %q: %v", u.Name, p, err)
		}
	}
	c := &http.Client{Transport: rt, CheckRedirect: checkRedirect(u.URL.Host, cfg.RedirectHosts)}
	if cfg.PassRedirects {
		// Every hop still goes through Options.Dial (the guard).
		follow := checkRedirect(u.URL.Host, []string{"*"})
		c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
			if req.Context().Value(followKey{}) != nil {
				return follow(req, via)
			}
			return http.ErrUseLastResponse
		}
	}
	return c, nil
}

const maxRedirects = 5

// redirectError is a redirect the upstream may not make; errRedirect
// matches any of them.
type redirectError string

func (e redirectError) Error() string        { return string(e) }
func (e redirectError) Is(target error) bool { return target == errRedirect }

var errRedirect = errors.New("redirect refused")

// checkRedirect follows at most maxRedirects redirects, only to the
// upstream's own host or one of hosts, and reports a loop as one.
func checkRedirect(own string, hosts []string) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		chain := func() string {
			var b strings.Builder
			for _, r := range via {
				b.WriteString(redactUser(r.URL).String() + " -> ")
			}
			return b.String() + redactUser(req.URL).String()
		}
		for _, r := range via {
			if r.URL.String() == req.URL.String() {
				return redirectError("redirect loop: " + chain())
			}
		}
		if len(via) > maxRedirects {
			return redirectError(fmt.Sprintf("more than %d redirects: %s", maxRedirects, chain()))
		}
		if req.URL.Host == own {
			return nil
		}
		for _, p := range hosts {
			if ok, _ := path.Match(p, req.URL.Hostname()); ok {
				return nil
			}
		}
		return redirectError(fmt.Sprintf("redirect to %s, a host not in redirect_hosts", req.URL.Host))
	}
}

// redirectGuard returns the check of the addresses a transport dials for
// an upstream at base: nil for the upstream's own host:port and for hosts
// Resolve pins, an error for a redirect target at an address that
// Options.CheckRedirectAddr refuses. It resolves the host itself and
// returns the checked address to dial, so that a name cannot resolve to
// one address for the check and another for the dial.
func redirectGuard(base *url.URL, hosts []string, opts Options) func(ctx context.Context, addr string) (string, error) {
	if opts.Dial != nil {
		return nil
	}
	port := base.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[base.Scheme]
	}
	own := strings.ToLower(net.JoinHostPort(base.Hostname(), port))
	check := opts.CheckRedirectAddr
	if check == nil {
		check = RedirectAddrCheck
	}
	explicit := map[string]bool{}
	for _, h := range hosts {
		if !strings.ContainsAny(h, "*?[\\") {
			explicit[strings.ToLower(strings.TrimSuffix(h, "."))] = true
		}
	}
	return func(ctx context.Context, addr string) (string, error) {
		if strings.ToLower(addr) == own {
			return addr, nil
		}
		if _, ok := opts.Resolve[addr]; ok {
			return addr, nil
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return "", redirectError(fmt.Sprintf("redirect to %q refused: not host:port", addr))
		}
		lhost := strings.ToLower(strings.TrimSuffix(host, "."))
		var ips []netip.Addr
		if ip, ok := ParseIPLiteral(lhost); ok {
			ips = []netip.Addr{ip}
		} else {
			found, err := opts.resolver().LookupNetIP(ctx, "ip", lhost)
			if err != nil {
				return "", err
			}
			for _, ip := range found {
				ips = append(ips, ip.Unmap()) // the resolver's form of an IPv4 answer
			}
		}
		for _, ip := range ips {
			if why := check(lhost, ip, explicit[lhost]); why != "" {
				return "", redirectError(fmt.Sprintf("redirect to %s refused: %s resolves to %s, %s", addr, host, ip, why))
			}
		}
		return net.JoinHostPort(ips[0].Unmap().String(), port), nil
	}
}

// resolver is the resolver of NetDial, or the system's.
func (opts Options) resolver() *net.Resolver {
	if opts.NetDial == nil {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: opts.NetDial}
}

func newTransport(t Timeouts, opts Options, guard func(ctx context.Context, addr string) (string, error)) *http.Transport {
	dialer := &net.Dialer{Timeout: t.Dial, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	if opts.NetDial != nil {
		dial = opts.NetDial
	}
	netDial := dial
	if guard != nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, t.Dial)
			defer cancel()
			target, err := guard(ctx, addr)
			if err != nil {
				return nil, err
			}
			if to, ok := opts.Resolve[target]; ok {
				target = to
			}
			return netDial(ctx, network, target)
		}
	}
	if opts.Dial != nil {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, t.Dial)
			defer cancel()
			return opts.Dial(ctx, network, addr)
		}
	}
	return &http.Transport{
		// No Proxy: the sidecar never reads proxy variables from its own
		// environment, or requests could loop back into it.
		Proxy:                 nil,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   t.TLS,
		ResponseHeaderTimeout: t.Header,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   64,
		ForceAttemptHTTP2:     true,
		// Bodies pass through byte for byte; Content-Length and
		// Content-Encoding must reach the client as the upstream sent them.
		DisableCompression: true,
	}
}

// Get fetches path (an escaped path beginning with "/", e.g.
// "/example.test/m/@v/list") from the upstream, through its breaker and with
// its retries. hdr adds request headers (Via and User-Agent are set here).
// An answer of any status is returned as a response; an error means no
// answer was had (an *OpenError when the breaker refused). The body is
// bounded by the idle timeout (a read that waits longer fails with
// ErrStalled), and the breaker learns the outcome when the body is closed.
func (u *Upstream) Get(ctx context.Context, method, path string, hdr http.Header) (*http.Response, error) {
	return u.Do(ctx, Request{Method: method, Path: path, Header: hdr})
}

// Request is one request to an upstream, for Do.
type Request struct {
	Method string
	Path   string // escaped, beginning with "/"
	Query  string // raw query, without "?"
	Header http.Header
	// Body and ContentLength are the request body, if any. A request with
	// a body is never retried.
	Body          io.Reader
	ContentLength int64
	// Check, if not nil, judges a 200 answer before it counts as one (or
	// passes it on unread, to be judged later).
	Check Check
	// answered, if not nil, is called when a 200's headers arrive, before
	// Check reads its body: a hedge waits for headers, not for checks.
	answered func()
}

// Check inspects a 200 answer before the upstream is credited with it. It
// reads what it needs of resp's body (Do closes that body afterwards) and
// returns the response to use instead, whose body is its own; or it
// refuses the answer with an error. A refusal is the upstream's failure:
// its breaker counts it, a walk moves past it after "|" as after any
// failure, and it is not retried, since the upstream would answer the
// same again.
type Check func(ctx context.Context, resp *http.Response) (*http.Response, error)

// Reject tells the upstream's breaker that an answer it counted as a
// success turned out wrong when it was judged later (a large zip that did
// not match the checksum database once it was kept): one failure more.
func (u *Upstream) Reject(err error) {
	if done, aerr := u.breaker.allow(); aerr == nil {
		u.breaker.report(done, err)
	}
}

// ErrLocal marks a Check's error that is the caller's own doing (no room
// to hold the answer): it fails the attempt without a word about the
// upstream, to its breaker or its metrics.
var ErrLocal = errors.New("refused by modgate itself")

// CheckError is an answer that a Check refused.
type CheckError struct{ Err error }

func (e *CheckError) Error() string { return e.Err.Error() }
func (e *CheckError) Unwrap() error { return e.Err }

// Do is Get for any request: forward mode passes methods, queries, headers
// and bodies through (git's smart HTTP POSTs).
func (u *Upstream) Do(ctx context.Context, req Request) (*http.Response, error) {
	if u.Kind != Proxy {
		return nil, fmt.Errorf("upstream %s is not a proxy", u.Name)
	}
	u.budget.onRequest()
	kind := KindFrom(ctx)
	for try := 0; ; try++ {
		done, err := u.breaker.allow()
		if err != nil {
			u.tel.RecordUpstream(ctx, u.metric, kind, telemetry.OutcomeRejected, 0)
			return nil, err
		}
		tctx := telemetry.WithAttempt(ctx, u.metric, kind, u.breaker.state(), try)
		start := u.clock.Now()
		resp, err := u.try(tctx, req)
		elapsed := u.clock.Now().Sub(start)
		if err == nil && resp.StatusCode == http.StatusOK && req.answered != nil {
			req.answered()
		}
		checked := err == nil && resp.StatusCode == http.StatusOK && req.Check != nil
		if checked {
			var passed bool
			resp, passed, err = check(tctx, req.Check, resp)
			// Passed on unread: it is judged as it is read, like any 200.
			checked = !passed
		}
		if err == nil || (ctx.Err() == nil && !errors.Is(err, ErrLocal)) {
			// An attempt its caller abandoned (a client gone, a hedge lost)
			// says nothing of the upstream: it would skew the baseline.
			u.tel.RecordUpstream(ctx, u.metric, kind, outcome(resp, err), elapsed)
		}
		var refused *CheckError
		switch {
		case err != nil && (ctx.Err() != nil || errors.Is(err, ErrLocal)):
			u.breaker.report(done, errClientCanceled)
			return nil, err
		case errors.As(err, &refused):
			u.breaker.report(done, err)
			return nil, err
		case checked && err == nil:
			u.breaker.report(done, nil)
			return resp, nil
		case err != nil:
			u.breaker.report(done, err)
		case isFailureStatus(resp.StatusCode):
			u.breaker.report(done, &statusError{resp.StatusCode})
		case resp.StatusCode == http.StatusOK:
			if done != nil {
				resp.Body = &outcomeBody{ReadCloser: resp.Body, b: u.breaker, done: done}
			}
			return resp, nil
		default:
			u.breaker.report(done, nil)
			return resp, nil
		}
		method := req.Method
		if req.Body != nil {
			method = "" // never retried: the body is spent
		}
		wait, ok := u.retryWait(method, try, resp, err)
		if !ok {
			return resp, err
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
			resp.Body.Close()
		}
		u.tel.AddRetry(ctx, u.metric, retryReason(resp, err))
		if err := u.clock.Sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// check runs c on a 200 answer and closes the answer's body. A body that
// breaks off while c reads it is a failure like any other (a stall, a
// reset); an answer c refuses is a *CheckError.
//
// A Check may also return resp itself, unread: its judgement comes later
// (a body too large to hold back until it is judged). Then passed is set,
// the body is left open, and the caller reads it as any 200's.
func check(ctx context.Context, c Check, resp *http.Response) (out *http.Response, passed bool, err error) {
	inner := resp.Body
	body := &readErrBody{ReadCloser: inner}
	resp.Body = body
	out, err = c(ctx, resp)
	if err == nil && out == resp && body.read == 0 {
		resp.Body = inner
		return resp, true, nil
	}
	body.Close()
	switch {
	case err == nil:
		return out, false, nil
	case body.err != nil:
		return nil, false, body.err
	case errors.Is(err, ErrLocal):
		return nil, false, err
	}
	return nil, false, &CheckError{err}
}

// readErrBody remembers the first read error of a body, and how much was
// read.
type readErrBody struct {
	io.ReadCloser
	err  error
	read int64
}

func (b *readErrBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// outcome classifies one try for the attempt metric.
func outcome(resp *http.Response, err error) string {
	switch {
	case errors.Is(err, ErrRefused):
		return telemetry.OutcomeRejected
	case err != nil && isTimeout(err):
		return telemetry.OutcomeTimeout
	case err != nil:
		return telemetry.OutcomeError
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return telemetry.OutcomeNotFound
	case resp.StatusCode >= 400:
		// Only 404 and 410 let the chain move on after ","; any other
		// refusal (401, 403, 5xx, 429) fails the request, so it is an
		// error here even where the breaker does not count it.
		return telemetry.OutcomeError
	}
	return telemetry.OutcomeOK
}

// retryReason is the bounded label of a retry: "429", "5xx" or "connection".
func retryReason(resp *http.Response, err error) string {
	switch {
	case err != nil:
		return "connection"
	case resp.StatusCode == http.StatusTooManyRequests:
		return "429"
	}
	return "5xx"
}

type kindKey struct{}

type followKey struct{}

// FollowRedirects returns a context whose requests to an upstream made
// with PassRedirects follow redirects all the same (to any host the dialer
// allows).
func FollowRedirects(ctx context.Context) context.Context {
	return context.WithValue(ctx, followKey{}, true)
}

// ErrRefused marks a request that the caller's own guard refused (forward
// mode's SSRF guard, in the dialer): it says nothing about the upstream,
// so it never counts against the breaker and is never retried.
var ErrRefused = errors.New("refused by modgate's guard")

// WithKind returns a context that tells the upstream what kind of request
// it carries (list, zip, ...), for its spans and metrics.
func WithKind(ctx context.Context, kind wire.Kind) context.Context {
	v, ok := boxedKinds[kind]
	if !ok {
		v = kind
	}
	return context.WithValue(ctx, kindKey{}, v)
}

// boxedKinds holds each request kind as an interface value made once: a
// string made into one allocates, once per request.
var boxedKinds = func() map[wire.Kind]any {
	m := map[wire.Kind]any{}
	for _, k := range wire.Kinds() {
		m[k] = k
	}
	return m
}()

// KindFrom returns the kind WithKind set, or wire.KindOther.
func KindFrom(ctx context.Context) wire.Kind {
	if k, ok := ctx.Value(kindKey{}).(wire.Kind); ok {
		return k
	}
	return wire.KindOther
}

// retryWait says whether a failed try is tried again, and after how long.
func (u *Upstream) retryWait(method string, try int, resp *http.Response, err error) (time.Duration, bool) {
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	if method != http.MethodGet || try+1 >= u.retry.Attempts || !retryable(status, err) {
		return 0, false
	}
	wait := u.retry.backoff(try)
	if resp != nil {
		if ra, ok := retryAfter(resp.Header, u.clock.Now()); ok {
			if ra > u.retry.Cap {
				return 0, false // fail over rather than wait that long
			}
			wait = ra
		}
	}
	return wait, u.budget.allowRetry()
}

// try makes one request.
func (u *Upstream) try(ctx context.Context, r Request) (*http.Response, error) {
	target := *u.URL
	target.Path = u.URL.Path + r.Path
	target.RawQuery = r.Query
	ctx, cancel := context.WithCancelCause(ctx)
	req, err := http.NewRequestWithContext(ctx, r.Method, target.String(), r.Body)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if r.Body != nil {
		req.ContentLength = r.ContentLength
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	req.Header.Set("User-Agent", u.userAgent)
	if u.via != "" {
		via := "1.1 " + u.via
		if prev := req.Header.Get("Via"); prev != "" {
			via = prev + ", " + via
		}
		req.Header.Set("Via", via)
	}
	u.tel.InjectTrace(ctx, req.Header)
	resp, err := u.client.Do(req)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	resp.Body = newStallReader(resp.Body, u.Timeouts.Idle, cancel)
	return resp, nil
}

// Guard lets a caller that does not go through Do (a CONNECT tunnel's
// dial) use the upstream's breaker: it refuses with an *OpenError while the
// breaker is open, and otherwise returns the func that reports the outcome
// (nil error for success).
func (u *Upstream) Guard() (report func(error), err error) {
	done, err := u.breaker.allow()
	if err != nil {
		return nil, err
	}
	return func(err error) { u.breaker.report(done, err) }, nil
}

// AuthKind is the kind of credentials sent to the upstream (Auth.Kind, or
// AuthURL for a URL's password), "" for none.
func (u *Upstream) AuthKind() string { return u.auth }

// CloseIdle closes the upstream's idle connections.
func (u *Upstream) CloseIdle() {
	if u.client != nil {
		u.client.CloseIdleConnections()
	}
}

// Breaker returns the state of the upstream's breaker.
func (u *Upstream) Breaker() BreakerState {
	if u.breaker == nil {
		return Closed
	}
	return u.breaker.state()
}

// HoldOpen treats the upstream as open until until, because another
// replica's breaker for it opened (for reason): requests are refused with
// an *OpenError that says so, and Breaker and Status report it open.
// After until, the upstream's own breaker decides again; this process's
// breaker counts and trips on its own all along. Options.BreakerNews is
// not told. It does nothing for direct, off and breaker-less upstreams.
func (u *Upstream) HoldOpen(until time.Time, reason string) {
	if u.breaker != nil {
		u.breaker.hold(until, reason)
	}
}

// ReleaseHold ends the open period that HoldOpen set (the other
// replica's breaker closed again).
func (u *Upstream) ReleaseHold() {
	if u.breaker != nil {
		u.breaker.releaseHold()
	}
}

// NewsID identifies the upstream to other replicas: its name, "@" and the
// first 12 hex digits of the sha256 of its URL without credentials, so
// that replicas that give one name to different URLs do not take each
// other's news, and rotated credentials do not change it.
func (u *Upstream) NewsID() string { return u.Name + "@" + u.urlHash }

// hashURL is the first 12 hex digits of the sha256 of raw without its
// user information.
func hashURL(raw string) string {
	if p, err := url.Parse(raw); err == nil {
		p.User = nil
		raw = p.String()
	} else {
		raw = RedactURL(raw)
	}
	sum := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(sum[:])[:12]
}

// Status is a snapshot of the upstream for /debug/upstreams.
type Status struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	Private     bool   `json:"private"`
	Fallthrough string `json:"fallthrough"`
	// Auth is the kind of credentials modgate sends (basic, bearer,
	// netrc, command, url), never the credentials.
	Auth    string        `json:"auth,omitempty"`
	Breaker BreakerStatus `json:"breaker"`
}

// Status returns a snapshot of the upstream.
func (u *Upstream) Status() Status {
	st := Status{Name: u.Name, URL: u.Source, Private: u.Private, Fallthrough: u.Fallthrough.String(), Auth: u.auth}
	if u.breaker != nil {
		st.Breaker = u.breaker.status()
	}
	return st
}

// outcomeBody tells the breaker how a 200 answer ended, once its body is
// closed: read to the end is a success, a failed read a failure, and a body
// abandoned early (the client went away) neither.
type outcomeBody struct {
	io.ReadCloser
	b    *breaker
	done func(error)
	err  error
	eof  bool
	once sync.Once
}

func (b *outcomeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

func (b *outcomeBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		switch {
		case b.eof:
			b.b.report(b.done, nil)
		case b.err != nil && !errors.Is(b.err, context.Canceled):
			b.b.report(b.done, b.err)
		default:
			b.b.report(b.done, errAbandoned)
		}
	})
	return err
}

// ErrStalled is the cause of a body read that waited longer than the
// upstream's idle timeout.
var ErrStalled = errors.New("body stalled")

// stallReader cancels the request when no read completes within idle, so a
// body that stops arriving fails instead of hanging the client forever.
type stallReader struct {
	body   io.ReadCloser
	idle   time.Duration
	cancel context.CancelCauseFunc
	timer  *time.Timer
	fired  atomic.Bool
	once   sync.Once
}

func newStallReader(body io.ReadCloser, idle time.Duration, cancel context.CancelCauseFunc) *stallReader {
	s := &stallReader{body: body, idle: idle, cancel: cancel}
	s.timer = time.AfterFunc(idle, func() {
		s.fired.Store(true)
		cancel(ErrStalled)
	})
	return s
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	switch {
	case err == nil:
		s.timer.Reset(s.idle)
	case !errors.Is(err, io.EOF) && s.fired.Load():
		// A read cut by the stall timer reports "context canceled"; say why.
		err = fmt.Errorf("%w: no data for %s", ErrStalled, s.idle)
	}
	return n, err
}

func (s *stallReader) Close() error {
	err := s.body.Close()
	s.once.Do(func() {
		s.timer.Stop()
		s.cancel(nil)
	})
	return err
}
