// Command benchtable is `make bench`: it measures modgate against the
// floor, in one run, and prints the results twice: as benchmark lines that
// benchstat reads, and as one table for people, with the targets and
// whether each is met.
//
// Every row is measured against three columns (four for small reverse
// requests), in the same run:
//
//   - direct: the client talks to the fake origin, no proxy in between;
//   - floor: httputil.ReverseProxy with Rewrite and nothing else (an
//     absolute-form request goes where its URL says: a plain forwarder),
//     and for CONNECT the least a net/http server can do (hijack, dial,
//     io.Copy both ways);
//   - modgate: with everything that exists turned on: a policy of several
//     rules (watched for changes), breakers and retries, an audit log to a
//     file, telemetry sampling every request and exporting it to an
//     exporter in modgate's process (-export otlp: over OTLP to a local
//     receiver);
//   - modgate-notel: the same with telemetry off.
//
// The columns take turns: each row warms every column up, then gives each
// a slice of time (-d) per round, for -rounds rounds, in an order that
// rotates from round to round, so that a noisy machine spreads its noise
// over all of them. Clients are closed loops on keep-alive connections.
//
// The client, the origin and the OTLP receiver run in this process; the
// floor and the modgates run as child processes (this program again, with
// -role), so that a proxy's peak RSS, heap and allocations are its own.
// The hot-path allocation row is the exception: it is Go's benchmark
// harness with everything in one process, like go test -bench -benchmem
// (BenchmarkHotPath runs the same code under go test).
//
// Usage:
//
//	go run ./sidecar/benchtable [-d 750ms] [-rounds 5] [-warmup 300ms] [-clients 1,16,64]
//		[-only small,zip,forward,tunnel,setup,tunnelzip,tunnelzip-tls,hotpath] [-profile DIR]
//
// With -profile, each child writes a CPU profile of each row it serves
// into DIR (row.target.cpu.pprof), for go tool pprof; -only picks rows,
// e.g. -only small -clients 16 -d 5s -rounds 2 -profile /tmp/prof to
// profile one row at length.
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
	zipMiB   int
	zipRound int
	hotN     int
	export   string // where modgate's spans go: inProcess or "otlp"
	fixtures string
	only     map[section]bool
}

// sectionNames name the rows for -only.
var sectionNames = map[string]section{
	"small": sectionSmall, "zip": sectionZip, "forward": sectionForward, "tunnel": sectionTunnel,
	"setup": sectionSetup, "tunnelzip": sectionTunnelZip, "tunnelzip-tls": sectionTunnelZipTLS, "hotpath": sectionHot,
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
	only := fs.String("only", "small,zip,forward,tunnel,setup,tunnelzip,tunnelzip-tls,hotpath", "the rows to run")
	fs.IntVar(&o.zipMiB, "zip-mib", 256, "size of the streamed zip, MiB")
	fs.IntVar(&o.zipRound, "zip-rounds", 4, "transfers of the zip per column")
	fs.IntVar(&o.hotN, "hotpath-n", 3000, "iterations of each hot-path benchmark")
	fs.StringVar(&o.export, "export", inProcess, "where modgate's spans go: inprocess (an exporter in its process that counts them) or otlp (OTLP/HTTP to a receiver in this process)")
	fs.StringVar(&o.profile, "profile", "", "folder for CPU profiles of the children, one per row and column")
	fs.StringVar(&o.fixtures, "fixtures", "", "module fixtures (default: testdata/mod of the module)")
	// The children's flags.
	role := fs.String("role", "", "internal: run as a child (floor, modgate, hotpath)")
	var gc gateConfig
	fs.StringVar(&gc.Origin, "origin", "", "internal: the origin's base URL")
	fs.StringVar(&gc.OTLP, "otlp", "", "internal: OTLP endpoint, or inprocess (empty: telemetry off)")
	fs.StringVar(&gc.Policy, "policy", "", "internal: policy file")
	fs.StringVar(&gc.Audit, "audit", "", "internal: audit log file")
	if err := fs.Parse(args); err == flag.ErrHelp {
		return nil
	} else if err != nil {
		return err
	}
	if o.export != inProcess && o.export != "otlp" {
		return fmt.Errorf("-export: %q is neither inprocess nor otlp", o.export)
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
		return runHotPath(o.fixtures, o.hotN, o.export)
	default:
		return runChild(*role, gc)
	}
	for _, f := range strings.Split(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-clients: %q is not a number of clients", f)
		}
		o.clients = append(o.clients, n)
	}
	o.only = map[section]bool{}
	for _, f := range strings.Split(*only, ",") {
		s, ok := sectionNames[strings.TrimSpace(f)]
		if !ok {
			return fmt.Errorf("-only: no row %q (small, zip, forward, tunnel, setup, tunnelzip, tunnelzip-tls, hotpath)", f)
		}
		o.only[s] = true
	}
	if o.rounds < 1 || o.d <= 0 || o.zipMiB < 1 || o.zipRound < 1 {
		return fmt.Errorf("-rounds, -d, -zip-mib and -zip-rounds must be positive")
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

// bench runs every row and prints the table.
func bench(o options) error {
	began := time.Now()
	dir, err := os.MkdirTemp("", "modgate-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	zipSize := int64(o.zipMiB) << 20
	org, paths, err := newOrigin(o.fixtures, zipSize)
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
	policyDir := filepath.Join(dir, "policy") // apart from the audit logs: the policy watcher sees its whole folder
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		return err
	}
	policyFile, err := writePolicy(policyDir)
	if err != nil {
		return err
	}
	originURL := "http://" + originAddr
	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	start := func(name, role string, args ...string) (*child, error) {
		c, err := startChild(name, role, append([]string{"-origin", originURL}, args...)...)
		if err == nil {
			children = append(children, c)
		}
		return c, err
	}
	floor, err := start("floor", "floor")
	if err != nil {
		return err
	}
	spansTo := "http://" + recvAddr
	if o.export == inProcess {
		spansTo = inProcess
	}
	gate, err := start("modgate", "modgate", "-otlp", spansTo, "-policy", policyFile, "-audit", filepath.Join(dir, "audit", "modgate.jsonl"))
	if err != nil {
		return err
	}
	noTel, err := start("modgate-notel", "modgate", "-policy", policyFile, "-audit", filepath.Join(dir, "audit", "modgate-notel.jsonl"))
	if err != nil {
		return err
	}
	// The TLS tunnel row has an origin of its own, on a port of its own:
	// an HTTPS server of the same origin, with a certificate of a CA made
	// for this run. A modgate allows CONNECT only to the port of its
	// origin, so that row has a modgate of its own too, set up like the
	// other (telemetry, policy, audit log) but for the HTTPS origin. The
	// floor tunnels to any port.
	var tlsAddr string
	var tlsClient *tls.Config
	var gateTLS *child
	if o.only[sectionTunnelZipTLS] {
		serverTLS, clientTLS, err := originTLS(filepath.Join(dir, "ca"))
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: org, TLSConfig: serverTLS}
		go srv.ServeTLS(ln, "", "")
		defer srv.Close()
		tlsAddr, tlsClient = ln.Addr().String(), clientTLS
		gateTLS, err = startChild("modgate-tls", "modgate", "-origin", "https://"+tlsAddr, "-otlp", spansTo, "-policy", policyFile, "-audit", filepath.Join(dir, "audit", "modgate-tls.jsonl"))
		if err != nil {
			return err
		}
		children = append(children, gateTLS)
	}

	out := newReport(o)
	out.modules = len(paths) / 3
	out.header()

	reverse := func(c *child, name string, reqs func(host string) [][]byte) *target {
		if c == nil {
			return &target{name: "direct", addr: originAddr, reqs: reqs(originAddr)}
		}
		return &target{name: name, addr: c.addrs.HTTP, reqs: reqs(c.addrs.HTTP), child: c}
	}
	small := func(host string) [][]byte { return requests(paths, host, false) }
	zip := func(host string) [][]byte { return requests([]string{zipPath}, host, false) }
	var infos []string // paths are .info, .mod and list of each module in turn
	for i := 0; i < len(paths); i += 3 {
		infos = append(infos, paths[i])
	}
	tunnel := func(reqs [][]byte, fresh bool) []*target {
		return []*target{
			{name: "direct", addr: originAddr, reqs: reqs, fresh: fresh},
			{name: "floor", addr: floor.addrs.HTTP, via: originAddr, reqs: reqs, fresh: fresh, child: floor},
			{name: "modgate", addr: gate.addrs.HTTP, via: originAddr, reqs: reqs, fresh: fresh, child: gate},
		}
	}
	zo := o.plan
	zo.rounds = o.zipRound

	if o.only[sectionSmall] {
		for _, n := range o.clients {
			ts := []*target{reverse(nil, "", small), reverse(floor, "floor", small), reverse(gate, "modgate", small), reverse(noTel, "modgate-notel", small)}
			out.load(sectionSmall, fmt.Sprintf("Small/mode=reverse/clients=%d", n), n, measure(o.plan, "small requests, reverse, "+clientsText(n), ts, n, 0, false))
		}
	}
	if o.only[sectionZip] {
		ts := []*target{reverse(nil, "", zip), reverse(floor, "floor", zip), reverse(gate, "modgate", zip)}
		out.stream(sectionZip, "Zip/mode=reverse", measure(zo, fmt.Sprintf("%d MiB zip, reverse", o.zipMiB), ts, 1, 1, true))
	}
	if o.only[sectionForward] {
		for _, n := range o.clients {
			ts := []*target{
				{name: "direct", addr: originAddr, reqs: requests(paths, originAddr, false)},
				{name: "floor", addr: floor.addrs.HTTP, reqs: requests(paths, originAddr, true), child: floor},
				{name: "modgate", addr: gate.addrs.HTTP, reqs: requests(paths, originAddr, true), child: gate},
			}
			out.load(sectionForward, fmt.Sprintf("Small/mode=forward/clients=%d", n), n, measure(o.plan, "small requests, forward absolute-form, "+clientsText(n), ts, n, 0, false))
		}
	}
	if o.only[sectionTunnel] {
		for _, n := range o.clients {
			out.load(sectionTunnel, fmt.Sprintf("Tunnel/clients=%d", n), n, measure(o.plan, "small requests through open tunnels, "+clientsText(n), tunnel(requests(paths, originAddr, false), false), n, 0, false))
		}
	}
	if o.only[sectionSetup] {
		// Two client counts at most: every request is two new connections.
		for _, n := range o.clients[:min(2, len(o.clients))] {
			out.load(sectionSetup, fmt.Sprintf("TunnelSetup/clients=%d", n), n, measure(o.plan, "a new tunnel per request, "+clientsText(n), tunnel(requests(infos, originAddr, false), true), n, 0, false))
		}
	}
	if o.only[sectionTunnelZip] {
		out.stream(sectionTunnelZip, "Zip/mode=tunnel", measure(zo, fmt.Sprintf("%d MiB zip through a tunnel", o.zipMiB), tunnel(requests([]string{zipPath}, originAddr, false), false), 1, 1, true))
	}
	if o.only[sectionTunnelZipTLS] {
		reqs := requests([]string{zipPath}, tlsAddr, false)
		ts := []*target{
			{name: "direct", addr: tlsAddr, reqs: reqs, tls: tlsClient},
			{name: "floor", addr: floor.addrs.HTTP, via: tlsAddr, reqs: reqs, tls: tlsClient, child: floor},
			{name: "modgate", addr: gateTLS.addrs.HTTP, via: tlsAddr, reqs: reqs, tls: tlsClient, child: gateTLS},
		}
		out.stream(sectionTunnelZipTLS, "Zip/mode=tunnel-tls", measure(zo, fmt.Sprintf("%d MiB zip over TLS through a tunnel", o.zipMiB), ts, 1, 1, true))
	}
	if o.only[sectionHot] {
		fmt.Fprintln(os.Stderr, "bench: hot path, with Go's benchmark harness")
		hot, err := hotPathChild(o)
		if err != nil {
			return err
		}
		out.hot(hot)
	}

	out.telemetry = telemetryReport{export: o.export, traces: recv.traces.Load(), metrics: recv.metrics.Load(), bytes: recv.bytes.Load()}
	for _, c := range []*child{gate, gateTLS} {
		if c != nil {
			out.telemetry.spans += c.spans()
		}
	}
	out.elapsed = time.Since(began)
	out.table()
	return nil
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
	cmd := exec.Command(exe, "-role", "hotpath", "-fixtures", o.fixtures, "-hotpath-n", strconv.Itoa(o.hotN), "-export", o.export)
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
