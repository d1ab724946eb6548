package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/module"
)

// The fleet section is issue #18's cold start: N replicas of modgate, each
// with a client of its own (a CI job's go mod download), all fetching the
// same module set from cold caches at once. A fleet shares a store
// (cache.shared, on versitygw) and leases in Redis (fleet.redis), so that
// the upstream is asked once per artifact however many replicas there
// are; N independent modgates ask it N times. The fake upstream counts
// what it was asked and answers after a delay, as a remote proxy does, so
// that replicas that wait for one another show in the wall time.

// fleetSetup is one way to run the N replicas.
type fleetSetup struct {
	name   string
	about  string
	shared bool // cache.shared: one bucket, fresh for each run
	redis  bool // fleet.redis: one Redis, flushed for each run
}

var fleetSetups = []fleetSetup{
	{name: "independent", about: "N modgates, each with its own --cache-dir and nothing shared"},
	{name: "shared", about: "the same with cache.shared (versitygw, posix backend) and no lease: report only", shared: true},
	{name: "fleet", about: "the same with cache.shared and fleet.redis (redis-server): the issue's fleet", shared: true, redis: true},
}

// fleetPlan is the fleet section's part of the command line.
type fleetPlan struct {
	replicas  []int         // the values of N
	latency   time.Duration // the upstream's delay before each answer
	inflight  int           // modules each client fetches at once
	redis     string        // redis-server binary
	versitygw string        // versitygw binary
}

// Module set: fleetModuleCount modules of one version, with zips from
// fleetZipMin up in steps of fleetZipStep (16 KiB to about 1 MiB, 15 MiB
// in all), of bytes that do not compress.
const (
	fleetModuleCount = 30
	fleetZipMin      = 16 << 10
	fleetZipStep     = 34 << 10
	fleetVersion     = "v1.0.0"
)

// fleetFile is one artifact of the module set.
type fleetFile struct {
	body        []byte
	sha256      string
	contentType string
}

// fleetModuleSet is what the clients fetch: for each module, the escaped
// paths of its .info, .mod and .zip, in that order, and every artifact by
// path.
type fleetModuleSet struct {
	modules [][3]string
	files   map[string]fleetFile
	bytes   int64 // of all the artifacts of one client
}

// newFleetModuleSet makes the module set: fixture.test/fleet/mNN at
// fleetVersion, each zip a valid module zip (go.mod and a file of random
// bytes, stored), the same in every run.
func newFleetModuleSet(n int) (*fleetModuleSet, error) {
	ms := &fleetModuleSet{files: map[string]fleetFile{}}
	add := func(p string, body []byte, ct string) {
		sum := sha256.Sum256(body)
		ms.files[p] = fleetFile{body: body, sha256: hex.EncodeToString(sum[:]), contentType: ct}
		ms.bytes += int64(len(body))
	}
	for i := range n {
		path := fmt.Sprintf("fixture.test/fleet/m%02d", i+1)
		esc, err := module.EscapePath(path)
		if err != nil {
			return nil, err
		}
		mod := []byte("module " + path + "\n\ngo 1.21\n")
		data := make([]byte, fleetZipMin+i*fleetZipStep)
		var seed [32]byte
		seed[0] = byte(i)
		rand.NewChaCha8(seed).Read(data)
		var zb bytes.Buffer
		zw := zip.NewWriter(&zb)
		for _, f := range []struct {
			name string
			body []byte
		}{{"go.mod", mod}, {"data.bin", data}} {
			w, err := zw.CreateHeader(&zip.FileHeader{Name: path + "@" + fleetVersion + "/" + f.name, Method: zip.Store})
			if err != nil {
				return nil, err
			}
			w.Write(f.body)
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		base := "/" + esc + "/@v/" + fleetVersion
		add(base+".info", []byte(`{"Version":"`+fleetVersion+`","Time":"2024-01-02T03:04:05Z"}`+"\n"), "application/json")
		add(base+".mod", mod, "text/plain; charset=utf-8")
		add(base+".zip", zb.Bytes(), "application/zip")
		ms.modules = append(ms.modules, [3]string{base + ".info", base + ".mod", base + ".zip"})
	}
	return ms, nil
}

// artifactKind is what kind of immutable artifact an upstream path is: a
// version's ".info", ".mod" or ".zip", or "" for anything else (a list,
// @latest).
func artifactKind(path string) string {
	_, file, ok := strings.Cut(path, "/@v/")
	if !ok {
		return ""
	}
	for _, ext := range []string{".info", ".mod", ".zip"} {
		if v, ok := strings.CutSuffix(file, ext); ok && v != "" && !strings.Contains(v, "/") {
			return ext
		}
	}
	return ""
}

// upstreamTally sums what an upstream was asked: requests for immutable
// artifacts, the distinct artifacts among them, the requests beyond the
// first for an artifact by kind, and the other requests.
type upstreamTally struct {
	requests, distinct, other     int
	extraInfo, extraMod, extraZip int
}

func tally(counts map[string]int) upstreamTally {
	var t upstreamTally
	for p, n := range counts {
		kind := artifactKind(p)
		if kind == "" {
			t.other += n
			continue
		}
		t.requests += n
		if n > 0 {
			t.distinct++
		}
		extra := map[string]*int{".info": &t.extraInfo, ".mod": &t.extraMod, ".zip": &t.extraZip}[kind]
		*extra += max(0, n-1)
	}
	return t
}

// extras says which kinds of artifact were asked for more than once, as
// "+2 .info, +1 .zip", or "" if none was.
func (t upstreamTally) extras() string {
	var parts []string
	for _, k := range []struct {
		n    int
		kind string
	}{{t.extraInfo, ".info"}, {t.extraMod, ".mod"}, {t.extraZip, ".zip"}} {
		if k.n > 0 {
			parts = append(parts, fmt.Sprintf("+%d %s", k.n, k.kind))
		}
	}
	return strings.Join(parts, ", ")
}

// perArtifact is upstream requests per artifact of a set of artifacts.
// It divides by the set, not by what the upstream saw, so that a proxy
// cannot look better by fetching less than it served.
func (t upstreamTally) perArtifact(artifacts int) float64 {
	if artifacts == 0 {
		return 0
	}
	return float64(t.requests) / float64(artifacts)
}

// fleetUpstream is the fake module proxy behind the replicas: the module
// set, each answer after latency, every request counted by path.
type fleetUpstream struct {
	set     *fleetModuleSet
	latency time.Duration

	mu     sync.Mutex
	counts map[string]int
}

func (u *fleetUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.counts[r.URL.Path]++
	u.mu.Unlock()
	t := time.NewTimer(u.latency)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
		return
	}
	f, ok := u.set.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", f.contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
	w.Write(f.body)
}

// take returns the counts since the last take and starts new ones.
func (u *fleetUpstream) take() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	c := u.counts
	u.counts = map[string]int{}
	return c
}

// fleetResult is one run: N replicas of one setup.
type fleetResult struct {
	n         int
	setup     string
	skip      string // why the run did not happen
	wall      time.Duration
	tally     upstreamTally
	artifacts int // in the module set
	// From the replicas' /metrics, summed: lease results (taken, waited,
	// wait_timeout, unavailable) and shared store reads (hit, miss, ...).
	leases, sharedGets map[string]float64
}

func (f *fleetResult) perArtifact() float64 { return f.tally.perArtifact(f.artifacts) }

// errFleetUnsupported: the modgate under test refused fleet.redis.
var errFleetUnsupported = errors.New("fleet.redis not supported by this modgate")

// fleetRefused reports whether modgate's complaint is about the fleet key
// itself (a modgate that predates it), as opposed to a bad value.
func fleetRefused(msg string) bool {
	for line := range strings.Lines(msg) {
		if strings.Contains(line, "unknown key") && strings.Contains(line, "fleet") {
			return true
		}
	}
	return false
}

// fleetBench is the section's servers: the upstream, and Redis and
// versitygw where they could start.
type fleetBench struct {
	o        options
	dir      string
	set      *fleetModuleSet
	up       *fleetUpstream
	upURL    string
	redis    *child
	vgw      *child
	vgwRoot  string
	skip     map[string]string // setup → why it cannot run, in short
	notes    []string          // why a server did not start, in full
	runs     int
	children []*child
}

// The versitygw root account; only ever on loopback.
const (
	vgwAccess = "modgate-bench"
	vgwSecret = "modgate-bench-secret"
)

// startFleetBench starts the upstream and the servers. A server that
// cannot start leaves the setups that need it skipped, with the reason.
func startFleetBench(o options, dir string) (*fleetBench, func(), error) {
	set, err := newFleetModuleSet(fleetModuleCount)
	if err != nil {
		return nil, nil, err
	}
	fb := &fleetBench{o: o, dir: dir, set: set, up: &fleetUpstream{set: set, latency: o.fleet.latency, counts: map[string]int{}}, skip: map[string]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: fb.up}
	go srv.Serve(ln)
	fb.upURL = "http://" + ln.Addr().String()
	stop := func() {
		for _, c := range fb.children {
			c.stop()
		}
		srv.Close()
	}
	var missing []string
	if fb.vgw, fb.vgwRoot, err = startVersityGW(o.fleet.versitygw, dir); err != nil {
		fb.notes = append(fb.notes, err.Error())
		fb.skip["shared"] = "skipped: no versitygw"
		missing = append(missing, "no versitygw")
	} else {
		fb.children = append(fb.children, fb.vgw)
	}
	if fb.redis, err = startRedis(o.fleet.redis, dir); err != nil {
		fb.notes = append(fb.notes, err.Error())
		missing = append(missing, "no redis-server")
	} else {
		fb.children = append(fb.children, fb.redis)
	}
	if len(missing) > 0 {
		fb.skip["fleet"] = "skipped: " + strings.Join(missing, ", ")
	}
	return fb, stop, nil
}

// startRedis starts redis-server on loopback, keeping nothing on disk.
func startRedis(bin, dir string) (*child, error) {
	if bin == "" {
		return nil, errors.New("redis-server: not found (set REDIS_SERVER or -redis; Debian's redis-server package)")
	}
	if _, err := exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("redis-server: %w (set REDIS_SERVER or -redis; Debian's redis-server package)", err)
	}
	listen, err := freePort()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(listen)
	rdir := filepath.Join(dir, "redis")
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", rdir, "--daemonize", "no", "--protected-mode", "yes")
	c, err := startPeer("redis", cmd, rdir, listen)
	if err != nil {
		return nil, err
	}
	if err := redisCommand(listen, "PING"); err != nil {
		c.stop()
		return nil, fmt.Errorf("redis: %w", err)
	}
	return c, nil
}

// redisRequest is cmd in RESP, as redis-cli sends it: an array of bulk
// strings.
func redisRequest(cmd ...string) []byte {
	b := fmt.Appendf(nil, "*%d\r\n", len(cmd))
	for _, a := range cmd {
		b = fmt.Appendf(b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b
}

// redisCommand sends cmd to the Redis at addr and wants a simple-string
// answer (+OK, +PONG).
func redisCommand(addr string, cmd ...string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(redisRequest(cmd...)); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("%s: %w", cmd[0], err)
	}
	if !strings.HasPrefix(line, "+") {
		return fmt.Errorf("%s: %s", cmd[0], strings.TrimSpace(line))
	}
	return nil
}

// startVersityGW starts versitygw's S3 gateway on loopback over a posix
// root in dir. A folder in the root is a bucket. Object metadata goes in
// extended attributes where the file system has them, else in a sidecar
// folder.
func startVersityGW(bin, dir string) (*child, string, error) {
	if bin == "" {
		return nil, "", errors.New("versitygw: not given (set VERSITYGW_BIN or -versitygw; make bench builds it)")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, "", fmt.Errorf("versitygw: %w (set VERSITYGW_BIN or -versitygw; make bench builds it)", err)
	}
	listen, err := freePort()
	if err != nil {
		return nil, "", err
	}
	vdir := filepath.Join(dir, "versitygw")
	root := filepath.Join(vdir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, "", err
	}
	args := []string{"--access", vgwAccess, "--secret", vgwSecret, "--port", listen, "--quiet", "posix"}
	if !userXattrs(root) {
		meta := filepath.Join(vdir, "meta")
		if err := os.MkdirAll(meta, 0o755); err != nil {
			return nil, "", err
		}
		args = append(args, "--sidecar", meta)
	}
	c, err := startPeer("versitygw", exec.Command(bin, append(args, root)...), vdir, listen)
	return c, root, err
}

// newBucket makes a fresh bucket for one run (a folder in versitygw's
// root) and returns the cache.shared URL of it.
func (fb *fleetBench) newBucket(name string) (string, error) {
	if err := os.Mkdir(filepath.Join(fb.vgwRoot, name), 0o755); err != nil {
		return "", err
	}
	return "s3://" + name + "?endpoint=http://" + fb.vgw.addrs.HTTP + "&region=us-east-1&use_path_style=true", nil
}

// fleetConfig is a run's config file; the cache folder of each replica
// comes from --cache-dir.
const fleetConfig = `# modgate bench: a fleet cold start (%s, N=%d).
upstreams:
  - name: origin
    url: %s
sumdb: {name: "off"}
log: {level: info, format: json}
`

// run starts n replicas of setup, lets a client per replica download the
// module set through it, and reports the wall time and what the upstream
// was asked. A wrong answer is an error.
func (fb *fleetBench) run(setup fleetSetup, n int) (*fleetResult, error) {
	res := &fleetResult{n: n, setup: setup.name, artifacts: len(fb.set.files)}
	if why := fb.skip[setup.name]; why != "" {
		res.skip = why
		return res, nil
	}
	fmt.Fprintf(os.Stderr, "bench: fleet cold start, N=%d, %s\n", n, setup.name)
	fb.runs++
	dir := filepath.Join(fb.dir, fmt.Sprintf("fleet-%d-%s-n%d", fb.runs, setup.name, n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfg := fmt.Sprintf(fleetConfig, setup.name, n, fb.upURL)
	var env []string
	if setup.shared {
		bucket, err := fb.newBucket(fmt.Sprintf("modules-%d", fb.runs))
		if err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf("cache: {shared: %q}\n", bucket)
		// The AWS SDK stays on loopback: static keys, no metadata
		// service, no profile.
		none := filepath.Join(dir, "none")
		env = []string{"AWS_ACCESS_KEY_ID=" + vgwAccess, "AWS_SECRET_ACCESS_KEY=" + vgwSecret, "AWS_REGION=us-east-1",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=" + none, "AWS_SHARED_CREDENTIALS_FILE=" + none}
	}
	if setup.redis {
		if err := redisCommand(fb.redis.addrs.HTTP, "FLUSHALL"); err != nil {
			return nil, fmt.Errorf("redis: %w", err)
		}
		// The replicas sign what they put in Redis with a secret they share.
		secret := make([]byte, 32)
		crand.Read(secret)
		secretFile := filepath.Join(dir, "fleet.secret")
		if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
			return nil, err
		}
		cfg += fmt.Sprintf("fleet: {redis: %q, secret_file: %q}\n", "redis://"+fb.redis.addrs.HTTP+"/0", secretFile)
	}
	configFile := filepath.Join(dir, "modgate.yaml")
	if err := os.WriteFile(configFile, []byte(cfg), 0o644); err != nil {
		return nil, err
	}

	replicas := make([]*child, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("replica%d", i+1)
			replicas[i], errs[i] = startModgate(fb.o.modgate, dir, configFile, "", "", modgateColumn{
				name: name, env: env, flags: []string{"--cache-dir", filepath.Join(dir, name+".cache")},
			})
		})
	}
	wg.Wait()
	defer stopAll(replicas)
	if err := errors.Join(errs...); err != nil {
		if setup.redis && fleetRefused(err.Error()) {
			fb.skip[setup.name] = errFleetUnsupported.Error()
			res.skip = errFleetUnsupported.Error()
			return res, nil
		}
		return nil, fmt.Errorf("fleet %s N=%d: %w", setup.name, n, err)
	}
	fb.up.take() // readiness checks, if any, are not the cold start

	start := time.Now()
	for i, r := range replicas {
		wg.Go(func() { errs[i] = fb.download(r.addrs.HTTP) })
	}
	wg.Wait()
	res.wall = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("fleet %s N=%d: %w", setup.name, n, err)
	}
	res.leases, res.sharedGets = map[string]float64{}, map[string]float64{}
	for _, r := range replicas {
		if err := scrapeFleetMetrics(r, res.leases, res.sharedGets); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s metrics: %v\n", r.name, err)
		}
	}
	stopAll(replicas)
	replicas = nil
	res.tally = tally(fb.up.take())
	return res, nil
}

// scrapeFleetMetrics adds a replica's lease results and shared store
// reads, from its /metrics, to leases and gets.
func scrapeFleetMetrics(c *child, leases, gets map[string]float64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.admin+"/metrics", nil)
	resp, err := c.ctl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	addSeries(data, "modgate_fleet_leases_total", "modgate_fleet_lease_result", nil, leases)
	addSeries(data, "modgate_cache_shared_requests_total", "modgate_cache_shared_result", map[string]string{"modgate_cache_shared_op": "get"}, gets)
	return nil
}

// addSeries adds the values of metric's series in a Prometheus text
// exposition to sums, by the value of label, over the series whose labels
// include every one of match.
func addSeries(exposition []byte, metric, label string, match map[string]string, sums map[string]float64) {
	for line := range strings.Lines(string(exposition)) {
		rest, ok := strings.CutPrefix(line, metric+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			continue
		}
		kv := map[string]string{}
		for _, l := range strings.Split(labels, ",") {
			if k, val, ok := strings.Cut(l, "="); ok {
				kv[k] = strings.Trim(val, `"`)
			}
		}
		good := kv[label] != ""
		for k, want := range match {
			good = good && kv[k] == want
		}
		if good {
			sums[kv[label]] += v
		}
	}
}

// countsText is "a 3, b 1" of the non-zero counts, in the order of names
// and then the others sorted.
func countsText(counts map[string]float64, names ...string) string {
	var parts []string
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
		if counts[n] != 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", n, counts[n]))
		}
	}
	var rest []string
	for n, v := range counts {
		if !seen[n] && v != 0 {
			rest = append(rest, fmt.Sprintf("%s %.0f", n, v))
		}
	}
	slices.Sort(rest)
	return strings.Join(append(parts, rest...), ", ")
}

// stopAll stops the children at once and waits for them all.
func stopAll(cs []*child) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(c.stop)
		}
	}
	wg.Wait()
}

// download fetches the module set through the modgate at addr as go mod
// download does: a few modules at a time, for each its .info, .mod and
// .zip in turn. Every answer must be the artifact, byte for byte.
func (fb *fleetBench) download(addr string) error {
	inflight := fb.o.fleet.inflight
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: inflight, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	work := make(chan [3]string)
	errc := make(chan error, inflight)
	var wg sync.WaitGroup
	for range inflight {
		wg.Go(func() {
			for m := range work {
				for _, p := range m {
					if err := fb.fetch(client, "http://"+addr+p, fb.set.files[p]); err != nil {
						errc <- err
						for range work { // drain: the first error is enough
						}
						return
					}
				}
			}
		})
	}
	for _, m := range fb.set.modules {
		work <- m
	}
	close(work)
	wg.Wait()
	close(errc)
	return <-errc
}

func (fb *fleetBench) fetch(client *http.Client, url string, want fleetFile) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "Go-http-client/1.1")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != int64(len(want.body)) || got != want.sha256 {
		return fmt.Errorf("GET %s: wrong answer: %d bytes, sha256 %s; want %d bytes, %s", url, n, got, len(want.body), want.sha256)
	}
	return nil
}

// runFleet is the section: every N, every setup, in the order of
// fleetSetups.
func runFleet(o options, dir string, out *report) error {
	fb, stop, err := startFleetBench(o, dir)
	if err != nil {
		return err
	}
	defer stop()
	out.fleetModules = fleetModuleCount
	out.fleetMiB = mib(fb.set.bytes)
	out.fleetNotes = fb.notes
	for _, n := range o.fleet.replicas {
		for _, s := range fleetSetups {
			res, err := fb.run(s, n)
			if err != nil {
				return err
			}
			out.fleetRun(res)
		}
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// fleetRun records and prints one run.
func (r *report) fleetRun(res *fleetResult) {
	r.fleet = append(r.fleet, res)
	if res.skip != "" {
		return
	}
	r.line(fmt.Sprintf("FleetColdStart/n=%d/target=%s", res.n, res.setup), 1,
		metric(float64(res.wall.Nanoseconds()), 0, "ns/op"),
		metric(res.perArtifact(), 2, "upstream-req/artifact"))
}

// fleetByN groups the runs by N, in the order they ran.
func fleetByN(rs []*fleetResult) (ns []int, by map[int]map[string]*fleetResult) {
	by = map[int]map[string]*fleetResult{}
	for _, res := range rs {
		if by[res.n] == nil {
			by[res.n] = map[string]*fleetResult{}
			ns = append(ns, res.n)
		}
		by[res.n][res.setup] = res
	}
	return ns, by
}

// fleetLine is the table's line for one N.
func fleetLine(n int, by map[string]*fleetResult) string {
	part := func(name, unit string) string {
		res := by[name]
		switch {
		case res == nil:
			return "not run"
		case res.skip != "":
			return "(" + firstLine(res.skip) + ")"
		}
		return fmt.Sprintf("%.2f%s, %.2f s", res.perArtifact(), unit, res.wall.Seconds())
	}
	fleet := part("fleet", " upstream requests/artifact")
	if f := by["fleet"]; f != nil && f.skip == "" && f.tally.extras() != "" {
		fleet += " (" + f.tally.extras() + ")"
	}
	s := fmt.Sprintf("fleet cold start N=%d: fleet %s; independent %s", n, fleet, part("independent", "/artifact"))
	if f, i := by["fleet"], by["independent"]; f != nil && i != nil && f.skip == "" && i.skip == "" {
		s += fmt.Sprintf(" (fleet %.2f× the wall time)", f.wall.Seconds()/i.wall.Seconds())
	}
	if by["shared"] != nil {
		s += "; shared store without lease " + part("shared", "/artifact")
	}
	return s
}

func (r *report) fleetBlock() block {
	b := block{title: fmt.Sprintf(sectionTitles[sectionFleet], r.fleetModules, r.fleetMiB, r.o.fleet.inflight, r.o.fleet.latency)}
	ns, by := fleetByN(r.fleet)
	for _, n := range ns {
		b.lines = append(b.lines, []string{fleetLine(n, by[n])})
		if f := by[n]["fleet"]; f != nil && f.skip == "" && f.leases != nil {
			b.lines = append(b.lines, []string{fmt.Sprintf("  fleet N=%d, summed over the replicas: leases %s; shared store reads %s", n,
				orNone(countsText(f.leases, "taken", "waited", "wait_timeout", "unavailable")), orNone(countsText(f.sharedGets, "hit", "miss")))})
		}
	}
	return b
}

// fleetTarget is the target: a fleet asks the upstream at most
// once per artifact, at every N. The verdict is "n/a" when no fleet run
// happened.
func fleetTarget(rs []*fleetResult) (verdict, text string) {
	ns, by := fleetByN(rs)
	var parts []string
	met, ran := true, false
	for _, n := range ns {
		f := by[n]["fleet"]
		switch {
		case f == nil:
			continue
		case f.skip != "":
			parts = append(parts, fmt.Sprintf("N=%d %s", n, firstLine(f.skip)))
			continue
		}
		ran = true
		parts = append(parts, fmt.Sprintf("%.2f at N=%d", f.perArtifact(), n))
		met = met && f.perArtifact() <= 1.0
	}
	switch {
	case !ran:
		verdict = "n/a   "
	case met:
		verdict = "met   "
	default:
		verdict = "MISSED"
	}
	return verdict, "fleet: upstream requests per artifact ≤ 1.0 (N=" + joinInts(ns, ",") + "): " + strings.Join(parts, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func joinInts(ns []int, sep string) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, sep)
}
