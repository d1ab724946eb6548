package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

// The hot-path row counts allocations per proxied request with Go's
// benchmark harness (what go test -bench -benchmem reports): client,
// origin and proxy in one process, one request per iteration on a
// keep-alive connection. The client allocates nothing per request and the
// direct column is client and origin alone, so a proxy's own allocations
// are its column minus direct. BenchmarkHotPath in benchtable_test.go runs
// the same code under go test, for -cpuprofile and -memprofile.

// hotKinds are the requests of the hot-path row.
var hotKinds = []string{"reverse-info", "reverse-list", "forward-info"}

// hotColumns are its columns: modgate with the telemetry of `modgate run`
// as shipped, and with every request sampled (spans to an in-process
// exporter).
var hotColumns = []string{"direct", "floor", "modgate", "always-on"}

// inproc is everything the hot-path row needs, in this process.
type inproc struct {
	servers    []*http.Server
	gates      []*gate
	originAddr string
	addrs      map[string]string // by target
	info, list []string          // escaped paths
}

func newInproc(dir, fixtures string) (_ *inproc, err error) {
	e := &inproc{addrs: map[string]string{}}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	o, paths, err := newOrigin(fixtures, nil) // the hot path fetches no zip
	if err != nil {
		return nil, err
	}
	for i, p := range paths {
		switch i % 3 {
		case 0:
			e.info = append(e.info, p)
		case 2:
			e.list = append(e.list, p)
		}
	}
	serve := func(h http.Handler) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		srv := &http.Server{Handler: h}
		e.servers = append(e.servers, srv)
		go srv.Serve(ln)
		return ln.Addr().String(), nil
	}
	if e.originAddr, err = serve(o); err != nil {
		return nil, err
	}
	e.addrs["direct"] = e.originAddr
	floor, err := newFloor("http://" + e.originAddr)
	if err != nil {
		return nil, err
	}
	if e.addrs["floor"], err = serve(floor); err != nil {
		return nil, err
	}
	policyFile, err := writePolicy(dir)
	if err != nil {
		return nil, err
	}
	for _, name := range []string{"modgate", "always-on"} {
		cfg := gateConfig{Origin: "http://" + e.originAddr, Policy: policyFile, Audit: filepath.Join(dir, "audit", name+".jsonl"), AlwaysOn: name == "always-on"}
		g, err := startGate(cfg)
		if err != nil {
			return nil, err
		}
		e.gates = append(e.gates, g)
		e.addrs[name] = g.ln.Addr().String()
	}
	return e, nil
}

func (e *inproc) Close() {
	for _, g := range e.gates {
		g.Close()
	}
	for _, s := range e.servers {
		s.Close()
	}
}

// target is the column name of the kind row, as a load target.
func (e *inproc) target(kind, name string) *target {
	t := &target{name: name, addr: e.addrs[name]}
	switch kind {
	case "reverse-info":
		t.reqs = requests(e.info, t.addr, false)
	case "reverse-list":
		t.reqs = requests(e.list, t.addr, false)
	case "forward-info":
		t.reqs = requests(e.info, e.originAddr, name != "direct")
	}
	return t
}

// hotPath sends one request per iteration to the target, after 200 to warm
// it up.
func (e *inproc) hotPath(b *testing.B, kind, name string) {
	t := e.target(kind, name)
	c, err := t.dial()
	if err != nil {
		b.Fatal(err)
	}
	defer func() { c.Close() }()
	do := func(i int) {
		a, err := c.roundTrip(t.reqs[i%len(t.reqs)])
		if err == nil && a.status != 200 {
			err = fmt.Errorf("status %d", a.status)
		}
		if err != nil {
			b.Fatalf("%s %s: %v", kind, name, err)
		}
		if a.close {
			c.Close()
			if c, err = t.dial(); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := range 200 {
		do(i)
	}
	i := 0
	cpu := processCPU()
	for b.Loop() {
		do(i)
		i++
	}
	// The CPU time of the whole process (client, origin and proxy): on two
	// cores a proxy can add more CPU than it adds latency.
	if cpu := processCPU() - cpu; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(i), "cpu-µs/op")
	}
}

// hotResult is one hot-path benchmark, as the harness measured it.
type hotResult struct {
	Kind, Target string
	N            int
	NsPerOp      int64
	BytesPerOp   int64
	AllocsPerOp  int64
}

// runHotPath is the hotpath role: it runs every hot-path benchmark with
// testing.Benchmark, n iterations each, and prints the results as JSON.
func runHotPath(fixtures string, n int) error {
	testing.Init()
	if err := flag.Set("test.benchtime", fmt.Sprintf("%dx", n)); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "modgate-bench-hot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e, err := newInproc(dir, fixtures)
	if err != nil {
		return err
	}
	defer e.Close()
	var out []hotResult
	for _, kind := range hotKinds {
		for _, name := range hotColumns {
			r := testing.Benchmark(func(b *testing.B) { e.hotPath(b, kind, name) })
			if r.N == 0 {
				return fmt.Errorf("hot path %s %s failed", kind, name)
			}
			out = append(out, hotResult{Kind: kind, Target: name, N: r.N, NsPerOp: r.NsPerOp(), BytesPerOp: r.AllocedBytesPerOp(), AllocsPerOp: r.AllocsPerOp()})
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
