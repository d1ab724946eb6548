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
	sectionZip
	sectionForward
	sectionTunnel
	sectionSetup
	sectionTunnelZip
	sectionTunnelZipTLS
	sectionHot
)

var sectionTitles = map[section]string{
	sectionSmall:        "Small artifacts, reverse mode (.info, .mod, list in turn over %d modules)",
	sectionZip:          "%d MiB zip, reverse mode",
	sectionForward:      "Forward mode, absolute-form requests (floor: the plain forwarder)",
	sectionTunnel:       "Forward mode, small requests through open CONNECT tunnels",
	sectionSetup:        "Forward mode, a new tunnel per request: CONNECT, one .info, close",
	sectionTunnelZip:    "Forward mode, the %d MiB zip through a CONNECT tunnel",
	sectionTunnelZipTLS: "Forward mode, the %d MiB zip over TLS through a CONNECT tunnel",
	sectionHot:          "Hot path per request, Go's benchmark harness, one process (go test -bench -benchmem; in brackets: over direct)",
}

var columns = []string{"direct", "floor", "modgate", "modgate-notel"}

type loadRow struct {
	key     string
	clients int
	res     map[string]*stats
}

type telemetryReport struct {
	export                        string
	spans, traces, metrics, bytes int64
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
}

func newReport(o options) *report {
	return &report{o: o, w: os.Stdout, loads: map[section][]loadRow{}, streams: map[section]map[string]*stats{}}
}

// header prints the configuration lines benchstat files begin with.
func (r *report) header() {
	fmt.Fprintf(r.w, "goos: %s\ngoarch: %s\npkg: github.com/modgate/modgate/sidecar/benchtable\n", runtime.GOOS, runtime.GOARCH)
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

// load records and prints a row of closed-loop requests.
func (r *report) load(s section, key string, clients int, res map[string]*stats) {
	r.loads[s] = append(r.loads[s], loadRow{key: key, clients: clients, res: res})
	for _, name := range columns {
		st, ok := res[name]
		if !ok || st.n == 0 {
			continue
		}
		ms := []string{
			metric(float64(st.elapsed.Nanoseconds())/float64(st.n), 0, "ns/op"),
			metric(st.rps(), 0, "req/s"),
			metric(float64(st.pct(50).Nanoseconds()), 0, "p50-ns"),
			metric(float64(st.pct(99).Nanoseconds()), 0, "p99-ns"),
		}
		if name != "direct" {
			ms = append(ms,
				metric(float64(st.allocs.Objects)/float64(st.n), 1, "proc-allocs/op"),
				metric(float64(st.allocs.Bytes)/float64(st.n), 0, "proc-B/op"))
		}
		if st.errs > 0 {
			ms = append(ms, metric(float64(st.errs), 0, "errors"))
		}
		r.line(key+"/target="+name, st.n, ms...)
	}
}

// stream records and prints a row of large transfers.
func (r *report) stream(s section, key string, res map[string]*stats) {
	r.streams[s] = res
	for _, name := range columns {
		st, ok := res[name]
		if !ok || st.n == 0 {
			continue
		}
		ms := []string{
			metric(float64(st.elapsed.Nanoseconds())/float64(st.n), 0, "ns/op"),
			metric(st.mbps(), 1, "MB/s"),
		}
		if m := st.mem; m != nil {
			ms = append(ms,
				metric(growth(m.PeakRSS, m.RSSBefore), 2, "rss-growth-MiB"),
				metric(growth(int64(m.HeapPeak), int64(m.HeapBefore)), 2, "heap-growth-MiB"))
		}
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

// cells is one line of the table: a label, a value per column, and the
// comparisons.
type cells struct {
	label  string
	values [4]string // direct, floor, modgate, modgate-notel
	ratio  string    // modgate against the floor
	telem  string    // modgate against modgate-notel
	title  bool
}

func (r *report) table() {
	var t []cells
	add := func(c cells) { t = append(t, c) }
	title := func(s string) { add(cells{label: s, title: true}) }

	for _, s := range []section{sectionSmall, sectionZip, sectionForward, sectionTunnel, sectionSetup, sectionTunnelZip, sectionTunnelZipTLS} {
		switch s {
		case sectionSmall:
			title(fmt.Sprintf(sectionTitles[s], r.modules))
		case sectionZip, sectionTunnelZip, sectionTunnelZipTLS:
			title(fmt.Sprintf(sectionTitles[s], r.o.zipMiB))
		default:
			title(sectionTitles[s])
		}
		if rows, ok := r.loads[s]; ok {
			r.loadCells(rows, add)
		}
		if res, ok := r.streams[s]; ok {
			r.streamCells(res, add)
		}
	}
	if len(r.hots) > 0 {
		title(sectionTitles[sectionHot])
		r.hotCells(add)
	}

	// Column widths.
	head := cells{label: "", values: [4]string{"direct", "floor", "modgate", "no-tel"}, ratio: "modgate vs floor", telem: "tel on vs off"}
	all := append([]cells{head}, t...)
	wl, wv, wr, wt := 0, 0, len(head.ratio), len(head.telem)
	for _, c := range all {
		if !c.title {
			wl = max(wl, len(c.label))
		}
		for _, v := range c.values {
			wv = max(wv, len(v))
		}
		wr, wt = max(wr, len(c.ratio)), max(wt, len(c.telem))
	}
	fmt.Fprintln(r.w)
	r.notes()
	fmt.Fprintln(r.w)
	for _, c := range all {
		if c.title {
			fmt.Fprintf(r.w, "%s\n", c.label)
			continue
		}
		fmt.Fprintf(r.w, "  %-*s", wl, c.label)
		for _, v := range c.values {
			fmt.Fprintf(r.w, "  %*s", wv, v)
		}
		fmt.Fprintf(r.w, "  %*s  %*s\n", wr, c.ratio, wt, c.telem)
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
	fmt.Fprintf(r.w, "Each load cell: %d rounds of %s per column, the columns taking turns in a rotating order, after a %s warm-up;\n", o.rounds, o.d, o.warm)
	fmt.Fprintf(r.w, "closed-loop clients on keep-alive connections. Zips: %d transfers per column, taking turns.\n", o.zipRound)
	fmt.Fprintln(r.w, "  direct   the client fetches from the fake origin, no proxy in between")
	fmt.Fprintln(r.w, "  floor    httputil.ReverseProxy with Rewrite only (64 idle connections per host, as modgate);")
	fmt.Fprintln(r.w, "           absolute-form requests go where their URL says; CONNECT: hijack, dial, io.Copy both ways")
	fmt.Fprintln(r.w, "  modgate  policy (6 rules, watched), breaker and retries, audit log to a file, telemetry sampling")
	if r.telemetry.export == inProcess {
		fmt.Fprintf(r.w, "           100%% to an in-process exporter, batched as OTLP's (%d spans)\n", r.telemetry.spans)
	} else {
		fmt.Fprintf(r.w, "           100%% over OTLP to a local receiver (%d trace and %d metric exports, %.1f MB received)\n",
			r.telemetry.traces, r.telemetry.metrics, float64(r.telemetry.bytes)/1e6)
	}
	fmt.Fprintln(r.w, "  no-tel   the same modgate with telemetry off")
	fmt.Fprintln(r.w, "  The client, the origin and the OTLP receiver (-export otlp) share one process; floor and each modgate are")
	fmt.Fprintln(r.w, "  processes of their own, so their RSS, heap and allocations (\"proxy process\") are theirs alone.")
}

func (r *report) loadCells(rows []loadRow, add func(cells)) {
	val := func(st *stats, f func(*stats) string) string {
		if st == nil || st.n == 0 {
			return "-"
		}
		s := f(st)
		if st.errs > 0 {
			s += "!"
		}
		return s
	}
	for _, m := range []struct {
		name string
		f    func(*stats) string
		diff func(a, b *stats) string
	}{
		{"req/s", func(s *stats) string { return thousands(s.rps()) }, func(a, b *stats) string { return fmt.Sprintf("%.2f×", a.rps()/b.rps()) }},
		{"p50 µs", func(s *stats) string { return micros(s.pct(50)) }, func(a, b *stats) string { return signedMicros(a.pct(50) - b.pct(50)) }},
		{"p99 µs", func(s *stats) string { return micros(s.pct(99)) }, func(a, b *stats) string { return signedMicros(a.pct(99) - b.pct(99)) }},
	} {
		for _, row := range rows {
			c := cells{label: fmt.Sprintf("%-7s %11s", m.name, clientsText(row.clients))}
			for i, name := range columns {
				c.values[i] = val(row.res[name], m.f)
			}
			if g, f := row.res["modgate"], row.res["floor"]; ok(g) && ok(f) {
				c.ratio = m.diff(g, f)
			}
			if g, n := row.res["modgate"], row.res["modgate-notel"]; ok(g) && ok(n) {
				c.telem = m.diff(g, n)
			}
			add(c)
		}
	}
	// Allocations of the proxy processes, over every row of the section.
	var sum [4]stats
	for _, row := range rows {
		for i, name := range columns {
			if st := row.res[name]; st != nil {
				sum[i].n += st.n
				sum[i].allocs.Objects += st.allocs.Objects
				sum[i].allocs.Bytes += st.allocs.Bytes
			}
		}
	}
	ca := cells{label: "allocs/req, proxy process"}
	cb := cells{label: "kB/req, proxy process"}
	for i, name := range columns {
		ca.values[i], cb.values[i] = "-", "-"
		if name != "direct" && sum[i].n > 0 {
			ca.values[i] = strconv.FormatFloat(float64(sum[i].allocs.Objects)/float64(sum[i].n), 'f', 0, 64)
			cb.values[i] = strconv.FormatFloat(float64(sum[i].allocs.Bytes)/float64(sum[i].n)/1000, 'f', 1, 64)
		}
	}
	add(ca)
	add(cb)
}

func (r *report) streamCells(res map[string]*stats, add func(cells)) {
	c := cells{label: "MB/s"}
	rss := cells{label: "peak RSS growth, MiB"}
	heap := cells{label: "peak heap growth, MiB"}
	base := cells{label: "RSS before, MiB"}
	for i, name := range columns {
		c.values[i], rss.values[i], heap.values[i], base.values[i] = "-", "-", "-", "-"
		st := res[name]
		if !ok(st) {
			continue
		}
		c.values[i] = thousands(st.mbps())
		if st.errs > 0 {
			c.values[i] += "!"
		}
		if m := st.mem; m != nil {
			rss.values[i] = fmt.Sprintf("%.1f", growth(m.PeakRSS, m.RSSBefore))
			heap.values[i] = fmt.Sprintf("%.1f", growth(int64(m.HeapPeak), int64(m.HeapBefore)))
			base.values[i] = fmt.Sprintf("%.1f", mib(m.RSSBefore))
		}
	}
	if g, f := res["modgate"], res["floor"]; ok(g) && ok(f) {
		c.ratio = fmt.Sprintf("%.2f×", g.mbps()/f.mbps())
	}
	add(c)
	add(rss)
	add(heap)
	add(base)
}

var hotLabels = map[string]string{"reverse-info": "reverse .info", "reverse-list": "reverse list", "forward-info": "forward .info"}

func (r *report) hotCells(add func(cells)) {
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
		} {
			c := cells{label: fmt.Sprintf("%-9s %s", m.unit, hotLabels[kind])}
			d, hasDirect := hs["direct"]
			for i, name := range columns {
				h, ok := hs[name]
				switch {
				case !ok:
					c.values[i] = "-"
				case name == "direct" || !hasDirect:
					c.values[i] = strconv.FormatFloat(m.f(h), 'f', m.prec, 64)
				default:
					c.values[i] = fmt.Sprintf("%.*f (+%.*f)", m.prec, m.f(h), m.prec, m.f(h)-m.f(d))
				}
			}
			if g, f := hs["modgate"], hs["floor"]; hasDirect && m.f(f)-m.f(d) > 0 {
				c.ratio = fmt.Sprintf("%.1f× own", (m.f(g)-m.f(d))/(m.f(f)-m.f(d)))
			}
			if g, n := hs["modgate"], hs["modgate-notel"]; hasDirect && m.f(n)-m.f(d) > 0 {
				c.telem = fmt.Sprintf("%.1f× own", (m.f(g)-m.f(d))/(m.f(n)-m.f(d)))
			}
			add(c)
		}
	}
}

// targets prints each target of the issue, what was measured, and whether
// it is met.
func (r *report) targets() {
	fmt.Fprintln(r.w, "Targets")
	verdict := func(met bool) string {
		if met {
			return "met   "
		}
		return "MISSED"
	}
	loadTarget := func(rows []loadRow, desc string, f func(row loadRow) (string, bool)) {
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
	rpsRatio := func(a, b string, least float64) func(loadRow) (string, bool) {
		return func(row loadRow) (string, bool) {
			x, y := row.res[a], row.res[b]
			if !ok(x) || !ok(y) {
				return "n/a", false
			}
			q := x.rps() / y.rps()
			return fmt.Sprintf("%.2f× at %d", q, row.clients), q >= least && x.errs == 0
		}
	}
	p50 := func(row loadRow) (string, bool) {
		g, f := row.res["modgate"], row.res["floor"]
		if !ok(g) || !ok(f) {
			return "n/a", false
		}
		d := g.pct(50) - f.pct(50)
		return fmt.Sprintf("%s at %d", signedMicros(d), row.clients), d <= 100*time.Microsecond
	}
	loadTarget(r.loads[sectionSmall], "small requests, reverse: modgate ≥ 1.0× floor req/s", rpsRatio("modgate", "floor", 1.0))
	loadTarget(r.loads[sectionForward], "small requests, forward absolute-form: modgate ≥ 1.0× floor req/s", rpsRatio("modgate", "floor", 1.0))
	for _, s := range []struct {
		rows []loadRow
		name string
	}{{r.loads[sectionSmall], "reverse"}, {r.loads[sectionForward], "forward absolute-form"}} {
		if len(s.rows) > 0 && s.rows[0].clients == 1 {
			loadTarget(s.rows[:1], "small requests, "+s.name+": p50 added latency ≤ floor + 100 µs (1 client: no queueing)", p50)
		}
	}
	loadTarget(r.loads[sectionSmall], "telemetry on vs off ≥ 0.85× req/s (modgate against no-tel)", rpsRatio("modgate", "modgate-notel", 0.85))
	if res := r.streams[sectionZip]; res != nil {
		g, f := res["modgate"], res["floor"]
		if ok(g) && ok(f) {
			q := g.mbps() / f.mbps()
			fmt.Fprintf(r.w, "  %s  zip streaming ≥ 0.9× floor MB/s: %.2f×\n", verdict(q >= 0.9 && g.errs == 0), q)
		}
		if ok(g) && g.mem != nil {
			g := growth(g.mem.PeakRSS, g.mem.RSSBefore)
			fmt.Fprintf(r.w, "  %s  modgate's RSS growth while streaming %d MiB < 32 MiB: %.1f MiB\n", verdict(g < 32), r.o.zipMiB, g)
		}
	}
	for _, s := range []struct {
		s    section
		name string
	}{{sectionTunnelZip, "zip through a tunnel"}, {sectionTunnelZipTLS, "zip over TLS through a tunnel"}} {
		if g, d := r.streams[s.s]["modgate"], r.streams[s.s]["direct"]; ok(g) && ok(d) {
			q := g.mbps() / d.mbps()
			fmt.Fprintf(r.w, "  %s  %s ≥ 0.9× direct MB/s: %.2f×\n", verdict(q >= 0.9 && g.errs == 0), s.name, q)
		}
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
