package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// Sources: where the pipeline's answers come from. Each way in picks one
// (reverse mode the chain, or the checksum database's route; forward and
// MITM mode the origin the client named); offline mode replaces it with
// the caches alone.

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
	if x.mode == wire.ModeReverse {
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
	if _, _, cacheable := x.cacheKey(); cacheable || x.req.Kind == wire.KindList || x.req.Kind == wire.KindLatest {
		// modgate reads these to filter or to check and keep them: they
		// must come as they are, uncompressed.
		fr.header.Del("Accept-Encoding")
	}
	return fr
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
	pattern, what := x.verdict.private, x.req.Module+" is private"
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
	p := deny(wire.PrivateHost, "private module path to a host that is not private",
		fmt.Sprintf("%s refused: %s %s and %s is not a private host", subject, what, wire.PatternNote(pattern), o.host),
		"mark the host private (an upstream with private: true, or forward.private_hosts), or set GONOPROXY/GOPRIVATE so that the go command fetches it directly")
	p.ruleText = "private " + pattern
	return p
}

// fetch asks the origin. An answer to a module protocol request is a
// Response only when it is a 200 (redirects are followed, so that the
// artifact can be checked, filtered and kept); anything else is an
// attempt, as in reverse mode. Other requests (git, go-get, the rest)
// pass through with any status.
func (o originSource) fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result {
	req := upstream.Request{Method: fr.method, Path: fr.path, Query: fr.query, Header: fr.header, Body: fr.body, ContentLength: fr.length, Check: fr.check.upstream()}
	if !fetchKind(ctx, x.req.Kind).IsModuleProtocol() {
		resp, err := o.u.Do(ctx, req)
		if err != nil {
			return upstream.Result{Attempts: []upstream.Attempt{upstream.AttemptOf(o.u, nil, err, 0)}}
		}
		return upstream.Result{Response: resp, Upstream: o.u}
	}
	return o.u.Ask(upstream.FollowRedirects(ctx), req)
}

// fetchKind is the kind the context's upstream request carries (a
// latest's list or .info), else def.
func fetchKind(ctx context.Context, def wire.Kind) wire.Kind {
	if k := upstream.KindFrom(ctx); k != "" && k != wire.KindOther {
		return k
	}
	return def
}

// offlineSource is the source of offline mode (Config.Offline): nothing
// but the caches, which the pipeline asked already, of any age. What they
// lack is a 404 with modgate's reason, so that the go command says the
// module is not found and why.
type offlineSource struct{ s *Server }

func (offlineSource) admit(*exchange) error { return nil }

func (o offlineSource) fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result {
	if fetchKind(ctx, x.req.Kind) == wire.KindSumDBSupported {
		// Yes, whatever the cache holds: a 404 would send the go command
		// to the database's own host, which an air-gapped build cannot
		// reach. Lookups the cache lacks are 404 with modgate's reason.
		return supported(nil)
	}
	why := "not in modgate's caches"
	if _, _, ok := x.cacheKey(); !ok || o.s.cacheFor(x) == nil {
		why = "modgate serves only what its cache holds, and keeps no " + string(x.req.Kind) + " answers"
	}
	return upstream.Result{Attempts: []upstream.Attempt{{Err: &offlineError{why}}}}
}

// offlineError is what offline mode's source says of an answer its caches
// lack.
type offlineError struct{ why string }

func (e *offlineError) Error() string { return "modgate is offline: " + e.why }

// notOffline is the 404 of a request offline mode cannot serve.
func (x *exchange) notOffline(why string) *problem {
	return fail(wire.Offline, fmt.Sprintf("%s: modgate is offline: %s", describeRequest(x.req), why),
		"offline: true serves only from the cache; fetch it once with modgate online, or turn offline off")
}

// supported is the answer to a checksum database's "supported": an empty
// 200, by u.
func supported(u *upstream.Upstream) upstream.Result {
	return upstream.Result{Upstream: u, Response: &http.Response{
		StatusCode: http.StatusOK, ContentLength: 0, Body: http.NoBody,
		Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
	}}
}
