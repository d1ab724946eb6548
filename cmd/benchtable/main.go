// Command benchtable is `make bench`: it measures the modgate users run
// against the floor and against nginx and Squid, in one run, and prints the
// results twice: as benchmark lines that benchstat reads, and as one table
// for people, with the targets and whether each is met.
//
// The columns:
//
//   - direct: the client talks to the fake origin, no proxy in between;
//   - floor: httputil.ReverseProxy with Rewrite and nothing else (an
//     absolute-form request goes where its URL says: a plain forwarder),
//     and for CONNECT the least a net/http server can do (hijack, dial,
//     io.Copy both ways), in a process of its own;
//   - nginx (reverse mode, keep-alive pool to the origin) and Squid
//     (forward mode, absolute-form and CONNECT), as Debian ships them;
//   - nginx-file: the same nginx serving the origin's answers from files,
//     the peer of modgate's cache hits;
//   - modgate: `modgate run` (the binary -modgate names) as child
//     processes configured only with a config file, flags and environment
//     variables, as users configure it: as shipped (no OTLP endpoint),
//     OTEL_SDK_DISABLED=true, OTLP export to a receiver in this process
//     with the default sampler, the same with OTEL_TRACES_SAMPLER=always_on,
//     and with --cache-dir. Every one has the bench policy (six rules,
//     watched) and an audit log to a file, and verifies .mod and .zip
//     answers against the origin's checksum database (--sumdb name+key);
//   - unverified: modgate as shipped with sumdb off, for comparison.
//
// The origin (origin.go) serves the module fixtures, a real signed
// checksum database of them, and for the zip rows a real module zip of
// -zip-mib MiB made at the start of the run (bigzip.go).
//
// The columns take turns: each row warms every column up, then gives each
// a slice of time (-d) per round, for -rounds rounds, in an order that
// rotates from round to round, so that a noisy machine spreads its noise
// over all of them. Clients are closed loops on keep-alive connections.
// Each process's CPU time comes from /proc, so the table has CPU per
// request for every proxy.
//
// The fleet rows (fleet.go) are a cold start of N `modgate run` replicas
// at once, independent or sharing a store on versitygw and leases in
// Redis, counting what a fake upstream is asked per artifact.
//
// The hot-path row is Go's benchmark harness with client, origin and an
// in-process modgate (sidecar.New, as `modgate run` builds it) in one
// process, for allocation counts and profiles of the request path
// (BenchmarkHotPath runs the same code under go test).
//
// Usage:
//
//	go run ./cmd/benchtable -modgate bin/modgate [-d 750ms] [-rounds 5] [-warmup 300ms] [-clients 1,16,64] [-cached-clients 1,32]
//		[-only small,cached,zip,forward,tunnel,setup,tunnelzip,tunnelzip-tls,fleet,hotpath] [-profile DIR]
//		[-redis redis-server] [-versitygw versitygw] [-fleet-n 1,3,6] [-fleet-latency 30ms] [-fleet-inflight 6]
//
// With -profile, the floor and each modgate write a CPU profile of each
// row they serve into DIR (row.column.cpu.pprof; modgate's through its
// --pprof endpoint), for go tool pprof; -only picks rows, e.g. -only small
// -clients 16 -d 5s -rounds 2 -profile /tmp/prof to profile one row at
// length.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	plan
	clients  []int
	cached   []int // clients of the cache-hit rows
	zipMiB   int
	zipRound int
	hotN     int
	modgate  string // the modgate binary
	fixtures string
	only     map[section]bool
	fleet    fleetPlan
}

// sectionNames name the rows for -only.
var sectionNames = map[string]section{
	"small": sectionSmall, "cached": sectionCached, "zip": sectionZip, "forward": sectionForward, "tunnel": sectionTunnel,
	"setup": sectionSetup, "tunnelzip": sectionTunnelZip, "tunnelzip-tls": sectionTunnelZipTLS, "hotpath": sectionHot,
	"fleet": sectionFleet,
}

func clientsText(n int) string {
	if n == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients", n)
}

func run(args []string) error {
	fs := flag.NewFlagSet("benchtable", flag.ContinueOnError)
	var o options
	var clients string
	fs.DurationVar(&o.d, "d", 750*time.Millisecond, "each column's share of a round")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds per row; the columns take turns in each")
	fs.DurationVar(&o.warm, "warmup", 300*time.Millisecond, "warm-up per column before a row is measured")
	fs.StringVar(&clients, "clients", "1,16,64", "concurrent clients of the small-request rows")
	cachedClients := fs.String("cached-clients", "1,32", "concurrent clients of the cache-hit rows")
	only := fs.String("only", "small,cached,zip,forward,tunnel,setup,tunnelzip,tunnelzip-tls,fleet,hotpath", "the rows to run")
	fs.IntVar(&o.zipMiB, "zip-mib", 256, "size of the streamed module zip, MiB")
	fs.IntVar(&o.zipRound, "zip-rounds", 4, "transfers of the zip per column")
	fs.IntVar(&o.hotN, "hotpath-n", 3000, "iterations of each hot-path benchmark")
	fs.StringVar(&o.modgate, "modgate", "bin/modgate", "the modgate binary to measure (make bench builds it)")
	fs.StringVar(&o.profile, "profile", "", "folder for CPU profiles of the floor and the modgates, one per row and column")
	fs.StringVar(&o.fixtures, "fixtures", "", "module fixtures (default: testdata/mod of the module)")
	// The fleet section's servers and shape.
	defaultRedis := os.Getenv("REDIS_SERVER")
	if defaultRedis == "" {
		defaultRedis, _ = exec.LookPath("redis-server")
	}
	fs.StringVar(&o.fleet.redis, "redis", defaultRedis, "redis-server binary for the fleet rows (default: $REDIS_SERVER, else redis-server on PATH)")
	fs.StringVar(&o.fleet.versitygw, "versitygw", os.Getenv("VERSITYGW_BIN"), "versitygw binary for the fleet rows' shared store (default: $VERSITYGW_BIN)")
	replicas := fs.String("fleet-n", "1,3,6", "replicas (N) of the fleet rows")
	fs.DurationVar(&o.fleet.latency, "fleet-latency", 30*time.Millisecond, "the fleet rows' upstream: delay before each answer")
	fs.IntVar(&o.fleet.inflight, "fleet-inflight", 6, "modules each fleet client fetches at once")
	// The children's flags.
	role := fs.String("role", "", "internal: run as a child (floor, hotpath)")
	var origin string
	fs.StringVar(&origin, "origin", "", "internal: the origin's base URL")
	if err := fs.Parse(args); err == flag.ErrHelp {
		return nil
	} else if err != nil {
		return err
	}
	if o.fixtures == "" {
		var err error
		if o.fixtures, err = fixtureDir(); err != nil {
			return err
		}
	}
	switch *role {
	case "":
	case "hotpath":
		return runHotPath(o.fixtures, o.hotN)
	default:
		return runChild(*role, origin)
	}
	var err error
	if o.clients, err = counts("-clients", clients); err != nil {
		return err
	}
	if o.cached, err = counts("-cached-clients", *cachedClients); err != nil {
		return err
	}
	if o.fleet.replicas, err = counts("-fleet-n", *replicas); err != nil {
		return err
	}
	if o.fleet.inflight < 1 || o.fleet.latency < 0 {
		return fmt.Errorf("-fleet-inflight must be positive, -fleet-latency not negative")
	}
	o.only = map[section]bool{}
	for _, f := range strings.Split(*only, ",") {
		s, ok := sectionNames[strings.TrimSpace(f)]
		if !ok {
			return fmt.Errorf("-only: no row %q (small, cached, zip, forward, tunnel, setup, tunnelzip, tunnelzip-tls, fleet, hotpath)", f)
		}
		o.only[s] = true
	}
	if o.rounds < 1 || o.d <= 0 || o.zipMiB < 1 || o.zipRound < 1 {
		return fmt.Errorf("-rounds, -d, -zip-mib and -zip-rounds must be positive")
	}
	if abs, err := filepath.Abs(o.modgate); err == nil {
		o.modgate = abs
	}
	if _, err := os.Stat(o.modgate); err != nil {
		return fmt.Errorf("-modgate: %w (make bench builds bin/modgate)", err)
	}
	if o.profile != "" {
		abs, err := filepath.Abs(o.profile)
		if err != nil {
			return err
		}
		o.profile = abs
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return err
		}
	}
	return bench(o)
}

// counts parses a flag's comma-separated list of positive numbers.
func counts(flag, list string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", flag, f)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// bench runs every row and prints the table.
func bench(o options) error {
	began := time.Now()
	dir, err := os.MkdirTemp("", "modgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(os.Stderr, "bench: writing a %d MiB module zip\n", o.zipMiB)
	big, err := writeBigZip(filepath.Join(dir, "big.zip"), int64(o.zipMiB)<<20)
	if err != nil {
		return err
	}
	org, paths, err := newOrigin(o.fixtures, big)
	if err != nil {
		return err
	}
	serve := func(h http.Handler) (string, func(), error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		return ln.Addr().String(), func() { srv.Close() }, nil
	}
	originAddr, closeOrigin, err := serve(org)
	if err != nil {
		return err
	}
	defer closeOrigin()
	recv := &receiver{}
	recvAddr, closeRecv, err := serve(recv)
	if err != nil {
		return err
	}
	defer closeRecv()
	// The TLS tunnel row's origin: the same origin over HTTPS, with a
	// certificate of a CA made for this run.
	serverTLS, tlsClient, err := originTLS(filepath.Join(dir, "ca"))
	if err != nil {
		return err
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	tlsSrv := &http.Server{Handler: org, TLSConfig: serverTLS}
	go tlsSrv.ServeTLS(tlsLn, "", "")
	defer tlsSrv.Close()
	tlsAddr := tlsLn.Addr().String()

	policyDir := filepath.Join(dir, "policy") // apart from the audit logs: the policy watcher sees its whole folder
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		return err
	}
	policyFile, err := writePolicy(policyDir)
	if err != nil {
		return err
	}
	originURL := "http://" + originAddr
	_, originPort, _ := net.SplitHostPort(originAddr)
	_, tlsPort, _ := net.SplitHostPort(tlsAddr)
	configFile := filepath.Join(dir, "modgate.yaml")
	if err := os.WriteFile(configFile, []byte(fmt.Sprintf(modgateConfig, originURL, policyFile, originPort+", "+tlsPort)), 0o644); err != nil {
		return err
	}

	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	// The proxies serve the load and streaming rows; the fleet and
	// hot-path rows start processes of their own.
	var floor, nginx, nginxFile, squid *child
	gates := map[string]*child{}
	var peerNotes []string
	if o.proxyRows() {
		if floor, err = startChild("floor", "floor", "-origin", originURL); err != nil {
			return err
		}
		children = append(children, floor)
		for _, mc := range modgateColumns {
			c, err := startModgate(o.modgate, dir, configFile, "http://"+recvAddr, org.key, mc)
			if err != nil {
				return err
			}
			children = append(children, c)
			gates[mc.name] = c
		}
		// The peers are optional: without them their columns stay empty
		// and the table says why.
		www := filepath.Join(dir, "www")
		if err := org.writeFiles(www); err != nil {
			return err
		}
		if nginx, nginxFile, err = startNginx(dir, originAddr, www); err != nil {
			peerNotes = append(peerNotes, err.Error())
		} else {
			children = append(children, nginx)
		}
		if squid, err = startSquid(dir); err != nil {
			peerNotes = append(peerNotes, err.Error())
		} else {
			children = append(children, squid)
		}
	}

	out := newReport(o)
	out.modules = len(paths) / 3
	out.peerNotes = peerNotes
	out.header()

	// at is a column that serves reqs at its listener; via, if set, is
	// where it tunnels to (CONNECT) first.
	at := func(name string, c *child, reqs [][]byte) *target {
		if c == nil {
			return nil
		}
		return &target{name: name, addr: c.addrs.HTTP, reqs: reqs, child: c}
	}
	direct := func(reqs [][]byte) *target { return &target{name: "direct", addr: originAddr, reqs: reqs} }
	small := func(host string) [][]byte { return requests(paths, host, false) }
	var infos []string // paths are .info, .mod and list of each module in turn
	for i := 0; i < len(paths); i += 3 {
		infos = append(infos, paths[i])
	}
	tunnel := func(reqs [][]byte, via string, fresh bool, tc *tls.Config) []*target {
		ts := []*target{{name: "direct", addr: via, reqs: reqs, fresh: fresh, tls: tc}}
		for _, c := range []*child{floor, squid, gates["modgate"]} {
			if c != nil {
				name := c.name
				ts = append(ts, &target{name: name, addr: c.addrs.HTTP, via: via, reqs: reqs, fresh: fresh, tls: tc, child: c})
			}
		}
		return ts
	}
	zo := o.plan
	zo.rounds = o.zipRound

	if o.only[sectionSmall] {
		for _, n := range o.clients {
			ts := []*target{direct(small(originAddr)), at("floor", floor, small(floor.addrs.HTTP)), at("nginx", nginx, small(originAddr))}
			for _, name := range []string{"modgate", "sdk-off", "otlp", "always-on", "unverified"} {
				ts = append(ts, at(name, gates[name], small(gates[name].addrs.HTTP)))
			}
			out.load(sectionSmall, fmt.Sprintf("Small/mode=reverse/clients=%d", n), n, measure(o.plan, "small requests, reverse, "+clientsText(n), compact(ts), n, 0, false))
		}
	}
	if o.only[sectionCached] {
		c := gates["cached"]
		// Fill the cache first: the warm-up is too short for a miss per
		// artifact (each verified, written and synced) on a slow disk.
		if err := fill(c, paths); err != nil {
			return err
		}
		for _, n := range o.cached {
			ts := []*target{direct(small(originAddr)), at("floor", floor, small(floor.addrs.HTTP)), at("nginx-file", nginxFile, small(originAddr)), at("cached", c, small(c.addrs.HTTP))}
			out.load(sectionCached, fmt.Sprintf("Small/mode=cached/clients=%d", n), n, measure(o.plan, "small requests from the cache, "+clientsText(n), compact(ts), n, 0, false))
		}
	}
	if o.only[sectionZip] {
		zip := func(host string) [][]byte { return requests([]string{zipPath}, host, false) }
		ts := []*target{direct(zip(originAddr)), at("floor", floor, zip(floor.addrs.HTTP)), at("nginx", nginx, zip(originAddr)), at("nginx-file", nginxFile, zip(originAddr))}
		// cached: the zip is verified once, in the warm-up, and kept;
		// unverified: sumdb off, the zip streams as it arrives.
		for _, name := range []string{"modgate", "cached", "unverified"} {
			ts = append(ts, at(name, gates[name], zip(gates[name].addrs.HTTP)))
		}
		out.bigZip = big
		// A zip larger than modgate's verify-first limit is verified as it
		// is kept, after it is served: the cached column is measured once
		// it holds the zip, not while it hashes it.
		if err := keepZip(gates["cached"]); err != nil {
			return err
		}
		out.stream(sectionZip, "Zip/mode=reverse", measure(zo, fmt.Sprintf("%d MiB zip, reverse", o.zipMiB), compact(ts), 1, 1, true))
	}
	if o.only[sectionForward] {
		abs := requests(paths, originAddr, true)
		for _, n := range o.clients {
			ts := []*target{direct(small(originAddr)), at("floor", floor, abs), at("squid", squid, abs), at("modgate", gates["modgate"], abs)}
			out.load(sectionForward, fmt.Sprintf("Small/mode=forward/clients=%d", n), n, measure(o.plan, "small requests, forward absolute-form, "+clientsText(n), compact(ts), n, 0, false))
		}
	}
	if o.only[sectionTunnel] {
		for _, n := range o.clients {
			out.load(sectionTunnel, fmt.Sprintf("Tunnel/clients=%d", n), n, measure(o.plan, "small requests through open tunnels, "+clientsText(n), tunnel(small(originAddr), originAddr, false, nil), n, 0, false))
		}
	}
	if o.only[sectionSetup] {
		// Two client counts at most: every request is two new connections.
		for _, n := range o.clients[:min(2, len(o.clients))] {
			out.load(sectionSetup, fmt.Sprintf("TunnelSetup/clients=%d", n), n, measure(o.plan, "a new tunnel per request, "+clientsText(n), tunnel(requests(infos, originAddr, false), originAddr, true, nil), n, 0, false))
		}
	}
	if o.only[sectionTunnelZip] {
		out.stream(sectionTunnelZip, "Zip/mode=tunnel", measure(zo, fmt.Sprintf("%d MiB zip through a tunnel", o.zipMiB), tunnel(requests([]string{zipPath}, originAddr, false), originAddr, false, nil), 1, 1, true))
	}
	if o.only[sectionTunnelZipTLS] {
		out.stream(sectionTunnelZipTLS, "Zip/mode=tunnel-tls", measure(zo, fmt.Sprintf("%d MiB zip over TLS through a tunnel", o.zipMiB), tunnel(requests([]string{zipPath}, tlsAddr, false), tlsAddr, false, tlsClient), 1, 1, true))
	}
	if o.only[sectionFleet] {
		if err := runFleet(o, dir, out); err != nil {
			return err
		}
	}
	if o.only[sectionHot] {
		fmt.Fprintln(os.Stderr, "bench: hot path, with Go's benchmark harness")
		hot, err := hotPathChild(o)
		if err != nil {
			return err
		}
		out.hot(hot)
	}

	out.telemetry = telemetryReport{traces: recv.traces.Load(), metrics: recv.metrics.Load(), bytes: recv.bytes.Load()}
	out.elapsed = time.Since(began)
	out.table()
	return nil
}

// proxyRows reports whether a row that needs the proxy processes (the
// floor, the modgate columns, nginx, Squid) is to run.
func (o options) proxyRows() bool {
	for s := range o.only {
		if s != sectionFleet && s != sectionHot {
			return true
		}
	}
	return false
}

// compact drops the columns whose process did not start.
func compact(ts []*target) []*target {
	out := ts[:0]
	for _, t := range ts {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

// requests prepares a GET of each path for host (the Host header). With
// absolute set the request line names the URL (absolute-form, as to a
// forward proxy). The headers are those the go command sends.
func requests(paths []string, host string, absolute bool) [][]byte {
	var rs [][]byte
	for _, p := range paths {
		uri := p
		if absolute {
			uri = "http://" + host + p
		}
		rs = append(rs, []byte("GET "+uri+" HTTP/1.1\r\nHost: "+host+"\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"))
	}
	return rs
}

// hotPathChild runs the hot-path benchmarks in a child process of their
// own, away from this process's heap.
func hotPathChild(o options) ([]hotResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-role", "hotpath", "-fixtures", o.fixtures, "-hotpath-n", strconv.Itoa(o.hotN))
	cmd.Stderr = os.Stderr
	setParentDeathSignal(cmd)
	data, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hot path: %w", err)
	}
	var rs []hotResult
	return rs, json.Unmarshal(data, &rs)
}

// procs is the suffix go test gives benchmark names.
func procs() int { return runtime.GOMAXPROCS(0) }
