package sidecar_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
)

// The trust model (README, "Trust"): what modgate keeps and serves is what
// the checksum database vouches for, whoever could write to its inputs.

// cached returns the local cache's entry for key, or nil.
func cached(t *testing.T, dir, key string) []byte {
	t.Helper()
	c, err := cache.Open(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.Get(key)
	if err != nil {
		return nil
	}
	defer e.Close()
	b, err := io.ReadAll(e.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fixture(t *testing.T, fx *modtest.Fixtures, path string) modtest.Module {
	t.Helper()
	m, ok := fx.Lookup(path, "v1.0.0")
	if !ok {
		t.Fatalf("no fixture %s@v1.0.0", path)
	}
	return m
}

// upstreamsPage is what /debug/upstreams says.
type upstreamsPage struct {
	Upstreams []struct {
		Name    string
		Breaker struct{ Failures int }
	}
	Verification struct {
		On     bool
		Checks map[string]float64
	}
}

func debugUpstreams(t *testing.T, s *sidecar.Server) upstreamsPage {
	t.Helper()
	rr := httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/debug/upstreams", nil))
	var doc upstreamsPage
	if err := json.Unmarshal(rr.Body.Bytes(), &doc); err != nil {
		t.Fatalf("/debug/upstreams: %v\n%s", err, rr.Body)
	}
	return doc
}

// verification returns what /debug/upstreams says of verification.
func verification(t *testing.T, s *sidecar.Server) (on bool, checks map[string]float64) {
	doc := debugUpstreams(t, s)
	return doc.Verification.On, doc.Verification.Checks
}

// TestTamperedUpstreamFallsThrough: an upstream whose .mod and .zip differ
// from the checksum database fails, after "|" the next one serves, and
// the cache holds the good bytes. After "," the build fails with the code
// that names both hashes, and nothing is kept.
func TestTamperedUpstreamFallsThrough(t *testing.T) {
	e := newEnv(t)
	good := e.proxy(t, true)
	tampered := modtest.NewProxy(t, e.fx) // no database of its own: good serves it
	m := fixture(t, e.fx, "fixture.test/dep01")
	for _, fallthrough_ := range []upstream.Fallthrough{upstream.OnError, upstream.OnNotFound} {
		t.Run(fallthrough_.String(), func(t *testing.T) {
			dir := t.TempDir()
			url, srv := startGateServer(t, sidecar.Config{SumDBKey: e.db.VerifierKey, Cache: sidecar.CacheConfig{Dir: dir},
				Upstreams: []upstream.Config{
					{Name: "tampered", URL: tampered.URL + "/f/tamper", Fallthrough: fallthrough_},
					{Name: "good", URL: good.URL},
				}})
			g := modtest.NewGo(t)
			g.UseProxy(url, e.db)
			tampered.Reset()
			_, stderr, err := g.Run("mod", "download", "fixture.test/dep01@v1.0.0")
			if tampered.CountMatching("/fixture.test/dep01/@v/v1.0.0.mod") == 0 {
				t.Fatalf("the tampered upstream was not asked: %v", tampered.Requests())
			}
			if on, _ := verification(t, srv); !on {
				t.Fatal("verification is off")
			}
			if fallthrough_ == upstream.OnNotFound {
				if err == nil {
					t.Fatal("the build succeeded with a tampered first upstream and no fall-through on errors")
				}
				if !strings.Contains(stderr, "modgate: checksum-mismatch:") || !strings.Contains(stderr, "h1:") {
					t.Errorf("the go command printed no checksum-mismatch naming the hashes:\n%s", stderr)
				}
				if b := cached(t, dir, "fixture.test/dep01/@v/v1.0.0.mod"); b != nil {
					t.Errorf("a refused go.mod was kept: %q", b)
				}
				return
			}
			if err != nil {
				t.Fatalf("go mod download through tampered|good: %v\n%s", err, stderr)
			}
			if b := cached(t, dir, "fixture.test/dep01/@v/v1.0.0.mod"); !bytes.Equal(b, m.Mod) {
				t.Errorf("cached go.mod %q; want the good one %q", b, m.Mod)
			}
			if b := cached(t, dir, "fixture.test/dep01/@v/v1.0.0.zip"); !bytes.Equal(b, m.Zip) {
				t.Errorf("cached zip is %d bytes; want the good %d", len(b), len(m.Zip))
			}
			if _, checks := verification(t, srv); checks["mismatch"] < 2 || checks["verified"] < 2 {
				t.Errorf("checks %v: want the tampered .mod and .zip mismatched, the good ones verified", checks)
			}
			for _, u := range debugUpstreams(t, srv).Upstreams {
				if u.Name == "tampered" && u.Breaker.Failures < 2 {
					t.Errorf("the tampered upstream's breaker counted %d failures; want its .mod and .zip", u.Breaker.Failures)
				}
			}
		})
	}
}

// TestForwardModeCannotPlant: a forward-mode client fetches a module's
// files from an origin of its choosing; reverse mode still serves the
// real ones, with verification on (the planted files are refused) and
// off (they are kept for that origin only).
func TestForwardModeCannotPlant(t *testing.T) {
	e := newEnv(t)
	good := e.proxy(t, true)
	evil := modtest.NewProxy(t, e.fx)
	const evilHost = "evil.example.test"
	m := fixture(t, e.fx, "fixture.test/dep02")
	for _, verified := range []bool{true, false} {
		name := map[bool]string{true: "verified", false: "unverified"}[verified]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := sidecar.Config{Cache: sidecar.CacheConfig{Dir: dir},
				Upstreams: []upstream.Config{{Name: "good", URL: good.URL}},
				Resolve:   map[string]string{evilHost + ":80": strings.TrimPrefix(evil.URL, "http://")},
				Forward:   sidecar.ForwardConfig{AllowHosts: []string{evilHost}},
			}
			if verified {
				cfg.SumDBKey = e.db.VerifierKey
			}
			gate := startGate(t, cfg)
			proxyURL, _ := url.Parse(gate)
			client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
			for _, ext := range []string{".info", ".mod", ".zip"} {
				resp, err := client.Get("http://" + evilHost + "/f/tamper/fixture.test/dep02/@v/v1.0.0" + ext)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				refused := resp.StatusCode == http.StatusBadGateway && strings.Contains(string(body), "checksum-mismatch")
				if verified && ext != ".info" && !refused {
					t.Errorf("planted %s: %d %q; want 502 checksum-mismatch", ext, resp.StatusCode, body)
				}
				if !verified && resp.StatusCode != http.StatusOK {
					t.Errorf("planted %s without verification: %d %q; want it relayed", ext, resp.StatusCode, body)
				}
			}
			if b := cached(t, dir, "fixture.test/dep02/@v/v1.0.0.mod"); b != nil {
				t.Fatalf("the forward-mode answer is kept under the canonical key: %q", b)
			}
			g := modtest.NewGo(t)
			g.UseProxy(gate, e.db)
			if _, stderr, err := g.Run("mod", "download", "fixture.test/dep02@v1.0.0"); err != nil {
				t.Fatalf("reverse mode after the plant: %v\n%s", err, stderr)
			}
			if b := cached(t, dir, "fixture.test/dep02/@v/v1.0.0.mod"); !bytes.Equal(b, m.Mod) {
				t.Errorf("cached go.mod %q; want the real one", b)
			}
		})
	}
}

// TestSharedStoreObjectsAreVerified: objects written straight into the
// shared store, with metadata that matches them (another module's go.mod,
// something that is not a zip, another module's zip), are never served
// and are replaced by what upstreams answer.
func TestSharedStoreObjectsAreVerified(t *testing.T) {
	e := newEnv(t)
	good := e.proxy(t, true)
	ctx := context.Background()
	st, _ := fileStore(t)
	dep03, dep04, dep05, dep06 := fixture(t, e.fx, "fixture.test/dep03"), fixture(t, e.fx, "fixture.test/dep04"), fixture(t, e.fx, "fixture.test/dep05"), fixture(t, e.fx, "fixture.test/dep06")
	plant := map[string][]byte{
		"fixture.test/dep03/@v/v1.0.0.mod": dep04.Mod,
		"fixture.test/dep03/@v/v1.0.0.zip": []byte("this is not a zip\n"),
		"fixture.test/dep05/@v/v1.0.0.zip": dep06.Zip,
	}
	for key, body := range plant {
		sum := sha256.Sum256(body)
		if err := st.Put(ctx, key, bytes.NewReader(body), store.Object{Size: int64(len(body)), SHA256: hex.EncodeToString(sum[:])}); err != nil {
			t.Fatal(err)
		}
	}
	gate := sidecartest.Start(t, nil, sidecar.Config{SumDB: sumdbName, SumDBKey: e.db.VerifierKey, Cache: sidecar.CacheConfig{Dir: t.TempDir(), Shared: st},
		Upstreams: []upstream.Config{{Name: "good", URL: good.URL}}})
	e.go_.UseProxy(gate.URL, e.db)
	if out, err := e.download("fixture.test/dep03@v1.0.0", "fixture.test/dep05@v1.0.0"); err != nil {
		t.Fatalf("go mod download with planted objects in the shared store: %v\n%s", err, out)
	}
	gate.Stop() // what it fetched goes to the store once it is served
	want := map[string][]byte{
		"fixture.test/dep03/@v/v1.0.0.mod": dep03.Mod,
		"fixture.test/dep03/@v/v1.0.0.zip": dep03.Zip,
		"fixture.test/dep05/@v/v1.0.0.zip": dep05.Zip,
	}
	for key, body := range want {
		var got bytes.Buffer
		if _, err := st.Get(ctx, key, &got); err != nil || !bytes.Equal(got.Bytes(), body) {
			t.Errorf("store's %s after the build: %d bytes, %v; want the real %d bytes", key, got.Len(), err, len(body))
		}
	}
	if s := st.Status(); s.Damaged < 3 {
		t.Errorf("store status %+v: want the 3 planted objects counted as damaged", s)
	}
}

// TestOfflineReplicaVerifiesFromTheSharedStore: a replica with an empty
// disk, offline, with verification on, serves a fresh module cache from
// a shared store that another replica warmed: lookups and tiles are in
// the store too.
func TestOfflineReplicaVerifiesFromTheSharedStore(t *testing.T) {
	e := newEnv(t)
	e.db.Preload(t)
	good := e.proxy(t, true)
	st, _ := fileStore(t)
	mods := []string{"fixture.test/dep07@v1.0.0", "fixture.test/dep08@v1.0.0", "fixture.test/dep10@v1.0.0"}
	online := sidecartest.Start(t, nil, sidecar.Config{SumDB: sumdbName, SumDBKey: e.db.VerifierKey, Cache: sidecar.CacheConfig{Dir: t.TempDir(), Shared: st},
		Upstreams: []upstream.Config{{Name: "good", URL: good.URL}}})
	e.go_.UseProxy(online.URL, e.db)
	if out, err := e.download(mods...); err != nil {
		t.Fatalf("online replica: %v\n%s", err, out)
	}
	online.Stop() // what it fetched is in the store once its fetches are done
	offline, srv := startGateServer(t, sidecar.Config{SumDBKey: e.db.VerifierKey, Offline: true,
		Cache:     sidecar.CacheConfig{Dir: t.TempDir(), Shared: st},
		Upstreams: []upstream.Config{{URL: "off"}}})
	g := modtest.NewGo(t)
	g.UseProxy(offline, e.db)
	if _, stderr, err := g.Run(append([]string{"mod", "download"}, mods...)...); err != nil {
		t.Fatalf("offline replica with an empty disk: %v\n%s", err, stderr)
	}
	if _, checks := verification(t, srv); checks["mismatch"] != 0 {
		t.Errorf("checks %v", checks)
	}
}

// TestTamperedChecksumDatabase: a checksum database (or a mirror of it)
// whose lookups its own signed log does not prove is caught: the lookup
// is refused with checksum-mismatch, and the build fails as it would
// without modgate, with nothing kept.
func TestTamperedChecksumDatabase(t *testing.T) {
	e := newEnv(t)
	modules := modtest.NewProxy(t, e.fx) // no database: modgate goes to its URL
	dbURL := e.db.Serve(t)
	dir := t.TempDir()
	url := startGate(t, sidecar.Config{SumDBKey: e.db.VerifierKey, SumDBURL: dbURL + "/f/tamper", Cache: sidecar.CacheConfig{Dir: dir},
		Upstreams: []upstream.Config{{Name: "modules", URL: modules.URL}}})
	e.go_.UseProxy(url, e.db)
	out, err := e.download("fixture.test/dep11@v1.0.0")
	if err == nil {
		t.Fatalf("the build succeeded against a tampered checksum database:\n%s", out)
	}
	if !strings.Contains(out, "modgate: checksum-mismatch:") {
		t.Errorf("the go command printed no checksum-mismatch:\n%s", out)
	}
	for _, key := range []string{"fixture.test/dep11/@v/v1.0.0.mod", "fixture.test/dep11/@v/v1.0.0.zip", "sumdb/" + sumdbName + "/lookup/fixture.test/dep11@v1.0.0"} {
		if b := cached(t, dir, key); b != nil {
			t.Errorf("%s was kept", key)
		}
	}
}

// TestVerifyCache: `modgate cache verify` finds a local entry and a shared
// store object that are not what the checksum database holds (written
// behind modgate's back), removes them, and leaves the good ones.
func TestVerifyCache(t *testing.T) {
	e := newEnv(t)
	good := e.proxy(t, true)
	ctx := context.Background()
	st, _ := fileStore(t)
	dir := t.TempDir()
	cfg := sidecar.Config{SumDB: sumdbName, SumDBKey: e.db.VerifierKey, Cache: sidecar.CacheConfig{Dir: dir, Shared: st},
		Upstreams: []upstream.Config{{Name: "good", URL: good.URL}}}
	gate := sidecartest.Start(t, nil, cfg)
	e.go_.UseProxy(gate.URL, e.db)
	if out, err := e.download("fixture.test/dep12@v1.0.0"); err != nil {
		t.Fatalf("warming the cache: %v\n%s", err, out)
	}
	gate.Stop()
	const modKey, zipKey, infoKey = "fixture.test/dep12/@v/v1.0.0.mod", "fixture.test/dep12/@v/v1.0.0.zip", "fixture.test/dep12/@v/v1.0.0.info"
	c, err := cache.Open(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Create(modKey, "")
	if err != nil {
		t.Fatal(err)
	}
	other := fixture(t, e.fx, "fixture.test/dep13")
	w.Write(other.Mod)
	if err := w.Commit(int64(len(other.Mod)), nil); err != nil {
		t.Fatal(err)
	}
	st.Reject(zipKey, "replaced by the test")
	sum := sha256.Sum256(other.Zip)
	if err := st.Put(ctx, zipKey, bytes.NewReader(other.Zip), store.Object{Size: int64(len(other.Zip)), SHA256: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	keys := func(yield func(string) bool) {
		for _, k := range []string{modKey, zipKey, infoKey, "sumdb/" + sumdbName + "/lookup/fixture.test/dep12@v1.0.0"} {
			if !yield(k) {
				return
			}
		}
	}
	// As `modgate cache verify` does: a modgate of the same config that
	// does not serve.
	srv, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{}
	r, err := srv.VerifyCache(ctx, keys, true, func(tier, key, verdict, detail string) { verdicts[tier+" "+key] = verdict })
	if err != nil {
		t.Fatal(err)
	}
	if verdicts["local "+modKey] != sidecar.VerdictRemoved || verdicts["shared "+zipKey] != sidecar.VerdictRemoved {
		t.Errorf("verdicts %v: want the local go.mod and the shared zip removed", verdicts)
	}
	if verdicts["local "+zipKey] != sidecar.VerdictVerified || verdicts["local sumdb/"+sumdbName+"/lookup/fixture.test/dep12@v1.0.0"] != sidecar.VerdictVerified {
		t.Errorf("verdicts %v: want the local zip and lookup verified", verdicts)
	}
	if r.Skipped == 0 {
		t.Errorf("report %+v: the .info is not the checksum database's to judge", r)
	}
	if b := cached(t, dir, modKey); b != nil {
		t.Errorf("the bad go.mod is still cached")
	}
	var buf bytes.Buffer
	if _, err := st.Get(ctx, zipKey, &buf); err == nil {
		t.Errorf("the bad zip is still in the shared store")
	}
}

// TestForwardLookupWithoutARoute: in forward mode, when modgate's own
// route to the checksum database is down, the go command's lookups go to
// the origin it named (the go command verifies them itself), and the
// build works as it would without modgate; nothing unverified is kept.
func TestForwardLookupWithoutARoute(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	const host = "proxy.fixture.test"
	gate := startGate(t, sidecar.Config{SumDBKey: e.db.VerifierKey, Cache: sidecar.CacheConfig{Dir: dir},
		Upstreams: []upstream.Config{{URL: "off"}},
		Resolve:   map[string]string{host + ":80": strings.TrimPrefix(p.URL, "http://"), sumdbName + ":443": dead},
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{host}}})
	g := modtest.NewGo(t)
	g.UseProxy("http://"+host, e.db)
	g.Setenv("HTTP_PROXY", gate)
	g.Setenv("http_proxy", gate)
	if _, stderr, err := g.Run("mod", "download", "fixture.test/dep14@v1.0.0"); err != nil {
		t.Fatalf("forward mode with no route to the database: %v\n%s", err, stderr)
	}
	if b := cached(t, dir, "fixture.test/dep14/@v/v1.0.0.zip"); b != nil {
		t.Errorf("an unverified zip was kept under the canonical key")
	}
}

// TestLargeZipVerifiedAsKept: a zip larger than VerifyFirstMax streams as
// it arrives; it is kept only when it matches the checksum database, and
// one that does not counts against its upstream (the go command refuses
// it itself).
func TestLargeZipVerifiedAsKept(t *testing.T) {
	e := newEnv(t)
	good := e.proxy(t, true)
	tampered := modtest.NewProxy(t, e.fx)
	m := fixture(t, e.fx, "fixture.test/dep15")
	for _, bad := range []bool{false, true} {
		t.Run(map[bool]string{false: "good", true: "tampered"}[bad], func(t *testing.T) {
			ups := []upstream.Config{{Name: "good", URL: good.URL}}
			if bad {
				ups = append([]upstream.Config{{Name: "tampered", URL: tampered.URL + "/f/tamper", Fallthrough: upstream.OnError}}, ups...)
			}
			dir := t.TempDir()
			gate := sidecartest.Start(t, nil, sidecar.Config{SumDB: sumdbName, SumDBKey: e.db.VerifierKey, VerifyFirstMax: 1,
				Cache: sidecar.CacheConfig{Dir: dir}, Upstreams: ups})
			g := modtest.NewGo(t)
			g.UseProxy(gate.URL, e.db)
			_, stderr, err := g.Run("mod", "download", "fixture.test/dep15@v1.0.0")
			gate.Stop() // the zip is judged as it is kept, after it is served
			page := debugUpstreams(t, gate.Server)
			if !bad {
				if err != nil {
					t.Fatalf("go mod download: %v\n%s", err, stderr)
				}
				if b := cached(t, dir, "fixture.test/dep15/@v/v1.0.0.zip"); !bytes.Equal(b, m.Zip) {
					t.Errorf("the verified zip was not kept (%d bytes)", len(b))
				}
				if page.Verification.Checks["verified"] < 2 {
					t.Errorf("checks %v: want the go.mod and the zip verified", page.Verification.Checks)
				}
				return
			}
			if err == nil || !strings.Contains(stderr, "checksum mismatch") {
				t.Errorf("the go command took a tampered zip: %v\n%s", err, stderr)
			}
			if b := cached(t, dir, "fixture.test/dep15/@v/v1.0.0.zip"); b != nil {
				t.Errorf("the tampered zip was kept")
			}
			if page.Verification.Checks["mismatch"] < 2 {
				t.Errorf("checks %v: want the go.mod and the zip mismatched", page.Verification.Checks)
			}
			for _, u := range page.Upstreams {
				if u.Name == "tampered" && u.Breaker.Failures < 2 {
					t.Errorf("the tampered upstream's breaker counted %d failures", u.Breaker.Failures)
				}
			}
		})
	}
}
