package modtest

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/mod/module"
)

// A Proxy is a module proxy (GOPROXY protocol) on 127.0.0.1 that serves a
// [Fixtures] set and injects faults selected by path (see [NewProxy]).
// It counts every request it receives.
type Proxy struct {
	// URL is the base URL of the proxy, "http://127.0.0.1:port" (https for
	// [NewProxyTLS]) followed by any [WithPathPrefix], with no trailing
	// slash.
	URL string

	fx *Fixtures
	db *SumDB
	s  *faultServer
}

// A ProxyOption configures a [Proxy].
type ProxyOption func(*proxyConfig)

type proxyConfig struct {
	db       *SumDB
	blocked  func(fault string) // test hook, see faultServer.blocked
	tlsNames []string
	prefix   string
}

// WithPathPrefix mounts the proxy at prefix (e.g.
// "/artifactory/api/go/go-remote"), as repository managers serve module
// proxies: [Proxy.URL] ends with prefix, requests outside it answer 404,
// and fault prefixes follow it (<URL>/f/500/...). [Proxy.Requests] reports
// paths without it.
func WithPathPrefix(prefix string) ProxyOption {
	return func(c *proxyConfig) { c.prefix = strings.TrimSuffix(prefix, "/") }
}

// WithBlocked calls fn (with the fault's name) whenever a hang or stall
// fault starts to block, so that a test knows a request is held there.
func WithBlocked(fn func(fault string)) ProxyOption {
	return func(c *proxyConfig) { c.blocked = fn }
}

// WithTLSNames makes a proxy from NewProxyTLS present a certificate for
// names (and 127.0.0.1) instead of httptest's, so that it can stand in
// for a named host reached through a resolve override.
func WithTLSNames(names ...string) ProxyOption {
	return func(c *proxyConfig) { c.tlsNames = names }
}

// WithSumDB makes the proxy serve db the way a proxy that supports checksum
// database proxying does (db.Name may have a path, as in
// /sumdb/sum.fixture.test/sumdb/...): /sumdb/<db.Name>/supported answers 200 and
// /sumdb/<db.Name>/lookup/..., /tile/... and /latest are served by
// db.Handler() with the prefix stripped. Without this option, and for any
// other database name, /sumdb/... answers 404, so the go command falls back
// to contacting the database directly.
func WithSumDB(db *SumDB) ProxyOption {
	return func(c *proxyConfig) { c.db = db }
}

// NewProxy starts a plain HTTP proxy serving fx, closed when the test ends.
//
// It serves
//
//	/<module>/@v/list             text/plain; charset=utf-8, one version a line
//	/<module>/@v/<version>.info   application/json (also for a query, see [Module.Queries])
//	/<module>/@v/<version>.mod    text/plain; charset=utf-8
//	/<module>/@v/<version>.zip    application/zip
//	/<module>/@latest             application/json
//
// with module paths and versions case-encoded as the protocol requires
// ("!" before an upper-case letter). Unknown modules and versions answer
// 404, paths that do not decode answer 400, both with a one-line text/plain
// body. Every path, including /sumdb/ paths, may be prefixed with a fault
// /f/<fault>/; the faults are:
//
//	ok          no fault (the request is still counted under "ok")
//	403 404 410 500 503
//	            that status, with a short text/plain body
//	429         429 Too Many Requests without Retry-After
//	429ra<N>    429 with "Retry-After: <N>"
//	hang        never write headers; block until the client goes away or the
//	            proxy is closed
//	slow<MS>    wait MS milliseconds, then answer normally
//	reset       for a .zip: send the headers with the full Content-Length and
//	            about half the body, then close the connection with a TCP RST;
//	            anything else is answered normally
//	stall       for a .zip: send the headers and about half the body, then
//	            block until the client goes away or the proxy is closed;
//	            anything else is answered normally
//	loop        302 redirect to the very same URL
//	flaky<P>    500 for P percent of requests, chosen by a pseudo-random
//	            sequence with a fixed seed per fault, so runs repeat exactly;
//	            the others are answered normally
//	bw<KB>      answer normally at no more than KB KiB a second
//	slowclose<MS>
//	            send the whole answer, then wait MS milliseconds before
//	            finishing the response
//	tamper      a well-formed answer that the checksum database does not
//	            vouch for: a .mod with a line added, a .zip with a file
//	            added, a lookup's hash, a tile's byte or a tree head changed
//	notzip      for a .zip: 200 with a body that is not a zip
//
// An unknown fault answers 400. A test typically hands p.URL+"/f/503" to the
// code under test as an upstream URL.
func NewProxy(t testing.TB, fx *Fixtures, opts ...ProxyOption) *Proxy {
	t.Helper()
	return newProxy(t, fx, false, opts)
}

// NewProxyTLS is [NewProxy] over HTTPS, with a certificate for 127.0.0.1
// that [Proxy.CertPool], [Proxy.CAPEM] and [Proxy.Client] let clients trust.
func NewProxyTLS(t testing.TB, fx *Fixtures, opts ...ProxyOption) *Proxy {
	t.Helper()
	return newProxy(t, fx, true, opts)
}

func newProxy(t testing.TB, fx *Fixtures, useTLS bool, opts []ProxyOption) *Proxy {
	t.Helper()
	var cfg proxyConfig
	for _, o := range opts {
		o(&cfg)
	}
	if fx == nil {
		fx = &Fixtures{}
	}
	p := &Proxy{fx: fx, db: cfg.db}
	if cfg.prefix != "" && (!strings.HasPrefix(cfg.prefix, "/") || strings.Contains(cfg.prefix, "/f/")) {
		t.Fatalf("modtest: path prefix %q must start with / and hold no fault prefix", cfg.prefix)
	}
	p.s = startFaultServer(t, http.HandlerFunc(p.serve), &recorder{}, useTLS, cfg.blocked, cfg.prefix, cfg.tlsNames...)
	p.URL = p.s.srv.URL + cfg.prefix
	return p
}

// Close closes the proxy: requests blocked by hang or stall are cut off, and
// later requests are refused. It is called when the test ends, and it is
// safe to call more than once, so a test can close a proxy early to make an
// upstream disappear.
func (p *Proxy) Close() { p.s.close() }

// SetFault makes every request that names no fault behave as if it named
// fault (e.g. "500", "hang"); "" heals the proxy. A test breaks and heals
// one upstream URL with it. Such requests are counted under fault.
func (p *Proxy) SetFault(fault string) {
	if fault == "" {
		p.s.fault.Store(nil)
		return
	}
	p.s.fault.Store(&fault)
}

// Count returns how many requests arrived with the fault prefix fault
// ("500", "hang", "slow20", "flaky30", "ok", ...), or without any fault
// prefix when fault is "".
func (p *Proxy) Count(fault string) int { return p.s.rec.count(fault) }

// Requests returns the path of every request received, in order of arrival,
// including any fault prefix. The slice is a copy.
func (p *Proxy) Requests() []string { return p.s.rec.requests() }

// CountMatching returns how many request paths contain substr.
func (p *Proxy) CountMatching(substr string) int { return p.s.rec.countMatching(substr) }

// Reset forgets all requests and restarts the flaky sequences.
func (p *Proxy) Reset() { p.s.rec.reset() }

// Client returns an HTTP client for the proxy, which trusts its certificate
// when it serves HTTPS. Its idle connections are closed with the proxy.
func (p *Proxy) Client() *http.Client { return p.s.srv.Client() }

// CertPool returns a pool with the certificate of a proxy from
// [NewProxyTLS], or nil for a plain HTTP proxy.
func (p *Proxy) CertPool() *x509.CertPool { return p.s.certPool() }

// CAPEM returns the PEM encoding of the (self-signed) certificate of a proxy
// from [NewProxyTLS], for SSL_CERT_FILE or a client's trust store; nil for a
// plain HTTP proxy.
func (p *Proxy) CAPEM() []byte { return p.s.certPEM() }

// serve answers the GOPROXY protocol and, with WithSumDB, the /sumdb/ paths.
// Faults have already been applied.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	urlPath := r.URL.Path
	if rest, ok := strings.CutPrefix(urlPath, "/sumdb/"); ok {
		p.serveSumDB(w, r, rest)
		return
	}
	trimmed := strings.TrimPrefix(urlPath, "/")

	if escPath, ok := strings.CutSuffix(trimmed, "/@latest"); ok {
		path, err := module.UnescapePath(escPath)
		if err != nil {
			writeText(w, http.StatusBadRequest, "bad request: "+err.Error()+"\n")
			return
		}
		m, ok := p.fx.Latest(path)
		if !ok {
			notFound(w, "module %s: no matching versions", path)
			return
		}
		writeBody(w, http.StatusOK, "application/json", m.Info)
		return
	}

	escPath, file, ok := strings.Cut(trimmed, "/@v/")
	if !ok {
		notFound(w, "%s: not a module proxy path", urlPath)
		return
	}
	path, err := module.UnescapePath(escPath)
	if err != nil {
		writeText(w, http.StatusBadRequest, "bad request: "+err.Error()+"\n")
		return
	}
	if file == "list" {
		if len(p.fx.allVersions(path)) == 0 {
			notFound(w, "module %s: no matching versions", path)
			return
		}
		var b strings.Builder
		for _, v := range p.fx.Versions(path) {
			b.WriteString(v + "\n")
		}
		writeBody(w, http.StatusOK, "text/plain; charset=utf-8", []byte(b.String()))
		return
	}
	var ext string
	for _, e := range []string{".info", ".mod", ".zip"} {
		if strings.HasSuffix(file, e) {
			ext = e
		}
	}
	if ext == "" {
		notFound(w, "%s: not a module proxy path", urlPath)
		return
	}
	vers, err := module.UnescapeVersion(strings.TrimSuffix(file, ext))
	if err != nil {
		writeText(w, http.StatusBadRequest, "bad request: "+err.Error()+"\n")
		return
	}
	m, ok := p.fx.Lookup(path, vers)
	if !ok && ext == ".info" {
		// A query (branch, commit hash): answered with the info of the
		// version it resolves to, as real proxies do.
		m, ok = p.fx.Resolve(path, vers)
	}
	if !ok {
		notFound(w, "%s@%s: unknown version", path, vers)
		return
	}
	switch ext {
	case ".info":
		writeBody(w, http.StatusOK, "application/json", m.Info)
	case ".mod":
		writeBody(w, http.StatusOK, "text/plain; charset=utf-8", m.Mod)
	case ".zip":
		writeBody(w, http.StatusOK, "application/zip", m.Zip)
	}
}

// serveSumDB serves /sumdb/<name>/... (rest is what follows /sumdb/).
func (p *Proxy) serveSumDB(w http.ResponseWriter, r *http.Request, rest string) {
	if p.db == nil {
		notFound(w, "checksum database proxying is not supported")
		return
	}
	sub, ok := strings.CutPrefix(rest, p.db.Name+"/")
	if !ok {
		notFound(w, "unknown checksum database")
		return
	}
	if sub == "supported" {
		writeText(w, http.StatusOK, "")
		return
	}
	p.db.Handler().ServeHTTP(w, withPath(r, "/"+sub))
}

func notFound(w http.ResponseWriter, format string, args ...any) {
	writeText(w, http.StatusNotFound, "not found: "+fmt.Sprintf(format, args...)+"\n")
}
