package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// target is one column of a row: where the requests go and how.
type target struct {
	name  string
	addr  string      // where to connect
	via   string      // if set, CONNECT to this address first
	reqs  [][]byte    // prepared requests, taken in turn
	fresh bool        // a new connection (and tunnel) for every request
	tls   *tls.Config // if set, the requests go over TLS (inside the tunnel, if via is set)
	child *child      // the process that serves it, if it is a child
}

func (t *target) dial() (*rawConn, error) {
	rc, err := dialRaw(t.addr, t.via)
	if err != nil || t.tls == nil {
		return rc, err
	}
	return rc.startTLS(t.tls)
}

// stats is what one target did in one row, over all its measured slices.
type stats struct {
	n, errs  int
	bytes    int64
	elapsed  time.Duration   // wall time of the measured slices
	lat      []time.Duration // per request, sorted once the row is done
	allocs   allocCounts     // by its child process during the slices
	allocsOK bool            // the child reports allocations (a Go process)
	cpu      time.Duration   // CPU time of its child process(es) during the slices
	mem      *memReport      // while the row ran, for streaming rows
	firstErr error
}

func (s *stats) rps() float64 { return float64(s.n) / s.elapsed.Seconds() }

// cpuPerReq is the proxy's CPU time per request, in µs.
func (s *stats) cpuPerReq() float64 { return float64(s.cpu.Nanoseconds()) / 1e3 / float64(s.n) }
func (s *stats) mbps() float64      { return float64(s.bytes) / 1e6 / s.elapsed.Seconds() }

// pct is the p-th percentile of the latencies: the one whose rank is
// p% of their number, rounded.
func (s *stats) pct(p float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	i := int(p/100*float64(len(s.lat))+0.5) - 1
	return s.lat[max(0, min(i, len(s.lat)-1))]
}

// worker is one closed-loop client: it sends a request, waits for the
// whole answer, and sends the next.
type worker struct {
	t      *target
	c      *rawConn
	next   int
	record bool
	n      int
	errs   int
	bytes  int64
	lat    []time.Duration
	err    error
}

func (w *worker) once() {
	start := time.Now()
	if w.c == nil {
		c, err := w.t.dial()
		if err != nil {
			w.fail(err)
			return
		}
		w.c = c
	}
	a, err := w.c.roundTrip(w.t.reqs[w.next%len(w.t.reqs)])
	w.next++
	if err == nil && a.status != 200 {
		err = fmt.Errorf("status %d", a.status)
	}
	if err != nil {
		w.fail(err)
		return
	}
	if a.close || w.t.fresh {
		w.c.Close()
		w.c = nil
	}
	w.n++
	w.bytes += a.bytes
	if w.record {
		w.lat = append(w.lat, time.Since(start))
	}
}

func (w *worker) fail(err error) {
	if w.c != nil {
		w.c.Close()
		w.c = nil
	}
	w.errs++
	if w.err == nil {
		w.err = err
	}
	time.Sleep(10 * time.Millisecond) // a broken target must not spin
}

// group is one target's workers in a row; their connections live from the
// warm-up to the end of the row.
type group struct {
	t  *target
	ws []*worker
	st stats
}

// run lets every worker send requests for d, or, if count > 0, lets one
// worker send count requests, and adds what they did to g.st when record
// is set.
func (g *group) run(d time.Duration, count int, record bool) {
	var before allocCounts
	var beforeOK bool
	var cpuBefore time.Duration
	if record && g.t.child != nil {
		before, beforeOK = g.t.child.allocs()
		cpuBefore = g.t.child.cpu()
	}
	for _, w := range g.ws {
		w.record = record
		w.n, w.errs, w.bytes, w.lat = 0, 0, 0, w.lat[:0]
	}
	start := time.Now()
	if count > 0 {
		for range count {
			g.ws[0].once()
		}
	} else {
		deadline := start.Add(d)
		var wg sync.WaitGroup
		for _, w := range g.ws {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					w.once()
				}
			})
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	if !record {
		return
	}
	if g.t.child != nil {
		g.st.cpu += g.t.child.cpu() - cpuBefore
		if after, ok := g.t.child.allocs(); ok && beforeOK {
			g.st.allocsOK = true
			g.st.allocs.Objects += after.Objects - before.Objects
			g.st.allocs.Bytes += after.Bytes - before.Bytes
		}
	}
	g.st.elapsed += elapsed
	for _, w := range g.ws {
		g.st.n += w.n
		g.st.errs += w.errs
		g.st.bytes += w.bytes
		g.st.lat = append(g.st.lat, w.lat...)
		if g.st.firstErr == nil {
			g.st.firstErr = w.err
		}
		w.err = nil
	}
}

func (g *group) close() {
	for _, w := range g.ws {
		if w.c != nil {
			w.c.Close()
		}
	}
}

// plan is how long a row measures: each target gets a slice of d in each
// of rounds rounds, in an order that rotates from round to round, after a
// warm-up of warm per target.
type plan struct {
	d, warm time.Duration
	rounds  int
	profile string // if set, CPU profiles of the children go to this folder
}

// measure runs one row: clients closed-loop clients per target (or, for
// count > 0, count sequential requests per slice on one connection),
// alternating between the targets so that each sees the same machine.
// Children with watchMem set report their memory over the whole row.
func measure(p plan, row string, targets []*target, clients, count int, watchMem bool) map[string]*stats {
	fmt.Fprintf(os.Stderr, "bench: %s\n", row)
	groups := make([]*group, len(targets))
	for i, t := range targets {
		g := &group{t: t}
		for range clients {
			g.ws = append(g.ws, &worker{t: t, next: len(g.ws) * 7})
		}
		groups[i] = g
		defer g.close()
	}
	for _, g := range groups {
		if count > 0 {
			g.run(0, 1, false)
		} else {
			g.run(p.warm, 0, false)
		}
	}
	// A profile covers the measured rounds.
	span := time.Duration(p.rounds*len(groups)) * p.d
	if count > 0 {
		span = 0
	}
	for _, g := range groups {
		c := g.t.child
		if c == nil {
			continue
		}
		if watchMem {
			if err := c.memStart(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: %s: memory: %v\n", c.name, err)
			}
		}
		if p.profile != "" {
			path := fmt.Sprintf("%s/%s.%s.cpu.pprof", p.profile, fileName(row), g.t.name)
			if err := c.profileStart(path, max(span, 5*time.Second)); err != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			}
		}
	}
	for r := range p.rounds {
		for i := range groups {
			groups[(i+r)%len(groups)].run(p.d, count, true)
		}
	}
	out := map[string]*stats{}
	for _, g := range groups {
		if c := g.t.child; c != nil {
			if p.profile != "" {
				c.profileStop()
			}
			if watchMem {
				if rep, err := c.memStop(); err == nil {
					g.st.mem = rep
				}
			}
		}
		slices.Sort(g.st.lat)
		if g.st.errs > 0 {
			fmt.Fprintf(os.Stderr, "bench: %s, %s: %d errors, first: %v\n", row, g.t.name, g.st.errs, g.st.firstErr)
		}
		out[g.t.name] = &g.st
	}
	return out
}

// fileName turns a row name into a file name.
func fileName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			b[i] = '_'
		}
	}
	return string(b)
}
