package soak_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/mod/module"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

var (
	soakD     = flag.Duration("soak.d", 0, "run the soak for this long (0: skip it); `make soak` sets it")
	soakStep  = flag.Duration("soak.step", 4*time.Second, "how long each fault of the rotation lasts")
	soakGoRev = flag.Int("soak.go", 2, "go commands downloading in parallel through the reverse chain")
	soakGoFwd = flag.Int("soak.gofwd", 1, "go commands downloading in parallel through forward mode (MITM)")
	soakLoad  = flag.Int("soak.load", 4, "load generator workers")
	soakRate  = flag.Int("soak.rate", 300, "most load generator requests per second, all workers together")
	soakRSS   = flag.Int("soak.maxrss", 512, "bound of the peak RSS, MiB")
	soakFault = flag.String("soak.faults", strings.Join(faults, ","), "the fault rotation on the faulty upstream, comma-separated modtest faults; empty or \"healthy\" is a healthy period, \"refused\" closes the port")
	// modgate is stopped before the levels are read (it closes its idle
	// upstream connections then); the settle time covers connections
	// that are still closing.
	soakSettle = flag.Duration("soak.settle", 30*time.Second, "longest wait, after modgate stopped, for goroutines and descriptors to come back to the starting level")
)

func TestMain(m *testing.M) {
	// lumberjack starts one cleanup goroutine per rotating file and never
	// stops it, even on Close; modgate opens one audit log.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"))
}

const (
	sumdbName  = "sum.fixture.test"
	proxyHost  = "proxy.fixture.test"
	deniedPath = "fixture.test/pseudo" // the policy denies it; nothing else needs it
	// openFor is the breakers' open period: short, so that they open and
	// close many times in a run.
	openFor = 2 * time.Second
)

// faults is the rotation on the faulty upstream, one step each; "" is a
// healthy period and "refused" closes the relay in front of it.
var faults = []string{
	"", "slow200", "500", "", "hang", "", "503", "429ra1", "",
	"reset", "stall", "", "refused", "", "slow1500", "flaky30",
	"", "bw2", "slowclose500",
}

// policyText denies one module, with a reason.
const policyText = `rules:
  - deny: "` + deniedPath + `"
    reason: "soak: denied on purpose"
  - allow: "*"
default: allow
contact: "ask #platform-builds"
`

// quietTB lets a go command runner live outside the test's log (a soak
// runs thousands of go commands) and in a folder the soak removes after
// each run, so that every run has a fresh module cache.
type quietTB struct {
	testing.TB
	dir string
}

func (q quietTB) Logf(string, ...any) {}
func (q quietTB) Log(...any)          {}
func (q quietTB) TempDir() string {
	d, err := os.MkdirTemp(q.dir, "go")
	if err != nil {
		q.TB.Errorf("soak: %v", err)
		runtime.Goexit()
	}
	return d
}
func (q quietTB) Fatalf(format string, args ...any) {
	q.TB.Errorf(format, args...)
	runtime.Goexit()
}
func (q quietTB) Fatal(args ...any) {
	q.TB.Error(args...)
	runtime.Goexit()
}

// tally counts what clients saw.
type tally struct {
	ok, denied, failed, unexplained atomic.Int64

	mu      sync.Mutex
	samples []string
}

func (t *tally) fail(explained bool, what string) {
	t.failed.Add(1)
	if !explained {
		t.unexplained.Add(1)
		what = "UNEXPLAINED " + what
	}
	t.mu.Lock()
	if len(t.samples) < 8 {
		t.samples = append(t.samples, what)
	}
	t.mu.Unlock()
}

func TestSoak(t *testing.T) {
	if *soakD <= 0 {
		t.Skip("soak: give -soak.d (make soak)")
	}
	start := time.Now()
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, sumdbName, fx)
	var mods []modtest.Module
	for _, m := range fx.Modules() {
		if m.Path != deniedPath {
			mods = append(mods, m)
		}
	}

	// Upstreams: faulty|healthy in reverse mode, the faulty one behind a
	// relay that can refuse; a TLS proxy named proxy.fixture.test for
	// forward mode, intercepted with modgate's CA.
	faulty := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	healthy := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	relay, err := modtest.NewRelay(strings.TrimPrefix(faulty.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(relay.Down)
	tlsProxy := modtest.NewProxyTLS(t, fx, modtest.WithSumDB(db), modtest.WithTLSNames(proxyHost))

	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := mitm.Init(caDir); err != nil {
		t.Fatal(err)
	}
	ca, err := mitm.Load(caDir)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(mitm.CertPath(caDir))
	if err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(policyText), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	audit, err := policy.NewAuditLog(auditPath, policy.AuditOptions{FlushInterval: -1, MaxSizeMB: 4096})
	if err != nil {
		t.Fatal(err)
	}
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{ServiceName: "modgate", Version: "soak"})
	if err != nil {
		t.Fatal(err)
	}

	breaker := upstream.BreakerSettings{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second, OpenFor: openFor, HalfOpenProbes: 1}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := sidecar.Config{
		Listen: ln.Addr().String(),
		Upstreams: []upstream.Config{
			{Name: "faulty", URL: "http://" + relay.Addr(), Fallthrough: upstream.OnError, Breaker: breaker,
				Timeouts: upstream.Timeouts{Dial: time.Second, Header: 500 * time.Millisecond, Idle: 300 * time.Millisecond},
				Retry:    upstream.RetrySettings{Attempts: 2, Base: 20 * time.Millisecond, Cap: 200 * time.Millisecond, BudgetRatio: 0.2}},
			{Name: "healthy", URL: healthy.URL, Breaker: breaker},
		},
		SumDB:     sumdbName,
		RootCAs:   tlsProxy.CertPool(),
		Resolve:   map[string]string{proxyHost + ":443": strings.TrimPrefix(tlsProxy.URL, "https://")},
		Policy:    store,
		Audit:     audit,
		Telemetry: tel,
		Forward:   sidecar.ForwardConfig{AllowHosts: []string{proxyHost}, MITMHosts: []string{proxyHost}, CA: ca},
		Dial:      modtest.LoopbackDial,
	}
	gate, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- gate.Serve(serveCtx, ln, adminLn) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopServe()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		audit.Close()
		tel.Shutdown(context.Background())
	}
	t.Cleanup(stop)
	gateURL := "http://" + cfg.Listen
	adminURL := "http://" + adminLn.Addr().String()

	// The load generator's clients: reverse (GOPROXY=modgate) and forward
	// (HTTPS_PROXY=modgate, trusting modgate's CA).
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	revTr := &http.Transport{MaxIdleConnsPerHost: 16}
	fwdTr := &http.Transport{Proxy: http.ProxyURL(mustURL(t, gateURL)), TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 16}
	rev := &http.Client{Transport: revTr, Timeout: 30 * time.Second}
	fwd := &http.Client{Transport: fwdTr, Timeout: 30 * time.Second}
	adminClient := &http.Client{Timeout: 5 * time.Second}
	defer adminClient.CloseIdleConnections()

	var load, gos tally
	lg := &loadGen{mods: mods, fx: fx}
	// Warm up: every kind of request once each way, then the starting
	// level of goroutines and descriptors is read.
	for _, kind := range lg.kinds() {
		lg.once(rev, gateURL, kind, mods[0], &tally{})
		lg.once(fwd, "https://"+proxyHost, kind, mods[0], &tally{})
	}
	revTr.CloseIdleConnections()
	fwdTr.CloseIdleConnections()
	time.Sleep(500 * time.Millisecond)
	baseG, baseFD := runtime.NumGoroutine(), openFDs()
	baseReq, baseAudit := serverRequests(t, adminClient, adminURL), auditLines(t, auditPath)

	// The breaker watcher polls /debug/upstreams as an operator would.
	bw := &breakerWatch{}
	ctx, cancel := context.WithTimeout(context.Background(), *soakD)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); bw.run(ctx, adminClient, adminURL) }()

	// Fault rotation; the last stretch of the run (at least three open
	// periods) is healthy so that the breaker can close.
	healthyTail := max(3*openFor+2*time.Second, *soakStep)
	var faultLog []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		rotate := time.NewTicker(*soakStep)
		defer rotate.Stop()
		tail := time.NewTimer(*soakD - healthyTail)
		defer tail.Stop()
		current := ""
		set := func(f string) {
			if current == "refused" && f != "refused" {
				if err := relay.Up(); err != nil {
					t.Errorf("relay up: %v", err)
				}
			}
			switch f {
			case "refused":
				relay.Down()
				faulty.SetFault("")
			default:
				faulty.SetFault(f)
			}
			current = f
			faultLog = append(faultLog, cmp(f, "healthy"))
		}
		rotation := strings.Split(*soakFault, ",")
		for i := 0; ; i++ {
			set(strings.TrimSpace(strings.TrimPrefix(rotation[i%len(rotation)], "healthy")))
			select {
			case <-rotate.C:
				continue
			case <-tail.C:
			case <-ctx.Done():
			}
			set("")
			return
		}
	}()

	// The load generator, paced by one shared ticker.
	pace := time.NewTicker(time.Second / time.Duration(max(*soakRate, 1)))
	defer pace.Stop()
	for i := range *soakLoad {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for {
				select {
				case <-ctx.Done():
					return
				case <-pace.C:
				}
				kinds := lg.kinds()
				kind, m := kinds[r.IntN(len(kinds))], mods[r.IntN(len(mods))]
				if r.IntN(2) == 0 {
					lg.once(rev, gateURL, kind, m, &load)
				} else {
					lg.once(fwd, "https://"+proxyHost, kind, m, &load)
				}
			}
		}()
	}

	// The go commands: go mod download of every module (but the denied
	// one) with a fresh module cache each time.
	var args []string
	for _, m := range mods {
		args = append(args, m.String())
	}
	goRoot := filepath.Join(dir, "gocmd")
	if err := os.Mkdir(goRoot, 0o777); err != nil {
		t.Fatal(err)
	}
	goRuns := func(forward bool) {
		defer wg.Done()
		for ctx.Err() == nil {
			d, err := os.MkdirTemp(goRoot, "run")
			if err != nil {
				t.Error(err)
				return
			}
			g := modtest.NewGo(quietTB{TB: t, dir: d})
			g.Timeout = 2 * time.Minute
			if forward {
				g.UseProxy("https://"+proxyHost, db)
				g.TrustPEM(caPEM)
				g.Setenv("HTTPS_PROXY", gateURL)
				g.Setenv("https_proxy", gateURL)
			} else {
				g.UseProxy(gateURL, db)
			}
			_, stderr, err := g.Run(append([]string{"mod", "download"}, args...)...)
			switch {
			case err == nil:
				gos.ok.Add(1)
			default:
				mode := map[bool]string{false: "reverse", true: "forward"}[forward]
				gos.fail(strings.Contains(stderr, "modgate: "), fmt.Sprintf("go (%s): %v: %s", mode, err, firstLines(stderr, 6)))
			}
			os.RemoveAll(d)
		}
	}
	for range *soakGoRev {
		wg.Add(1)
		go goRuns(false)
	}
	for range *soakGoFwd {
		wg.Add(1)
		go goRuns(true)
	}
	wg.Wait()
	loadEnd := time.Now()

	// Read modgate's count of requests, then stop it: every audit line is
	// flushed, and whatever goroutine or descriptor is still there after
	// that is a leak.
	reqs := serverRequests(t, adminClient, adminURL) - baseReq
	adminClient.CloseIdleConnections()
	revTr.CloseIdleConnections()
	fwdTr.CloseIdleConnections()
	stop()
	lines := auditLines(t, auditPath) - baseAudit
	var endG, endFD int
	gTol, fdTol := 10+baseG/10, 10
	for deadline := time.Now().Add(*soakSettle); ; {
		// Pooled splice pipes are closed by finalizers: a collection or
		// two lets them go, so that what remains is what is held.
		runtime.GC()
		runtime.GC()
		endG, endFD = runtime.NumGoroutine(), openFDs()
		if (endG <= baseG+gTol && endFD <= baseFD+fdTol) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	settle := time.Since(loadEnd)
	if endFD > baseFD+fdTol {
		t.Logf("descriptors open after the load: %s", fdTargets())
	}
	peak, _ := procStatus("VmHWM")
	finalState := bw.last()

	// The table.
	type row struct {
		name, got, want string
		pass            bool
	}
	loadN := load.ok.Load() + load.denied.Load() + load.failed.Load()
	goN := gos.ok.Load() + gos.failed.Load()
	rows := []row{
		{"1 client failures, healthy upstream in chain",
			fmt.Sprintf("load %d of %d (denied as expected: %d); go %d of %d runs", load.failed.Load(), loadN, load.denied.Load(), gos.failed.Load(), goN),
			"0", load.failed.Load() == 0 && gos.failed.Load() == 0 && loadN > 0 && goN > 0},
		{"2 failures without a modgate explanation",
			fmt.Sprintf("%d (load %d, go %d)", load.unexplained.Load()+gos.unexplained.Load(), load.unexplained.Load(), gos.unexplained.Load()),
			"0", load.unexplained.Load()+gos.unexplained.Load() == 0},
		{"3 audit lines vs requests modgate answered",
			fmt.Sprintf("%d lines, %d requests", lines, reqs), "equal", lines == reqs && reqs > 0},
		{"4 goroutines / open fds after the load",
			fmt.Sprintf("goroutines %d -> %d, fds %d -> %d (after %.1fs)", baseG, endG, baseFD, endFD, settle.Seconds()),
			fmt.Sprintf("<= +%d / +%d", gTol, fdTol), endG <= baseG+gTol && endFD <= baseFD+fdTol},
		{"5 peak RSS (whole test process)",
			fmt.Sprintf("%d MiB", peak>>20), fmt.Sprintf("< %d MiB", *soakRSS), peak > 0 && peak < int64(*soakRSS)<<20},
		{"6 breaker of faulty opened and closed",
			fmt.Sprintf("opened %d, half-open %d, closed %d; at the end %s (%d polls)", bw.opened, bw.halfOpen, bw.closed, finalState, bw.polls),
			">= 1 each, closed at end", bw.opened >= 1 && bw.closed >= 1 && finalState == "closed"},
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "\nmodgate soak: %v of load (%v in all), faults every %v: %s\n", loadEnd.Sub(start).Round(time.Second), time.Since(start).Round(time.Second), *soakStep, strings.Join(faultLog, " "))
	fmt.Fprintf(&out, "load generator: %d requests (%.0f/s), go mod download: %d runs (%d reverse, %d forward workers); faulty upstream asked %d times, healthy %d, TLS %d\n\n",
		loadN, float64(loadN)/loadEnd.Sub(start).Seconds(), goN, *soakGoRev, *soakGoFwd, len(faulty.Requests()), len(healthy.Requests()), len(tlsProxy.Requests()))
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "criterion\tmeasured\tbound\tresult")
	failed := false
	for _, r := range rows {
		res := "PASS"
		if !r.pass {
			res, failed = "FAIL", true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, r.got, r.want, res)
	}
	tw.Flush()
	for _, s := range append(load.samples, gos.samples...) {
		fmt.Fprintf(&out, "  failure: %s\n", s)
	}
	fmt.Print(out.String())
	if failed {
		t.Errorf("soak: a criterion failed (table above)")
	}
	stop()
}

func cmp(s, ifEmpty string) string {
	if s == "" {
		return ifEmpty
	}
	return s
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " | ")
}

// loadGen replays GOPROXY requests and checks each answer against the
// fixtures.
type loadGen struct {
	mods []modtest.Module
	fx   *modtest.Fixtures
}

func (lg *loadGen) kinds() []string {
	return []string{"list", "info", "mod", "zip", "zip", "latest", "sumdb-supported", "sumdb-lookup", "sumdb-latest", "denied"}
}

// once sends one request of kind for m to base and records the outcome.
func (lg *loadGen) once(c *http.Client, base, kind string, m modtest.Module, t *tally) {
	path := m.Path
	if kind == "denied" {
		path = deniedPath
	}
	ep, _ := module.EscapePath(path)
	ev, _ := module.EscapeVersion(m.Version)
	var target string
	var want []byte
	switch kind {
	case "list":
		target = "/" + ep + "/@v/list"
	case "info":
		target, want = "/"+ep+"/@v/"+ev+".info", m.Info
	case "mod":
		target, want = "/"+ep+"/@v/"+ev+".mod", m.Mod
	case "zip":
		target, want = "/"+ep+"/@v/"+ev+".zip", m.Zip
	case "latest":
		target = "/" + ep + "/@latest"
	case "sumdb-supported":
		target = "/sumdb/" + sumdbName + "/supported"
	case "sumdb-lookup":
		target = "/sumdb/" + sumdbName + "/lookup/" + ep + "@" + ev
	case "sumdb-latest":
		target = "/sumdb/" + sumdbName + "/latest"
	case "denied":
		target = "/" + ep + "/@v/list"
	}
	what := kind + " " + base + target
	resp, err := c.Get(base + target)
	if err != nil {
		t.fail(false, what+": "+err.Error())
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.fail(false, fmt.Sprintf("%s: %s, body: %v", what, resp.Status, err))
		return
	}
	explained := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") && bytes.HasPrefix(body, []byte("modgate: "))
	switch {
	case kind == "denied" && resp.StatusCode == http.StatusForbidden && explained:
		t.denied.Add(1)
	case kind == "denied":
		t.fail(explained, fmt.Sprintf("%s: %s, want 403 from the policy: %s", what, resp.Status, firstLines(string(body), 2)))
	case resp.StatusCode != http.StatusOK:
		t.fail(explained, fmt.Sprintf("%s: %s: %s", what, resp.Status, firstLines(string(body), 3)))
	case want != nil && !bytes.Equal(body, want):
		t.fail(false, fmt.Sprintf("%s: 200 with %d bytes that differ from the fixture's %d", what, len(body), len(want)))
	case len(body) == 0 && kind != "sumdb-supported":
		t.fail(false, what+": 200 with an empty body")
	default:
		t.ok.Add(1)
	}
}

// breakerWatch follows the faulty upstream's breaker on /debug/upstreams.
type breakerWatch struct {
	mu                       sync.Mutex
	state                    string
	opened, halfOpen, closed int
	polls                    int
}

func (bw *breakerWatch) run(ctx context.Context, c *http.Client, admin string) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		bw.poll(c, admin)
		select {
		case <-ctx.Done():
			// One more look after the healthy tail.
			bw.poll(c, admin)
			return
		case <-tick.C:
		}
	}
}

func (bw *breakerWatch) poll(c *http.Client, admin string) {
	resp, err := c.Get(admin + "/debug/upstreams")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	var doc struct {
		Upstreams []struct {
			Name    string                 `json:"name"`
			Breaker upstream.BreakerStatus `json:"breaker"`
		} `json:"upstreams"`
	}
	if json.NewDecoder(resp.Body).Decode(&doc) != nil {
		return
	}
	for _, u := range doc.Upstreams {
		if u.Name != "faulty" {
			continue
		}
		bw.mu.Lock()
		bw.polls++
		st := u.Breaker.State
		if st != bw.state {
			switch st {
			case "open":
				bw.opened++
			case "half-open":
				bw.halfOpen++
			case "closed":
				if bw.state != "" {
					bw.closed++
				}
			}
			bw.state = st
		}
		bw.mu.Unlock()
	}
}

func (bw *breakerWatch) last() string {
	bw.mu.Lock()
	defer bw.mu.Unlock()
	return bw.state
}

// serverRequests is modgate's own count of the requests it answered: the
// sum of http_server_request_duration_seconds_count on /metrics.
func serverRequests(t *testing.T, c *http.Client, admin string) int {
	resp, err := c.Get(admin + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	n := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "http_server_request_duration_seconds_count") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			n += v
		}
	}
	return int(n)
}

// auditLines counts the lines of the audit log and its rotated files.
func auditLines(t *testing.T, path string) int {
	files, _ := filepath.Glob(strings.TrimSuffix(path, ".jsonl") + "*")
	n := 0
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		n += bytes.Count(data, []byte("\n"))
	}
	return n
}

// openFDs counts this process's open file descriptors (-1 where /proc
// is missing).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// fdTargets says what the open descriptors are, for the log.
func fdTargets() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			out = append(out, target)
		}
	}
	return strings.Join(out, " ")
}

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(field string) (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			_, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/self/status: no %s", field)
}
