package sidecar

import (
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
	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// The pipeline is one piece of code for every way in (README.md,
// "Architecture"). Each way in authenticates, classifies the request once
// and picks a source (sources.go); pipeline then runs these steps, in the
// order of this file:
//
//	policy   exchange.decide: deny, and keep private paths from checksum databases
//	admit    the source refuses what it must not see
//	lookup   checksum database lookups: what the verifier proved (verified.go)
//	cache    a fresh entry answers; an immutable artifact joins the one flight
//	         for its key (shared store, fleet, then the source: cached.go)
//	fetch    the source asks its upstreams; answerCheck judges each 200
//	         before the upstream is credited with it (verified.go, check.go)
//	filter   lists and @latest through policy; a query decided again on the
//	         version it resolves to
//	relay    exchange.send writes the answer (answer.go)
//
// Every step returns nil once the answer is written, or the problem that
// exchange.end answers instead. Hedging, breakers, retries and upstream
// telemetry live in the source (sidecar/upstream wraps the transport).

// pipeline serves a classified exchange from src.
func (s *Server) pipeline(x *exchange, src source) error {
	if err := x.decide(); err != nil {
		return err
	}
	if err := src.admit(x); err != nil {
		return err
	}
	if s.cfg.Offline {
		src = offlineSource{s}
	}
	if x.req.Kind == wire.KindSumDBLookup && s.verifier != nil {
		if err := s.serveLookup(x); !errors.Is(err, errLookupElsewhere) {
			return err
		}
	}
	c := s.cacheFor(x)
	key, immutable, cacheable := x.cacheKey()
	switch {
	case c == nil || !cacheable:
		fr := x.fetchRequest()
		fr.check = s.checkFor(x, nil, "")
		return s.fetch(x, src, fr)
	case immutable:
		return s.serveImmutable(x, c, key, src)
	}
	return s.serveFresh(x, c, key, src)
}

// serveImmutable answers an artifact that never changes (a canonical
// version's .info, .mod and .zip, a hash tile): from the cache, or from
// the flight that fetches it into the cache for every request that wants
// it at once.
func (s *Server) serveImmutable(x *exchange, c *cache.Cache, key string, src source) error {
	if e, err := c.Get(key); err == nil {
		defer e.Close()
		x.out.cache = wire.CacheHit
		return s.sendEntry(x, src, e, false)
	}
	x.out.cache = wire.CacheMiss
	fr := x.fetchRequest()
	// A zip is spooled where it is kept.
	fr.check = s.checkFor(x, c, key)
	f, body, err := s.join(x, c, key, src, fr)
	if err != nil {
		return err
	}
	defer f.leave(body != nil)
	switch {
	case f.stored:
		x.out.cache = wire.CacheShared
		return s.sendCopy(x, src, c, key, f)
	case f.w == nil:
		return x.chainProblem(f.res)
	case body == nil:
		// The flight finished and its spool is gone: the entry is in the
		// cache by now, unless the fetch failed.
		return s.sendCopy(x, src, c, key, f)
	}
	defer body.Close()
	x.out.served = f.served
	return x.send(http.StatusOK, f.header, body, -1)
}

// serveFresh answers what changes (lists, @latest, queries, lookups): from
// the cache while the entry is younger than the TTL, else from the source
// (and into the cache); an older entry still answers when the source
// fails (stale-if-error), and offline whatever its age.
func (s *Server) serveFresh(x *exchange, c *cache.Cache, key string, src source) error {
	now := s.now()
	stale, err := c.Get(key)
	if err == nil {
		defer stale.Close()
		if stale.Age(now) < s.cacheCfg.ListTTL {
			x.out.cache = wire.CacheHit
			return s.sendEntry(x, src, stale, true)
		}
	} else {
		stale = nil
	}
	x.out.cache = wire.CacheMiss
	fr := x.fetchRequest()
	fr.check = s.checkFor(x, nil, "")
	res := src.fetch(x.ctx(), x, fr)
	if res.Response == nil {
		if stale != nil && (s.cfg.Offline || stale.Age(now) < s.cacheCfg.StaleIfError) {
			x.out.cache = wire.CacheStale
			x.w.Header().Set("Warning", `110 modgate "Response is Stale"`)
			err := s.sendEntry(x, src, stale, true)
			x.out.note = "stale answer served: every upstream failed"
			if s.cfg.Offline {
				x.out.note = "stale answer served: modgate is offline"
			}
			return err
		}
		return x.chainProblem(res)
	}
	x.out.served = res.Upstream
	defer res.Response.Body.Close()
	body, err := s.readBody(x, res.Response, listLimit)
	if err != nil {
		return err
	}
	if w, err := c.Create(key, res.Response.Header.Get("Content-Type")); err == nil {
		w.Write(body)
		if err := w.Commit(int64(len(body)), nil); err != nil {
			s.log.Warn("cache write", "key", key, "err", err)
		}
	}
	return s.filter(x, src, res.Response.Header, body)
}

// fetch answers from the source, uncached: lists and @latest through the
// filter, everything else relayed as it came.
func (s *Server) fetch(x *exchange, src source, fr fetchRequest) error {
	res := src.fetch(x.ctx(), x, fr)
	if res.Response == nil {
		return x.chainProblem(res)
	}
	x.out.served = res.Upstream
	resp := res.Response
	if resp.StatusCode != http.StatusOK || x.r.Method != http.MethodGet || !(checked(x.req.Kind) || x.req.Kind == wire.KindList) {
		return s.relay(x, resp)
	}
	defer resp.Body.Close()
	body, err := s.readBody(x, resp, maxBody(x.req.Kind))
	if err != nil {
		return err
	}
	return s.filter(x, src, resp.Header, body)
}

// filter answers with a small body of the exchange's kind: a list less the
// versions policy denies, @latest only for a version policy allows, a
// query only when policy allows the version it resolves to, the rest as
// they are.
func (s *Server) filter(x *exchange, src source, header http.Header, body []byte) error {
	switch x.req.Kind {
	case wire.KindList:
		return s.filterList(x, header, body)
	case wire.KindLatest:
		return s.filterLatest(x, src, header, body)
	}
	if err := x.resolved(body); err != nil {
		return err
	}
	return x.sendBytes(http.StatusOK, header, body)
}

// sendEntry answers from a cache entry: whole, or through the filter when
// its kind is filtered. An entry of what changes (serveFresh's) tells its
// age.
func (s *Server) sendEntry(x *exchange, src source, e *cache.Entry, changes bool) error {
	if x.req.Kind == wire.KindList || x.req.Kind == wire.KindLatest || x.req.Query {
		// The filter may yet refuse: the entry's headers wait in h until
		// it answers.
		h := http.Header{}
		s.entryHeader(e, changes, h)
		body, ok := e.Bytes()
		if !ok {
			var err error
			if body, err = io.ReadAll(e.Body); err != nil {
				return fail(wire.Internal, "cache read: "+err.Error())
			}
		}
		return s.filter(x, src, h, body)
	}
	// A hit, the hot path: the headers go straight to the client's.
	s.entryHeader(e, changes, x.w.Header())
	return x.send(http.StatusOK, nil, entryBody{e}, e.Size)
}

// entryHeader sets the headers of an answer from the cache entry e in h.
func (s *Server) entryHeader(e *cache.Entry, changes bool, h http.Header) {
	if e.ContentType != "" {
		h["Content-Type"] = []string{e.ContentType}
	}
	if changes {
		h["Age"] = []string{strconv.Itoa(int(e.Age(s.now()).Seconds()))}
	}
}

// sendCopy answers with the cache's copy of key, which the flight f put
// there (from the shared store, or from upstream and finished).
func (s *Server) sendCopy(x *exchange, src source, c *cache.Cache, key string, f *flight) error {
	if e, err := c.Get(key); err == nil {
		defer e.Close()
		return s.sendEntry(x, src, e, false)
	}
	return f.lost(x)
}

// relay passes an answer on as it came. Small bodies of known length are
// read first, so that a body the upstream breaks off is still a status
// and an explanation; others stream.
func (s *Server) relay(x *exchange, resp *http.Response) error {
	defer resp.Body.Close()
	limit := maxBody(x.req.Kind)
	if x.r.Method != http.MethodHead && (resp.ContentLength >= 0 && resp.ContentLength <= bufferLimit ||
		x.req.Kind != wire.KindZip && limit > 0 && resp.ContentLength < 0) {
		if resp.ContentLength >= 0 {
			limit = bufferLimit
		}
		b, err := s.readBody(x, resp, limit)
		if err != nil {
			return err
		}
		return x.sendBytes(resp.StatusCode, resp.Header, b)
	}
	return x.send(resp.StatusCode, resp.Header, &capReader{r: resp.Body, n: limit}, -1)
}

// bufferLimit is the largest body that is read whole before the answer
// starts (.info, .mod, most lists): if the upstream breaks off such a body,
// the client still gets a status and an explanation instead of a cut
// connection.
const bufferLimit = 64 << 10

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
	body, held, err := readWhole(resp.Body, n, limit, &s.buffers)
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
	if errors.Is(err, errTooLarge) {
		return nil, x.tooLarge(int64(len(body)), limit)
	}
	name := x.servedName()
	s.log.Warn("upstream body failed", "upstream", name, "kind", x.req.Kind, "path", x.r.URL.Path, "bytes", len(body), "err", err)
	cut := fmt.Sprintf("%s: body cut after %d bytes: %v", name, len(body), err)
	if n >= 0 {
		cut = fmt.Sprintf("%s: body cut after %d of %d bytes: %v", name, len(body), n, err)
	}
	return nil, upstreamCut(describeRequest(x.req)+": the upstream broke off the answer", cut)
}

// listLimit bounds a version list read for filtering.
const listLimit = 4 << 20

// filterList answers with the version list body, less the versions that
// policy denies.
func (s *Server) filterList(x *exchange, header http.Header, body []byte) error {
	versions := strings.Fields(string(body))
	allowed := x.pol.FilterVersions(x.policyRequest(""), versions)
	if len(allowed) != len(versions) {
		x.out.note = fmt.Sprintf("%d of %d versions removed by policy", len(versions)-len(allowed), len(versions))
		body = []byte(strings.Join(allowed, "\n"))
		if len(allowed) > 0 {
			body = append(body, '\n')
		}
	}
	return x.sendBytes(http.StatusOK, header, body)
}

// filterLatest answers with the @latest body when policy allows its
// version; otherwise with the .info of the highest allowed version in the
// list, or 403 when there is none.
func (s *Server) filterLatest(x *exchange, src source, header http.Header, body []byte) error {
	var info struct{ Version string }
	json.Unmarshal(body, &info)
	preq := x.policyRequest("")
	if info.Version == "" || len(x.pol.FilterVersions(preq, []string{info.Version})) == 1 {
		return x.sendBytes(http.StatusOK, header, body)
	}
	base := x.req.Prefix + strings.TrimSuffix(x.req.Path, "/@latest")
	if v := s.latestAllowed(x, src, base, preq); v != "" {
		escV, _ := module.EscapeVersion(v)
		ctx := upstream.WithKind(x.r.Context(), wire.KindInfo)
		res := src.fetch(ctx, x, fetchRequest{method: http.MethodGet, path: base + "/@v/" + escV + ".info", header: http.Header{}})
		if res.Response != nil && res.Response.StatusCode == http.StatusOK {
			x.out.served = res.Upstream
			err := s.relay(x, res.Response)
			x.out.note = fmt.Sprintf("latest %s denied by policy; answered %s", info.Version, v)
			return err
		}
		if res.Response != nil {
			res.Response.Body.Close()
		}
	}
	preq.Version, preq.Kind = info.Version, wire.KindInfo
	return x.denial(x.pol.Decide(preq), info.Version)
}

// latestAllowed returns the version the go command would pick as latest
// among the listed versions that policy allows: the highest release, else
// the highest pre-release. base is the escaped module path, from "/".
func (s *Server) latestAllowed(x *exchange, src source, base string, preq policy.Request) string {
	ctx := upstream.WithKind(x.r.Context(), wire.KindList)
	res := src.fetch(ctx, x, fetchRequest{method: http.MethodGet, path: base + "/@v/list", header: http.Header{}})
	if res.Response == nil {
		return ""
	}
	defer res.Response.Body.Close()
	if res.Response.StatusCode != http.StatusOK {
		return ""
	}
	body, held, err := readWhole(res.Response.Body, res.Response.ContentLength, listLimit, &s.buffers)
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
