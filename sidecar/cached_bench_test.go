package sidecar

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/upstream"
)

// BenchmarkCacheSmall alternates small .info requests through a modgate
// with a warm cache and one without a cache, and reports
// "cached/uncached-throughput" (target at least 2).
func BenchmarkCacheSmall(b *testing.B) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`)
	}))
	defer origin.Close()
	gate := func(cc CacheConfig) *httptest.Server {
		s, err := New(Config{Cache: cc, Upstreams: []upstream.Config{{Name: "origin", URL: origin.URL}}})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		b.Cleanup(srv.Close)
		return srv
	}
	cached, uncached := gate(CacheConfig{Dir: b.TempDir()}), gate(CacheConfig{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	fetch := func(srv *httptest.Server) time.Duration {
		start := time.Now()
		resp, err := client.Get(srv.URL + "/fixture.test/a/@v/v1.0.0.info")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return time.Since(start)
	}
	for range 200 {
		fetch(cached)
		fetch(uncached)
	}
	var tc, tu time.Duration
	n := 0
	for b.Loop() {
		tc += fetch(cached)
		tu += fetch(uncached)
		n++
	}
	b.ReportMetric(float64(tc.Nanoseconds())/float64(n), "cached-ns/req")
	b.ReportMetric(float64(tu.Nanoseconds())/float64(n), "uncached-ns/req")
	b.ReportMetric(float64(tu)/float64(tc), "cached/uncached-throughput")
}

// BenchmarkCacheZip serves a 256 MiB zip from the cache and, alternating,
// straight from an origin that holds it in memory (as the fake module
// proxy holds its zips), and reports "cached/direct-throughput" (target at
// least 0.9).
func BenchmarkCacheZip(b *testing.B) {
	const size = 256 << 20
	chunk := bytes.Repeat([]byte("modgate!"), 4<<10)
	zip := bytes.Repeat(chunk, size/len(chunk))
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "268435456")
		w.Write(zip)
	}))
	defer origin.Close()
	dir := b.TempDir()
	c, err := cache.Open(dir, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	// The entry is put in place directly: serving is what is measured.
	const key = "fixture.test/big/@v/v1.0.0.zip"
	w, _ := c.Create(key, "application/zip")
	for left := size; left > 0; left -= len(chunk) {
		w.Write(chunk[:min(left, len(chunk))])
	}
	if err := w.Commit(size, nil); err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{Cache: CacheConfig{Dir: dir}, Upstreams: []upstream.Config{{Name: "origin", URL: origin.URL}}})
	if err != nil {
		b.Fatal(err)
	}
	gate := httptest.NewServer(s.Handler())
	defer gate.Close()
	get := func(url string) time.Duration {
		start := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if n != size {
			b.Fatalf("%d bytes", n)
		}
		return time.Since(start)
	}
	get(gate.URL + "/" + key) // the first hit hashes the entry once
	var tCache, tDirect time.Duration
	n := 0
	for b.Loop() {
		tCache += get(gate.URL + "/" + key)
		tDirect += get(origin.URL + "/" + key)
		n++
	}
	mb := float64(size) / 1e6 * float64(n)
	b.ReportMetric(mb/tCache.Seconds(), "cached-MB/s")
	b.ReportMetric(mb/tDirect.Seconds(), "direct-MB/s")
	b.ReportMetric(float64(tDirect)/float64(tCache), "cached/direct-throughput")
}
