package modtest

import (
	"crypto/rand"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/note"
)

// A SumDB is a real checksum database: a signed, tiled transparency log
// built with golang.org/x/mod/sumdb, whose records are the go.sum lines of a
// [Fixtures] set ([Fixtures.GoSumLines]). Records are added on first lookup,
// as the public databases do, so modules added to the fixtures later are
// found too.
type SumDB struct {
	// Name is the database name, e.g. "sum.fixture.test".
	Name string
	// VerifierKey is the database's public key, the value of GOSUMDB that
	// makes the go command trust this database.
	VerifierKey string

	handler http.Handler
	rec     *recorder
	fx      *Fixtures
}

// NewSumDB creates a database named name (a host name such as
// "sum.fixture.test", or a host and a path, "sum.fixture.test/sumdb", as the
// go command allows) with a fresh signing key, serving fx. It starts no
// server: serve it through a proxy with [WithSumDB], or on its own with
// [SumDB.Serve] or [SumDB.ServeNamed].
func NewSumDB(t testing.TB, name string, fx *Fixtures) *SumDB {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatalf("modtest: sumdb key for %q: %v", name, err)
	}
	// The go command accepts only names of the form host[/path].
	if _, err := note.NewVerifier(vkey); err != nil {
		t.Fatalf("modtest: sumdb name %q: %v", name, err)
	}
	if u, err := url.Parse("https://" + name); err != nil || u.Host == "" || u.RawPath != "" || strings.HasSuffix(name, "/") ||
		*u != (url.URL{Scheme: "https", Host: u.Host, Path: u.Path}) {
		t.Fatalf("modtest: sumdb name %q is not of the form host[/path]", name)
	}
	if fx == nil {
		fx = &Fixtures{}
	}
	return &SumDB{
		Name:        name,
		VerifierKey: vkey,
		handler:     sumdb.NewServer(sumdb.NewTestServer(skey, fx.GoSumLines)),
		rec:         &recorder{},
		fx:          fx,
	}
}

// Preload adds a record for every module of the fixtures now, in the order
// of [Fixtures.Modules], rather than on first lookup. The tree then stops
// growing while go commands read it, so that two runs of the same commands
// read the same tree head and tiles: a cache warmed by the first run holds
// everything the second needs. Modules added to the fixtures later are
// still added on first lookup.
func (db *SumDB) Preload(t testing.TB) {
	t.Helper()
	for _, m := range db.fx.Modules() {
		ep, err := module.EscapePath(m.Path)
		if err != nil {
			t.Fatalf("modtest: preload %s: %v", m, err)
		}
		ev, err := module.EscapeVersion(m.Version)
		if err != nil {
			t.Fatalf("modtest: preload %s: %v", m, err)
		}
		rr := httptest.NewRecorder()
		db.handler.ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/lookup/"+ep+"@"+ev, nil))
		if rr.Code != http.StatusOK {
			t.Fatalf("modtest: preload %s: %d %s", m, rr.Code, rr.Body)
		}
	}
}

// Handler returns the database's HTTP handler, which serves /lookup/<module>@<version>,
// /tile/... and /latest at its root. Unknown modules answer 404. Requests
// through Handler are not counted; a [Proxy] counts the ones it passes on.
func (db *SumDB) Handler() http.Handler { return db.handler }

// Serve starts a plain HTTP server for the database on 127.0.0.1, closed
// when the test ends, and returns its URL. The server applies the same
// path-selected faults as a [Proxy] (/f/<fault>/...) and counts requests in
// db's counters. Use [SumDB.GOSUMDB] to point the go command at it directly.
func (db *SumDB) Serve(t testing.TB) string {
	t.Helper()
	return startFaultServer(t, db.handler, db.rec, false, nil, "").srv.URL
}

// ServeTLS is [SumDB.Serve] over HTTPS. It also returns the PEM encoding of
// the server's self-signed certificate, for clients to trust.
func (db *SumDB) ServeTLS(t testing.TB) (url string, caPEM []byte) {
	t.Helper()
	s := startFaultServer(t, db.handler, db.rec, true, nil, "")
	return s.srv.URL, s.certPEM()
}

// A NamedServer is a TLS server on 127.0.0.1 that stands in for
// https://<host>/<path>: clients reach it by resolving host:443 to Addr
// (or by dialing Local) and trusting CAPEM.
type NamedServer struct {
	// URL is the address the server stands in for, "https://<name>".
	URL string
	// Local is the same URL at the loopback address,
	// "https://127.0.0.1:port/<path>".
	Local string
	// Addr is the loopback address, "127.0.0.1:port".
	Addr string
	// Host is the host name the certificate is for.
	Host string
	// CAPEM is the server's self-signed certificate, PEM encoded.
	CAPEM []byte
	// CertPool holds that certificate.
	CertPool *x509.CertPool
}

// ServeNamed serves the database over HTTPS where its name says it lives,
// https://<Name>/ (a name with a path, "sum.fixture.test/sumdb", is served
// under /sumdb/ and answers 404 elsewhere), with a certificate for the
// name's host: the go command reaches such a database directly when no
// proxy serves it, or at the URL of GOSUMDB="<key> <URL>". Faults follow
// the path (<URL>/f/500/lookup/...); requests are counted as for
// [SumDB.Serve].
func (db *SumDB) ServeNamed(t testing.TB) *NamedServer {
	t.Helper()
	host, path, _ := strings.Cut(db.Name, "/")
	prefix := ""
	if path != "" {
		prefix = "/" + path
	}
	s := startFaultServer(t, db.handler, db.rec, true, nil, prefix, host)
	return &NamedServer{
		URL:      "https://" + db.Name,
		Local:    s.srv.URL + prefix,
		Addr:     s.srv.Listener.Addr().String(),
		Host:     host,
		CAPEM:    s.certPEM(),
		CertPool: s.certPool(),
	}
}

// GOSUMDB returns the GOSUMDB value that makes the go command use this
// database at url, bypassing any proxy: "<VerifierKey> <url>". With url ""
// it returns VerifierKey alone, so the go command reaches the database
// through its GOPROXY (see [WithSumDB]).
func (db *SumDB) GOSUMDB(url string) string {
	if url == "" {
		return db.VerifierKey
	}
	return db.VerifierKey + " " + url
}

// Count returns how many requests the servers started by [SumDB.Serve] and
// [SumDB.ServeTLS] received with fault prefix fault, or without one when
// fault is "".
func (db *SumDB) Count(fault string) int { return db.rec.count(fault) }

// Requests returns the path of every request those servers received, in
// order of arrival. The slice is a copy.
func (db *SumDB) Requests() []string { return db.rec.requests() }

// CountMatching returns how many request paths contain substr.
func (db *SumDB) CountMatching(substr string) int { return db.rec.countMatching(substr) }

// Reset forgets all requests counted so far. The log itself is kept.
func (db *SumDB) Reset() { db.rec.reset() }
