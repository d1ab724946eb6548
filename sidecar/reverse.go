package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// forwardedHeaders are the request headers passed to upstreams. Conditional
// and range headers are not: only a 200 with the whole artifact counts.
var forwardedHeaders = []string{"Accept", "Accept-Encoding", "Via"}

// serveReverse answers an origin-form request: modgate is the client's
// GOPROXY and walks its own chain of upstreams.
func (s *Server) serveReverse(w http.ResponseWriter, r *http.Request) {
	x := s.newExchange(w, r, "reverse")
	defer x.finish()
	req, err := ClassifyReverse(r.URL.Path)
	if errors.Is(err, ErrNotModuleRequest) {
		x.decision = "invalid"
		writeError(x.w, http.StatusNotFound, wire.NotModuleRequest, fmt.Sprintf("%q is not a module proxy path (want /<module>/@v/list, /@v/<version>.info|.mod|.zip, /@latest or /sumdb/...)", r.URL.Path))
		return
	}
	if err != nil {
		x.decision, x.reason = "invalid", err.Error()
		writeError(x.w, http.StatusBadRequest, wire.BadRequest, err.Error())
		return
	}
	x.req = req
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		x.decision = "invalid"
		x.w.Header().Set("Allow", "GET, HEAD")
		writeError(x.w, http.StatusMethodNotAllowed, wire.MethodNotAllowed, fmt.Sprintf("method %s not allowed: a module proxy answers GET and HEAD", r.Method))
		return
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		x.decision = "invalid"
		x.w.Header().Set("Connection", "close")
		writeError(x.w, http.StatusBadRequest, wire.BadRequest, "a module proxy request has no body")
		return
	}
	if !x.decide() {
		return
	}
	if req.Kind.IsSumDB() {
		s.serveSumDB(x)
		return
	}
	hdr := upstreamHeader(r)
	key, immutable, cacheable := cacheKey(req)
	if req.Kind == KindList || req.Kind == KindLatest || cacheable {
		// modgate reads these to filter or to cache them: they must come
		// as they are, uncompressed.
		hdr.Del("Accept-Encoding")
	}
	if c := s.cacheFor(x); c != nil && cacheable {
		fetch := func(ctx context.Context) upstream.Result {
			return s.walk(ctx, x, req.Path, hdr)
		}
		s.serveCached(x, c, key, immutable, fetch, func(res upstream.Result) { s.writeChainError(x, res) })
		return
	}
	var res upstream.Result
	if r.Method == http.MethodGet {
		res = s.walk(x.ctx(), x, req.Path, hdr)
	} else {
		res = s.chain.Walk(x.ctx(), r.Method, req.Path, hdr, x.eligible)
	}
	if res.Response == nil {
		s.writeChainError(x, res)
		return
	}
	x.served = res.Upstream
	switch req.Kind {
	case KindList:
		s.relayList(x, res.Response)
	case KindLatest:
		s.relayLatest(x, res.Response)
	default:
		s.relay(x, res.Response)
	}
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

// relay passes an answer to the client (always a 200 in reverse mode; any
// status in forward mode). Small bodies of known length are
// read first; others stream, and if the upstream's body breaks mid-way the
// connection is aborted, so that the client sees a failed transfer and
// never a short body that looks complete.
func (s *Server) relay(x *exchange, resp *http.Response) {
	w, r, req, u := x.w, x.r, x.req, x.served
	defer resp.Body.Close()
	body := &capReader{r: resp.Body, n: req.Kind.maxBody()}
	if limit := req.Kind.maxBody(); req.Kind != KindZip && limit > 0 && resp.ContentLength < 0 && r.Method != http.MethodHead {
		// A small kind of unknown length is read whole, within its limit.
		if b, ok := s.readBody(x, resp, limit); ok {
			copyHeader(w.Header(), resp.Header)
			w.WriteHeader(resp.StatusCode)
			w.Write(b)
		}
		return
	}
	if n := resp.ContentLength; n >= 0 && n <= bufferLimit && r.Method != http.MethodHead {
		body, ok := s.readBody(x, resp, bufferLimit)
		if !ok {
			return
		}
		copyHeader(w.Header(), resp.Header)
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
		return
	}
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}
	n, err := stream(newDeadlineWriter(w, s.cfg.ClientIdle), body)
	switch {
	case err == nil:
	case errors.Is(err, errClientGone) || r.Context().Err() != nil:
		s.log.Debug("client went away", "path", r.URL.Path, "bytes", n)
	default:
		s.log.Warn("upstream body failed; aborting the response", "upstream", u.Name, "kind", req.Kind, "path", r.URL.Path, "bytes", n, "err", err)
		x.reason = "upstream body broke off; connection aborted: " + err.Error()
		panic(http.ErrAbortHandler)
	}
}

// readBody reads a whole upstream body of at most limit bytes. If that
// fails, it answers 502 with the reason and returns false.
func (s *Server) readBody(x *exchange, resp *http.Response, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	n := resp.ContentLength
	switch {
	case err != nil:
	case int64(len(body)) > limit:
		err = fmt.Errorf("answer larger than %d bytes", limit)
	case n >= 0 && int64(len(body)) != n:
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		return body, true
	}
	if x.r.Context().Err() == nil {
		u := x.served
		s.log.Warn("upstream body failed", "upstream", u.Name, "kind", x.req.Kind, "path", x.r.URL.Path, "bytes", len(body), "err", err)
		cut := fmt.Sprintf("%s: body cut after %d bytes: %v", u.Name, len(body), err)
		if n >= 0 {
			cut = fmt.Sprintf("%s: body cut after %d of %d bytes: %v", u.Name, len(body), n, err)
		}
		x.reason = cut
		writeError(x.w, http.StatusBadGateway, wire.UpstreamCut, describeRequest(x.req)+": the upstream broke off the answer", cut)
	}
	return nil, false
}

// listLimit bounds a version list read for filtering.
const listLimit = 4 << 20

// relayList passes a version list on without the versions that policy
// denies, so that the go command's own choice of "latest" lands on an
// allowed one.
func (s *Server) relayList(x *exchange, resp *http.Response) {
	defer resp.Body.Close()
	if x.r.Method == http.MethodHead {
		s.relay(x, resp)
		return
	}
	body, ok := s.readBody(x, resp, listLimit)
	if !ok {
		return
	}
	s.writeList(x, resp.Header, body)
}

// writeList answers with the version list body, less the versions that
// policy denies.
func (s *Server) writeList(x *exchange, header http.Header, body []byte) {
	versions := strings.Fields(string(body))
	allowed := x.pol.FilterVersions(policy.Request{Module: x.req.Module, Host: x.r.Host}, versions)
	copyHeader(x.w.Header(), header)
	if len(allowed) != len(versions) {
		x.reason = fmt.Sprintf("%d of %d versions removed by policy", len(versions)-len(allowed), len(versions))
		body = []byte(strings.Join(allowed, "\n"))
		if len(allowed) > 0 {
			body = append(body, '\n')
		}
		x.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	x.w.WriteHeader(http.StatusOK)
	x.w.Write(body)
}

// relayLatest passes @latest on when policy allows its version; otherwise it
// answers with the .info of the highest allowed version in the list, or
// 403 when there is none.
func (s *Server) relayLatest(x *exchange, resp *http.Response) {
	defer resp.Body.Close()
	body, ok := s.readBody(x, resp, bufferLimit)
	if !ok {
		return
	}
	s.writeLatest(x, resp.Header, body)
}

// writeLatest answers with the @latest body when policy allows its
// version, else as relayLatest says.
func (s *Server) writeLatest(x *exchange, header http.Header, body []byte) {
	var info struct{ Version string }
	json.Unmarshal(body, &info)
	preq := policy.Request{Module: x.req.Module, Host: x.r.Host}
	if info.Version == "" || len(x.pol.FilterVersions(preq, []string{info.Version})) == 1 {
		copyHeader(x.w.Header(), header)
		x.w.WriteHeader(http.StatusOK)
		x.w.Write(body)
		return
	}
	esc, _ := module.EscapePath(x.req.Module)
	if v := s.latestAllowed(x, esc, preq); v != "" {
		escV, _ := module.EscapeVersion(v)
		res := s.chain.Walk(upstream.WithKind(x.r.Context(), string(KindInfo)), http.MethodGet, "/"+esc+"/@v/"+escV+".info", nil, x.eligible)
		if res.Response != nil {
			x.served = res.Upstream
			x.reason = fmt.Sprintf("latest %s denied by policy; answered %s", info.Version, v)
			s.relay(x, res.Response)
			return
		}
	}
	d := x.pol.Decide(policy.Request{Module: x.req.Module, Version: info.Version, Kind: string(KindInfo), Host: x.r.Host})
	x.decision, x.rule, x.ruleText, x.reason = "deny", d.Rule, d.RuleText, d.Reason
	writeError(x.w, http.StatusForbidden, wire.Denied, splitMessage(x.pol.DenyMessage(d, x.req.Module, info.Version))...)
}

// latestAllowed returns the version the go command would pick as latest
// among the listed versions that policy allows: the highest release, else
// the highest pre-release.
func (s *Server) latestAllowed(x *exchange, esc string, preq policy.Request) string {
	res := s.chain.Walk(upstream.WithKind(x.r.Context(), string(KindList)), http.MethodGet, "/"+esc+"/@v/list", nil, x.eligible)
	if res.Response == nil {
		return ""
	}
	defer res.Response.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Response.Body, listLimit))
	if err != nil {
		return ""
	}
	var best string
	for _, v := range x.pol.FilterVersions(preq, strings.Fields(string(body))) {
		if semver.IsValid(v) && (best == "" || newer(v, best)) {
			best = v
		}
	}
	return best
}

// newer reports whether v beats best as "latest": a release beats any
// pre-release, then the higher version wins.
func newer(v, best string) bool {
	vRelease, bestRelease := semver.Prerelease(v) == "", semver.Prerelease(best) == ""
	if vRelease != bestRelease {
		return vRelease
	}
	return semver.Compare(v, best) > 0
}

// writeChainError explains why no upstream answered 200: which upstreams
// were asked, what each said, and what the client can do.
func (s *Server) writeChainError(x *exchange, res upstream.Result) {
	w, r, req := x.w, x.r, x.req
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
	if x.private != "" && status == http.StatusNotFound {
		lines = append(lines, fmt.Sprintf("%s is private (%s): only upstreams marked private are asked", req.Module, x.private))
	}
	x.reason = strings.Join(lines[1:], "; ")
	if status >= 500 {
		s.log.Warn("no upstream could serve", "kind", req.Kind, "module", req.Module, "version", req.Version, "status", status, "attempts", attemptsAttr(res.Attempts))
	}
	writeError(w, status, chainCode(res), lines...)
}

// chainCode is the error code of a walk that had no answer, as Status
// ranks it.
func chainCode(res upstream.Result) wire.Code {
	switch status := res.Status(); {
	case status == http.StatusLoopDetected:
		return wire.Loop
	case status == http.StatusForbidden:
		return wire.Off
	case status == http.StatusNotFound && res.End == upstream.Direct:
		return wire.Direct
	case status == http.StatusNotFound:
		return wire.NotFound
	case status == http.StatusServiceUnavailable:
		return wire.CircuitOpen
	case status == http.StatusGatewayTimeout:
		return wire.Timeout
	}
	return wire.UpstreamFailed
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
