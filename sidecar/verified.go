package sidecar

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/verify"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// Trust (README, "Trust"): the checksum database is the authority, as it
// is for the go command. A public module's .mod and .zip are verified
// against it before they enter any cache tier and whenever they are read
// back from a shared store; so are the checksum database's own tiles and
// lookups. A mismatch is the upstream's failure. What cannot be verified
// (the database cannot be reached, or has no record) is relayed, since
// the go command decides for itself with its go.sum and GONOSUMDB, but
// never kept. The way an artifact arrived does not matter: only verified
// content, or what modgate's own chain answered, is kept under the
// canonical key that every mode and replica reads.

// newVerifier returns the verifier of the configured checksum database, or
// nil when there is none or its key is not known (nothing is verified
// then, and the status page, doctor and the metrics say so).
func (s *Server) newVerifier(cfg Config) (*verify.Verifier, error) {
	if cfg.SumDB == "" || cfg.SumDBKey == "" {
		return nil, nil
	}
	var tree verify.TreeFile
	if cfg.Cache.Dir != "" {
		tree = verify.FileTree(filepath.Join(cfg.Cache.Dir, "sumdb-latest", strings.ReplaceAll(cfg.SumDB, "/", "_")))
	}
	var st verify.Store
	if s.cache != nil {
		st = sumStore{s}
	}
	v, err := verify.New(verify.Config{Key: cfg.SumDBKey, Remote: s.sumRemote, Store: st, Tree: tree, Logger: s.log})
	if err != nil {
		return nil, err
	}
	if v.Name() != cfg.SumDB {
		return nil, fmt.Errorf("the checksum database key is for %s, not %s", v.Name(), cfg.SumDB)
	}
	return v, nil
}

// Verification says whether artifacts are verified, and if not, why: for
// the status page, doctor and the metrics.
func (s *Server) Verification() (on bool, why string) {
	switch {
	case s.verifier != nil:
		return true, "against " + s.verifier.Name()
	case s.cfg.SumDB == "":
		return false, "no checksum database (sumdb off): only the protocol's structural checks are made"
	}
	return false, "no key for checksum database " + s.cfg.SumDB + " (give sumdb as name+key): only the protocol's structural checks are made"
}

// verifies reports whether the exchange's answer is checked against the
// checksum database: a public module's .mod or .zip at a canonical
// version, or one of the database's hash tiles.
func (x *exchange) verifies() bool {
	if x.s.verifier == nil || x.r.Method != http.MethodGet {
		return false
	}
	switch x.req.Kind {
	case wire.KindMod, wire.KindZip:
		return !x.req.Query && x.verdict.private == ""
	case wire.KindSumDBTile:
		return x.req.SumDB == x.s.verifier.Name()
	}
	return false
}

// trusted reports whether the exchange's answer may be kept under its
// canonical key, which every mode and replica reads: it came through
// modgate's own upstream chain, or it is verified. A forward-mode client
// chooses its origin, so what it fetches that cannot be verified is kept
// per origin, and only in the local cache.
func (x *exchange) trusted() bool {
	return x.mode == wire.ModeReverse || x.verifies()
}

// sumRemote reads path ("/lookup/..." or "/tile/...") from the checksum
// database for the verifier: tiles from the shared store when it has them
// (the verifier proves them), otherwise through modgate's route to the
// database; offline, from the shared store only.
func (s *Server) sumRemote(ctx context.Context, path string) ([]byte, error) {
	db := s.sumdb
	if strings.HasPrefix(path, "/tile/") {
		if st := s.cacheCfg.Shared; st != nil {
			var buf bytes.Buffer
			if _, err := st.Get(ctx, "sumdb/"+db.name+path, &buf); err == nil {
				return buf.Bytes(), nil
			}
		}
	}
	if s.cfg.Offline {
		return nil, fmt.Errorf("%s: %w (modgate is offline)", path, verify.ErrNotFound)
	}
	kind := wire.KindSumDBTile
	if strings.HasPrefix(path, "/lookup/") {
		kind = wire.KindSumDBLookup
	}
	ctx = upstream.WithKind(ctx, kind)
	route, res := db.find(upstream.WithKind(ctx, wire.KindSumDBSupported))
	if route != nil {
		res = db.get(ctx, route, path, nil)
	}
	if res.Response == nil {
		err := &remoteError{path: path, res: res}
		if res.Status() == http.StatusNotFound {
			return nil, fmt.Errorf("%w: %w", verify.ErrNotFound, err)
		}
		return nil, err
	}
	defer res.Response.Body.Close()
	body, held, err := readWhole(res.Response.Body, res.Response.ContentLength, maxBody(kind), &s.buffers)
	s.buffers.give(held)
	if err != nil {
		return nil, fmt.Errorf("checksum database %s: %w", path, err)
	}
	return body, nil
}

// remoteError is a checksum database read that no upstream answered.
type remoteError struct {
	path string
	res  upstream.Result
}

func (e *remoteError) Error() string {
	var parts []string
	for _, a := range e.res.Attempts {
		parts = append(parts, a.String())
	}
	if len(parts) == 0 {
		return "checksum database " + e.path + ": not found"
	}
	return "checksum database " + e.path + ": " + strings.Join(parts, "; ")
}

// sumStore is the verifier's store: modgate's local cache under the keys
// the go command's own requests use ("sumdb/<name>/lookup/...", ".../tile/..."),
// so that they are answered from there, and the shared store for the
// fleet. Lookups are also read from the shared store (the verifier checks
// each one it reads); tiles only from the local cache, which holds only
// proven tiles (the shared store's go through sumRemote, and are proven
// before they are kept).
type sumStore struct{ s *Server }

func (st sumStore) Get(name string) ([]byte, error) {
	key := "sumdb/" + name
	if e, err := st.s.cache.Get(key); err == nil {
		defer e.Close()
		return io.ReadAll(e.Body)
	}
	if shared := st.s.cacheCfg.Shared; shared != nil && strings.Contains(name, "/lookup/") {
		var buf bytes.Buffer
		if _, err := shared.Get(context.Background(), key, &buf); err == nil {
			return buf.Bytes(), nil
		}
	}
	return nil, cache.ErrNotExist
}

func (st sumStore) Put(name string, data []byte) {
	key := "sumdb/" + name
	c := st.s.cache
	w, err := c.Create(key, "text/plain; charset=utf-8")
	if err != nil {
		return
	}
	w.Write(data)
	if err := w.Commit(int64(len(data)), nil); err != nil {
		st.s.log.Warn("not cached", "key", key, "err", err)
		return
	}
	st.s.toStore(context.Background(), tiers{local: c, shared: st.s.cacheCfg.Shared}, key)
}

// serveLookup answers a checksum database lookup with what the verifier
// proved: the record is in the signed tree, consistent with every tree
// head modgate saw before. The go command then checks the same answer
// again.
func (s *Server) serveLookup(x *exchange) error {
	if s.cache != nil {
		if e, err := s.cache.Get("sumdb/" + x.req.SumDB + x.req.Path); err == nil {
			e.Close()
			x.out.cache = wire.CacheHit
		} else {
			x.out.cache = wire.CacheMiss
		}
	}
	data, err := s.verifier.Lookup(x.ctx(), x.req.Module, x.req.Version)
	if err != nil && x.mode != wire.ModeReverse && !s.cfg.Offline &&
		errors.Is(err, verify.ErrUnverifiable) && !errors.Is(err, verify.ErrMisbehaving) {
		// modgate's own route to the database failed; the origin the
		// client named may still answer (it is not kept: see cacheKey).
		s.log.Warn("checksum database lookup not verified: asking the origin", "module", x.req.Module, "version", x.req.Version, "err", err)
		return errLookupElsewhere
	}
	if err != nil {
		return x.lookupProblem(err)
	}
	x.out.served = nil
	return x.sendBytes(http.StatusOK, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, data)
}

// errLookupElsewhere sends a forward-mode lookup that modgate could not
// verify to the origin the client named.
var errLookupElsewhere = errors.New("lookup not verified: ask the origin")

// lookupProblem explains a lookup the verifier could not make.
func (x *exchange) lookupProblem(err error) *problem {
	if x.r.Context().Err() != nil {
		return clientGone("client went away while the checksum database was asked")
	}
	subject := describeRequest(x.req)
	var re *remoteError
	switch {
	case errors.Is(err, verify.ErrMisbehaving):
		return fail(wire.ChecksumMismatch,
			subject+": the checksum database's answer is not proven by its signed log; not relayed, not kept", err.Error())
	case errors.As(err, &re) && !errors.Is(err, verify.ErrNotFound):
		return x.chainProblem(re.res)
	case errors.Is(err, verify.ErrNotFound):
		return fail(wire.NotFound, subject+": not found", err.Error())
	}
	return fail(wire.UpstreamFailed, subject+": "+err.Error())
}

// answerCheck is the upstream.Check of one fetch: it reads an answer
// whole (a zip into a spool file) and checks it, before the upstream is
// credited with it. What it found is kept by the response it returns.
type answerCheck struct {
	s      *Server
	req    Request
	verify bool         // against the checksum database
	spool  *cache.Cache // where a verified zip is spooled; nil: a temporary file
	key    string

	mu      sync.Mutex
	results map[*http.Response]*checkedAnswer
}

// defaultVerifyFirstMax is the largest zip that is received whole and verified
// before its first byte is relayed, so that a mismatch can still fall
// through to the next upstream. Verifying means inflating and hashing
// every file (the go command does the same when it downloads): for a zip
// of a few MiB that is milliseconds, for hundreds of MiB seconds of CPU
// that would hold the build back. A larger zip (or one of unknown length)
// streams as it arrives and is verified as it is kept: it is kept only if
// it matches, a mismatch counts against the upstream that sent it, and the
// go command, which checks every zip it downloads, refuses it.
const defaultVerifyFirstMax = 16 << 20

// checkedAnswer is what a check found in one upstream's answer.
type checkedAnswer struct {
	// later: a zip too large to hold back, passed on unread, verified as
	// it is kept.
	later bool
	body  []byte        // a small answer, whole
	spool *cache.Writer // a zip, whole, when spooled into the cache
	// unverified says why the answer may be relayed but not kept: the
	// checksum database could not vouch for it. Nil when it is verified,
	// or is not to be verified.
	unverified error
}

// checkFor returns the check of the exchange's answers, or nil when its
// kind is passed on as it comes (a zip that is not verified streams to
// the client as it arrives, and is checked as it is kept).
func (s *Server) checkFor(x *exchange, c *cache.Cache, key string) *answerCheck {
	switch {
	case x.r.Method != http.MethodGet:
		return nil
	case x.req.Kind == wire.KindZip && !x.verifies():
		return nil
	case checked(x.req.Kind), x.req.Kind == wire.KindZip, x.req.Kind == wire.KindSumDBTile, x.req.Kind == wire.KindSumDBLatest && s.verifier != nil:
	default:
		return nil
	}
	return &answerCheck{s: s, req: x.req, verify: x.verifies(), spool: c, key: key, results: map[*http.Response]*checkedAnswer{}}
}

// take returns what the check found in resp (nil if it never saw it); the
// caller owns its spool from then on.
func (ac *answerCheck) take(resp *http.Response) *checkedAnswer {
	if ac == nil || resp == nil {
		return nil
	}
	ac.mu.Lock()
	defer ac.mu.Unlock()
	r := ac.results[resp]
	delete(ac.results, resp)
	return r
}

// upstream returns the check as the upstream layer takes it.
func (ac *answerCheck) upstream() upstream.Check {
	if ac == nil {
		return nil
	}
	return ac.check
}

func (ac *answerCheck) check(ctx context.Context, resp *http.Response) (*http.Response, error) {
	if ac.req.Kind == wire.KindZip {
		return ac.checkZip(ctx, resp)
	}
	s, req := ac.s, ac.req
	limit := maxBody(req.Kind)
	if resp.ContentLength > limit {
		// Known to be too large: not a byte is read.
		return nil, &badAnswer{fmt.Sprintf("%d bytes, too large for its kind: the limit is %d", resp.ContentLength, limit)}
	}
	body, held, err := readWhole(resp.Body, resp.ContentLength, limit, &s.buffers)
	if err != nil {
		s.buffers.give(held)
	}
	switch {
	case errors.Is(err, errOverBudget):
		return nil, fmt.Errorf("%w: %w", upstream.ErrLocal, err)
	case errors.Is(err, errTooLarge):
		return nil, &badAnswer{fmt.Sprintf("more than %d bytes, too large for its kind: the limit is %d", limit, limit)}
	case err != nil:
		return nil, err
	case resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength:
		s.buffers.give(held)
		return nil, fmt.Errorf("body cut after %d of %d bytes: %w", len(body), resp.ContentLength, io.ErrUnexpectedEOF)
	}
	found := &checkedAnswer{body: body}
	if err := checkAnswer(req, body); err != nil {
		s.buffers.give(held)
		return nil, err
	}
	v := s.verifier
	switch {
	case req.Kind == wire.KindMod && ac.verify:
		found.unverified = ac.judge(v.CheckMod(ctx, req.Module, req.Version, body))
	case req.Kind == wire.KindSumDBTile && ac.verify:
		if err := v.CheckTile(ctx, req.Path, body); errors.Is(err, verify.ErrMisbehaving) {
			s.buffers.give(held)
			return nil, &verifyError{err}
		} else if err != nil {
			found.unverified = err
		}
	case req.Kind == wire.KindSumDBTile:
		// Without a verifier a tile is kept as the chain answered it.
	case req.Kind == wire.KindSumDBLatest && v != nil:
		if err := v.CheckLatest(body); err != nil {
			s.buffers.give(held)
			return nil, &verifyError{err}
		}
	}
	if isMismatch(found.unverified) {
		s.buffers.give(held)
		return nil, found.unverified
	}
	// The bytes stay in the buffer budget until the answer is closed.
	out := answerWith(resp, &heldBody{Reader: bytes.NewReader(body), release: func() { s.buffers.give(held) }}, int64(len(body)))
	ac.record(out, found)
	return out, nil
}

// heldBody is an answer read whole, whose bytes go back to the buffer
// budget when it is closed.
type heldBody struct {
	*bytes.Reader
	release func()
	once    sync.Once
}

func (b *heldBody) Close() error {
	b.once.Do(b.release)
	return nil
}

// judge sorts what the verifier said of an artifact: nil (verified), a
// mismatch (returned as is: the upstream's failure), or the reason it
// could not be verified. A database caught misbehaving is logged: it
// cannot vouch for anything, and the go command's own lookup fails too.
func (ac *answerCheck) judge(err error) error {
	n := &ac.s.checks
	switch {
	case err == nil:
		n.verified.Add(1)
		return nil
	case isMismatch(err):
		n.mismatch.Add(1)
		ac.s.log.Warn("upstream answer does not match the checksum database", "module", ac.req.Module, "version", ac.req.Version, "err", err)
		return err
	case errors.Is(err, verify.ErrMisbehaving):
		n.misbehaving.Add(1)
		ac.s.log.Error("checksum database misbehaving: artifact relayed unverified, not kept", "module", ac.req.Module, "version", ac.req.Version, "err", err)
	default:
		n.unverified.Add(1)
		ac.s.log.Warn("artifact could not be verified: relayed, not kept", "module", ac.req.Module, "version", ac.req.Version, "err", err)
	}
	return err
}

// checkCounts are the verifier's verdicts, for the
// modgate.checksum.checks metric and the status page.
type checkCounts struct {
	verified, mismatch, unverified, misbehaving atomic.Int64
}

func (c *checkCounts) snapshot() map[string]int64 {
	return map[string]int64{
		"verified": c.verified.Load(), "mismatch": c.mismatch.Load(),
		"unverified": c.unverified.Load(), "misbehaving": c.misbehaving.Load(),
	}
}

func (s *Server) verificationReading() telemetry.VerificationReading {
	on, _ := s.Verification()
	return telemetry.VerificationReading{On: on, Results: s.checks.snapshot()}
}

func isMismatch(err error) bool {
	var mm *verify.MismatchError
	return errors.As(err, &mm)
}

// verifyKept checks a zip that streamed as it came (later), as it is
// kept: the go command's download checks and, when the exchange verifies,
// the checksum database's hash. A zip that fails is not kept and counts
// against the upstream u that sent it.
func (ac *answerCheck) verifyKept(ctx context.Context, u *upstream.Upstream, path string) error {
	h1, err := zipSum(ac.req, path)
	if err != nil {
		err = &badAnswer{"not a module zip the go command would take: " + err.Error()}
	} else if ac.verify {
		err = ac.judge(ac.s.verifier.CheckHash(ctx, ac.req.Module, ac.req.Version, h1))
	}
	if (isMismatch(err) || errors.As(err, new(*badAnswer))) && u != nil {
		u.Reject(err)
	}
	return err
}

// verifyError is an answer from the checksum database's route that its
// own signed log contradicts (a tile, a tree head).
type verifyError struct{ err error }

func (e *verifyError) Error() string { return e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

// checkZip spools a zip whole and checks it: a module zip as the go
// command would accept it, with the hash the checksum database holds.
func (ac *answerCheck) checkZip(ctx context.Context, resp *http.Response) (*http.Response, error) {
	max := ac.s.cfg.VerifyFirstMax
	if max == 0 {
		max = defaultVerifyFirstMax
	}
	if resp.ContentLength < 0 || resp.ContentLength > max {
		ac.record(resp, &checkedAnswer{later: true})
		return resp, nil
	}
	sp, err := ac.newSpool()
	if err != nil {
		return nil, fmt.Errorf("%w: spool: %w", upstream.ErrLocal, err)
	}
	n, err := io.Copy(sp, &capReader{r: resp.Body, n: maxBody(wire.KindZip)})
	switch {
	case errors.Is(err, errTooLarge):
		sp.abort()
		return nil, &badAnswer{fmt.Sprintf("more than %d bytes, too large for a module zip: the limit is %d", maxBody(wire.KindZip), maxBody(wire.KindZip))}
	case err != nil:
		sp.abort()
		return nil, err
	case resp.ContentLength >= 0 && n != resp.ContentLength:
		sp.abort()
		return nil, fmt.Errorf("body cut after %d of %d bytes: %w", n, resp.ContentLength, io.ErrUnexpectedEOF)
	}
	// Not synced: a cache entry is synced by Commit when it is kept, and a
	// temporary file is read back (hashed, relayed) from the page cache
	// and removed once relayed. A sync would wait for a disk write of the
	// whole zip before the first byte is relayed, and protect nothing.
	h1, err := zipSum(ac.req, sp.path())
	if err != nil {
		sp.abort()
		return nil, &badAnswer{"not a module zip the go command would take: " + err.Error()}
	}
	found := &checkedAnswer{spool: sp.w}
	found.unverified = ac.judge(ac.s.verifier.CheckHash(ctx, ac.req.Module, ac.req.Version, h1))
	if isMismatch(found.unverified) {
		sp.abort()
		return nil, found.unverified
	}
	body, err := sp.reader()
	if err != nil {
		sp.abort()
		return nil, fmt.Errorf("%w: spool: %w", upstream.ErrLocal, err)
	}
	out := answerWith(resp, body, n)
	ac.record(out, found)
	return out, nil
}

func (ac *answerCheck) record(resp *http.Response, found *checkedAnswer) {
	ac.mu.Lock()
	ac.results[resp] = found
	ac.mu.Unlock()
}

// answerWith is resp with another body of n bytes.
func answerWith(resp *http.Response, body io.ReadCloser, n int64) *http.Response {
	out := &http.Response{
		Status: resp.Status, StatusCode: resp.StatusCode, Proto: resp.Proto, ProtoMajor: resp.ProtoMajor, ProtoMinor: resp.ProtoMinor,
		Header: resp.Header.Clone(), ContentLength: n, Body: body, Request: resp.Request,
	}
	out.Header.Del("Content-Encoding")
	return out
}

// zipSpool holds a zip while it is checked: a cache entry being written
// (committed later, if it is kept), or a temporary file.
type zipSpool struct {
	w   *cache.Writer // or
	tmp *os.File
	ac  *answerCheck
}

func (ac *answerCheck) newSpool() (*zipSpool, error) {
	if ac.spool != nil {
		w, err := ac.spool.Create(ac.key, "")
		if err != nil {
			return nil, err
		}
		return &zipSpool{w: w, ac: ac}, nil
	}
	f, err := os.CreateTemp("", "modgate-zip-*")
	if err != nil {
		return nil, err
	}
	return &zipSpool{tmp: f, ac: ac}, nil
}

func (sp *zipSpool) Write(p []byte) (int, error) {
	if sp.w != nil {
		return sp.w.Write(p)
	}
	return sp.tmp.Write(p)
}

func (sp *zipSpool) path() string {
	if sp.w != nil {
		return sp.w.Path()
	}
	return sp.tmp.Name()
}

func (sp *zipSpool) abort() {
	if sp.w != nil {
		sp.w.Abort()
		return
	}
	sp.tmp.Close()
	os.Remove(sp.tmp.Name())
}

// reader opens the spooled zip for reading: closing it drops the spool,
// unless whoever took the answer (take) keeps it.
func (sp *zipSpool) reader() (io.ReadCloser, error) {
	if sp.w == nil {
		if _, err := sp.tmp.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
		return &tempBody{f: sp.tmp}, nil
	}
	f, err := sp.w.Reader()
	if err != nil {
		return nil, err
	}
	return &spoolBody{File: f, sp: sp}, nil
}

// tempBody is a temporary file, removed when it is closed.
type tempBody struct{ f *os.File }

func (b *tempBody) Read(p []byte) (int, error) { return b.f.Read(p) }
func (b *tempBody) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, b.f) // *os.File's sendfile, where the writer can take it
}
func (b *tempBody) Close() error {
	err := b.f.Close()
	os.Remove(b.f.Name())
	return err
}

// spoolBody reads a zip spooled into the cache. Closing it drops the
// entry being written unless the flight took it to keep.
type spoolBody struct {
	*os.File
	sp *zipSpool
}

func (b *spoolBody) Close() error {
	err := b.File.Close()
	b.sp.ac.mu.Lock()
	taken := true
	for resp, r := range b.sp.ac.results {
		if r.spool == b.sp.w {
			taken = false
			delete(b.sp.ac.results, resp)
		}
	}
	b.sp.ac.mu.Unlock()
	if !taken {
		b.sp.w.Abort()
	}
	return err
}

// checkStored checks an artifact copied from the shared store before the
// local cache keeps it: whoever can write to the store may have put
// anything there, with metadata to match. Verified kinds must match the
// checksum database (a copy that cannot be verified now is not used);
// the rest must pass the protocol's checks.
func (s *Server) checkStored(ctx context.Context, req Request, verified bool) func(path string) error {
	return func(path string) error {
		if req.Kind == wire.KindZip {
			h1, err := zipSum(req, path)
			if err != nil || !verified {
				return err
			}
			return s.verifier.CheckHash(ctx, req.Module, req.Version, h1)
		}
		body, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := checkAnswer(req, body); err != nil {
			return err
		}
		switch {
		case !verified:
		case req.Kind == wire.KindMod:
			return s.verifier.CheckMod(ctx, req.Module, req.Version, body)
		case req.Kind == wire.KindSumDBTile:
			return s.verifier.CheckTile(ctx, req.Path, body)
		}
		return nil
	}
}

// rejectStored is what happens to a shared store's object that failed
// checkStored: one that is wrong is deleted, so that the next fetch
// replaces it; one that could not be verified just now is left.
func rejectStored(st *store.Store, key string, err error) {
	if isMismatch(err) || errors.Is(err, verify.ErrMisbehaving) || !errors.Is(err, verify.ErrUnverifiable) {
		st.Reject(key, err.Error())
	}
}
