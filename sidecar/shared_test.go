package sidecar_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/fleet"
	"github.com/modgate/modgate/sidecar/fleettest"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
)

// The shared tier in one process's tests is a file:// bucket; the real
// S3 server and several processes are in cmd/modgate's fleet test.
func fileStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := store.Open(context.Background(), "file://"+dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

// immutableAsked counts the proxy's requests for .info, .mod and .zip
// files of canonical versions, which the shared tier keeps.
func immutableAsked(p *modtest.Proxy) int {
	n := 0
	for _, r := range p.Requests() {
		if strings.Contains(r, "/@v/v") && (strings.HasSuffix(r, ".info") || strings.HasSuffix(r, ".mod") || strings.HasSuffix(r, ".zip")) {
			n++
		}
	}
	return n
}

// buildModule is a module that requires sharedModules, as a project's
// repository holds it.
const buildModule = `module example.test/build

go 1.21

require (
	fixture.test/app v1.0.0
	fixture.test/dep05 v1.1.0
)
`

var sharedModules = []string{"fixture.test/app", "fixture.test/dep05"}

// TestSharedTier: what one modgate fetched, a second with an empty local
// cache serves from the shared store without asking upstreams; a damaged
// object is never served and is replaced; offline, a modgate with a
// fresh local cache serves a build's fresh module cache from the shared
// store.
func TestSharedTier(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	shared, bucket := fileStore(t)
	var last *sidecar.Server
	gate := func() string {
		url, srv := startGateServer(t, sidecar.Config{Cache: sidecar.CacheConfig{Dir: t.TempDir(), Shared: shared},
			Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
		last = srv
		return url
	}
	// Each build has a fresh module cache and the project's go.mod and
	// go.sum (written by the first).
	var goSum string
	build := func(via string) {
		t.Helper()
		g := modtest.NewGo(t)
		g.UseProxy(via, e.db)
		g.WriteFile("go.mod", buildModule)
		if goSum != "" {
			g.WriteFile("go.sum", goSum)
		}
		if _, stderr, err := g.Run(append([]string{"mod", "download"}, sharedModules...)...); err != nil {
			t.Fatalf("go mod download: %v\n%s", err, stderr)
		}
		if goSum == "" {
			b, err := os.ReadFile(filepath.Join(g.Dir(), "go.sum"))
			if err != nil {
				t.Fatal(err)
			}
			goSum = string(b)
		}
	}

	build(gate())
	last.Settle()
	first := immutableAsked(p)
	if first == 0 {
		t.Fatal("the first modgate asked the upstream for nothing")
	}
	zip := filepath.Join(bucket, "fixture.test", "dep05", "@v", "v1.1.0.zip")
	if _, err := os.Stat(zip); err != nil {
		t.Fatalf("the zip was not written to the shared store: %v", err)
	}

	build(gate())
	if n := immutableAsked(p) - first; n != 0 {
		t.Fatalf("a second modgate with an empty local cache asked the upstream for %d artifacts the shared store had", n)
	}
	if st := shared.Status(); st.Hits == 0 {
		t.Fatalf("shared store status %+v: no hits", st)
	}

	// Damage the zip in the store: the next modgate detects it, fetches
	// the zip from the upstream, and the store holds a good copy again.
	good, err := os.ReadFile(zip)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(zip, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	before := p.CountMatching("dep05/@v/v1.1.0.zip")
	build(gate())
	last.Settle()
	if n := p.CountMatching("dep05/@v/v1.1.0.zip") - before; n != 1 {
		t.Fatalf("after the damage the zip was fetched from the upstream %d times, want 1", n)
	}
	if now, err := os.ReadFile(zip); err != nil || !bytes.Equal(now, good) {
		t.Fatalf("the damaged object was not replaced by a good one (%v)", err)
	}
	if st := shared.Status(); st.Damaged != 1 {
		t.Fatalf("shared store status %+v: want one damaged object", st)
	}

	// Offline, with an empty local cache and a dead upstream.
	asked := len(p.Requests())
	offline := startGate(t, sidecar.Config{Offline: true,
		Cache:     sidecar.CacheConfig{Dir: t.TempDir(), Shared: shared},
		Upstreams: []upstream.Config{{Name: "dead", URL: modtest.DeadURL(t)}}})
	build(offline)
	if n := len(p.Requests()) - asked; n != 0 {
		t.Errorf("offline, %d requests reached the upstream", n)
	}
}

// TestSharedStoreDown: a shared store that refuses connections costs no
// request anything but time: every artifact comes from the upstream, and
// the status says why.
func TestSharedStoreDown(t *testing.T) {
	down := fleettest.S3Down(t)
	down.SetEnv(t)
	shared, err := store.Open(context.Background(), down.URL("modules"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	e := newEnv(t)
	p := e.proxy(t, true)
	url, srv := startGateServer(t, sidecar.Config{Cache: sidecar.CacheConfig{Dir: t.TempDir(), Shared: shared},
		Telemetry: newTelemetry(t, nil),
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	e.go_.UseProxy(url, e.db)
	if out, err := e.download("fixture.test/app@v1.0.0", "fixture.test/dep05@v1.1.0"); err != nil {
		t.Fatalf("with the shared store down: %v\n%s", err, out)
	}
	st := shared.Status()
	if st.Errors == 0 || st.LastError == "" || st.State != "down" {
		t.Fatalf("status of a dead store: %+v", st)
	}
	if _, err := shared.Get(context.Background(), "x", new(bytes.Buffer)); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("a dead store is not skipped: %v", err)
	}
	// Said on the status page and in the metrics.
	for page, wants := range map[string][]string{
		"/": {"shared store (public)", `<span class="badge open">down</span>`},
		"/metrics": {`modgate_cache_shared_up{modgate_cache_shared_tier="public",`,
			`modgate_cache_shared_requests_total{modgate_cache_shared_op="get",modgate_cache_shared_result="error",modgate_cache_shared_tier="public",`,
			`modgate_cache_shared_requests_total{modgate_cache_shared_op="get",modgate_cache_shared_result="skipped",modgate_cache_shared_tier="public",`},
	} {
		rec := httptest.NewRecorder()
		srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1"+page, nil))
		for _, want := range wants {
			if !strings.Contains(rec.Body.String(), want) {
				t.Errorf("%s lacks %s\n%s", page, want, grepLines(rec.Body.String(), "shared"))
			}
		}
		// The last error, a read's or a write's, of a module artifact or
		// a checksum tile: whichever failed last.
		if page == "/" && !regexp.MustCompile(`<td class="failure">(get|put) (sumdb/sum\.)?fixture\.test/[^<]*: `).MatchString(rec.Body.String()) {
			t.Errorf("the status page does not show the store's last error:\n%s", grepLines(rec.Body.String(), "failure"))
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSharedPrivate: private modules go to the private shared store only,
// public ones to the public store only; without a private store, private
// modules never reach a shared store at all.
func TestSharedPrivate(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	pol, _ := policyStore(t, "private: [\"fixture.test/dep08\"]\n")
	for _, withPrivate := range []bool{true, false} {
		t.Run(fmt.Sprintf("private store %v", withPrivate), func(t *testing.T) {
			pub, pubDir := fileStore(t)
			cc := sidecar.CacheConfig{Dir: t.TempDir(), PrivateDir: t.TempDir(), Shared: pub}
			var privDir string
			if withPrivate {
				cc.SharedPrivate, privDir = fileStore(t)
			}
			url, srv := startGateServer(t, sidecar.Config{Policy: pol, Cache: cc,
				Upstreams: []upstream.Config{{Name: "internal", URL: p.URL, Private: true}}})
			for _, m := range []string{"dep08", "dep09"} {
				if status, _, _ := rawGet(t, url, "/fixture.test/"+m+"/@v/v1.0.0.zip"); status != 200 {
					t.Fatalf("%s: %d", m, status)
				}
			}
			srv.Settle()
			in := func(dir, m string) bool {
				if dir == "" {
					return false
				}
				_, err := os.Stat(filepath.Join(dir, "fixture.test", m, "@v", "v1.0.0.zip"))
				return err == nil
			}
			if !in(pubDir, "dep09") || in(pubDir, "dep08") {
				t.Errorf("public store: dep09 %v (want true), private dep08 %v (want false)", in(pubDir, "dep09"), in(pubDir, "dep08"))
			}
			if withPrivate && (!in(privDir, "dep08") || in(privDir, "dep09")) {
				t.Errorf("private store: dep08 %v (want true), public dep09 %v (want false)", in(privDir, "dep08"), in(privDir, "dep09"))
			}
		})
	}
}

// TestIdleReplicaSeesRedis: a replica with no traffic still tells whether
// Redis answers, on /debug/upstreams (and so in its metrics).
func TestIdleReplicaSeesRedis(t *testing.T) {
	redis := fleettest.Redis(t)
	f, err := fleet.Open(fleet.Config{URL: redis.URL(), Secret: []byte("test-fleet-secret-0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, srv := startGateServer(t, sidecar.Config{Fleet: sidecar.FleetConfig{Fleet: f},
		Upstreams: []upstream.Config{{Name: "dead", URL: modtest.DeadURL(t)}}})
	up := func() bool {
		rec := httptest.NewRecorder()
		srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/upstreams", nil))
		var page struct {
			Fleet struct {
				Redis struct {
					Up bool `json:"up"`
				} `json:"redis"`
			} `json:"fleet"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			t.Fatalf("/debug/upstreams: %v\n%s", err, rec.Body)
		}
		return page.Fleet.Redis.Up
	}
	waitFor := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for up() != want {
			if time.Now().After(deadline) {
				t.Fatalf("Redis up = %v for 10 s, want %v", !want, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor(true)
	redis.Kill()
	waitFor(false)
	redis.Restart(t)
	waitFor(true)
}

// TestForgedNewsOpensNoBreaker: whoever can PUBLISH or SET on the fleet's
// Redis cannot open a replica's breaker: unsigned news, news signed with
// another secret, and an unsigned open breaker stored for replicas that
// start later change nothing; genuine news from a replica of the fleet
// still holds the upstream open.
func TestForgedNewsOpensNoBreaker(t *testing.T) {
	redis := fleettest.Redis(t)
	secret := []byte("test-fleet-secret-0123456789abcdef")
	open := func(secret []byte, replica string) *fleet.Fleet {
		f, err := fleet.Open(fleet.Config{URL: redis.URL(), Secret: secret, Replica: replica})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	p := modtest.NewProxy(t, loadFixtures(t))
	ups := []upstream.Config{{Name: "fixtures", URL: p.URL}}
	// An unsigned open breaker, stored before the replica starts.
	probe := open(secret, "probe")
	_, srv0 := startGateServer(t, sidecar.Config{Upstreams: ups})
	id := srv0.Upstreams()[0].NewsID()
	forged, _ := json.Marshal(fleet.News{Upstream: id, Open: true, Until: time.Now().Add(time.Hour), Reason: "forged", Replica: "mallory"})
	raw := goredis.NewClient(&goredis.Options{Addr: redis.Addr})
	t.Cleanup(func() { raw.Close() })
	ctx := context.Background()
	if err := raw.Set(ctx, "modgate:breaker:"+id, forged, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	b := open(secret, "b")
	_, srv := startGateServer(t, sidecar.Config{Upstreams: ups, Fleet: sidecar.FleetConfig{Fleet: b}})
	u := srv.Upstreams()[0]
	// Wait until B listens, then forge: unsigned, and signed with another
	// secret.
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := raw.PubSubNumSub(ctx, "modgate:news:breakers").Result(); n["modgate:news:breakers"] < 1; n, _ = raw.PubSubNumSub(ctx, "modgate:news:breakers").Result() {
		if time.Now().After(deadline) {
			t.Fatal("B does not subscribe")
		}
		time.Sleep(10 * time.Millisecond)
	}
	raw.Publish(ctx, "modgate:news:breakers", forged)
	open([]byte("another-fleet-secret-0123456789"), "mallory").Publish(ctx, fleet.News{Upstream: id, Open: true, Until: time.Now().Add(time.Hour), Reason: "forged"})
	// Genuine news of another upstream, after them: once B has it, the
	// forged ones were read before it.
	probe.Publish(ctx, fleet.News{Upstream: "other@x", Open: true, Until: time.Now().Add(time.Hour)})
	for b.Status().NewsReceived == 0 {
		if time.Now().After(deadline) {
			t.Fatal("B hears no genuine news")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if u.Breaker() != upstream.Closed {
		t.Errorf("forged news changed B's breaker: %v", u.Breaker())
	}
	if got := b.Status().Rejected; got < 3 {
		t.Errorf("%d forged messages counted; want 3", got)
	}
	// Genuine news of this upstream holds it open.
	probe.Publish(ctx, fleet.News{Upstream: id, Open: true, Until: time.Now().Add(time.Hour), Reason: "genuine"})
	for u.Breaker() != upstream.Open {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatal("genuine news did not hold the upstream open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFleetOneReplicaFetches: two replicas of a fleet (one Redis, one
// shared store, separate local caches) asked for the same zip at once
// make one upstream request between them: one takes the fleet's lease
// and fetches, the other waits for it and copies the zip from the shared
// store.
func TestFleetOneReplicaFetches(t *testing.T) {
	redis := fleettest.Redis(t)
	e := newEnv(t)
	p := e.proxy(t, true)
	// The upstream holds the zip's answer until the other replica waits
	// for the fleet's lease, or until a second request for the zip
	// arrives (both replicas fetch it: the test fails).
	const zip = "/fixture.test/dep05/@v/v1.1.0.zip"
	var (
		zips   atomic.Int32
		mu     sync.Mutex
		fleets []*fleet.Fleet
	)
	second := make(chan struct{})
	waiting := func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := int64(0)
		for _, f := range fleets {
			n += f.Status().Waits
		}
		return n > 0
	}
	next := httputil.NewSingleHostReverseProxy(mustParseURL(t, p.URL))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == zip {
			switch zips.Add(1) {
			case 1:
				deadline := time.Now().Add(10 * time.Second)
				for !waiting() && time.Now().Before(deadline) {
					select {
					case <-second:
						deadline = time.Now()
					case <-r.Context().Done():
						return
					case <-time.After(10 * time.Millisecond):
					}
				}
			case 2:
				close(second)
			}
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	_, bucket := fileStore(t)
	replica := func(name string) (string, *sidecar.Server) {
		f, err := fleet.Open(fleet.Config{URL: redis.URL(), Secret: []byte("test-fleet-secret-0123456789abcdef"), Replica: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		mu.Lock()
		fleets = append(fleets, f)
		mu.Unlock()
		shared, err := store.Open(context.Background(), "file://"+bucket, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { shared.Close() })
		return startGateServer(t, sidecar.Config{
			Cache:     sidecar.CacheConfig{Dir: t.TempDir(), Shared: shared},
			Fleet:     sidecar.FleetConfig{Fleet: f},
			Upstreams: []upstream.Config{{Name: "fixtures", URL: front.URL}},
		})
	}
	urlA, a := replica("a")
	urlB, b := replica("b")

	var wg sync.WaitGroup
	bodies := make([]string, 2)
	for i, url := range []string{urlA, urlB} {
		wg.Go(func() {
			status, _, body := rawGet(t, url, zip)
			if status != http.StatusOK {
				t.Errorf("replica %d: %d\n%s", i, status, body)
			}
			bodies[i] = body
		})
	}
	wg.Wait()
	a.Settle()
	b.Settle()
	if n := zips.Load(); n != 1 {
		t.Errorf("two replicas asked at once made %d upstream requests for the zip, want 1", n)
	}
	if bodies[0] != bodies[1] || bodies[0] == "" {
		t.Errorf("the replicas answered different zips (%d and %d bytes)", len(bodies[0]), len(bodies[1]))
	}
	leases := map[string]int64{}
	for _, srv := range []*sidecar.Server{a, b} {
		for k, v := range debugLeases(t, srv) {
			leases[k] += v
		}
	}
	if leases["taken"] != 1 || leases["waited"] != 1 {
		t.Errorf("leases %v: want one taken and one waited for", leases)
	}
}

// debugLeases reads the server's lease outcomes from /debug/upstreams,
// whose fleet.redis object also holds the fleet's own counters, each under
// a lower-case key of its own: none that a case-insensitive decoder would
// take for "leases".
func debugLeases(t *testing.T, srv *sidecar.Server) map[string]int64 {
	t.Helper()
	rec := httptest.NewRecorder()
	srv.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "http://127.0.0.1/debug/upstreams", nil))
	var page struct {
		Fleet struct {
			Redis map[string]json.RawMessage `json:"redis"`
		} `json:"fleet"`
	}
	var leases map[string]int64
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatalf("/debug/upstreams: %v\n%s", err, rec.Body)
	}
	for k := range page.Fleet.Redis {
		if k != strings.ToLower(k) {
			t.Errorf("/debug/upstreams: fleet.redis has key %q (keys: %v)", k, slices.Collect(maps.Keys(page.Fleet.Redis)))
		}
	}
	for _, k := range []string{"leases_taken", "waits", "wait_timeouts", "news_sent", "news_received", "rejected"} {
		if _, ok := page.Fleet.Redis[k]; !ok {
			t.Errorf("/debug/upstreams: fleet.redis has no %q", k)
		}
	}
	if err := json.Unmarshal(page.Fleet.Redis["leases"], &leases); err != nil {
		t.Fatalf("/debug/upstreams: fleet.redis.leases: %v\n%s", err, rec.Body)
	}
	return leases
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestFailedFlightIsNotJoinedLater: a request that comes after a failed
// fetch was answered asks the upstream again; it never joins the finished
// single flight and gets its old answer. The flight of a fleet's replica
// gives its lease up after it has told its waiters, and Redis is slow to
// answer here, which holds the finished flight up for a second.
func TestFailedFlightIsNotJoinedLater(t *testing.T) {
	redis := fleettest.Redis(t)
	slow := newFreezer(t, redis.Addr)
	e := newEnv(t)
	p := e.proxy(t, false)
	const zip = "/fixture.test/dep05/@v/v1.1.0.zip"
	var zips atomic.Int32
	next := httputil.NewSingleHostReverseProxy(mustParseURL(t, p.URL))
	// Not published yet the first time, and Redis stops answering.
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == zip && zips.Add(1) == 1 {
			slow.freeze()
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	f, err := fleet.Open(fleet.Config{URL: "redis://" + slow.addr() + "/0", Secret: []byte("test-fleet-secret-0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	t.Cleanup(slow.thaw) // before the fleet closes
	shared, _ := fileStore(t)
	url := startGate(t, sidecar.Config{
		Cache:     sidecar.CacheConfig{Dir: t.TempDir(), Shared: shared},
		Fleet:     sidecar.FleetConfig{Fleet: f},
		Upstreams: []upstream.Config{{Name: "fixtures", URL: front.URL}},
	})
	if status, _, body := rawGet(t, url, zip); status != http.StatusNotFound {
		t.Fatalf("first request: %d, want 404\n%s", status, body)
	}
	if status, _, body := rawGet(t, url, zip); status != http.StatusOK {
		t.Errorf("the request after a 404 was answered: %d, want 200\n%s", status, body)
	}
	if n := zips.Load(); n != 2 {
		t.Errorf("two requests, one after the other, asked the upstream %d times; want 2", n)
	}
}

// freezer relays TCP connections to a server and can stop passing bytes
// on (a server that hangs), then start again.
type freezer struct {
	ln     net.Listener
	mu     sync.Mutex
	thawed chan struct{} // closed while bytes pass
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fz := &freezer{ln: ln, thawed: make(chan struct{})}
	close(fz.thawed)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		fz.thaw()
		fz.mu.Lock()
		for _, c := range fz.conns {
			c.Close()
		}
		fz.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			fz.mu.Lock()
			fz.conns = append(fz.conns, c, s)
			fz.mu.Unlock()
			wg.Go(func() { fz.pipe(s, c) })
			wg.Go(func() { fz.pipe(c, s) })
		}
	})
	return fz
}

func (fz *freezer) addr() string { return fz.ln.Addr().String() }

func (fz *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			fz.mu.Lock()
			thawed := fz.thawed
			fz.mu.Unlock()
			<-thawed
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (fz *freezer) freeze() {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	select {
	case <-fz.thawed:
		fz.thawed = make(chan struct{})
	default:
	}
}

func (fz *freezer) thaw() {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	select {
	case <-fz.thawed:
	default:
		close(fz.thawed)
	}
}
