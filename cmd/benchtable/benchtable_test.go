package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"

	"github.com/modgate/modgate/sidecar/modtest"
)

func TestMain(m *testing.M) {
	// lumberjack (the audit log's rotation) starts one goroutine per
	// rotating file and has no way to stop it.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

// BenchmarkHotPath is the hot-path row of the table under go test, for
// profiling:
//
//	go test -run='^$' -bench=HotPath -benchmem -cpuprofile cpu.out ./cmd/benchtable
//
// Client, origin and proxies share the process; the direct column is the
// client and origin alone.
func BenchmarkHotPath(b *testing.B) {
	e, err := newInproc(b.TempDir(), modtest.FixtureDir(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	for _, kind := range hotKinds {
		for _, name := range hotColumns {
			b.Run("kind="+kind+"/target="+name, func(b *testing.B) { e.hotPath(b, kind, name) })
		}
	}
}

// TestInProcessGate sends every kind of request the hot path measures
// through the floor and the in-process modgate once, and checks that each
// comes back whole: the policy allows the fixtures, forward mode reaches
// the loopback origin, tunnels open, and modgate writes an audit line per
// request and, sampling every request, a server and a client span each.
func TestInProcessGate(t *testing.T) {
	dir := t.TempDir()
	o, paths, err := newOrigin(modtest.FixtureDir(t), testZip(t, 3<<20))
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(o)
	defer origin.Close()
	originAddr := origin.Listener.Addr().String()
	floorHandler, err := newFloor(origin.URL)
	if err != nil {
		t.Fatal(err)
	}
	floor := httptest.NewServer(floorHandler)
	defer floor.Close()
	policyFile, err := writePolicy(dir)
	if err != nil {
		t.Fatal(err)
	}
	audit := filepath.Join(dir, "audit", "modgate.jsonl")
	g, err := startGate(gateConfig{Origin: origin.URL, AlwaysOn: true, Policy: policyFile, Audit: audit})
	if err != nil {
		t.Fatal(err)
	}
	gateAddr := g.ln.Addr().String()
	floorAddr := floor.Listener.Addr().String()

	all := append(append([]string{}, paths...), zipPath)
	sent, proxied := 0, 0
	for _, tg := range []*target{
		{name: "direct", addr: originAddr, reqs: requests(all, originAddr, false)},
		{name: "floor", addr: floorAddr, reqs: requests(all, floorAddr, false)},
		{name: "modgate", addr: gateAddr, reqs: requests(all, gateAddr, false)},
		{name: "floor absolute-form", addr: floorAddr, reqs: requests(all, originAddr, true)},
		{name: "modgate absolute-form", addr: gateAddr, reqs: requests(all, originAddr, true)},
		{name: "floor tunnel", addr: floorAddr, via: originAddr, reqs: requests(all, originAddr, false)},
		{name: "modgate tunnel", addr: gateAddr, via: originAddr, reqs: requests(all, originAddr, false)},
	} {
		roundTrips(t, o, tg, all)
		if strings.HasPrefix(tg.name, "modgate") {
			if tg.via == "" {
				sent += len(all)
				proxied += len(all)
			} else {
				sent++ // one audit line for the tunnel
			}
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("\n")); n != sent {
		t.Errorf("audit log has %d lines, want %d", n, sent)
	}
	if !bytes.Contains(data, []byte(`"decision":"allow"`)) || !bytes.Contains(data, []byte(`"trace_id":"`)) {
		t.Errorf("audit lines without a decision or trace id:\n%.400s", data)
	}
	// Every proxied request: a server and a client span; every tunnel: one.
	if n, want := g.spans.n.Load(), int64(2*proxied+1); n != want {
		t.Errorf("the in-process exporter received %d spans, want %d", n, want)
	}
}

// roundTrips sends tg's requests (for paths) on one connection and checks
// each answer's status and length.
func roundTrips(t *testing.T, o *origin, tg *target, paths []string) {
	t.Helper()
	want := func(p string) int64 {
		if p == zipPath {
			return o.zip.size
		}
		return int64(len(o.files[p].body))
	}
	c, err := tg.dial()
	if err != nil {
		t.Fatalf("%s: %v", tg.name, err)
	}
	defer func() { c.Close() }()
	for i, req := range tg.reqs {
		a, err := c.roundTrip(req)
		if err != nil || a.status != 200 || a.bytes != want(paths[i]) {
			t.Fatalf("%s %s: status %d, %d bytes (want %d), %v", tg.name, paths[i], a.status, a.bytes, want(paths[i]), err)
		}
		if a.close {
			c.Close()
			if c, err = tg.dial(); err != nil {
				t.Fatalf("%s: %v", tg.name, err)
			}
		}
	}
}

// TestShippedColumns starts every column of the table the way `make bench`
// does (`modgate run` built from this module, nginx and Squid if they are
// installed) and sends each kind of request they serve in the table
// through them once; it checks what the table reads from each process:
// CPU time, allocations, memory, and that the OTLP columns export and the
// cached one serves from its cache.
func TestShippedColumns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds modgate")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "modgate")
	build := exec.Command("go", "build", "-o", bin, "github.com/modgate/modgate/cmd/modgate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	o, paths, err := newOrigin(modtest.FixtureDir(t), testZip(t, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	origin := httptest.NewServer(o)
	defer origin.Close()
	originAddr := origin.Listener.Addr().String()
	policyFile, err := writePolicy(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(originAddr)
	configFile := filepath.Join(dir, "modgate.yaml")
	if err := os.WriteFile(configFile, []byte(fmt.Sprintf(modgateConfig, origin.URL, policyFile, port)), 0o644); err != nil {
		t.Fatal(err)
	}
	small := append([]string{}, paths[:6]...)
	all := append(append([]string{}, small...), zipPath)
	for _, mc := range modgateColumns {
		recv := &receiver{}
		rs := httptest.NewServer(recv)
		defer rs.Close()
		c, err := startModgate(bin, dir, configFile, rs.URL, o.key, mc)
		if err != nil {
			t.Fatal(err)
		}
		addr := c.addrs.HTTP
		before, ok := c.allocs()
		if !ok {
			t.Errorf("%s: no allocation counts on /metrics", mc.name)
		}
		roundTrips(t, o, &target{name: mc.name, addr: addr, reqs: requests(all, addr, false)}, all)
		roundTrips(t, o, &target{name: mc.name + " again", addr: addr, reqs: requests(small, addr, false)}, small)
		roundTrips(t, o, &target{name: mc.name + " absolute-form", addr: addr, reqs: requests(small, originAddr, true)}, small)
		roundTrips(t, o, &target{name: mc.name + " tunnel", addr: addr, via: originAddr, reqs: requests(all, originAddr, false)}, all)
		// The runtime counts allocations as its per-P caches refill: a few
		// hundred requests more make sure they show.
		many := requests(small, addr, false)
		for len(many) < 600 {
			many = append(many, many[:len(small)]...)
		}
		manyPaths := make([]string, len(many))
		for i := range many {
			manyPaths[i] = small[i%len(small)]
		}
		roundTrips(t, o, &target{name: mc.name + " many", addr: addr, reqs: many}, manyPaths)
		if after, _ := c.allocs(); after.Objects <= before.Objects || after.Bytes <= before.Bytes {
			t.Errorf("%s: allocations %+v, then %+v", mc.name, before, after)
		}
		if c.cpu() <= 0 {
			t.Errorf("%s: no CPU time read", mc.name)
		}
		if mc.name == "cached" {
			resp, err := http.Get("http://" + c.admin + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Contains(body, []byte(`modgate_cache_requests_total{modgate_cache_result="hit"`)) {
				t.Errorf("cached: no cache hit on /metrics")
			}
		}
		// The columns that are given the origin's checksum database verify
		// the zip and the .mod answers against it; the unverified one
		// verifies nothing.
		verifies := slices.Contains(mc.flags, "{sumdb}")
		verified, mismatched := checksumChecks(t, c.admin)
		if verifies && (verified < 2 || mismatched != 0) || !verifies && verified != 0 {
			t.Errorf("%s: %v verified, %v mismatched on /metrics; verifying: %v", mc.name, verified, mismatched, verifies)
		}
		if err := c.memStart(); err != nil {
			t.Errorf("%s: %v", mc.name, err)
		} else if rep, err := c.memStop(); err != nil || rep.PeakRSS == 0 || rep.RSSBefore == 0 {
			t.Errorf("%s: memory report %+v, %v", mc.name, rep, err)
		}
		c.stop() // flushes telemetry
		if got := recv.traces.Load() > 0; got != mc.otlp {
			t.Errorf("%s: traces exported %v, want %v", mc.name, got, mc.otlp)
		}
		audit, _ := os.ReadFile(filepath.Join(dir, mc.name+".audit.jsonl"))
		if n, want := bytes.Count(audit, []byte("\n")), len(all)+2*len(small)+len(many)+1; n != want {
			t.Errorf("%s: %d audit lines, want %d", mc.name, n, want)
		}
	}

	t.Run("nginx", func(t *testing.T) {
		dir := t.TempDir()
		www := filepath.Join(dir, "www")
		if err := o.writeFiles(www); err != nil {
			t.Fatal(err)
		}
		c, files, err := startNginx(dir, originAddr, www)
		if err != nil {
			t.Skip(err)
		}
		defer c.stop()
		roundTrips(t, o, &target{name: "nginx", addr: c.addrs.HTTP, reqs: requests(all, originAddr, false)}, all)
		// nginx-file serves the origin's bytes from files, the zip too.
		roundTrips(t, o, &target{name: "nginx-file", addr: files.addrs.HTTP, reqs: requests(all, originAddr, false)}, all)
		if n := len(processTree(c.cmd.Process.Pid)); n < 2 {
			t.Errorf("nginx: %d processes, want its master and workers", n)
		}
		if _, ok := c.allocs(); ok {
			t.Error("nginx reports Go allocations")
		}
	})
	t.Run("squid", func(t *testing.T) {
		c, err := startSquid(t.TempDir())
		if err != nil {
			t.Skip(err)
		}
		defer c.stop()
		roundTrips(t, o, &target{name: "squid absolute-form", addr: c.addrs.HTTP, reqs: requests(all, originAddr, true)}, all)
		roundTrips(t, o, &target{name: "squid tunnel", addr: c.addrs.HTTP, via: originAddr, reqs: requests(all, originAddr, false)}, all)
		if c.cpu() <= 0 {
			t.Error("squid: no CPU time read")
		}
	})
}

// TestRawConn checks the load generator's reader against net/http's
// server: lengths, chunks, bodies that end with the connection, no body.
func TestRawConn(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Write(bytes.Repeat([]byte("x"), 100<<10))
		case "/chunked":
			for range 3 {
				w.Write(bytes.Repeat([]byte("y"), 1000))
				w.(http.Flusher).Flush()
			}
		case "/close":
			c, brw, _ := http.NewResponseController(w).Hijack()
			brw.WriteString("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
			brw.Flush()
			c.Close()
		case "/none":
			w.WriteHeader(http.StatusNotModified)
		}
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	c, err := dialRaw(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }()
	for _, tc := range []struct {
		path   string
		status int
		bytes  int64
		close  bool
	}{
		{"/length", 200, 100 << 10, false},
		{"/chunked", 200, 3000, false},
		{"/none", 304, 0, false},
		{"/length", 200, 100 << 10, false},
		{"/close", 200, int64(len("until the end")), true},
	} {
		a, err := c.roundTrip(requests([]string{tc.path}, addr, false)[0])
		if err != nil || a.status != tc.status || a.bytes != tc.bytes || a.close != tc.close {
			t.Errorf("%s: got %+v, %v; want status %d, %d bytes, close %v", tc.path, a, err, tc.status, tc.bytes, tc.close)
		}
	}
}

// TestRawConnConnect checks the CONNECT handshake and a refusal.
func TestRawConnConnect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err == nil && i == 0 && req.Method == http.MethodConnect {
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			} else {
				io.WriteString(c, "HTTP/1.1 403 modgate: refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}
			c.Close()
		}
	}()
	c, err := dialRaw(ln.Addr().String(), "origin.example.test:443")
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.readResponse(false)
	c.Close()
	if err != nil || a.status != 200 || a.bytes != 2 {
		t.Errorf("through the tunnel: %+v, %v", a, err)
	}
	if _, err := dialRaw(ln.Addr().String(), "origin.example.test:443"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("refused CONNECT: err = %v, want status 403", err)
	}
	ln.Close()
	<-done
}

func TestPercentile(t *testing.T) {
	s := &stats{}
	for i := 1; i <= 100; i++ {
		s.lat = append(s.lat, time.Duration(i)*time.Microsecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Microsecond, 99: 99 * time.Microsecond, 100: 100 * time.Microsecond} {
		if got := s.pct(p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := (&stats{}).pct(50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
	for d, want := range map[time.Duration]string{-1500 * time.Nanosecond: "-2 µs", -400 * time.Nanosecond: "+0 µs", 12345 * time.Microsecond: "+12,345 µs"} {
		if got := signedMicros(d); got != want {
			t.Errorf("signedMicros(%v) = %q, want %q", d, got, want)
		}
	}
	if got, want := fmt.Sprint(growth(1<<20, 2<<20)), "0"; got != want {
		t.Errorf("growth below zero = %s, want %s", got, want)
	}
}

// TestTargets checks the verdicts the table prints against made-up rows:
// each target compares the right columns with the right bound.
func TestTargets(t *testing.T) {
	st := func(rps float64, p50 time.Duration) *stats {
		s := &stats{n: int(rps), elapsed: time.Second, cpu: time.Duration(rps) * 100 * time.Microsecond}
		s.lat = []time.Duration{p50}
		return s
	}
	mb := func(mbps float64) *stats { return &stats{n: 1, bytes: int64(mbps * 1e6), elapsed: time.Second} }
	r := newReport(options{zipMiB: 256})
	var out strings.Builder
	r.w = &out
	r.loads[sectionSmall] = []loadRow{
		{clients: 1, res: map[string]*stats{"floor": st(1000, 100*time.Microsecond), "modgate": st(1050, 115*time.Microsecond), "otlp": st(790, 0), "sdk-off": st(1000, 0), "always-on": st(500, 0)}},
		{clients: 16, res: map[string]*stats{"floor": st(1000, 0), "modgate": st(910, 0), "otlp": st(850, 0), "sdk-off": st(1000, 0), "always-on": st(500, 0)}},
	}
	r.loads[sectionCached] = []loadRow{
		{clients: 1, res: map[string]*stats{"floor": st(1000, 0), "nginx-file": st(3000, 0), "cached": st(2100, 0)}},
		{clients: 32, res: map[string]*stats{"floor": st(1000, 0), "nginx-file": st(4000, 0), "cached": st(2100, 0)}},
	}
	r.loads[sectionForward] = []loadRow{{clients: 16, res: map[string]*stats{"floor": st(1000, 0), "squid": st(1200, 0), "modgate": st(1100, 0)}}}
	r.loads[sectionTunnel] = []loadRow{{clients: 16, res: map[string]*stats{"floor": st(1000, 0), "squid": st(1000, 0), "modgate": st(1010, 0)}}}
	r.streams[sectionZip] = map[string]*stats{"floor": mb(1000), "modgate": mb(950)}
	r.streams[sectionZip]["modgate"].mem = &memReport{RSSBefore: 10 << 20, PeakRSS: 50 << 20}
	r.streams[sectionTunnelZipTLS] = map[string]*stats{"squid": mb(500), "modgate": mb(520)}
	r.targets()
	for _, want := range []string{
		"MISSED  default config (modgate) ≥ 1.0× floor req/s: 1.05× at 1, 0.91× at 16",
		"met     default config p50 added ≤ floor + 20 µs (1 client: no queueing): +15 µs at 1",
		"MISSED  OTLP export, default sampler (otlp) ≥ 0.8× floor req/s: 0.79× at 1, 0.85× at 16",
		"report  always_on at 16: 0.50× floor req/s, CPU 100.0 µs/req (floor 100.0, modgate default 100.0)",
		"met     cached small artifacts ≥ 2× floor req/s: 2.10× at 1, 2.10× at 32",
		"met     cached small artifacts ≥ 0.6× nginx-file req/s at 1 client, ≥ 0.5× above: 0.70× at 1, 0.53× at 32",
		"met     zip with verification on (streamed, verified as it is kept), ≥ 0.9× floor MB/s: 0.95×",
		"MISSED  modgate's RSS growth while streaming 256 MiB < 32 MiB: 40.0 MiB",
		"MISSED  forward absolute-form small ≥ 1.0× Squid req/s: 0.92× at 16",
		"met     CONNECT 256 MiB over TLS ≥ 1.0× Squid MB/s: 1.04×",
		"met     small requests through open CONNECT tunnels ≥ 1.0× Squid req/s: 1.01× at 16",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no line %q in:\n%s", want, out.String())
		}
	}
	// Without nginx, no nginx-file target (and no "n/a" verdict).
	delete(r.loads[sectionCached][0].res, "nginx-file")
	delete(r.loads[sectionCached][1].res, "nginx-file")
	out.Reset()
	r.targets()
	if strings.Contains(out.String(), "nginx-file") {
		t.Errorf("an nginx-file target without the column:\n%s", out.String())
	}
	// The peers' ratios are lines of the row's block.
	b := r.loadBlock("t", []loadRow{{clients: 1, res: map[string]*stats{"floor": st(1000, 0), "nginx-file": st(4000, 0), "cached": st(2000, 0)}}})
	found := false
	for _, l := range b.lines {
		if strings.HasPrefix(l[0], "× nginx-file") {
			found = slices.Contains(l, "0.50×")
		}
	}
	if !found {
		t.Errorf("no × nginx-file line with 0.50× for cached: %q", b.lines)
	}
}

// TestFleetModuleSet checks the fleet rows' fixture: every zip is one
// modgate accepts (a valid module zip), and the fake upstream serves each
// artifact whole and counts what it was asked.
func TestFleetModuleSet(t *testing.T) {
	set, err := newFleetModuleSet(3)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.modules) != 3 || len(set.files) != 9 {
		t.Fatalf("%d modules, %d artifacts; want 3 and 9", len(set.modules), len(set.files))
	}
	for i, m := range set.modules {
		zipPath := filepath.Join(t.TempDir(), "m.zip")
		if err := os.WriteFile(zipPath, set.files[m[2]].body, 0o644); err != nil {
			t.Fatal(err)
		}
		mv := module.Version{Path: fmt.Sprintf("fixture.test/fleet/m%02d", i+1), Version: fleetVersion}
		if _, err := modzip.CheckZip(mv, zipPath); err != nil {
			t.Errorf("%s: %v", m[2], err)
		}
	}
	u := &fleetUpstream{set: set, counts: map[string]int{}}
	srv := httptest.NewServer(u)
	defer srv.Close()
	fb := &fleetBench{set: set}
	client := srv.Client()
	for _, p := range append(set.modules[0][:], set.modules[0][2], set.modules[1][0]) {
		if err := fb.fetch(client, srv.URL+p, set.files[p]); err != nil {
			t.Error(err)
		}
	}
	if err := fb.fetch(client, srv.URL+set.modules[0][0], set.files[set.modules[0][1]]); err == nil || !strings.Contains(err.Error(), "wrong answer") {
		t.Errorf("the .mod's body checked as the .info: %v, want a wrong answer", err)
	}
	resp, err := client.Get(srv.URL + "/fixture.test/fleet/m01/@v/list")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := tally(u.take()), (upstreamTally{requests: 6, distinct: 4, other: 1, extraInfo: 1, extraZip: 1}); got != want {
		t.Errorf("tally %+v, want %+v", got, want)
	}
	if got := u.take(); len(got) != 0 {
		t.Errorf("counts after take: %v", got)
	}
}

func TestArtifactKind(t *testing.T) {
	for p, want := range map[string]string{
		"/fixture.test/m/@v/v1.0.0.info":       ".info",
		"/fixture.test/m/@v/v1.0.0.mod":        ".mod",
		"/fixture.test/!big/@v/v1.2.3-pre.zip": ".zip",
		"/fixture.test/m/@v/list":              "",
		"/fixture.test/m/@latest":              "",
		"/fixture.test/m/@v/.info":             "",
		"/sumdb/sum.example.test/supported":    "",
	} {
		if got := artifactKind(p); got != want {
			t.Errorf("artifactKind(%q) = %q, want %q", p, got, want)
		}
	}
	tl := tally(map[string]int{"/a/@v/v1.0.0.info": 3, "/a/@v/v1.0.0.mod": 1, "/a/@v/v1.0.0.zip": 2, "/a/@v/list": 4})
	if want := (upstreamTally{requests: 6, distinct: 3, other: 4, extraInfo: 2, extraZip: 1}); tl != want {
		t.Errorf("tally %+v, want %+v", tl, want)
	}
	if got, want := tl.extras(), "+2 .info, +1 .zip"; got != want {
		t.Errorf("extras %q, want %q", got, want)
	}
	if got := (upstreamTally{requests: 270}).perArtifact(90); got != 3 {
		t.Errorf("270 requests over 90 artifacts: %v per artifact", got)
	}
	if got := (upstreamTally{}).perArtifact(0); got != 0 {
		t.Errorf("no artifacts: %v per artifact", got)
	}
}

func TestFleetRefused(t *testing.T) {
	for msg, want := range map[string]bool{
		"replica1: exited\nmodgate: config:\n/tmp/x/modgate.yaml:7: fleet.redis: unknown key \"fleet\"\n": true,
		"modgate: config:\nmodgate.yaml:7: fleet: unknown key \"redis\"":                                  true,
		"modgate: config:\nmodgate.yaml:7: fleet.redis: \"http://x\": want a redis:// URL":                false,
		"modgate: config:\nmodgate.yaml:3: cache: unknown key \"sharde\"":                                 false,
	} {
		if got := fleetRefused(msg); got != want {
			t.Errorf("fleetRefused(%q) = %v, want %v", msg, got, want)
		}
	}
}

func TestRedisRequest(t *testing.T) {
	if got, want := string(redisRequest("FLUSHALL")), "*1\r\n$8\r\nFLUSHALL\r\n"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got, want := string(redisRequest("SET", "k", "")), "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

// TestFleetReport checks the fleet rows' table lines, benchmark lines and
// verdicts against made-up runs.
func TestFleetReport(t *testing.T) {
	run := func(n int, setup string, wall time.Duration, requests int) *fleetResult {
		return &fleetResult{n: n, setup: setup, wall: wall, artifacts: 90, tally: upstreamTally{requests: requests, distinct: 90}}
	}
	r := newReport(options{})
	var out strings.Builder
	r.w = &out
	for _, res := range []*fleetResult{
		run(1, "independent", 600*time.Millisecond, 90), run(1, "shared", 900*time.Millisecond, 90), run(1, "fleet", 660*time.Millisecond, 90),
		run(3, "independent", 1100*time.Millisecond, 270), run(3, "shared", 2*time.Second, 250), run(3, "fleet", 1230*time.Millisecond, 90),
	} {
		r.fleetRun(res)
	}
	for _, want := range []string{
		fmt.Sprintf("BenchmarkFleetColdStart/n=3/target=fleet-%d\t       1\t1230000000 ns/op\t1.00 upstream-req/artifact\n", procs()),
		fmt.Sprintf("BenchmarkFleetColdStart/n=3/target=independent-%d\t       1\t1100000000 ns/op\t3.00 upstream-req/artifact\n", procs()),
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("no line %q in:\n%s", want, out.String())
		}
	}
	ns, by := fleetByN(r.fleet)
	if len(ns) != 2 {
		t.Fatalf("Ns %v", ns)
	}
	if got, want := fleetLine(3, by[3]), "fleet cold start N=3: fleet 1.00 upstream requests/artifact, 1.23 s; independent 3.00/artifact, 1.10 s (fleet 1.12× the wall time); shared store without lease 2.78/artifact, 2.00 s"; got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}
	if v, text := fleetTarget(r.fleet); v != "met   " || text != "fleet: upstream requests per artifact ≤ 1.0 (N=1,3): 1.00 at N=1, 1.00 at N=3" {
		t.Errorf("target %q %q", v, text)
	}
	six := run(6, "fleet", 2*time.Second, 100)
	six.tally.extraZip = 10
	r.fleetRun(six)
	if v, text := fleetTarget(r.fleet); v != "MISSED" || !strings.HasSuffix(text, "1.11 at N=6") {
		t.Errorf("target with 100 requests for 90 artifacts: %q %q", v, text)
	}
	_, by = fleetByN(r.fleet)
	if got, want := fleetLine(6, by[6]), "fleet cold start N=6: fleet 1.11 upstream requests/artifact, 2.00 s (+10 .zip); independent not run"; got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}

	skipped := []*fleetResult{run(1, "independent", 600*time.Millisecond, 90), {n: 1, setup: "fleet", skip: errFleetUnsupported.Error()}}
	_, by = fleetByN(skipped)
	if got, want := fleetLine(1, by[1]), "fleet cold start N=1: fleet (fleet.redis not supported by this modgate); independent 1.00/artifact, 0.60 s"; got != want {
		t.Errorf("line\n%s\nwant\n%s", got, want)
	}
	if v, text := fleetTarget(skipped); v != "n/a   " || !strings.HasSuffix(text, "N=1 fleet.redis not supported by this modgate") {
		t.Errorf("target without fleet runs: %q %q", v, text)
	}
}

func TestAddSeries(t *testing.T) {
	exp := []byte(`# HELP modgate_fleet_leases_total Leases.
modgate_fleet_leases_total{modgate_fleet_lease_result="taken",otel_scope_name="m"} 30
modgate_fleet_leases_total{modgate_fleet_lease_result="waited",otel_scope_name="m"} 58
modgate_fleet_leases_total_other{modgate_fleet_lease_result="taken"} 7
modgate_cache_shared_requests_total{modgate_cache_shared_op="get",modgate_cache_shared_result="hit",modgate_cache_shared_tier="public"} 58
modgate_cache_shared_requests_total{modgate_cache_shared_op="put",modgate_cache_shared_result="hit",modgate_cache_shared_tier="public"} 30
modgate_cache_shared_requests_total{modgate_cache_shared_op="get",modgate_cache_shared_result="miss",modgate_cache_shared_tier="public"} 2
`)
	leases, gets := map[string]float64{"taken": 1}, map[string]float64{}
	addSeries(exp, "modgate_fleet_leases_total", "modgate_fleet_lease_result", nil, leases)
	addSeries(exp, "modgate_cache_shared_requests_total", "modgate_cache_shared_result", map[string]string{"modgate_cache_shared_op": "get"}, gets)
	if got, want := countsText(leases, "taken", "waited", "wait_timeout"), "taken 31, waited 58"; got != want {
		t.Errorf("leases %q, want %q", got, want)
	}
	if got, want := countsText(gets, "hit", "miss"), "hit 58, miss 2"; got != want {
		t.Errorf("gets %q, want %q", got, want)
	}
	if got, want := countsText(map[string]float64{"z": 1, "a": 2, "hit": 0}, "hit"), "a 2, z 1"; got != want {
		t.Errorf("others %q, want %q", got, want)
	}
}

// checksumChecks reads modgate's verdicts against the checksum database
// from its /metrics (modgate.checksum.checks).
func checksumChecks(t *testing.T, admin string) (verified, mismatched float64) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "modgate_checksum_checks_total{") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		switch {
		case strings.Contains(line, `modgate_checksum_result="verified"`):
			verified += v
		case strings.Contains(line, `modgate_checksum_result="mismatch"`):
			mismatched += v
		}
	}
	return verified, mismatched
}
