package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// CacheConfig is the artifact cache. The zero value caches nothing.
type CacheConfig struct {
	// Dir holds the cache; empty turns it off. Several modgates may share it.
	Dir string
	// MaxBytes bounds Dir (and PrivateDir); least recently used entries go
	// first. Zero: no bound.
	MaxBytes int64
	// ListTTL is how long a list, @latest or checksum lookup answer is
	// served from the cache. If zero, 60 s.
	ListTTL time.Duration
	// StaleIfError is how old such an answer may be and still be served
	// when every upstream fails. If zero, 24 h.
	StaleIfError time.Duration
	// PrivateDir caches private modules. Empty: they are never cached, so
	// that a shared cache cannot leak them.
	PrivateDir string
	// Shared is the second tier of immutable artifacts (.info, .mod,
	// .zip, checksum tiles) that every replica of a fleet reads and
	// writes: a local miss is looked for there before upstreams are
	// asked, and what upstreams answer is written to both. Needs Dir.
	// Nil: none.
	Shared *store.Store
	// SharedPrivate is the shared tier of private modules, which never go
	// to Shared. Needs PrivateDir. Nil: private modules stay local.
	SharedPrivate *store.Store
}

// cacheKey names the cache entry of the exchange: the escaped proxy
// path, or sumdb/<name>/... for the checksum database. Versions are
// canonical and tiles are addressed by their content's extent, so those
// entries never change and every mode shares them; lists, @latest and
// lookups are kept for the TTL, per origin host in forward mode (two
// proxies may well list different versions).
//
// An .info query (a branch, a commit) is kept for the TTL too: what it
// resolves to moves. "supported" and the tree head are kept for the TTL
// so that, stale, they still answer when every upstream is down and the
// cache holds the lookups and tiles a build needs.
//
// Only what modgate may trust goes under a key that every mode reads
// (trusted): a forward-mode client chooses its origin, so what it fetches
// is kept per origin unless it is verified against the checksum database.
func (x *exchange) cacheKey() (key string, immutable, ok bool) {
	req := x.req
	switch req.Kind {
	case KindInfo, KindMod, KindZip:
		key = strings.TrimPrefix(req.Path, "/")
		if req.Query {
			return x.perOrigin(key), false, true
		}
		return x.canonical(key), true, true
	case KindList, KindLatest:
		return x.perOrigin(strings.TrimPrefix(req.Path, "/")), false, true
	case KindSumDBTile:
		// A partial tile's path names its width (.p/W): it never changes
		// either; a wider one has another path.
		return x.canonical("sumdb/" + req.SumDB + req.Path), true, true
	case KindSumDBLookup, KindSumDBSupported, KindSumDBLatest:
		return x.canonical("sumdb/" + req.SumDB + req.Path), false, true
	}
	return "", false, false
}

// canonical keeps key as it is when the exchange's answer may be trusted
// by every mode, and per origin otherwise.
func (x *exchange) canonical(key string) string {
	if x.trusted() {
		return key
	}
	return x.perOrigin(key)
}

// perOrigin keys what may differ between proxies by the origin in forward
// mode: two hosts (or two proxies under paths of one host) may well list
// different versions.
func (x *exchange) perOrigin(key string) string {
	if x.mode == modeReverse {
		return key
	}
	return "origin/" + x.host + x.req.Prefix + "/" + key
}

// cacheFor returns the cache this exchange may use, or nil.
func (s *Server) cacheFor(x *exchange) *cache.Cache {
	if x.r.Method != http.MethodGet {
		return nil
	}
	if x.private != "" {
		return s.privCache
	}
	return s.cache
}

// storeFor returns the shared tier this exchange may use, or nil: what a
// forward-mode client fetched from an origin of its choosing stays local
// unless it is verified.
func (s *Server) storeFor(x *exchange) *store.Store {
	switch {
	case !x.trusted():
		return nil
	case x.private != "":
		return s.cacheCfg.SharedPrivate
	}
	return s.cacheCfg.Shared
}

// tiersFor returns the tiers an immutable artifact of the exchange is kept
// in, with the check of what is copied from the shared store.
func (s *Server) tiersFor(x *exchange, c *cache.Cache) tiers {
	t := tiers{local: c, shared: s.storeFor(x)}
	if t.shared != nil {
		t.req, t.verified = x.req, x.verifies()
	}
	return t
}

// serveCached answers from the cache when it can, and fetches from src
// otherwise: immutable artifacts through a single flight that every
// concurrent request for them shares, the rest directly with
// stale-if-error.
func (s *Server) serveCached(x *exchange, c *cache.Cache, key string, immutable bool, src source, fr fetchRequest) error {
	now := s.now()
	var stale *cache.Entry
	if e, err := c.Get(key); err == nil {
		defer e.Close()
		if immutable || e.Age(now) < s.cacheCfg.ListTTL {
			x.cacheResult = wire.CacheHit
			return s.serveEntry(x, src, e, now)
		}
		stale = e
	}
	x.cacheResult = wire.CacheMiss
	if immutable {
		return s.shared(x, c, key, src, fr)
	}
	res := src.fetch(x.ctx(), x, fr)
	if res.Response == nil {
		if stale != nil && stale.Age(now) < s.cacheCfg.StaleIfError {
			x.cacheResult = wire.CacheStale
			x.w.Header().Set("Warning", `110 modgate "Response is Stale"`)
			err := s.serveEntry(x, src, stale, now)
			x.reason = "stale answer served: every upstream failed"
			return err
		}
		return x.chainProblem(res)
	}
	x.served = res.Upstream
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
	return s.writeBody(x, src, res.Response.Header, body)
}

// writeBody answers with a small body of the exchange's kind: lists and
// @latest through policy's filter, the rest as they are.
func (s *Server) writeBody(x *exchange, src source, header http.Header, body []byte) error {
	switch x.req.Kind {
	case KindList:
		return s.writeList(x, header, body)
	case KindLatest:
		return s.writeLatest(x, src, header, body)
	}
	if err := x.resolved(body); err != nil {
		return err
	}
	return writeWhole(x.w, http.StatusOK, header, body)
}

// serveEntry answers from a cache entry.
func (s *Server) serveEntry(x *exchange, src source, e *cache.Entry, now time.Time) error {
	h := x.w.Header()
	if e.ContentType != "" {
		h.Set("Content-Type", e.ContentType)
	}
	if _, immutable, _ := x.cacheKey(); !immutable {
		h.Set("Age", strconv.Itoa(int(e.Age(now).Seconds())))
	}
	if x.req.Kind == KindList || x.req.Kind == KindLatest || x.req.Query {
		body, err := io.ReadAll(e.Body)
		if err != nil {
			return &problem{status: http.StatusInternalServerError, code: wire.Internal, lines: []string{"cache read: " + err.Error()}}
		}
		return s.writeBody(x, src, nil, body)
	}
	h.Set("Content-Length", strconv.FormatInt(e.Size, 10))
	x.w.WriteHeader(http.StatusOK)
	if n, err := e.WriteTo(newDeadlineWriter(x.w, s.cfg.ClientIdle)); err != nil {
		return clientGone(fmt.Sprintf("cache hit not delivered after %d bytes: %v", n, err))
	}
	return nil
}

// flight is one upstream fetch of an immutable artifact, spooled into the
// cache as it arrives and streamed from there to every request that waits
// for it.
type flight struct {
	mu   sync.Mutex
	cond *sync.Cond

	ready  bool            // the answer's header is known, or the fetch failed
	stored bool            // the shared store had it: it is in the local cache now
	res    upstream.Result // the failure, when there is no answer
	header http.Header
	served *upstream.Upstream
	w      *cache.Writer

	written int64
	done    bool
	err     error // why the body broke off

	// joined counts the requests being served by this flight: a spool
	// that is not kept is dropped only once they are all done with it.
	joined int
}

// shared serves the exchange from the flight for key, starting one if none
// is under way.
func (s *Server) shared(x *exchange, c *cache.Cache, key string, src source, fr fetchRequest) error {
	s.flightMu.Lock()
	f := s.flights[key]
	if f == nil {
		f = &flight{}
		f.cond = sync.NewCond(&f.mu)
		s.flights[key] = f
		// The fetch outlives the request that started it: the others
		// still want it if that client goes away.
		// Shutdown waits for it (its entry is being written) for the
		// grace period, then cancels it.
		fetch := func(ctx context.Context) upstream.Result { return src.fetch(ctx, x, fr) }
		t := s.tiersFor(x, c)
		s.flying.Add(1)
		go func() {
			defer s.flying.Done()
			ctx, cancel := context.WithCancel(context.WithoutCancel(x.ctx()))
			defer cancel()
			defer context.AfterFunc(s.flightsCtx, cancel)()
			s.fly(ctx, f, t, key, fetch, fr.check, x.req)
		}()
	}
	f.mu.Lock()
	f.joined++
	f.mu.Unlock()
	s.flightMu.Unlock()
	defer func() {
		f.mu.Lock()
		f.joined--
		f.cond.Broadcast()
		f.mu.Unlock()
	}()

	ctx := x.r.Context()
	stop := context.AfterFunc(ctx, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	defer stop()

	f.mu.Lock()
	for !f.ready && ctx.Err() == nil {
		f.cond.Wait()
	}
	if ctx.Err() != nil {
		f.mu.Unlock()
		return clientGone("client went away while the artifact was fetched")
	}
	if f.stored {
		f.mu.Unlock()
		x.cacheResult = wire.CacheShared
		e, err := c.Get(key)
		if err != nil {
			return &problem{status: http.StatusServiceUnavailable, code: wire.Busy,
				lines: []string{describeRequest(x.req) + ": copied from the shared store but gone from the local cache at once; try again"}}
		}
		defer e.Close()
		return s.serveEntry(x, src, e, s.now())
	}
	if f.w == nil {
		res := f.res
		f.mu.Unlock()
		return x.chainProblem(res)
	}
	header, w := f.header, f.w
	x.served = f.served
	f.mu.Unlock()
	r, err := w.Reader()
	if err != nil {
		// The flight finished and its spool is gone: the entry is in the
		// cache by now, unless the fetch failed.
		if e, err := c.Get(key); err == nil {
			defer e.Close()
			return s.serveEntry(x, src, e, s.now())
		}
		f.mu.Lock()
		ferr := f.err
		f.mu.Unlock()
		if ferr != nil {
			return &problem{status: http.StatusBadGateway, code: wire.UpstreamCut,
				lines: []string{describeRequest(x.req) + ": the upstream broke off the answer", fmt.Sprintf("%s: %v", f.served.Name, ferr)}}
		}
		return &problem{status: http.StatusServiceUnavailable, code: wire.Busy,
			lines: []string{describeRequest(x.req) + ": fetched by another request that failed; try again"}}
	}
	defer r.Close()
	copyHeader(x.w.Header(), header)
	x.w.WriteHeader(http.StatusOK)
	out := newDeadlineWriter(x.w, s.cfg.ClientIdle)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var off int64
	for {
		f.mu.Lock()
		for off >= f.written && !f.done && ctx.Err() == nil {
			f.cond.Wait()
		}
		written, done, ferr := f.written, f.done, f.err
		f.mu.Unlock()
		if ctx.Err() != nil {
			return clientGone(fmt.Sprintf("client went away after %d bytes", off))
		}
		if off < written {
			n, err := r.ReadAt(buf[:min(int64(len(buf)), written-off)], off)
			if n > 0 {
				if _, werr := out.Write(buf[:n]); werr != nil {
					return clientGone(fmt.Sprintf("client went away after %d bytes: %v", off, werr))
				}
				off += int64(n)
			}
			if err != nil && err != io.EOF {
				ferr = err
				done = true
			} else {
				continue
			}
		}
		if done {
			if ferr != nil {
				return aborted("upstream body broke off; connection aborted: " + ferr.Error())
			}
			return nil
		}
	}
}

// tiers are the caches an immutable artifact is kept in: the local one,
// and the shared store (nil when there is none). What is copied from the
// shared store is checked as req's answer (checkStored) before it is kept.
type tiers struct {
	local    *cache.Cache
	shared   *store.Store
	req      Request
	verified bool // against the checksum database
}

// fly fetches the artifact into the caches, telling waiters as it goes:
// from the shared store when it has a good copy, else from upstreams,
// whose answers ac checked (a zip it spooled whole). An answer the
// checksum database could not vouch for is served to the flight's
// waiters and not kept.
func (s *Server) fly(ctx context.Context, f *flight, t tiers, key string, fetch func(context.Context) upstream.Result, ac *answerCheck, req Request) {
	c := t.local
	leave := func() {
		s.flightMu.Lock()
		if s.flights[key] == f {
			delete(s.flights, key)
		}
		s.flightMu.Unlock()
	}
	defer leave()
	finish := func(err error) {
		f.mu.Lock()
		f.ready, f.done, f.err = true, true, err
		f.cond.Broadcast()
		f.mu.Unlock()
	}
	stored := s.fromStore(ctx, t, key)
	release := func(bool) {}
	if !stored {
		release, stored = s.claim(ctx, t, key)
	}
	// Given up once the artifact is in the store (or its fetch failed):
	// the replicas waiting for it look there then.
	var inStore bool
	defer func() { release(inStore) }()
	if stored {
		f.mu.Lock()
		f.stored = true
		f.mu.Unlock()
		finish(nil)
		return
	}
	res := fetch(ctx)
	if res.Response == nil {
		f.mu.Lock()
		f.res = res
		f.mu.Unlock()
		finish(nil)
		return
	}
	resp := res.Response
	defer resp.Body.Close()
	found := ac.take(resp)
	keep := found == nil || found.unverified == nil
	w := (*cache.Writer)(nil)
	if found != nil && found.spool != nil {
		w = found.spool // the whole zip, checked
	} else {
		var err error
		if w, err = c.Create(key, resp.Header.Get("Content-Type")); err != nil {
			f.mu.Lock()
			f.res = upstream.Result{Attempts: []upstream.Attempt{{Upstream: res.Upstream, Err: fmt.Errorf("cache: %w", err)}}}
			f.mu.Unlock()
			finish(nil)
			return
		}
	}
	w.SetContentType(resp.Header.Get("Content-Type"))
	f.mu.Lock()
	f.header, f.served, f.w, f.ready = resp.Header.Clone(), res.Upstream, w, true
	f.written = w.Len()
	f.cond.Broadcast()
	f.mu.Unlock()

	if found == nil || found.spool == nil {
		body := &capReader{r: resp.Body, n: maxBody(req.Kind)}
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		for {
			n, rerr := body.Read(*bp)
			if n > 0 {
				if _, werr := w.Write((*bp)[:n]); werr != nil {
					rerr = werr
				}
				f.mu.Lock()
				f.written += int64(n)
				f.cond.Broadcast()
				f.mu.Unlock()
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				finish(rerr)
				w.Abort()
				return
			}
		}
	}
	if !keep {
		// Served to whoever waits for it now, and dropped once they have
		// it: a request that comes later fetches it again.
		finish(nil)
		leave()
		f.mu.Lock()
		for f.joined > 0 {
			f.cond.Wait()
		}
		f.mu.Unlock()
		w.Abort()
		return
	}
	if req.Kind != KindZip || (found != nil && found.spool != nil) {
		// A small entry, or a zip checked whole, is kept before its
		// waiters are told the answer is complete: a request that follows
		// one that succeeded is a hit.
		err := w.Commit(w.Len(), nil)
		finish(nil)
		if err != nil {
			s.log.Warn("not cached", "key", key, "err", err)
			return
		}
		inStore = s.toStore(ctx, t, key)
		return
	}
	// A zip that streamed as it came is checked as a module zip once every
	// waiter has it: that read of the whole file is not theirs to wait for.
	finish(nil)
	verify := func(path string) error { return checkZipFile(req, path) }
	if found != nil && found.later {
		verify = func(path string) error { return ac.verifyKept(ctx, res.Upstream, path) }
	}
	if err := w.Commit(resp.ContentLength, verify); err != nil {
		s.log.Warn("not cached", "key", key, "err", err)
		return
	}
	inStore = s.toStore(ctx, t, key)
}

// fromStore copies the artifact from the shared store into the local
// cache, and reports whether it did. A store that lacks it, holds a
// damaged copy (the store deletes it) or fails leaves the fetch to
// upstreams: the store only ever saves work. A copy that fails
// checkStored is not kept, and the store drops it unless it only could
// not be verified just now.
func (s *Server) fromStore(ctx context.Context, t tiers, key string) bool {
	if t.shared == nil {
		return false
	}
	w, err := t.local.Create(key, "")
	if err != nil {
		return false
	}
	obj, err := t.shared.Get(ctx, key, w)
	if err != nil {
		w.Abort()
		return false
	}
	w.SetContentType(obj.ContentType)
	var bad error
	check := func(path string) error {
		bad = s.checkStored(ctx, t.req, t.verified)(path)
		return bad
	}
	if err := w.Commit(obj.Size, check); err != nil {
		if bad != nil {
			s.log.Warn("shared store object refused", "key", key, "err", bad)
			rejectStored(t.shared, key, bad)
		} else {
			s.log.Warn("not cached", "key", key, "err", err)
		}
		return false
	}
	return true
}

// toStore offers the local cache's entry for key to the shared store,
// which keeps it unless it has it already, and reports whether the store
// holds it now.
func (s *Server) toStore(ctx context.Context, t tiers, key string) bool {
	if t.shared == nil {
		return false
	}
	e, err := t.local.Get(key)
	if err != nil {
		return false
	}
	defer e.Close()
	// The store logs and counts its failures; the artifact is served either way.
	return t.shared.Put(ctx, key, e.Body, store.Object{Size: e.Size, SHA256: e.SHA256, ContentType: e.ContentType}) == nil
}

func (s *Server) now() time.Time { return s.clock().Now() }

// clock is the server's clock: Config.Clock, or the system's.
func (s *Server) clock() wire.Clock {
	if s.cfg.Clock != nil {
		return s.cfg.Clock
	}
	return wire.SystemClock{}
}
