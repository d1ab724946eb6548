package modtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
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

// ServeHTTP counts the request, then hands it to its fault's handler, or
// to inner if it names no fault and the server has none set.
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
	s.serveFault(w, faultRequest{fault: fault, rest: rest, r: r, inner: withPath(r, rest)})
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
