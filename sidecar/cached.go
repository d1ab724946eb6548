package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
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
	case wire.KindInfo, wire.KindMod, wire.KindZip:
		key = strings.TrimPrefix(req.Path, "/")
		if req.Query {
			return x.perOrigin(key), false, true
		}
		return x.canonical(key), true, true
	case wire.KindList, wire.KindLatest:
		return x.perOrigin(strings.TrimPrefix(req.Path, "/")), false, true
	case wire.KindSumDBTile:
		// A partial tile's path names its width (.p/W): it never changes
		// either; a wider one has another path.
		return x.canonical("sumdb/" + req.SumDB + req.Path), true, true
	case wire.KindSumDBLookup, wire.KindSumDBSupported, wire.KindSumDBLatest:
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
	if x.mode == wire.ModeReverse {
		return key
	}
	return "origin/" + x.host + x.req.Prefix + "/" + key
}

// cacheFor returns the cache this exchange may use, or nil.
func (s *Server) cacheFor(x *exchange) *cache.Cache {
	if x.r.Method != http.MethodGet {
		return nil
	}
	if x.verdict.private != "" {
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
	case x.verdict.private != "":
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

	// opened counts the joined requests that hold a reader of the spool:
	// a streamed zip is checked and kept, or dropped, only once they all
	// do, so that none is left without the answer it waited for.
	opened int
	// joined counts the requests being served by this flight: a spool
	// that is not kept is dropped only once they are all done with it.
	joined int
}

// join returns the flight for key once it is ready (its answer's header
// is known, its fetch failed, or the shared store had the artifact),
// starting one if none is under way, with a reader of its spool when it
// has one. The caller must leave it, and close the reader.
func (s *Server) join(x *exchange, c *cache.Cache, key string, src source, fr fetchRequest) (*flight, io.ReadCloser, error) {
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

	ctx := x.r.Context()
	stop := context.AfterFunc(ctx, f.wake)
	defer stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for !f.ready && ctx.Err() == nil {
		f.cond.Wait()
	}
	if ctx.Err() != nil {
		f.joined--
		f.cond.Broadcast()
		return nil, nil, clientGone("client went away while the artifact was fetched")
	}
	if f.w == nil || f.stored {
		return f, nil, nil
	}
	// Opened while the flight still holds its spool (see opened).
	r, err := f.w.Reader()
	if err != nil {
		return f, nil, nil // kept by now: the cache has it
	}
	f.opened++
	f.cond.Broadcast()
	return f, &flightReader{f: f, r: r, ctx: ctx, stop: context.AfterFunc(ctx, f.wake)}, nil
}

// leave ends a request's interest in the flight: a spool that is not
// kept is dropped once every request has left.
func (f *flight) leave(opened bool) {
	f.mu.Lock()
	f.joined--
	if opened {
		f.opened--
	}
	f.cond.Broadcast()
	f.mu.Unlock()
}

func (f *flight) wake() {
	f.mu.Lock()
	f.cond.Broadcast()
	f.mu.Unlock()
}

// lost explains a flight whose artifact is neither in its spool nor in the
// cache: the fetch broke off, or the entry went at once.
func (f *flight) lost(x *exchange) error {
	f.mu.Lock()
	ferr := f.err
	f.mu.Unlock()
	switch {
	case f.stored:
		return fail(wire.Busy, describeRequest(x.req)+": copied from the shared store but gone from the local cache at once; try again")
	case ferr != nil:
		return upstreamCut(describeRequest(x.req)+": the upstream broke off the answer", fmt.Sprintf("%s: %v", f.served.Name, ferr))
	}
	return fail(wire.Busy, describeRequest(x.req)+": fetched by another request that failed; try again")
}

// flightReader reads a flight's spool behind its writer: it waits for
// bytes that are not written yet, and fails as the fetch failed.
type flightReader struct {
	f    *flight
	r    *os.File
	off  int64
	ctx  context.Context
	stop func() bool
}

func (fr *flightReader) Read(p []byte) (int, error) {
	f := fr.f
	for {
		f.mu.Lock()
		for fr.off >= f.written && !f.done && fr.ctx.Err() == nil {
			f.cond.Wait()
		}
		written, done, ferr := f.written, f.done, f.err
		f.mu.Unlock()
		if err := fr.ctx.Err(); err != nil {
			return 0, err
		}
		if fr.off < written {
			n, err := fr.r.ReadAt(p[:min(int64(len(p)), written-fr.off)], fr.off)
			fr.off += int64(n)
			if err != nil && err != io.EOF {
				return n, err
			}
			if n > 0 {
				return n, nil
			}
			continue
		}
		if done {
			if ferr != nil {
				return 0, ferr
			}
			return 0, io.EOF
		}
	}
}

func (fr *flightReader) Close() error {
	fr.stop()
	return fr.r.Close()
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
	defer s.land(f, key)
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
		f.finish(func() { f.stored = true }, nil)
		return
	}
	res := fetch(ctx)
	if res.Response == nil {
		// Off the board before its waiters hear of the failure: a request
		// that comes now asks the upstreams again (and their breakers
		// count it) rather than taking this flight's answer.
		s.land(f, key)
		f.finish(func() { f.res = res }, nil)
		return
	}
	resp := res.Response
	defer resp.Body.Close()
	found := ac.take(resp)
	w, err := s.spool(t.local, key, found)
	if err != nil {
		s.land(f, key)
		f.finish(func() {
			f.res = upstream.Result{Attempts: []upstream.Attempt{{Upstream: res.Upstream, Err: fmt.Errorf("cache: %w", err)}}}
		}, nil)
		return
	}
	w.SetContentType(resp.Header.Get("Content-Type"))
	f.mu.Lock()
	f.header, f.served, f.w, f.ready = resp.Header.Clone(), res.Upstream, w, true
	f.written = w.Len()
	f.cond.Broadcast()
	f.mu.Unlock()

	spooled := found != nil && found.spool != nil
	if !spooled {
		if err := f.fill(w, &capReader{r: resp.Body, n: maxBody(req.Kind)}); err != nil {
			s.land(f, key)
			f.finish(nil, err)
			w.Abort()
			return
		}
	}
	switch {
	case found != nil && found.unverified != nil:
		// Served to whoever waits for it now, and dropped once they have
		// it: a request that comes later fetches it again.
		f.finish(nil, nil)
		s.land(f, key)
		f.drained()
		w.Abort()
		return
	case req.Kind != wire.KindZip || spooled:
		// A small entry, or a zip checked whole, is kept before its
		// waiters are told the answer is complete: a request that follows
		// one that succeeded is a hit.
		err := w.Commit(w.Len(), nil)
		f.finish(nil, nil)
		if err != nil {
			s.log.Warn("not cached", "key", key, "err", err)
			return
		}
	default:
		// A zip that streamed as it came is checked as a module zip once
		// every waiter has it: that read of the whole file is not theirs
		// to wait for. Those that joined hold the spool open by then, so
		// that a zip the check refuses still reaches them; the flight
		// stays on the board meanwhile, so that requests that come while
		// a large zip is checked read the spool too, rather than fetch
		// and check it again.
		f.finish(nil, nil)
		f.readersOpen()
		verify := func(path string) error { return checkZipFile(req, path) }
		if found != nil && found.later {
			verify = func(path string) error { return ac.verifyKept(ctx, res.Upstream, path) }
		}
		if err := w.Commit(resp.ContentLength, verify); err != nil {
			s.log.Warn("not cached", "key", key, "err", err)
			return
		}
	}
	inStore = s.toStore(ctx, t, key)
}

// land takes the flight off the board: requests that come from now on
// start their own.
func (s *Server) land(f *flight, key string) {
	s.flightMu.Lock()
	if s.flights[key] == f {
		delete(s.flights, key)
	}
	s.flightMu.Unlock()
}

// spool is where the flight's answer is written: the spool the check
// filled with the whole zip, or a new cache entry.
func (s *Server) spool(c *cache.Cache, key string, found *checkedAnswer) (*cache.Writer, error) {
	if found != nil && found.spool != nil {
		return found.spool, nil
	}
	return c.Create(key, "")
}

// finish marks the flight done (ready too, for a flight that failed before
// it had an answer), with what set records and the error the body broke
// off with, and wakes its waiters.
func (f *flight) finish(set func(), err error) {
	f.mu.Lock()
	if set != nil {
		set()
	}
	f.ready, f.done, f.err = true, true, err
	f.cond.Broadcast()
	f.mu.Unlock()
}

// fill copies body into the flight's spool w, telling waiters of each
// piece.
func (f *flight) fill(w *cache.Writer, body io.Reader) error {
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
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// readersOpen waits until every request that joined the flight holds a
// reader of its spool, or has left.
func (f *flight) readersOpen() {
	f.mu.Lock()
	for f.opened < f.joined {
		f.cond.Wait()
	}
	f.mu.Unlock()
}

// drained waits until every request served by the flight has left it.
func (f *flight) drained() {
	f.mu.Lock()
	for f.joined > 0 {
		f.cond.Wait()
	}
	f.mu.Unlock()
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
