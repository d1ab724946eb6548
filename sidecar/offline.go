package sidecar

import (
	"context"
	"fmt"
	"net/http"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// Offline mode (Config.Offline) serves only from the caches (the local one,
// then the shared store for immutable artifacts), whatever the
// age of an entry: a list or lookup kept yesterday is still the best
// answer an air-gapped build can get. What the cache lacks is 404, so that
// the go command says the module is not found, with modgate's reason.

// serveOffline answers the exchange from the cache or with a 404.
func (s *Server) serveOffline(x *exchange) error {
	c := s.cacheFor(x)
	if x.req.Kind == KindSumDBSupported {
		// Yes, whatever the cache holds: a 404 would send the go command to
		// the database's own host, which an air-gapped build cannot reach.
		// Lookups the cache lacks are 404 with modgate's reason instead.
		return writeWhole(x.w, http.StatusOK, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, nil)
	}
	key, immutable, ok := x.cacheKey()
	if c == nil || !ok {
		return x.notOffline("modgate serves only what its cache holds, and keeps no " + string(x.req.Kind) + " answers")
	}
	x.cacheResult = wire.CacheHit
	e, err := c.Get(key)
	if err != nil && immutable && s.fromStore(x.ctx(), s.tiersFor(x, c), key) {
		x.cacheResult = wire.CacheShared
		e, err = c.Get(key)
	}
	if err != nil {
		x.cacheResult = ""
		return x.notOffline("not in modgate's caches")
	}
	defer e.Close()
	if !immutable && e.Age(s.now()) >= s.cacheCfg.ListTTL {
		x.cacheResult = wire.CacheStale
	}
	return s.serveEntry(x, noSource{}, e, s.now())
}

// notOffline is the 404 of a request offline mode cannot serve.
func (x *exchange) notOffline(why string) *problem {
	return &problem{status: http.StatusNotFound, code: wire.Offline,
		lines: []string{fmt.Sprintf("%s: modgate is offline: %s", describeRequest(x.req), why),
			"offline: true serves only from the cache; fetch it once with modgate online, or turn offline off"}}
}

// noSource has nothing: an @latest whose version policy denies finds no
// other version offline.
type noSource struct{}

func (noSource) admit(*exchange) error { return nil }

func (noSource) fetch(context.Context, *exchange, fetchRequest) upstream.Result {
	return upstream.Result{}
}
