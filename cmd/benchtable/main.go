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
	"flag"
	"fmt"
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
	var o options
	var text flagText
	fs := o.flags(&text)
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
	switch text.role {
	case "":
	case "hotpath":
		return runHotPath(o.fixtures, o.hotN)
	default:
		return runChild(text.role, text.origin)
	}
	if err := o.finish(text); err != nil {
		return err
	}
	return bench(o)
}

// flagText is the flags that options hold parsed (lists of numbers and of
// rows), as the command line gives them, and a child process's flags.
type flagText struct {
	clients, cached, only, replicas string
	role, origin                    string
}

// flags is the command line: its flags set o's fields, and text's.
func (o *options) flags(text *flagText) *flag.FlagSet {
	fs := flag.NewFlagSet("benchtable", flag.ContinueOnError)
	fs.DurationVar(&o.d, "d", 750*time.Millisecond, "each column's share of a round")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds per row; the columns take turns in each")
	fs.DurationVar(&o.warm, "warmup", 300*time.Millisecond, "warm-up per column before a row is measured")
	fs.StringVar(&text.clients, "clients", "1,16,64", "concurrent clients of the small-request rows")
	fs.StringVar(&text.cached, "cached-clients", "1,32", "concurrent clients of the cache-hit rows")
	fs.StringVar(&text.only, "only", "small,cached,zip,forward,tunnel,setup,tunnelzip,tunnelzip-tls,fleet,hotpath", "the rows to run")
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
	fs.StringVar(&text.replicas, "fleet-n", "1,3,6", "replicas (N) of the fleet rows")
	fs.DurationVar(&o.fleet.latency, "fleet-latency", 30*time.Millisecond, "the fleet rows' upstream: delay before each answer")
	fs.IntVar(&o.fleet.inflight, "fleet-inflight", 6, "modules each fleet client fetches at once")
	// The children's flags.
	fs.StringVar(&text.role, "role", "", "internal: run as a child (floor, hotpath)")
	fs.StringVar(&text.origin, "origin", "", "internal: the origin's base URL")
	return fs
}

// finish parses the lists of text into o and checks o: the numbers, the
// rows, the modgate binary; it makes the profile folder.
func (o *options) finish(text flagText) error {
	var err error
	if o.clients, err = counts("-clients", text.clients); err != nil {
		return err
	}
	if o.cached, err = counts("-cached-clients", text.cached); err != nil {
		return err
	}
	if o.fleet.replicas, err = counts("-fleet-n", text.replicas); err != nil {
		return err
	}
	if o.fleet.inflight < 1 || o.fleet.latency < 0 {
		return fmt.Errorf("-fleet-inflight must be positive, -fleet-latency not negative")
	}
	o.only = map[section]bool{}
	for _, f := range strings.Split(text.only, ",") {
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
	return nil
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

// bench starts the rig, runs the rows the command line picked, in the
// table's order, and prints the table.
func bench(o options) error {
	began := time.Now()
	rg := newRig()
	defer rg.close()
	if err := rg.startOrigin(o); err != nil {
		return err
	}
	if err := rg.writeConfig(); err != nil {
		return err
	}
	if o.proxyRows() {
		if err := rg.startProxies(o); err != nil {
			return err
		}
	}

	out := newReport(o)
	out.modules = len(rg.paths) / 3
	out.peerNotes = rg.peerNotes
	out.header()
	for _, row := range rg.rows() {
		if !o.only[row.section] {
			continue
		}
		if err := row.run(o, out); err != nil {
			return err
		}
	}

	out.telemetry = telemetryReport{traces: rg.recv.traces.Load(), metrics: rg.recv.metrics.Load(), bytes: rg.recv.bytes.Load()}
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

// zipPlan is the plan of the zip rows: -zip-rounds transfers per column.
func (o options) zipPlan() plan {
	zo := o.plan
	zo.rounds = o.zipRound
	return zo
}

// procs is the suffix go test gives benchmark names.
func procs() int { return runtime.GOMAXPROCS(0) }
