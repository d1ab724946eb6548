package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/mod/module"

	"github.com/modgate/modgate/sidecar/fleettest"
	"github.com/modgate/modgate/sidecar/modtest"
)

// A fleet in this package's tests: modgate processes (this test binary run
// as modgate), each with a local cache of its own, one S3-compatible
// server (versitygw) and one Redis, all started by the test on loopback.

// front stands between the fleet and the fixture proxy: it counts the zips
// asked for, and fails every request while broken.
type front struct {
	proxy  *httputil.ReverseProxy
	broken atomic.Bool
	zips   atomic.Int64
	onZip  func(n int64) // told the count of every zip request
	seen   atomic.Int64  // requests that arrived while broken
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.broken.Load() {
		f.seen.Add(1)
		http.Error(w, "broken on purpose", http.StatusInternalServerError)
		return
	}
	if strings.HasSuffix(r.URL.Path, ".zip") {
		n := f.zips.Add(1)
		if f.onZip != nil {
			f.onZip(n)
		}
	}
	f.proxy.ServeHTTP(w, r)
}

type replica struct {
	url, admin string
	cmd        *exec.Cmd
	out        *bytes.Buffer
}

type fleetRig struct {
	t        *testing.T
	fx       *modtest.Fixtures
	db       *modtest.SumDB
	p        *modtest.Proxy
	front    *front
	frontURL string
	redis    *fleettest.RedisServer
	s3       *fleettest.S3Server
	secret   string // fleet.secret_file, shared by the replicas
}

func newFleetRig(t *testing.T) *fleetRig {
	redis := fleettest.Redis(t)
	s3 := fleettest.S3(t)
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	target, _ := url.Parse(p.URL)
	fr := &front{proxy: httputil.NewSingleHostReverseProxy(target)}
	srv := httptest.NewServer(fr) // on loopback
	t.Cleanup(srv.Close)
	secret := fleetSecretFile(t)
	return &fleetRig{t: t, fx: fx, db: db, p: p, front: fr, frontURL: srv.URL, redis: redis, s3: s3, secret: secret}
}

// start runs one modgate of the fleet on bucket, with extra config lines.
func (r *fleetRig) start(bucketURL string, extra string) *replica {
	t := r.t
	t.Helper()
	listen, admin := freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
admin: %s
upstreams:
  - name: fixtures
    url: %s
    breaker: {consecutive_failures: 3, open_for: 60s}
    retry: {attempts: 1}
sumdb: {name: sum.fixture.test}
cache:
  dir: %s
  shared: %q
fleet: {redis: %q, secret_file: %q}
%s`, listen, admin, r.frontURL, t.TempDir(), bucketURL, r.redis.URL(), r.secret, extra)
	file := filepath.Join(t.TempDir(), "modgate.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, out := modgate(t, "run", "--config", file)
	cmd.Env = append(cmd.Env, r.s3.Env()...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitReady(t, admin, out)
	return &replica{url: "http://" + listen, admin: admin, cmd: cmd, out: out}
}

// upstreams reads a replica's /debug/upstreams.
func (rp *replica) upstreams(t *testing.T) (breaker string, fleet map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + rp.admin + "/debug/upstreams")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page struct {
		Upstreams []struct {
			Breaker struct {
				State      string `json:"state"`
				OpenReason string `json:"open_reason"`
			} `json:"breaker"`
		} `json:"upstreams"`
		Fleet map[string]any `json:"fleet"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || len(page.Upstreams) != 1 {
		t.Fatalf("/debug/upstreams: %v %+v", err, page)
	}
	return page.Upstreams[0].Breaker.State, page.Fleet
}

// fleetModules are the 30 module versions each build downloads.
func fleetModules(fx *modtest.Fixtures) []module.Version {
	var ms []module.Version
	for _, m := range fx.Modules() {
		ms = append(ms, module.Version{Path: m.Path, Version: m.Version})
		if len(ms) == 30 {
			break
		}
	}
	return ms
}

// build downloads ms through the modgate at via into a fresh module cache,
// in a project whose go.sum holds them (so that, offline, no checksum
// database lookup is needed: lookups stay in each replica's local cache).
func (r *fleetRig) build(via string, ms []module.Version) error {
	g := modtest.NewGo(r.t)
	g.UseProxy(via, r.db)
	g.Timeout = 2 * time.Minute
	var goSum strings.Builder
	var args []string
	for _, m := range ms {
		lines, err := r.fx.GoSumLines(m.Path, m.Version)
		if err != nil {
			return err
		}
		goSum.Write(lines)
		args = append(args, m.Path+"@"+m.Version)
	}
	g.WriteFile("go.mod", "module example.test/build\n\ngo 1.21\n")
	g.WriteFile("go.sum", goSum.String())
	_, stderr, err := g.Run(append([]string{"mod", "download"}, args...)...)
	if err != nil {
		return fmt.Errorf("%v\n%s", err, stderr)
	}
	return nil
}

func zipPath(m module.Version) string {
	p, _ := module.EscapePath(m.Path)
	v, _ := module.EscapeVersion(m.Version)
	return p + "/@v/" + v + ".zip"
}

// buildAll runs one build through each replica at once.
func (r *fleetRig) buildAll(rs []*replica, ms []module.Version) {
	r.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(rs))
	for i, rp := range rs {
		wg.Go(func() { errs[i] = r.build(rp.url, ms) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			r.t.Errorf("the build through replica %d failed: %v\nreplica log:\n%s", i, err, rs[i].out)
		}
	}
}

// eventually polls cond until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFleet: three modgate processes with separate local caches, one
// shared store and one Redis. Three builds of the same 30 modules at once,
// one through each, fetch every zip from the upstream once; a damaged
// object in the store is detected and replaced; a breaker opened in one
// replica is open in the others within a second; offline, a replica with
// an empty local cache serves a fresh module cache from the store.
func TestFleet(t *testing.T) {
	r := newFleetRig(t)
	bucket := r.s3.Bucket(t, "modules")
	ms := fleetModules(r.fx)
	if len(ms) != 30 {
		t.Fatalf("the fixtures have %d usable modules, want 30", len(ms))
	}
	rs := []*replica{r.start(bucket, ""), r.start(bucket, ""), r.start(bucket, "")}

	r.buildAll(rs, ms)
	for _, m := range ms {
		if n := r.p.CountMatching(zipPath(m)); n != 1 {
			t.Errorf("%s was fetched from the upstream %d times, want once", zipPath(m), n)
		}
	}

	t.Run("damaged object replaced", func(t *testing.T) {
		m := ms[3]
		file := r.s3.ObjectFile("modules", zipPath(m))
		good, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("the zip is not in the store: %v", err)
		}
		bad := bytes.Clone(good)
		bad[len(bad)/2] ^= 0xff
		if err := os.WriteFile(file, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		before := r.p.CountMatching(zipPath(m))
		fresh := r.start(bucket, "")
		if err := r.build(fresh.url, []module.Version{m}); err != nil {
			t.Fatalf("a build after the damage: %v\n%s", err, fresh.out)
		}
		if n := r.p.CountMatching(zipPath(m)) - before; n != 1 {
			t.Errorf("after the damage the zip was fetched from the upstream %d times, want 1", n)
		}
		eventually(t, 10*time.Second, "the damaged object replaced by a good one", func() bool {
			now, err := os.ReadFile(file)
			return err == nil && bytes.Equal(now, good)
		})
	})

	t.Run("offline from the shared store", func(t *testing.T) {
		asked := len(r.p.Requests())
		offline := r.start(bucket, "offline: true\n")
		if err := r.build(offline.url, ms); err != nil {
			t.Fatalf("offline with a warm shared store: %v\n%s", err, offline.out)
		}
		if n := len(r.p.Requests()) - asked; n != 0 {
			t.Errorf("offline, %d requests reached the upstream", n)
		}
	})

	t.Run("breaker news", func(t *testing.T) {
		r.front.broken.Store(true)
		defer r.front.broken.Store(false)
		// Only replica 0 asks, for lists (never cached for long), until
		// its breaker opens.
		for i := 0; ; i++ {
			if state, _ := rs[0].upstreams(t); state == "open" {
				break
			}
			if i == 20 {
				t.Fatalf("replica 0's breaker did not open:\n%s", rs[0].out)
			}
			resp, err := http.Get(rs[0].url + "/fixture.test/dep0" + fmt.Sprint(i%10) + "/@v/list")
			if err == nil {
				resp.Body.Close()
			}
		}
		opened := time.Now()
		for i, rp := range rs[1:] {
			eventually(t, time.Second, fmt.Sprintf("replica %d's upstream open after replica 0's breaker opened", i+1), func() bool {
				state, _ := rp.upstreams(t)
				return state == "open"
			})
		}
		t.Logf("the news reached the other replicas within %v", time.Since(opened).Round(time.Millisecond))
		seen := r.front.seen.Load()
		resp, err := http.Get(rs[2].url + "/fixture.test/dep01/@v/list")
		if err != nil {
			t.Fatal(err)
		}
		body := new(bytes.Buffer)
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 500 || !strings.Contains(body.String(), "opened by another replica") {
			t.Errorf("replica 2 with the upstream held open: %s %q", resp.Status, body)
		}
		if n := r.front.seen.Load() - seen; n != 0 {
			t.Errorf("replica 2 asked the upstream %d times while it was held open", n)
		}
	})
}

// TestFleetSurvivesRedisAndStore: Redis is killed part-way through three
// concurrent builds, then the S3 server; no build fails, and every replica
// says the store is down.
func TestFleetSurvivesRedisAndStore(t *testing.T) {
	r := newFleetRig(t)
	bucket := r.s3.Bucket(t, "modules")
	ms := fleetModules(r.fx)
	var killed sync.WaitGroup
	killed.Add(2)
	var redisOnce, s3Once sync.Once
	r.front.onZip = func(n int64) {
		switch {
		case n >= 8:
			redisOnce.Do(func() { go func() { r.redis.Kill(); killed.Done() }() })
			if n >= 16 {
				s3Once.Do(func() { go func() { r.s3.Kill(); killed.Done() }() })
			}
		}
	}
	rs := []*replica{r.start(bucket, ""), r.start(bucket, ""), r.start(bucket, "")}
	r.buildAll(rs, ms)
	killed.Wait()
	if t.Failed() {
		return
	}
	// Every replica goes on without the store: a build with cold module
	// caches still works, from the local caches and the upstream.
	r.buildAll(rs, ms[:5])
	_, fleet := rs[0].upstreams(t)
	if b, _ := json.Marshal(fleet); !strings.Contains(string(b), `"errors"`) {
		t.Errorf("replica 0's fleet status says nothing of the store's errors: %s", b)
	}
}

// fleetSecretFile writes a fleet secret and returns its file.
func fleetSecretFile(t *testing.T) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "fleet.secret")
	if err := os.WriteFile(file, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
