package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The output has two parts. Benchmark lines come as rows finish, in the
// format benchstat reads ("BenchmarkName-P N value unit ..."), named
// Row/key=value/target=column so that `benchstat -col /target` puts the
// columns side by side. The table for people comes at the end. Nothing in
// the table looks like a benchstat configuration line ("key: value" with a
// lower-case key at the start of a line).

type section int

const (
	sectionSmall section = iota
	sectionCached
	sectionZip
	sectionForward
	sectionTunnel
	sectionSetup
	sectionTunnelZip
	sectionTunnelZipTLS
	sectionHot
	sectionFleet
)

var sectionTitles = map[section]string{
	sectionSmall:        "Small artifacts, reverse mode (.info, .mod, list in turn over %d modules)",
	sectionCached:       "Small artifacts from modgate's cache (modgate run --cache-dir; the floor fetches from the origin; nginx-file serves the same bytes from files)",
	sectionZip:          "%d MiB zip, reverse mode",
	sectionForward:      "Forward mode, absolute-form requests (floor: the plain forwarder)",
	sectionTunnel:       "Forward mode, small requests through open CONNECT tunnels",
	sectionSetup:        "Forward mode, a new tunnel per request: CONNECT, one .info, close",
	sectionTunnelZip:    "Forward mode, the %d MiB zip through a CONNECT tunnel",
	sectionTunnelZipTLS: "Forward mode, the %d MiB zip over TLS through a CONNECT tunnel",
	sectionFleet:        "Fleet cold start: N replicas, a client each, all downloading %d modules (.info, .mod, .zip; %.1f MiB) at once from cold caches;\n  %d modules in flight per client, the upstream answering each request after %s. Upstream requests per artifact, wall time",
	sectionHot:          "Hot path per request, Go's benchmark harness, one process (go test -bench -benchmem; in brackets: over direct)",
}

// columnOrder is the order columns are printed in; a row shows those it
// measured.
var columnOrder = []string{"direct", "floor", "nginx", "nginx-file", "squid", "modgate", "sdk-off", "otlp", "always-on", "cached", "unverified"}

type loadRow struct {
	key     string
	clients int
	res     map[string]*stats
}

type telemetryReport struct {
	traces, metrics, bytes int64
}

// report gathers the rows and prints them.
type report struct {
	o         options
	w         io.Writer
	loads     map[section][]loadRow
	streams   map[section]map[string]*stats
	hots      []hotResult
	telemetry telemetryReport
	elapsed   time.Duration
	modules   int
	peerNotes []string // why a peer has no column
	bigZip    *bigZip  // the zip rows' module zip

	fleet        []*fleetResult
	fleetModules int
	fleetMiB     float64
	fleetNotes   []string // why a fleet setup has no rows
}

func newReport(o options) *report {
	return &report{o: o, w: os.Stdout, loads: map[section][]loadRow{}, streams: map[section]map[string]*stats{}}
}

// header prints the configuration lines benchstat files begin with.
func (r *report) header() {
	fmt.Fprintf(r.w, "goos: %s\ngoarch: %s\npkg: github.com/modgate/modgate/cmd/benchtable\n", runtime.GOOS, runtime.GOARCH)
	if c := cpuName(); c != "" {
		fmt.Fprintf(r.w, "cpu: %s\n", c)
	}
}

func (r *report) line(name string, n int, metrics ...string) {
	fmt.Fprintf(r.w, "Benchmark%s-%d\t%8d\t%s\n", name, procs(), n, strings.Join(metrics, "\t"))
}

func metric(v float64, prec int, unit string) string {
	return strconv.FormatFloat(v, 'f', prec, 64) + " " + unit
}

// present is the columns of res in print order.
func present[V any](res map[string]V) []string {
	var names []string
	for _, name := range columnOrder {
		if _, ok := res[name]; ok {
			names = append(names, name)
		}
	}
	return names
}

// load records and prints a row of closed-loop requests.
func (r *report) load(s section, key string, clients int, res map[string]*stats) {
	r.loads[s] = append(r.loads[s], loadRow{key: key, clients: clients, res: res})
	r.lines(key, res, func(name string, st *stats) []string {
		ms := []string{
			metric(st.rps(), 0, "req/s"),
			metric(float64(st.pct(50).Nanoseconds()), 0, "p50-ns"),
			metric(float64(st.pct(99).Nanoseconds()), 0, "p99-ns"),
		}
		if name != "direct" {
			ms = append(ms, metric(st.cpuPerReq(), 1, "proc-cpu-µs/op"))
		}
		if st.allocsOK {
			ms = append(ms,
				metric(float64(st.allocs.Objects)/float64(st.n), 1, "proc-allocs/op"),
				metric(float64(st.allocs.Bytes)/float64(st.n), 0, "proc-B/op"))
		}
		return ms
	})
}

// stream records and prints a row of large transfers.
func (r *report) stream(s section, key string, res map[string]*stats) {
	r.streams[s] = res
	r.lines(key, res, func(_ string, st *stats) []string {
		ms := []string{metric(st.mbps(), 1, "MB/s")}
		if m := st.mem; m != nil {
			ms = append(ms, metric(growth(m.PeakRSS, m.RSSBefore), 2, "rss-growth-MiB"))
		}
		return ms
	})
}

// lines prints a row's benchmark line for each column that served at
// least one request: ns/op, then the row's own metrics, then the errors if
// there were any.
func (r *report) lines(key string, res map[string]*stats, metrics func(name string, st *stats) []string) {
	for _, name := range present(res) {
		st := res[name]
		if st.n == 0 {
			continue
		}
		ms := append([]string{metric(float64(st.elapsed.Nanoseconds())/float64(st.n), 0, "ns/op")}, metrics(name, st)...)
		if st.errs > 0 {
			ms = append(ms, metric(float64(st.errs), 0, "errors"))
		}
		r.line(key+"/target="+name, st.n, ms...)
	}
}

// hot records and prints the hot-path results.
func (r *report) hot(rs []hotResult) {
	r.hots = rs
	for _, h := range rs {
		r.line("HotPath/kind="+h.Kind+"/target="+h.Target, h.N,
			metric(float64(h.NsPerOp), 0, "ns/op"), metric(float64(h.BytesPerOp), 0, "B/op"), metric(float64(h.AllocsPerOp), 0, "allocs/op"))
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// growth is how much a peak exceeds where it started, in MiB. The kernel's
// RSS counters lag by a few pages per thread, so a flat process can read a
// little below zero; it is shown as zero.
func growth(peak, before int64) float64 { return max(0, mib(peak-before)) }

// block is one section of the table: its title, its columns, and lines of
// a label and a value per column.
type block struct {
	title string
	cols  []string
	lines [][]string // label, then one value per column
}

func (r *report) table() {
	var blocks []block
	for _, s := range []section{sectionSmall, sectionCached, sectionZip, sectionForward, sectionTunnel, sectionSetup, sectionTunnelZip, sectionTunnelZipTLS} {
		title := sectionTitles[s]
		switch s {
		case sectionSmall:
			title = fmt.Sprintf(title, r.modules)
		case sectionZip, sectionTunnelZip, sectionTunnelZipTLS:
			title = fmt.Sprintf(title, r.o.zipMiB)
			if z := r.bigZip; s == sectionZip && z != nil {
				how := "Larger than the 16 MiB that modgate verifies before\n  relaying, it streams as it arrives in every column; cached verifies it (inflating and hashing every\n  file) as it keeps it"
				if z.size <= 16<<20 {
					how = "modgate receives it whole, inflates and hashes every file and\n  compares its h1: with the checksum database before the first byte is relayed; cached does so"
				}
				title += fmt.Sprintf(";\n  a module zip of %d Go source files, %.0f MiB deflated %.1f:1. %s once, in the warm-up,\n"+
					"  then serves it from its cache; unverified has sumdb off",
					z.files, mib(z.uncompressed), float64(z.uncompressed)/float64(z.size), how)
			}
		}
		if rows, ok := r.loads[s]; ok && len(rows) > 0 {
			blocks = append(blocks, r.loadBlock(title, rows))
		}
		if res, ok := r.streams[s]; ok {
			blocks = append(blocks, r.streamBlock(title, res))
		}
	}
	if len(r.fleet) > 0 {
		blocks = append(blocks, r.fleetBlock())
	}
	if len(r.hots) > 0 {
		blocks = append(blocks, r.hotBlock())
	}
	fmt.Fprintln(r.w)
	r.notes()
	for _, b := range blocks {
		fmt.Fprintf(r.w, "\n%s\n", b.title)
		wl, wv := 0, 0
		for _, l := range b.lines {
			wl = max(wl, len([]rune(l[0])))
			for _, v := range l[1:] {
				wv = max(wv, len([]rune(v)))
			}
		}
		for _, c := range b.cols {
			wv = max(wv, len(c))
		}
		pad := func(s string, w int, left bool) string {
			n := w - len([]rune(s))
			if n <= 0 {
				return s
			}
			if left {
				return s + strings.Repeat(" ", n)
			}
			return strings.Repeat(" ", n) + s
		}
		if len(b.cols) > 0 {
			fmt.Fprintf(r.w, "  %s", pad("", wl, true))
			for _, c := range b.cols {
				fmt.Fprintf(r.w, "  %s", pad(c, wv, false))
			}
			fmt.Fprintln(r.w)
		}
		for _, l := range b.lines {
			if len(l) == 1 { // a line of text
				fmt.Fprintf(r.w, "  %s\n", l[0])
				continue
			}
			fmt.Fprintf(r.w, "  %s", pad(l[0], wl, true))
			for _, v := range l[1:] {
				fmt.Fprintf(r.w, "  %s", pad(v, wv, false))
			}
			fmt.Fprintln(r.w)
		}
	}
	fmt.Fprintln(r.w)
	r.targets()
	fmt.Fprintf(r.w, "\nThe run took %s.\n", r.elapsed.Round(time.Second))
}

func (r *report) notes() {
	o := r.o
	cpu := cpuName()
	if cpu != "" {
		cpu = ": " + cpu
	}
	fmt.Fprintf(r.w, "Modgate bench, %s, %s/%s, %s, %d CPUs%s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.Version(), runtime.NumCPU(), cpu)
	if o.proxyRows() {
		fmt.Fprintf(r.w, "Each load cell: %d rounds of %s per column, the columns taking turns in a rotating order, after a %s warm-up;\n", o.rounds, o.d, o.warm)
		fmt.Fprintf(r.w, "closed-loop clients on keep-alive connections. Zips: %d transfers per column, taking turns.\n", o.zipRound)
		fmt.Fprintln(r.w, "  direct     the client fetches from the fake origin, no proxy in between")
		fmt.Fprintln(r.w, "  floor      httputil.ReverseProxy with Rewrite only (64 idle connections per host, as modgate);")
		fmt.Fprintln(r.w, "             absolute-form requests go where their URL says; CONNECT: hijack, dial, io.Copy both ways")
		fmt.Fprintln(r.w, "  nginx      Debian's nginx, reverse proxy, keep-alive pool of 64 to the origin, no access log")
		fmt.Fprintln(r.w, "  nginx-file the same nginx serving the origin's answers from files (sendfile on, as Debian's default site)")
		fmt.Fprintln(r.w, "  squid      Debian's Squid, forward proxy (absolute-form and CONNECT), caching nothing, no access log")
		fmt.Fprintln(r.w, "  modgate... `modgate run` processes, each with a config file (the origin as upstream, policy of 6 rules,")
		fmt.Fprintln(r.w, "             watched), an audit log to a file, and what the environment and flags say:")
		for _, mc := range modgateColumns {
			fmt.Fprintf(r.w, "    %-9s %s\n", mc.name, mc.about)
		}
		fmt.Fprintf(r.w, "  The OTLP receiver got %d trace and %d metric exports, %.1f MB.\n", r.telemetry.traces, r.telemetry.metrics, float64(r.telemetry.bytes)/1e6)
		for _, n := range r.peerNotes {
			fmt.Fprintf(r.w, "  No column: %s\n", n)
		}
	}
	if len(r.fleet) > 0 {
		fmt.Fprintln(r.w, "  Fleet rows: `modgate run` replicas, each with its own --cache-dir, the fake upstream as their one upstream:")
		for _, s := range fleetSetups {
			fmt.Fprintf(r.w, "    %-11s %s\n", s.name, s.about)
		}
		for _, n := range r.fleetNotes {
			fmt.Fprintf(r.w, "  No fleet row: %s\n", n)
		}
	}
	if o.proxyRows() {
		fmt.Fprintln(r.w, "  The client, the origin and the OTLP receiver share one process; every proxy is a process of its own, so their")
		fmt.Fprintln(r.w, "  CPU time (from /proc, worker processes included), RSS and allocations (Go processes) are theirs alone.")
	}
}

func (r *report) loadBlock(title string, rows []loadRow) block {
	cols := present(rows[0].res)
	b := block{title: title, cols: cols}
	add := func(label string, f func(row loadRow, name string) string) {
		for _, row := range rows {
			l := []string{fmt.Sprintf("%-14s %10s", label, clientsText(row.clients))}
			for _, name := range cols {
				l = append(l, f(row, name))
			}
			b.lines = append(b.lines, l)
		}
	}
	add("req/s", func(row loadRow, name string) string {
		return cell(row.res[name], func(s *stats) string { return thousands(s.rps()) })
	})
	add("× floor", func(row loadRow, name string) string {
		st, f := row.res[name], row.res["floor"]
		if name == "floor" || !ok(st) || !ok(f) {
			return ""
		}
		return fmt.Sprintf("%.2f×", st.rps()/f.rps())
	})
	// Against the peers in the row, measured in the same run.
	for _, peer := range []string{"nginx", "nginx-file", "squid"} {
		if _, ok := rows[0].res[peer]; !ok {
			continue
		}
		add("× "+peer, func(row loadRow, name string) string {
			st, p := row.res[name], row.res[peer]
			if name == peer || name == "direct" || !ok(st) || !ok(p) {
				return ""
			}
			return fmt.Sprintf("%.2f×", st.rps()/p.rps())
		})
	}
	add("p50 µs", func(row loadRow, name string) string {
		return cell(row.res[name], func(s *stats) string { return micros(s.pct(50)) })
	})
	add("p50 vs floor", func(row loadRow, name string) string {
		st, f := row.res[name], row.res["floor"]
		if name == "floor" || !ok(st) || !ok(f) {
			return ""
		}
		return signedMicros(st.pct(50) - f.pct(50))
	})
	add("p99 µs", func(row loadRow, name string) string {
		return cell(row.res[name], func(s *stats) string { return micros(s.pct(99)) })
	})
	add("CPU µs/req", func(row loadRow, name string) string {
		st := row.res[name]
		if name == "direct" || !ok(st) {
			return "-"
		}
		return fmt.Sprintf("%.1f", st.cpuPerReq())
	})
	// Allocations of the Go proxy processes (their runtime's counters).
	add("allocs/req", func(row loadRow, name string) string {
		st := row.res[name]
		if !ok(st) || !st.allocsOK {
			return "-"
		}
		return strconv.FormatFloat(float64(st.allocs.Objects)/float64(st.n), 'f', 0, 64)
	})
	add("kB/req", func(row loadRow, name string) string {
		st := row.res[name]
		if !ok(st) || !st.allocsOK {
			return "-"
		}
		return strconv.FormatFloat(float64(st.allocs.Bytes)/float64(st.n)/1000, 'f', 1, 64)
	})
	return b
}

// cell is a column's value in a line of a load block: f of its stats,
// marked "!" if it had errors, "-" if it served nothing.
func cell(st *stats, f func(*stats) string) string {
	if !ok(st) {
		return "-"
	}
	s := f(st)
	if st.errs > 0 {
		s += "!"
	}
	return s
}

func (r *report) streamBlock(title string, res map[string]*stats) block {
	cols := present(res)
	b := block{title: title, cols: cols}
	mbps := []string{"MB/s"}
	ratio := []string{"× floor"}
	cpu := []string{"CPU ms per transfer"}
	rss := []string{"peak RSS growth, MiB"}
	base := []string{"RSS before, MiB"}
	for _, name := range cols {
		st := res[name]
		if !ok(st) {
			mbps, ratio, cpu, rss, base = append(mbps, "-"), append(ratio, ""), append(cpu, "-"), append(rss, "-"), append(base, "-")
			continue
		}
		v := thousands(st.mbps())
		if st.errs > 0 {
			v += "!"
		}
		mbps = append(mbps, v)
		if f := res["floor"]; name != "floor" && ok(f) {
			ratio = append(ratio, fmt.Sprintf("%.2f×", st.mbps()/f.mbps()))
		} else {
			ratio = append(ratio, "")
		}
		if name == "direct" {
			cpu = append(cpu, "-")
		} else {
			cpu = append(cpu, fmt.Sprintf("%.0f", float64(st.cpu.Milliseconds())/float64(st.n)))
		}
		if m := st.mem; m != nil {
			rss = append(rss, fmt.Sprintf("%.1f", growth(m.PeakRSS, m.RSSBefore)))
			base = append(base, fmt.Sprintf("%.1f", mib(m.RSSBefore)))
		} else {
			rss, base = append(rss, "-"), append(base, "-")
		}
	}
	b.lines = append(b.lines, mbps, ratio, cpu, rss, base)
	return b
}

var hotLabels = map[string]string{"reverse-info": "reverse .info", "reverse-list": "reverse list", "forward-info": "forward .info"}

func (r *report) hotBlock() block {
	b := block{title: sectionTitles[sectionHot], cols: hotColumns}
	by := map[string]map[string]hotResult{}
	for _, h := range r.hots {
		if by[h.Kind] == nil {
			by[h.Kind] = map[string]hotResult{}
		}
		by[h.Kind][h.Target] = h
	}
	for _, kind := range hotKinds {
		hs := by[kind]
		for _, m := range []struct {
			unit string
			f    func(hotResult) float64
			prec int
		}{
			{"allocs/op", func(h hotResult) float64 { return float64(h.AllocsPerOp) }, 0},
			{"kB/op", func(h hotResult) float64 { return float64(h.BytesPerOp) / 1000 }, 1},
			{"µs/op", func(h hotResult) float64 { return float64(h.NsPerOp) / 1000 }, 0},
		} {
			l := []string{fmt.Sprintf("%-9s %s", m.unit, hotLabels[kind])}
			d, hasDirect := hs["direct"]
			for _, name := range hotColumns {
				h, ok := hs[name]
				switch {
				case !ok:
					l = append(l, "-")
				case name == "direct" || !hasDirect:
					l = append(l, strconv.FormatFloat(m.f(h), 'f', m.prec, 64))
				default:
					l = append(l, fmt.Sprintf("%.*f (+%.*f)", m.prec, m.f(h), m.prec, m.f(h)-m.f(d)))
				}
			}
			b.lines = append(b.lines, l)
		}
	}
	return b
}

// targets prints each target of the issue, what was measured, and whether
// it is met; "report" lines have no target and only say what was measured.
func (r *report) targets() {
	fmt.Fprintln(r.w, "Targets")
	r.smallTargets()
	r.cachedTargets()
	r.zipTargets()
	r.loadTarget(r.loads[sectionForward], "forward absolute-form small ≥ 1.0× Squid req/s", rpsRatio("modgate", "squid", 1.0))
	r.loadTarget(r.loads[sectionTunnel], "small requests through open CONNECT tunnels ≥ 1.0× Squid req/s", rpsRatio("modgate", "squid", 1.0))
	r.loadTarget(r.loads[sectionSetup], "a new CONNECT tunnel per request ≥ 1.0× Squid req/s", rpsRatio("modgate", "squid", 1.0))
	if len(r.fleet) > 0 {
		v, text := fleetTarget(r.fleet)
		fmt.Fprintf(r.w, "  %s  %s\n", v, text)
	}
	if res := r.streams[sectionTunnelZipTLS]; res != nil {
		if g, q := res["modgate"], res["squid"]; ok(g) && ok(q) {
			x := g.mbps() / q.mbps()
			fmt.Fprintf(r.w, "  %s  CONNECT %d MiB over TLS ≥ 1.0× Squid MB/s: %.2f×\n", verdict(x >= 1 && g.errs == 0), r.o.zipMiB, x)
		}
	}
}

// smallTargets are those of the small-request rows in reverse mode: the
// default config against the floor, in throughput and in latency, and what
// telemetry and verification cost.
func (r *report) smallTargets() {
	small := r.loads[sectionSmall]
	r.loadTarget(small, "default config (modgate) ≥ 1.0× floor req/s", rpsRatio("modgate", "floor", 1.0))
	for _, row := range small {
		if row.clients == 1 {
			r.loadTarget([]loadRow{row}, "default config p50 added ≤ floor + 20 µs (1 client: no queueing)", func(row loadRow) (string, bool) {
				g, f := row.res["modgate"], row.res["floor"]
				if !ok(g) || !ok(f) {
					return "n/a", false
				}
				d := g.pct(50) - f.pct(50)
				return fmt.Sprintf("%s at %d", signedMicros(d), row.clients), d <= 20*time.Microsecond
			})
		}
	}
	r.loadTarget(small, "OTLP export, default sampler (otlp) ≥ 0.8× floor req/s", rpsRatio("otlp", "floor", 0.8))
	for _, row := range small {
		a, f, g := row.res["always-on"], row.res["floor"], row.res["modgate"]
		if ok(a) && ok(f) && ok(g) {
			fmt.Fprintf(r.w, "  report  always_on at %d: %.2f× floor req/s, CPU %.1f µs/req (floor %.1f, modgate default %.1f)\n",
				row.clients, a.rps()/f.rps(), a.cpuPerReq(), f.cpuPerReq(), g.cpuPerReq())
		}
	}
	r.loadReport(small, "OTEL_SDK_DISABLED=true (sdk-off) vs floor req/s", "sdk-off", "floor")
	r.loadReport(small, "verified .mod answers (modgate) vs sumdb off (unverified) req/s", "modgate", "unverified")
}

// cachedTargets are those of the cache-hit rows: against the floor, and
// against nginx serving the same bytes from files (0.6× with one client,
// 0.5× with more).
func (r *report) cachedTargets() {
	cached := r.loads[sectionCached]
	r.loadTarget(cached, "cached small artifacts ≥ 2× floor req/s", rpsRatio("cached", "floor", 2))
	var withFile []loadRow // the cached rows nginx-file served in
	for _, row := range cached {
		if _, ok := row.res["nginx-file"]; ok {
			withFile = append(withFile, row)
		}
	}
	r.loadTarget(withFile, "cached small artifacts ≥ 0.6× nginx-file req/s at 1 client, ≥ 0.5× above", func(row loadRow) (string, bool) {
		least := 0.5
		if row.clients == 1 {
			least = 0.6
		}
		return rpsRatio("cached", "nginx-file", least)(row)
	})
}

// zipTargets are those of the reverse-mode zip row: throughput with
// verification on and modgate's memory while it streams, with the cached
// and unverified columns reported beside them.
func (r *report) zipTargets() {
	res := r.streams[sectionZip]
	if res == nil {
		return
	}
	g, f := res["modgate"], res["floor"]
	if ok(g) && ok(f) {
		q := g.mbps() / f.mbps()
		fmt.Fprintf(r.w, "  %s  zip with verification on (streamed, verified as it is kept), ≥ 0.9× floor MB/s: %.2f×\n", verdict(q >= 0.9 && g.errs == 0), q)
	}
	if c := res["cached"]; ok(c) && ok(f) {
		fmt.Fprintf(r.w, "  report  zip verified once, then from the cache (cached) vs floor MB/s: %.2f×\n", c.mbps()/f.mbps())
	}
	if c, n := res["cached"], res["nginx-file"]; ok(c) && ok(n) {
		fmt.Fprintf(r.w, "  report  zip from the cache (cached) vs nginx serving the file (nginx-file) MB/s: %.2f×\n", c.mbps()/n.mbps())
	}
	if u := res["unverified"]; ok(u) && ok(f) {
		fmt.Fprintf(r.w, "  report  zip with sumdb off (unverified, streamed) vs floor MB/s: %.2f×\n", u.mbps()/f.mbps())
	}
	if ok(g) && g.mem != nil {
		g := growth(g.mem.PeakRSS, g.mem.RSSBefore)
		fmt.Fprintf(r.w, "  %s  modgate's RSS growth while streaming %d MiB < 32 MiB: %.1f MiB\n", verdict(g < 32), r.o.zipMiB, g)
	}
}

// verdict is a target's first column.
func verdict(met bool) string {
	if met {
		return "met   "
	}
	return "MISSED"
}

// loadTarget prints a target over rows: what f measured in each, met if it
// is met in all of them. Without rows it prints nothing.
func (r *report) loadTarget(rows []loadRow, desc string, f func(row loadRow) (string, bool)) {
	if len(rows) == 0 {
		return
	}
	all := true
	var parts []string
	for _, row := range rows {
		v, met := f(row)
		all = all && met
		parts = append(parts, v)
	}
	fmt.Fprintf(r.w, "  %s  %s: %s\n", verdict(all), desc, strings.Join(parts, ", "))
}

// loadReport prints a report line of column a's req/s over column b's in
// each of rows. Without rows it prints nothing.
func (r *report) loadReport(rows []loadRow, desc, a, b string) {
	if len(rows) == 0 {
		return
	}
	var parts []string
	for _, row := range rows {
		v, _ := rpsRatio(a, b, 0)(row)
		parts = append(parts, v)
	}
	fmt.Fprintf(r.w, "  report  %s: %s\n", desc, strings.Join(parts, ", "))
}

// rpsRatio measures column a's req/s over column b's in a row, met when it
// is at least least and a had no errors.
func rpsRatio(a, b string, least float64) func(loadRow) (string, bool) {
	return func(row loadRow) (string, bool) {
		x, y := row.res[a], row.res[b]
		if !ok(x) || !ok(y) {
			return "n/a", false
		}
		q := x.rps() / y.rps()
		return fmt.Sprintf("%.2f× at %d", q, row.clients), q >= least && x.errs == 0
	}
}

func ok(s *stats) bool { return s != nil && s.n > 0 }

// thousands formats v without decimals, with thin separators: 12,345.
func thousands(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func micros(d time.Duration) string {
	return thousands(float64(d.Nanoseconds()) / 1e3)
}

func signedMicros(d time.Duration) string {
	us := math.Round(float64(d.Nanoseconds()) / 1e3)
	switch {
	case us < 0:
		return "-" + thousands(-us) + " µs"
	case us == 0:
		return "+0 µs" // not "-0"
	}
	return "+" + thousands(us) + " µs"
}
