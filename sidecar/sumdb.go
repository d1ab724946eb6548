package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"

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

func newSumDB(name, rawURL string, chain *upstream.Chain, opts upstream.Options, t upstream.Timeouts) (*sumDB, error) {
	if name == "" {
		return nil, nil
	}
	if err := checkSumDBName(name); err != nil {
		return nil, err
	}
	if rawURL == "" {
		rawURL = "https://" + name
	}
	direct, err := upstream.New(upstream.Config{Name: name + " (direct)", URL: rawURL, Timeouts: t}, opts)
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
	direct := db.direct.Ask(ctx, upstream.Request{Method: http.MethodGet, Path: "/latest"})
	if direct.Response != nil {
		drain(direct.Response)
		db.route = &sumDBRoute{via: db.direct}
		return db.route, res
	}
	res.Attempts = append(res.Attempts, direct.Attempts...)
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

// sumDBSource is reverse mode's source for /sumdb/<name>/...: the route
// where the database was found. Finding it is part of every fetch, so that
// with every upstream down a cached lookup is still an answer.
type sumDBSource struct{ s *Server }

// admit refuses a database modgate does not serve.
func (src sumDBSource) admit(x *exchange) error {
	db := src.s.sumdb
	if db != nil && x.req.SumDB == db.name {
		return nil
	}
	served := "no checksum database is configured"
	if db != nil {
		served = "it serves " + db.name
	}
	return fail(wire.UnknownSumDB,
		fmt.Sprintf("checksum database %s is not served here (%s)", x.req.SumDB, served))
}

// fetch finds the database and asks it; "supported" is answered once the
// database is found. A database that cannot be found is an error, not a
// 404: a 404 would send the go command to the database's host itself,
// which modgate just failed to reach.
func (src sumDBSource) fetch(ctx context.Context, x *exchange, fr fetchRequest) upstream.Result {
	db := src.s.sumdb
	route, res := db.find(upstream.WithKind(ctx, wire.KindSumDBSupported))
	if route == nil {
		return res
	}
	if x.req.Kind == wire.KindSumDBSupported {
		return supported(route.via)
	}
	return db.get(ctx, route, fr.path, fr.check.upstream())
}

// get fetches path from the database's route. When the route is an
// upstream followed by "|" and it fails, the rest of the chain is walked
// as a module request's would be; a route that fails is forgotten, so
// that the next request searches again.
func (db *sumDB) get(ctx context.Context, route *sumDBRoute, path string, check upstream.Check) upstream.Result {
	req := upstream.Request{Method: http.MethodGet, Path: route.prefix + path, Check: check}
	res := route.via.Ask(ctx, req)
	if res.Response != nil || res.Attempts[0].NotFound() {
		return res
	}
	db.forget(route)
	if route.prefix == "" || route.via.Fallthrough != upstream.OnError {
		return res
	}
	rest := db.chain.WalkWith(ctx, req.Method, req.Path, nil, upstream.WalkOptions{Check: check, After: route.via})
	rest.Attempts = append(res.Attempts, rest.Attempts...)
	return rest
}
