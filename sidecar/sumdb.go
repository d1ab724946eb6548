package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// sumDB finds where the configured checksum database can be reached and
// proxies its endpoints there, as the go command itself does: the first
// upstream whose /sumdb/<name>/supported answers 200 (walking the chain
// with GOPROXY semantics), otherwise the database's own host.
type sumDB struct {
	name   string
	chain  *upstream.Chain
	direct *upstream.Upstream // https://<name>

	mu    sync.Mutex // serialises the search; the go command asks once per run
	route *sumDBRoute
}

// sumDBRoute is where the database was found: prefix is "/sumdb/<name>"
// on a proxy and empty on the database's own host.
type sumDBRoute struct {
	via    *upstream.Upstream
	prefix string
}

func newSumDB(name string, chain *upstream.Chain, opts upstream.Options, t upstream.Timeouts) (*sumDB, error) {
	if name == "" {
		return nil, nil
	}
	if err := checkSumDBName(name); err != nil {
		return nil, err
	}
	direct, err := upstream.New(upstream.Config{Name: name + " (direct)", URL: "https://" + name, Timeouts: t}, opts)
	if err != nil {
		return nil, err
	}
	return &sumDB{name: name, chain: chain, direct: direct}, nil
}

// find returns the cached route or searches for one. On failure the
// result explains what each place said.
func (db *sumDB) find(ctx context.Context) (*sumDBRoute, upstream.Result) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.route != nil {
		return db.route, upstream.Result{}
	}
	prefix := "/sumdb/" + db.name
	res := db.chain.Walk(ctx, http.MethodGet, prefix+"/supported", nil, nil)
	if res.Response != nil {
		drain(res.Response)
		db.route = &sumDBRoute{via: res.Upstream, prefix: prefix}
		return db.route, res
	}
	if res.Status() != http.StatusNotFound && res.Status() != http.StatusForbidden {
		// A proxy failed and the chain does not fall through errors: the go
		// command gives up here too rather than going around the proxy.
		return nil, res
	}
	start := time.Now()
	resp, err := db.direct.Get(ctx, http.MethodGet, "/latest", nil)
	if err == nil && resp.StatusCode == http.StatusOK {
		drain(resp)
		db.route = &sumDBRoute{via: db.direct}
		return db.route, res
	}
	a := upstream.Attempt{Upstream: db.direct, Err: err, Duration: time.Since(start)}
	if err == nil {
		a.Status = resp.StatusCode
		resp.Body.Close()
	}
	res.Attempts = append(res.Attempts, a)
	res.End = upstream.Proxy
	return nil, res
}

// drain reads a small answer to its end before closing it, so that the
// upstream's breaker counts it as the success it was.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// forget drops a route that failed, so that the next request searches again.
func (db *sumDB) forget(r *sumDBRoute) {
	db.mu.Lock()
	if db.route == r {
		db.route = nil
	}
	db.mu.Unlock()
}

func (s *Server) serveSumDB(x *exchange) {
	w, r, req := x.w, x.r, x.req
	db := s.sumdb
	if db == nil || req.SumDB != db.name {
		served := "no checksum database is configured"
		if db != nil {
			served = "it serves " + db.name
		}
		writeError(w, http.StatusNotFound, wire.UnknownSumDB, fmt.Sprintf("checksum database %s is not served here (%s)", req.SumDB, served))
		return
	}
	if key, immutable, ok := cacheKey(req); ok {
		if c := s.cacheFor(x); c != nil {
			// Finding the database is part of the fetch: with every
			// upstream down, a stale lookup is still an answer.
			fetch := func(ctx context.Context) upstream.Result {
				route, res := db.find(upstream.WithKind(ctx, string(KindSumDBSupported)))
				if route == nil {
					return res
				}
				return db.get(ctx, route, req.Path)
			}
			s.serveCached(x, c, key, immutable, fetch, func(res upstream.Result) { s.writeSumDBError(x, res) })
			return
		}
	}
	route, res := db.find(upstream.WithKind(r.Context(), string(KindSumDBSupported)))
	if route == nil {
		// The answer is an error, not 404: a 404 would send the go command
		// to the database's host itself, which modgate just failed to reach.
		s.writeSumDBError(x, res)
		return
	}
	x.served = route.via
	if req.Kind == KindSumDBSupported {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		return
	}
	res = db.get(x.ctx(), route, req.Path)
	if res.Response == nil {
		s.writeSumDBError(x, res)
		return
	}
	x.served = res.Upstream
	s.relay(x, res.Response)
}

// get fetches path from the database's route. When the route is an
// upstream followed by "|" and it fails, the rest of the chain is asked as
// a module request would be; a route that fails is forgotten, so that the
// next request searches again.
func (db *sumDB) get(ctx context.Context, route *sumDBRoute, path string) upstream.Result {
	res := db.getFrom(ctx, route.via, route.prefix+path)
	if res.Response != nil {
		return res
	}
	if a := res.Attempts[0]; !a.NotFound() {
		db.forget(route)
		if route.prefix != "" && route.via.Fallthrough == upstream.OnError {
			res.Attempts = append(res.Attempts, db.rest(ctx, route.via, route.prefix+path, &res)...)
		}
	}
	return res
}

// rest asks the upstreams after u in the chain, with its semantics; a 200
// is put in res.
func (db *sumDB) rest(ctx context.Context, u *upstream.Upstream, path string, res *upstream.Result) []upstream.Attempt {
	var attempts []upstream.Attempt
	list := db.chain.Upstreams()
	i := slices.Index(list, u)
	for _, next := range list[i+1:] {
		if next.Kind != upstream.Proxy {
			break
		}
		r := db.getFrom(ctx, next, path)
		if r.Response != nil {
			res.Response, res.Upstream = r.Response, r.Upstream
			return attempts
		}
		a := r.Attempts[0]
		attempts = append(attempts, a)
		if !a.NotFound() && next.Fallthrough != upstream.OnError {
			break
		}
	}
	return attempts
}

// getFrom asks one upstream.
func (db *sumDB) getFrom(ctx context.Context, u *upstream.Upstream, path string) upstream.Result {
	start := time.Now()
	resp, err := u.Get(ctx, http.MethodGet, path, nil)
	if err == nil && resp.StatusCode == http.StatusOK {
		return upstream.Result{Response: resp, Upstream: u}
	}
	a := upstream.Attempt{Upstream: u, Err: err, Duration: time.Since(start)}
	if err == nil {
		a.Status = resp.StatusCode
		resp.Body.Close()
	}
	return upstream.Result{Attempts: []upstream.Attempt{a}}
}

func (s *Server) writeSumDBError(x *exchange, res upstream.Result) {
	if x.r.Context().Err() != nil {
		return
	}
	status := res.Status()
	if status == http.StatusForbidden {
		status = http.StatusBadGateway
	}
	lines := []string{describeRequest(x.req) + ": " + http.StatusText(status)}
	if status == http.StatusNotFound {
		lines[0] = describeRequest(x.req) + ": not found"
	}
	for _, a := range res.Attempts {
		lines = append(lines, a.String())
	}
	x.reason = strings.Join(lines[1:], "; ")
	code := chainCode(res)
	if code == wire.Off {
		code = wire.UpstreamFailed
	}
	writeError(x.w, status, code, lines...)
}
