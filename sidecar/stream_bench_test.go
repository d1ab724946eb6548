package sidecar

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/upstream"
)

// zipSize is the artifact the streaming benchmark passes through.
const zipSize = 500 << 20

// bigZipServer serves zipSize bytes for any .zip path without holding them
// in memory.
func bigZipServer(b *testing.B) *httptest.Server {
	chunk := bytes.Repeat([]byte("modgate!"), 4<<10) // 32 KiB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, ".zip") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/zip")
		w.Header().Set("Content-Length", strconv.Itoa(zipSize))
		for left := zipSize; left > 0; left -= len(chunk) {
			if _, err := w.Write(chunk[:min(left, len(chunk))]); err != nil {
				return
			}
		}
	}))
	b.Cleanup(srv.Close)
	return srv
}

// BenchmarkStreamZip passes a 500 MiB zip through modgate and, in the same
// run, through the floor (httputil.ReverseProxy with Rewrite and nothing
// else). It reports throughput (MB/s) and, for each, how much the process's
// peak RSS and the Go heap grew while streaming: bodies must stream, never
// be buffered whole.
func BenchmarkStreamZip(b *testing.B) {
	origin := bigZipServer(b)
	target, _ := url.Parse(origin.URL)
	floor := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	s, err := New(Config{Upstreams: []upstream.Config{{Name: "origin", URL: origin.URL}}})
	if err != nil {
		b.Fatal(err)
	}
	s.ready.Store(true)
	for _, bc := range []struct {
		name    string
		handler http.Handler
	}{{"floor", floor}, {"modgate", s.Handler()}} {
		b.Run(bc.name, func(b *testing.B) {
			srv := httptest.NewServer(bc.handler)
			defer srv.Close()
			client := srv.Client()
			get := func() int64 {
				resp, err := client.Get(srv.URL + "/fixture.test/big/@v/v1.0.0.zip")
				if err != nil {
					b.Fatal(err)
				}
				defer resp.Body.Close()
				n, err := io.Copy(io.Discard, resp.Body)
				if err != nil || resp.StatusCode != 200 || n != zipSize {
					b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
				}
				return n
			}
			get() // warm up connections and buffers
			runtime.GC()
			rssBefore := resetPeakRSS(b)
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heapBefore := ms.HeapInuse
			b.SetBytes(zipSize)
			b.ResetTimer()
			for b.Loop() {
				get()
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(peakRSS(b)-rssBefore)/(1<<20), "rss-growth-MiB")
			b.ReportMetric(float64(int64(ms.HeapInuse)-int64(heapBefore))/(1<<20), "heap-growth-MiB")
		})
	}
}

// resetPeakRSS resets the kernel's high-water mark of this process's RSS
// (clear_refs 5) and returns the current RSS.
func resetPeakRSS(b *testing.B) int64 {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset peak RSS: %v", err)
	}
	return procStatus(b, "VmRSS")
}

func peakRSS(b *testing.B) int64 { return procStatus(b, "VmHWM") }

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(b *testing.B, field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Skip(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb)
			return kb << 10
		}
	}
	b.Skipf("no %s in /proc/self/status", field)
	return 0
}
