package modtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultPrefix starts the path prefix /f/<fault>/ that selects a fault; the
// faults are documented at NewProxy.
const faultPrefix = "/f/"

// recorder counts requests. It is shared by all servers of one Proxy or
// SumDB.
type recorder struct {
	mu     sync.Mutex
	counts map[string]int
	reqs   []string
	flaky  map[string]*rand.Rand
}

func (rec *recorder) record(fault, path string) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.counts == nil {
		rec.counts = make(map[string]int)
	}
	rec.counts[fault]++
	rec.reqs = append(rec.reqs, path)
}

func (rec *recorder) count(fault string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.counts[fault]
}

func (rec *recorder) requests() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.reqs...)
}

func (rec *recorder) countMatching(substr string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.reqs {
		if strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

func (rec *recorder) reset() {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.counts, rec.reqs, rec.flaky = nil, nil, nil
}

// fail reports whether the next request under the flaky fault fault fails.
// Each fault name has its own sequence, restarted by reset.
func (rec *recorder) fail(fault string, percent int) bool {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rng := rec.flaky[fault]
	if rng == nil {
		if rec.flaky == nil {
			rec.flaky = make(map[string]*rand.Rand)
		}
		rng = rand.New(rand.NewPCG(0x6d6f6474657374, uint64(percent)))
		rec.flaky[fault] = rng
	}
	return rng.IntN(100) < percent
}

// faultServer is an httptest.Server on 127.0.0.1 that counts every request
// and applies path-selected faults before handing the request to inner.
type faultServer struct {
	srv   *httptest.Server
	inner http.Handler
	rec   *recorder
	// blocked, if not nil, is called when a hang or stall handler starts
	// to block; tests use it to know a request is in flight.
	blocked func(fault string)

	done      chan struct{} // closed by close, unblocks hang and stall
	closeOnce sync.Once

	// fault applies to requests that name none (see Proxy.SetFault).
	fault atomic.Pointer[string]

	// prefix, if not empty, is the path the server is mounted at (see
	// WithPathPrefix): requests outside it answer 404, and it is cut off
	// before faults are read.
	prefix string
}

// startFaultServer starts a server closed by t.Cleanup, mounted at prefix
// ("" for the root).
func startFaultServer(t testing.TB, inner http.Handler, rec *recorder, useTLS bool, blocked func(string), prefix string, tlsNames ...string) *faultServer {
	t.Helper()
	s := &faultServer{inner: inner, rec: rec, blocked: blocked, done: make(chan struct{}), prefix: prefix}
	s.srv = &httptest.Server{
		Listener: listenLoopback(t),
		Config:   &http.Server{Handler: s, ErrorLog: log.New(logWriter{t}, "", 0)},
	}
	if useTLS && len(tlsNames) > 0 {
		s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{SelfSigned(t, tlsNames...)}}
	}
	if useTLS {
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	t.Cleanup(s.close)
	return s
}

// SelfSigned makes a certificate for names and 127.0.0.1 that is its own
// CA, for TLS servers that stand in for a named host.
func SelfSigned(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), cryptorand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: names[0], Organization: []string{"modtest"}},
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(cryptorand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// logWriter sends a server's error log to the test log.
type logWriter struct{ t testing.TB }

func (lw logWriter) Write(p []byte) (int, error) {
	lw.t.Logf("modtest server: %s", strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// listenLoopback listens on 127.0.0.1 only, whatever httptest's -httptest.serve
// flag says.
func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("modtest: listen: %v", err)
	}
	return l
}

// close unblocks every hang and stall handler, then closes the server and
// waits for its handlers to return.
func (s *faultServer) close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.srv.Close()
	})
}

// certPEM returns the PEM encoding of a TLS server's certificate, nil for a
// plain server.
func (s *faultServer) certPEM() []byte {
	c := s.srv.Certificate()
	if c == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// certPool returns a pool holding a TLS server's certificate, nil for a
// plain server.
func (s *faultServer) certPool() *x509.CertPool {
	c := s.srv.Certificate()
	if c == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return pool
}

// splitFault splits "/f/<fault>/rest" into fault and "/rest".
func splitFault(path string) (fault, rest string, ok bool) {
	after, ok := strings.CutPrefix(path, faultPrefix)
	if !ok {
		return "", path, false
	}
	fault, rest, _ = strings.Cut(after, "/")
	if fault == "" {
		return "", path, false // "/f//...": no fault named
	}
	return fault, "/" + rest, true
}

// withPath returns a shallow copy of r whose URL path is path.
func withPath(r *http.Request, path string) *http.Request {
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = path, ""
	r2.RequestURI = r2.URL.RequestURI()
	return r2
}

func (s *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.prefix != "" {
		rest, ok := strings.CutPrefix(r.URL.Path, s.prefix)
		if !ok || !strings.HasPrefix(rest, "/") {
			s.rec.record("", r.URL.Path)
			writeText(w, http.StatusNotFound, "not found: outside "+s.prefix+"/\n")
			return
		}
		r = withPath(r, rest)
	}
	fault, rest, faulted := splitFault(r.URL.Path)
	if f := s.fault.Load(); !faulted && f != nil {
		fault, faulted = *f, true
	}
	s.rec.record(fault, r.URL.Path)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeText(w, http.StatusMethodNotAllowed, "method not allowed\n")
		return
	}
	if !faulted {
		s.inner.ServeHTTP(w, r)
		return
	}
	inner := withPath(r, rest)
	injected := func(code int) {
		writeText(w, code, fmt.Sprintf("%s: injected by modtest %s%s/\n",
			strings.ToLower(http.StatusText(code)), faultPrefix, fault))
	}

	switch {
	case fault == "ok":
		s.inner.ServeHTTP(w, inner)

	case fault == "403" || fault == "404" || fault == "410" || fault == "500" || fault == "503" || fault == "429":
		code, _ := strconv.Atoi(fault)
		injected(code)

	case strings.HasPrefix(fault, "429ra"):
		secs, err := strconv.Atoi(strings.TrimPrefix(fault, "429ra"))
		if err != nil || secs < 0 {
			s.badFault(w, fault)
			return
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		injected(http.StatusTooManyRequests)

	case fault == "hang":
		s.block(r, fault)
		// Nothing was written: make sure nothing ever is, not even the
		// implicit 200 of a handler that returns.
		panic(http.ErrAbortHandler)

	case strings.HasPrefix(fault, "slow") && !strings.HasPrefix(fault, "slowclose"):
		ms, err := strconv.Atoi(strings.TrimPrefix(fault, "slow"))
		if err != nil || ms < 0 {
			s.badFault(w, fault)
			return
		}
		timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		case <-s.done:
			panic(http.ErrAbortHandler)
		}
		s.inner.ServeHTTP(w, inner)

	case fault == "reset" || fault == "stall":
		if !strings.HasSuffix(rest, ".zip") {
			s.inner.ServeHTTP(w, inner)
			return
		}
		s.partial(w, inner, fault)

	case strings.HasPrefix(fault, "bw"):
		kbps, err := strconv.Atoi(strings.TrimPrefix(fault, "bw"))
		if err != nil || kbps <= 0 {
			s.badFault(w, fault)
			return
		}
		s.inner.ServeHTTP(&throttled{ResponseWriter: w, perSec: kbps << 10, done: s.done, ctx: r.Context()}, inner)

	case strings.HasPrefix(fault, "slowclose"):
		ms, err := strconv.Atoi(strings.TrimPrefix(fault, "slowclose"))
		if err != nil || ms < 0 {
			s.badFault(w, fault)
			return
		}
		// The whole answer without a length, then a pause before its last
		// chunk: the client has every byte but cannot know it is the end.
		s.inner.ServeHTTP(noLength{w}, inner)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
		case <-s.done:
		}

	case fault == "tamper" || fault == "notzip":
		tamper(w, inner, s.inner, fault, rest)

	case fault == "loop":
		w.Header().Set("Location", r.URL.RequestURI())
		writeText(w, http.StatusFound, "found: injected by modtest /f/loop/\n")

	case strings.HasPrefix(fault, "flaky"):
		p, err := strconv.Atoi(strings.TrimPrefix(fault, "flaky"))
		if err != nil || p < 0 || p > 100 {
			s.badFault(w, fault)
			return
		}
		if s.rec.fail(fault, p) {
			injected(http.StatusInternalServerError)
			return
		}
		s.inner.ServeHTTP(w, inner)

	default:
		s.badFault(w, fault)
	}
}

func (s *faultServer) badFault(w http.ResponseWriter, fault string) {
	writeText(w, http.StatusBadRequest, fmt.Sprintf("bad request: unknown modtest fault %q\n", fault))
}

// block waits until the client goes away or the server is closed.
func (s *faultServer) block(r *http.Request, fault string) {
	if s.blocked != nil {
		s.blocked(fault)
	}
	select {
	case <-r.Context().Done():
	case <-s.done:
	}
}

// partial serves the headers of a successful answer with its full
// Content-Length and about half of its body, then resets the connection
// (fault "reset") or blocks (fault "stall"). Unsuccessful answers are served
// whole.
func (s *faultServer) partial(w http.ResponseWriter, r *http.Request, fault string) {
	rr := httptest.NewRecorder()
	s.inner.ServeHTTP(rr, r)
	body := rr.Body.Bytes()
	h := w.Header()
	for k, v := range rr.Header() {
		h[k] = v
	}
	if rr.Code != http.StatusOK {
		w.WriteHeader(rr.Code)
		w.Write(body)
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body[:len(body)/2])
	rc := http.NewResponseController(w)
	if err := rc.Flush(); err != nil {
		panic(http.ErrAbortHandler)
	}
	if fault == "stall" {
		s.block(r, fault)
		panic(http.ErrAbortHandler) // close the connection, short of Content-Length
	}
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	abortConn(conn)
}

// abortConn closes conn with a TCP RST rather than a FIN. For TLS it skips
// the close_notify alert, like a connection cut by a middlebox.
func abortConn(conn net.Conn) {
	raw := conn
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		raw = nc.NetConn()
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	raw.Close()
}

// writeText answers with a text/plain body and its Content-Length.
func writeText(w http.ResponseWriter, code int, body string) {
	writeBody(w, code, "text/plain; charset=utf-8", []byte(body))
}

// writeBody answers with body, its Content-Type and its Content-Length.
func writeBody(w http.ResponseWriter, code int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(body)
}

// throttled writes at most perSec bytes a second: a slow link.
type throttled struct {
	http.ResponseWriter
	perSec int
	done   chan struct{}
	ctx    interface{ Done() <-chan struct{} }
}

func (t *throttled) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		// Send a tenth of a second's worth, then wait that tenth.
		n := min(len(p), max(1, t.perSec/10))
		m, err := t.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := t.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		p = p[n:]
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.ctx.Done():
			return written, http.ErrAbortHandler
		case <-t.done:
			return written, http.ErrAbortHandler
		}
	}
	return written, nil
}

// noLength drops Content-Length, so that the answer is chunked.
type noLength struct{ http.ResponseWriter }

func (n noLength) WriteHeader(code int) {
	n.Header().Del("Content-Length")
	n.ResponseWriter.WriteHeader(code)
}

func (n noLength) Write(p []byte) (int, error) {
	n.Header().Del("Content-Length")
	return n.ResponseWriter.Write(p)
}

func (n noLength) Flush() {
	if f, ok := n.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
