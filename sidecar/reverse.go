package sidecar

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/modgate/modgate/sidecar/upstream"
)

// forwardedHeaders are the request headers passed to upstreams. Conditional
// and range headers are not: only a 200 with the whole artifact counts.
var forwardedHeaders = []string{"Accept", "Accept-Encoding", "Via"}

// serveReverse answers an origin-form request: modgate is the client's
// GOPROXY and walks its own chain of upstreams.
func (s *Server) serveReverse(w http.ResponseWriter, r *http.Request) {
	req, err := ClassifyReverse(r.URL.Path)
	if errors.Is(err, ErrNotModuleRequest) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%q is not a module proxy path (want /<module>/@v/list, /@v/<version>.info|.mod|.zip, /@latest or /sumdb/...)", r.URL.Path))
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed: a module proxy answers GET and HEAD", r.Method))
		return
	}
	if req.Kind.IsSumDB() {
		s.serveSumDB(w, r, req)
		return
	}
	res := s.chain.Walk(r.Context(), r.Method, req.Path, upstreamHeader(r), nil)
	if res.Response == nil {
		s.writeChainError(w, r, req, res)
		return
	}
	s.relay(w, r, req, res.Response, res.Upstream)
}

// upstreamHeader picks the client's headers that go upstream.
func upstreamHeader(r *http.Request) http.Header {
	h := make(http.Header, len(forwardedHeaders))
	for _, k := range forwardedHeaders {
		if vs := r.Header.Values(k); len(vs) > 0 {
			h[k] = vs
		}
	}
	return h
}

// bufferLimit is the largest body that is read whole before the answer
// starts (.info, .mod, most lists): if the upstream breaks off such a body,
// the client still gets a status and an explanation instead of a cut
// connection.
const bufferLimit = 64 << 10

// relay passes a 200 answer to the client. Small bodies of known length are
// read first; others stream, and if the upstream's body breaks mid-way the
// connection is aborted, so that the client sees a failed transfer and
// never a short body that looks complete.
func (s *Server) relay(w http.ResponseWriter, r *http.Request, req Request, resp *http.Response, u *upstream.Upstream) {
	defer resp.Body.Close()
	if n := resp.ContentLength; n >= 0 && n <= bufferLimit && r.Method != http.MethodHead {
		body, err := io.ReadAll(resp.Body)
		if err == nil && int64(len(body)) != n {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			if r.Context().Err() == nil {
				s.log.Warn("upstream body failed", "upstream", u.Name, "kind", req.Kind, "path", r.URL.Path, "bytes", len(body), "err", err)
				writeError(w, http.StatusBadGateway, describeRequest(req)+": the upstream broke off the answer",
					fmt.Sprintf("%s: body cut after %d of %d bytes: %v", u.Name, len(body), n, err))
			}
			return
		}
		copyHeader(w.Header(), resp.Header)
		w.WriteHeader(http.StatusOK)
		w.Write(body)
		return
	}
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	n, err := stream(w, resp.Body)
	switch {
	case err == nil:
	case errors.Is(err, errClientGone) || r.Context().Err() != nil:
		s.log.Debug("client went away", "path", r.URL.Path, "bytes", n)
	default:
		s.log.Warn("upstream body failed; aborting the response", "upstream", u.Name, "kind", req.Kind, "path", r.URL.Path, "bytes", n, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// writeChainError explains why no upstream answered 200: which upstreams
// were asked, what each said, and what the client can do.
func (s *Server) writeChainError(w http.ResponseWriter, r *http.Request, req Request, res upstream.Result) {
	if r.Context().Err() != nil {
		return // nobody is listening
	}
	status := res.Status()
	lines := make([]string, 0, len(res.Attempts)+2)
	subject := describeRequest(req)
	switch {
	case status == http.StatusLoopDetected:
		lines = append(lines, subject+": request loop: an upstream leads back to a modgate this request already passed")
	case status == http.StatusForbidden:
		lines = append(lines, subject+": module lookup disabled by GOPROXY=off in modgate's upstream chain")
	case res.End == upstream.Direct:
		lines = append(lines, subject+": not found upstream; the chain ends in direct: fetch it from its origin (GOPROXY=<modgate>,direct)")
	case status == http.StatusNotFound:
		lines = append(lines, subject+": not found in any upstream")
	default:
		lines = append(lines, subject+": no upstream could serve it")
	}
	for _, a := range res.Attempts {
		lines = append(lines, a.String())
	}
	if res.Stopped {
		lines = append(lines, `the chain stops there: after "," only 404 and 410 move on ("|" moves on after any error)`)
	}
	if ra := res.RetryAfter(); ra > 0 && status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", strconv.Itoa(ra))
	}
	if status >= 500 {
		s.log.Warn("no upstream could serve", "kind", req.Kind, "module", req.Module, "version", req.Version, "status", status, "attempts", attemptsAttr(res.Attempts))
	}
	writeError(w, status, lines...)
}

func describeRequest(req Request) string {
	switch req.Kind {
	case KindList:
		return req.Module + " (version list)"
	case KindLatest:
		return req.Module + "@latest"
	case KindInfo, KindMod, KindZip:
		return fmt.Sprintf("%s@%s (.%s)", req.Module, req.Version, req.Kind)
	case KindSumDBLookup:
		return fmt.Sprintf("checksum database %s lookup of %s@%s", req.SumDB, req.Module, req.Version)
	case KindSumDBSupported, KindSumDBLatest, KindSumDBTile:
		return fmt.Sprintf("checksum database %s %s", req.SumDB, strings.TrimPrefix(req.Path, "/"))
	}
	return string(req.Kind)
}

func attemptsAttr(as []upstream.Attempt) slog.Value {
	ss := make([]string, len(as))
	for i, a := range as {
		ss[i] = a.String()
	}
	return slog.StringValue(strings.Join(ss, "; "))
}
