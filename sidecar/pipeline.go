package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// The pipeline is one piece of code for every way in (DESIGN.md, "One
// port, three ways in"). Each way in authenticates, classifies the request
// once and picks a source; pipeline then decides policy, serves from the
// cache or fetches from the source, filters lists and @latest, and relays
// the answer. Hedging, breakers, retries and telemetry live in the source
// (sidecar/upstream wraps the transport), so none of that is here.

// fetchRequest is what the pipeline asks of a source.
type fetchRequest struct {
	method string
	path   string // escaped, beginning with "/"
	query  string
	header http.Header
	body   io.Reader // forward mode passes request bodies on (git)
	length int64
	// check judges each upstream's 200 before it counts as an answer;
	// nil: answers pass as they come.
	check *answerCheck
}

// source is where a request's answer comes from.
type source interface {
	// admit refuses the exchange before anything is asked: a private
	// module to a host that is not private.
	admit(x *exchange) error
	// fetch asks for the answer. A Response is a 200 (or an answer that
	// passes through as it is, in forward mode); without one, Attempts say
	// what each upstream did.
	fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result
}

// pipeline serves a classified exchange from src.
func (s *Server) pipeline(x *exchange, src source) error {
	if err := x.decide(); err != nil {
		return err
	}
	if err := src.admit(x); err != nil {
		return err
	}
	if x.req.Kind == KindSumDBLookup && s.verifier != nil {
		// Answered with what the verifier proved, online or offline.
		if err := s.serveLookup(x); !errors.Is(err, errLookupElsewhere) {
			return err
		}
	}
	if s.cfg.Offline {
		return s.serveOffline(x)
	}
	fr := x.fetchRequest()
	if c := s.cacheFor(x); c != nil {
		if key, immutable, ok := x.cacheKey(); ok {
			if immutable {
				// A zip is spooled where it is kept.
				fr.check = s.checkFor(x, c, key)
			} else {
				fr.check = s.checkFor(x, nil, "")
			}
			return s.serveCached(x, c, key, immutable, src, fr)
		}
	}
	fr.check = s.checkFor(x, nil, "")
	res := src.fetch(x.ctx(), x, fr)
	if res.Response == nil {
		return x.chainProblem(res)
	}
	return s.deliver(x, src, res)
}

// forwardedHeaders are the request headers passed to upstreams in reverse
// mode. Conditional and range headers are not: only a 200 with the whole
// artifact counts.
var forwardedHeaders = []string{"Accept", "Accept-Encoding", "Via"}

// partialHeaders ask for part of an answer, or none: a module artifact is
// fetched whole in every mode, so that it can be checked and kept.
var partialHeaders = []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"}

// fetchRequest is the request to send to the source.
func (x *exchange) fetchRequest() fetchRequest {
	r := x.r
	fr := fetchRequest{method: r.Method, path: x.req.Path}
	if x.mode == modeReverse {
		fr.header = make(http.Header, len(forwardedHeaders))
		for _, k := range forwardedHeaders {
			if vs := r.Header.Values(k); len(vs) > 0 {
				fr.header[k] = vs
			}
		}
	} else {
		// Forward mode passes the client's end-to-end headers on: git
		// needs Authorization, Git-Protocol and Content-Type, a private
		// proxy its credentials.
		fr.header = http.Header{}
		copyHeader(fr.header, r.Header)
		fr.header.Del("Proxy-Authorization")
		fr.path, fr.query = r.URL.Path, r.URL.RawQuery
		if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
			fr.body, fr.length = r.Body, r.ContentLength
		}
		if x.req.Kind.IsModuleProtocol() {
			for _, k := range partialHeaders {
				fr.header.Del(k)
			}
		}
	}
	if _, _, cacheable := x.cacheKey(); cacheable || x.req.Kind == KindList || x.req.Kind == KindLatest {
		// modgate reads these to filter or to check and keep them: they
		// must come as they are, uncompressed.
		fr.header.Del("Accept-Encoding")
	}
	return fr
}

// deliver answers with a source's response: lists and @latest through the
// policy's filter, everything else as it came.
func (s *Server) deliver(x *exchange, src source, res upstream.Result) error {
	x.served = res.Upstream
	resp := res.Response
	if resp.StatusCode != http.StatusOK || x.r.Method != http.MethodGet || !(checked(x.req.Kind) || x.req.Kind == KindList) {
		return s.relay(x, resp)
	}
	defer resp.Body.Close()
	body, err := s.readBody(x, resp, maxBody(x.req.Kind))
	if err != nil {
		return err
	}
	return s.writeBody(x, src, resp.Header, body)
}

// bufferLimit is the largest body that is read whole before the answer
// starts (.info, .mod, most lists): if the upstream breaks off such a body,
// the client still gets a status and an explanation instead of a cut
// connection.
const bufferLimit = 64 << 10

// relay passes an answer to the client. Small bodies of known length are
// read first; others stream, and if the upstream's body breaks mid-way the
// connection is aborted, so that the client sees a failed transfer and
// never a short body that looks complete.
func (s *Server) relay(x *exchange, resp *http.Response) error {
	w, r, req := x.w, x.r, x.req
	defer resp.Body.Close()
	if limit := maxBody(req.Kind); req.Kind != KindZip && limit > 0 && resp.ContentLength < 0 && r.Method != http.MethodHead {
		// A small kind of unknown length is read whole, within its limit.
		b, err := s.readBody(x, resp, limit)
		if err != nil {
			return err
		}
		return writeWhole(w, resp.StatusCode, resp.Header, b)
	}
	if n := resp.ContentLength; n >= 0 && n <= bufferLimit && r.Method != http.MethodHead {
		b, err := s.readBody(x, resp, bufferLimit)
		if err != nil {
			return err
		}
		return writeWhole(w, resp.StatusCode, resp.Header, b)
	}
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return nil
	}
	n, err := stream(newDeadlineWriter(w, s.cfg.ClientIdle), &capReader{r: resp.Body, n: maxBody(req.Kind)})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errClientGone) || r.Context().Err() != nil:
		return clientGone(fmt.Sprintf("client went away after %d bytes", n))
	}
	return aborted(fmt.Sprintf("upstream body broke off after %d bytes; connection aborted: %v", n, err))
}

// writeWhole answers with a body read whole.
func writeWhole(w http.ResponseWriter, status int, header http.Header, body []byte) error {
	copyHeader(w.Header(), header)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
	return nil
}

// readBody reads a whole upstream body of at most limit bytes; a body that
// breaks off, or is longer, is a 502 that says so.
//
// The bytes come out of the server's buffer budget until the exchange
// ends; a body the budget has no room for is a 503.
func (s *Server) readBody(x *exchange, resp *http.Response, limit int64) ([]byte, error) {
	n := resp.ContentLength
	if n > limit {
		// Known to be too large: not a byte is read.
		return nil, x.tooLarge(n, limit)
	}
	body, held, err := readWhole(resp.Body, limit, &s.buffers)
	x.buffered += held
	switch {
	case errors.Is(err, errOverBudget):
		return nil, x.overBudget()
	case err != nil:
	case n >= 0 && int64(len(body)) != n:
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		return body, nil
	}
	if x.r.Context().Err() != nil {
		return nil, clientGone("client went away while the answer was read")
	}
	name := "upstream"
	if x.served != nil {
		name = x.served.Name
	}
	s.log.Warn("upstream body failed", "upstream", name, "kind", x.req.Kind, "path", x.r.URL.Path, "bytes", len(body), "err", err)
	cut := fmt.Sprintf("%s: body cut after %d bytes: %v", name, len(body), err)
	if n >= 0 {
		cut = fmt.Sprintf("%s: body cut after %d of %d bytes: %v", name, len(body), n, err)
	}
	if errors.Is(err, errTooLarge) {
		return nil, x.tooLarge(int64(len(body)), limit)
	}
	p := aborted(cut)
	p.abort, p.lines, p.reason = false, []string{describeRequest(x.req) + ": the upstream broke off the answer", cut}, ""
	return nil, p
}

// tooLarge is the 502 of an answer larger than any of its kind may be.
func (x *exchange) tooLarge(n, limit int64) *problem {
	return &problem{status: http.StatusBadGateway, code: wire.BadUpstream,
		lines: []string{describeRequest(x.req) + ": the upstream's answer is too large for its kind; not relayed, not kept",
			fmt.Sprintf("%s: %d bytes or more, the limit is %d", x.servedName(), n, limit)}}
}

// listLimit bounds a version list read for filtering.
const listLimit = 4 << 20

// writeList answers with the version list body, less the versions that
// policy denies.
func (s *Server) writeList(x *exchange, header http.Header, body []byte) error {
	versions := strings.Fields(string(body))
	allowed := x.pol.FilterVersions(policy.Request{Module: x.req.Module, Host: x.destination(), Identity: x.identity}, versions)
	if len(allowed) != len(versions) {
		x.reason = fmt.Sprintf("%d of %d versions removed by policy", len(versions)-len(allowed), len(versions))
		body = []byte(strings.Join(allowed, "\n"))
		if len(allowed) > 0 {
			body = append(body, '\n')
		}
	}
	return writeWhole(x.w, http.StatusOK, header, body)
}

// writeLatest answers with the @latest body when policy allows its
// version; otherwise with the .info of the highest allowed version in the
// list, or 403 when there is none.
func (s *Server) writeLatest(x *exchange, src source, header http.Header, body []byte) error {
	var info struct{ Version string }
	json.Unmarshal(body, &info)
	preq := policy.Request{Module: x.req.Module, Host: x.destination(), Identity: x.identity}
	if info.Version == "" || len(x.pol.FilterVersions(preq, []string{info.Version})) == 1 {
		return writeWhole(x.w, http.StatusOK, header, body)
	}
	base := x.req.Prefix + strings.TrimSuffix(x.req.Path, "/@latest")
	if v := s.latestAllowed(x, src, base, preq); v != "" {
		escV, _ := module.EscapeVersion(v)
		ctx := upstream.WithKind(x.r.Context(), KindInfo)
		res := src.fetch(ctx, x, fetchRequest{method: http.MethodGet, path: base + "/@v/" + escV + ".info", header: http.Header{}})
		if res.Response != nil && res.Response.StatusCode == http.StatusOK {
			x.served = res.Upstream
			err := s.relay(x, res.Response)
			x.reason = fmt.Sprintf("latest %s denied by policy; answered %s", info.Version, v)
			return err
		}
		if res.Response != nil {
			res.Response.Body.Close()
		}
	}
	d := x.pol.Decide(policy.Request{Module: x.req.Module, Version: info.Version, Kind: KindInfo, Host: x.destination(), Identity: x.identity})
	return x.denial(d, info.Version)
}

// latestAllowed returns the version the go command would pick as latest
// among the listed versions that policy allows: the highest release, else
// the highest pre-release. base is the escaped module path, from "/".
func (s *Server) latestAllowed(x *exchange, src source, base string, preq policy.Request) string {
	ctx := upstream.WithKind(x.r.Context(), KindList)
	res := src.fetch(ctx, x, fetchRequest{method: http.MethodGet, path: base + "/@v/list", header: http.Header{}})
	if res.Response == nil {
		return ""
	}
	defer res.Response.Body.Close()
	if res.Response.StatusCode != http.StatusOK {
		return ""
	}
	body, held, err := readWhole(res.Response.Body, listLimit, &s.buffers)
	x.buffered += held
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

// chainSource is reverse mode's source: the upstream chain, walked with
// GOPROXY semantics, hedged for immutable artifacts.
type chainSource struct{ s *Server }

func (chainSource) admit(*exchange) error { return nil }

func (c chainSource) fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result {
	if fr.method == http.MethodGet {
		return c.s.walk(ctx, x, fr.path, fr.header, fr.check.upstream())
	}
	return c.s.chain.Walk(ctx, fr.method, fr.path, fr.header, x.eligible)
}

// originSource is forward and MITM mode's source: the one host the client
// named, with its own breaker, retries and timeouts.
type originSource struct {
	f    *forward
	u    *upstream.Upstream
	host string // normalised, without the port
}

// admit keeps private module paths away from hosts that are not private:
// the module the request is for, or any private path in it.
func (o originSource) admit(x *exchange) error {
	pattern, what := x.private, x.req.Module+" is private"
	if pattern == "" {
		pattern, what = privatePathIn(x.pol, x.r), "its path names a private module"
	}
	if pattern == "" || o.f.isPrivateHost(x, o.host) {
		return nil
	}
	subject := describeRequest(x.req)
	if x.req.Module == "" {
		subject = x.r.Method + " " + x.r.URL.Path
	}
	return &problem{status: http.StatusForbidden, code: wire.PrivateHost, decision: decisionDeny, ruleText: "private " + pattern,
		reason: "private module path to a host that is not private",
		lines: []string{
			fmt.Sprintf("%s refused: %s (pattern %s) and %s is not a private host", subject, what, pattern, o.host),
			"mark the host private (an upstream with private: true, or forward.private_hosts), or set GONOPROXY/GOPRIVATE so that the go command fetches it directly",
		}}
}

// fetch asks the origin. An answer to a module protocol request is a
// Response only when it is a 200 (redirects are followed, so that the
// artifact can be checked, filtered and kept); anything else is an
// attempt, as in reverse mode. Other requests (git, go-get, the rest)
// pass through with any status.
func (o originSource) fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result {
	protocol := fetchKind(ctx, x.req.Kind).IsModuleProtocol()
	if protocol {
		ctx = upstream.FollowRedirects(ctx)
	}
	start := o.f.s.now()
	resp, err := o.u.Do(ctx, upstream.Request{Method: fr.method, Path: fr.path, Query: fr.query, Header: fr.header, Body: fr.body, ContentLength: fr.length, Check: fr.check.upstream()})
	if err == nil && !protocol {
		return upstream.Result{Response: resp, Upstream: o.u}
	}
	if err == nil && resp.StatusCode == http.StatusOK {
		// As the chain does: a small answer that breaks off is a failed
		// attempt, explained, rather than a cut response.
		if fr.method == http.MethodHead {
			return upstream.Result{Response: resp, Upstream: o.u}
		}
		if fr.check != nil {
			return upstream.Result{Response: resp, Upstream: o.u} // read whole by the check
		}
		if err = upstream.Prefetch(resp); err == nil {
			return upstream.Result{Response: resp, Upstream: o.u}
		}
		resp = nil
	}
	return upstream.Result{Attempts: []upstream.Attempt{upstream.AttemptOf(o.u, resp, err, o.f.s.now().Sub(start))}}
}

// fetchKind is the kind the context's upstream request carries (a
// latest's list or .info), else def.
func fetchKind(ctx context.Context, def Kind) Kind {
	if k := upstream.KindFrom(ctx); k != "" && k != KindOther {
		return k
	}
	return def
}
