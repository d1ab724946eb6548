package modtest

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"
)

// The faults: what a request under each does, one handler per fault,
// looked up by faultServer.serveFault.

// faultRequest is a request under a fault, as the fault's handler sees it.
type faultRequest struct {
	fault string        // the fault's name, as the path gives it: "slow250"
	rest  string        // the path after /f/<fault>
	r     *http.Request // the request as it came: its context, its URI
	inner *http.Request // the request for inner: r with the path rest
}

// namedFaults are the faults a word names, documented at NewProxy, and
// their handlers. A handler answers the whole request; most hand it to
// inner (s.inner with f.inner) around what they inject.
var namedFaults = map[string]func(s *faultServer, w http.ResponseWriter, f faultRequest){
	"ok":     (*faultServer).pass,
	"403":    (*faultServer).status,
	"404":    (*faultServer).status,
	"410":    (*faultServer).status,
	"429":    (*faultServer).status,
	"500":    (*faultServer).status,
	"503":    (*faultServer).status,
	"hang":   (*faultServer).hang,
	"reset":  (*faultServer).cutZip,
	"stall":  (*faultServer).cutZip,
	"tamper": (*faultServer).tampered,
	"notzip": (*faultServer).tampered,
	"loop":   (*faultServer).loop,
}

// numberedFaults are the faults a word and a number name ("slow250"); a
// name whose number does not parse, or is out of range, is a bad fault.
// slowclose comes before slow, which is its prefix.
var numberedFaults = []struct {
	prefix string
	valid  func(n int) bool
	serve  func(s *faultServer, w http.ResponseWriter, f faultRequest, n int)
}{
	{"429ra", notNegative, (*faultServer).retryAfter},
	{"slowclose", notNegative, (*faultServer).slowClose},
	{"slow", notNegative, (*faultServer).slow},
	{"bw", func(kbps int) bool { return kbps > 0 }, (*faultServer).bandwidth},
	{"flaky", func(p int) bool { return p >= 0 && p <= 100 }, (*faultServer).flaky},
}

func notNegative(n int) bool { return n >= 0 }

// serveFault answers a request under its fault, 400 if the fault is
// unknown.
func (s *faultServer) serveFault(w http.ResponseWriter, f faultRequest) {
	if serve, ok := namedFaults[f.fault]; ok {
		serve(s, w, f)
		return
	}
	for _, nf := range numberedFaults {
		number, ok := strings.CutPrefix(f.fault, nf.prefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(number)
		if err != nil || !nf.valid(n) {
			s.badFault(w, f.fault)
			return
		}
		nf.serve(s, w, f, n)
		return
	}
	s.badFault(w, f.fault)
}

// injected answers code with a body that names the fault, so that a
// developer reading the go command's "server response:" knows where it
// came from.
func injected(w http.ResponseWriter, f faultRequest, code int) {
	writeText(w, code, fmt.Sprintf("%s: injected by modtest %s%s/\n",
		strings.ToLower(http.StatusText(code)), faultPrefix, f.fault))
}

// pass (ok) answers normally.
func (s *faultServer) pass(w http.ResponseWriter, f faultRequest) {
	s.inner.ServeHTTP(w, f.inner)
}

// status (403, 404, ...) answers the status the fault names.
func (s *faultServer) status(w http.ResponseWriter, f faultRequest) {
	code, _ := strconv.Atoi(f.fault)
	injected(w, f, code)
}

// retryAfter (429ra<N>) answers 429 with "Retry-After: <N>".
func (s *faultServer) retryAfter(w http.ResponseWriter, f faultRequest, secs int) {
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	injected(w, f, http.StatusTooManyRequests)
}

// hang never answers: it blocks until the client goes away or the server
// is closed.
func (s *faultServer) hang(w http.ResponseWriter, f faultRequest) {
	s.block(f.r, f.fault)
	// Nothing was written: make sure nothing ever is, not even the
	// implicit 200 of a handler that returns.
	panic(http.ErrAbortHandler)
}

// slow (slow<MS>) waits, then answers normally.
func (s *faultServer) slow(w http.ResponseWriter, f faultRequest, ms int) {
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-f.r.Context().Done():
		panic(http.ErrAbortHandler)
	case <-s.done:
		panic(http.ErrAbortHandler)
	}
	s.inner.ServeHTTP(w, f.inner)
}

// cutZip (reset, stall) cuts a .zip short (see partial); anything else is
// answered normally.
func (s *faultServer) cutZip(w http.ResponseWriter, f faultRequest) {
	if !strings.HasSuffix(f.rest, ".zip") {
		s.inner.ServeHTTP(w, f.inner)
		return
	}
	s.partial(w, f.inner, f.fault)
}

// bandwidth (bw<KB>) answers normally at no more than KB KiB a second.
func (s *faultServer) bandwidth(w http.ResponseWriter, f faultRequest, kbps int) {
	s.inner.ServeHTTP(&throttled{ResponseWriter: w, perSec: kbps << 10, done: s.done, ctx: f.r.Context()}, f.inner)
}

// slowClose (slowclose<MS>) sends the whole answer without a length, then
// pauses before its last chunk: the client has every byte but cannot know
// it is the end.
func (s *faultServer) slowClose(w http.ResponseWriter, f faultRequest, ms int) {
	s.inner.ServeHTTP(noLength{w}, f.inner)
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-f.r.Context().Done():
	case <-s.done:
	}
}

// tampered (tamper, notzip) answers with what the checksum database does
// not vouch for (see tamper).
func (s *faultServer) tampered(w http.ResponseWriter, f faultRequest) {
	tamper(w, f.inner, s.inner, f.fault, f.rest)
}

// loop redirects to the very same URL.
func (s *faultServer) loop(w http.ResponseWriter, f faultRequest) {
	w.Header().Set("Location", f.r.URL.RequestURI())
	injected(w, f, http.StatusFound)
}

// flaky (flaky<P>) answers 500 to P percent of requests, chosen by the
// fault's own pseudo-random sequence, and the others normally.
func (s *faultServer) flaky(w http.ResponseWriter, f faultRequest, percent int) {
	if s.rec.fail(f.fault, percent) {
		injected(w, f, http.StatusInternalServerError)
		return
	}
	s.inner.ServeHTTP(w, f.inner)
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
