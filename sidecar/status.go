package sidecar

import (
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// How many finished exchanges the status page keeps: enough to see what
// just happened, few enough that a page stays short.
const (
	recentRequestsKept = 50
	recentDenialsKept  = 20
)

// recentExchange is what the status page shows of one finished exchange.
// Its fields are copies of the exchange's (strings share their bytes), so
// recording one costs a struct copy and no allocation.
type recentExchange struct {
	start    time.Time
	duration time.Duration
	method   string
	path     string
	mode     string
	kind     wire.Kind
	module   string
	version  string
	host     string
	upstream string
	decision wire.Decision
	rule     string
	reason   string
	status   int
	traceID  trace.TraceID
}

// recentLog is a Server's last exchanges and last denials, in two fixed
// rings. Safe for concurrent use; readers get copies.
type recentLog struct {
	mu       sync.Mutex
	requests [recentRequestsKept]recentExchange
	denials  [recentDenialsKept]recentExchange
	nreq     uint64 // exchanges recorded since start; the next goes to nreq % len
	nden     uint64
}

// record notes a finished exchange. It is called from exchange.finish for
// every request, so it only copies.
func (l *recentLog) record(x *exchange, end ended) {
	e := recentExchange{
		start:    x.start,
		duration: end.at.Sub(x.start),
		method:   x.r.Method,
		path:     x.r.URL.Path,
		mode:     string(x.mode),
		kind:     x.req.Kind,
		module:   x.req.Module,
		version:  x.req.Version,
		host:     x.host,
		decision: x.verdict.decision,
		rule:     x.verdict.ruleText,
		reason:   end.reason,
		status:   end.status,
		traceID:  trace.SpanContextFromContext(x.r.Context()).TraceID(),
	}
	if x.out.served != nil {
		e.upstream = x.out.served.Name
	}
	l.mu.Lock()
	l.requests[l.nreq%recentRequestsKept] = e
	l.nreq++
	if e.decision == wire.DecisionDeny {
		l.denials[l.nden%recentDenialsKept] = e
		l.nden++
	}
	l.mu.Unlock()
}

// snapshot returns copies of the recent exchanges and denials, newest
// first, and how many exchanges were recorded in all.
func (l *recentLog) snapshot() (requests, denials []recentExchange, total uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return newestFirst(l.requests[:], l.nreq), newestFirst(l.denials[:], l.nden), l.nreq
}

func newestFirst(ring []recentExchange, n uint64) []recentExchange {
	size := uint64(len(ring))
	out := make([]recentExchange, 0, min(n, size))
	for i := n; i > 0 && n-i < size; i-- {
		out = append(out, ring[(i-1)%size])
	}
	return out
}

// recent returns the server's log of recent exchanges.
func (s *Server) recent() *recentLog { return &s.recentLog }

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct": func(ratio float64) float64 { return 100 * ratio },
}).Parse(statusHTML))

// statusHandler serves the status page: server-rendered HTML that reloads
// itself every 5 s, with no script and nothing fetched from elsewhere, so
// that it works in a locked-down pod through a port-forward.
func (s *Server) statusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page := s.statusPage(s.now())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if err := statusTemplate.Execute(w, page); err != nil {
			s.log.Warn("status page", "err", err)
		}
	})
}

// statusPage is what the template shows.
type statusPage struct {
	Version, Listen, Admin, Chain, SumDB string
	Verified                             bool
	Verification                         string // against what, or why not
	Ready                                string // "ready", or why not
	ReadyOK                              bool
	Policy                               string
	Generated                            string
	Telemetry                            bool
	Exporting                            string
	BaselineWindow                       string
	Upstreams                            []statusUpstream
	Fleet                                fleetStatus
	Others                               []statusUpstream // baselines of forward mode's origins and the like
	Requests, Denials                    []statusRow
	Builds                               []statusBuild
	Total                                int
	KeptRequests, KeptDenials            int
}

type statusUpstream struct {
	upstream.Status
	Kind         string // proxy, direct, off
	State        string // breaker state, or what a direct/off entry does
	ProbeIn      string
	Failures     []statusFailure
	Baseline     []telemetry.BaselineRow
	BaselineNote string // shown instead of rows: no requests, telemetry off
	Rows         int    // table rows the upstream spans
}

type statusFailure struct{ Age, Time, Reason string }

type statusRow struct {
	Age, Time      string
	Mode, Kind     string
	What           string // module@version, or the host
	Upstream       string
	Decision, Rule string
	Reason         string
	Status         int
	StatusClass    string
	Duration       string
	TraceID        string
	TraceLink      string
}

func (s *Server) statusPage(now time.Time) statusPage {
	p := statusPage{
		Version: s.cfg.Version, Listen: s.cfg.Listen, Admin: s.cfg.Admin, Chain: upstream.FormatChain(s.chain.Upstreams(), func(u *upstream.Upstream) string { return u.Name }), SumDB: s.cfg.SumDB,
		Policy:       "none: every module allowed, none private",
		Generated:    now.UTC().Format("2006-01-02 15:04:05 UTC"),
		Telemetry:    s.tel != nil,
		Exporting:    s.tel.Exporting(),
		KeptRequests: recentRequestsKept, KeptDenials: recentDenialsKept,
	}
	if p.Version == "" {
		p.Version = "(devel)"
	}
	if p.SumDB == "" {
		p.SumDB = "off"
	}
	p.Verified, p.Verification = s.Verification()
	if p.Verified {
		c := s.checks.snapshot()
		p.Verification = fmt.Sprintf("on, %s: %d verified, %d mismatched, %d unverified", p.Verification, c["verified"], c["mismatch"], c["unverified"]+c["misbehaving"])
	} else {
		p.Verification = "off: " + p.Verification
	}
	if err := s.Ready(); err != nil {
		p.Ready = err.Error()
	} else {
		p.Ready, p.ReadyOK = "ready", true
	}
	if st := s.cfg.Policy; st != nil {
		p.Policy = st.Path()
		if n := st.ReloadFailures(); n > 0 {
			p.Policy += fmt.Sprintf(" (%d failed reloads; the last good policy is in force)", n)
		}
	}

	p.Fleet = s.fleetStatus()
	report := s.tel.Baselines().Snapshot()
	p.BaselineWindow = strings.TrimSuffix((time.Duration(report.WindowSeconds) * time.Second).String(), "0s")
	byName := map[string][]telemetry.BaselineRow{}
	for _, row := range report.Rows {
		byName[row.Upstream] = append(byName[row.Upstream], row)
	}
	for _, u := range s.chain.Upstreams() {
		su := statusUpstream{Status: u.Status(), State: "—"}
		switch u.Kind {
		case upstream.Direct:
			su.Kind, su.State, su.URL = "direct", "—", "answers 404: the go command fetches from the origin"
		case upstream.Off:
			su.Kind, su.State, su.URL = "off", "—", "answers 403"
		default:
			su.Kind, su.State = "proxy", su.Breaker.State
			if su.Breaker.HalfOpenInSecs > 0 {
				su.ProbeIn = "probe in " + (time.Duration(su.Breaker.HalfOpenInSecs) * time.Second).String()
			}
			recent := su.Breaker.Recent
			for i := len(recent) - 1; i >= 0 && len(recent)-i <= 3; i-- {
				f := recent[i]
				su.Failures = append(su.Failures, statusFailure{Age: age(now, f.Time), Time: f.Time.UTC().Format(time.RFC3339), Reason: f.Reason})
			}
			su.Baseline = byName[u.Name]
			delete(byName, u.Name)
		}
		p.Upstreams = append(p.Upstreams, su.withNote(s.tel != nil))
	}
	for _, row := range report.Rows {
		if rows, ok := byName[row.Upstream]; ok {
			delete(byName, row.Upstream)
			other := statusUpstream{Status: upstream.Status{Name: row.Upstream}, Kind: "other", Baseline: rows}
			if row.Upstream == "origin" {
				other.URL = "the hosts reached in forward mode"
			}
			p.Others = append(p.Others, other.withNote(true))
		}
	}

	p.Builds = s.statusBuilds(now)
	requests, denials, total := s.recent().snapshot()
	p.Total = int(total)
	for _, e := range requests {
		p.Requests = append(p.Requests, e.row(now, s.tel != nil))
	}
	for _, e := range denials {
		p.Denials = append(p.Denials, e.row(now, s.tel != nil))
	}
	return p
}

func (su statusUpstream) withNote(telemetryOn bool) statusUpstream {
	switch {
	case !telemetryOn:
		su.BaselineNote = "telemetry off"
	case su.Kind == "direct" || su.Kind == "off":
		su.BaselineNote = ""
	case len(su.Baseline) == 0:
		su.BaselineNote = "no requests in the window"
	}
	su.Rows = max(1, len(su.Baseline))
	return su
}

func (e recentExchange) row(now time.Time, telemetryOn bool) statusRow {
	r := statusRow{
		Age: age(now, e.start), Time: e.start.UTC().Format(time.RFC3339Nano),
		Mode: e.mode, Kind: string(e.kind), Upstream: e.upstream,
		Decision: string(e.decision), Rule: e.rule, Reason: e.reason,
		Status: e.status, StatusClass: "s" + strconv.Itoa(e.status/100) + "xx",
		Duration: duration(e.duration),
	}
	switch {
	case e.module != "" && e.version != "":
		r.What = e.module + "@" + e.version
	case e.module != "":
		r.What = e.module
	case e.host != "":
		r.What = e.host
	default:
		r.What = e.path // a request that did not classify
	}
	if e.traceID.IsValid() && telemetryOn {
		r.TraceID = e.traceID.String()
		r.TraceLink = tracezLink(e)
	}
	return r
}

// tracezLink points at the samples of the exchange's server span in
// /debug/tracez: its name, and the latency bucket or the errors. The trace
// view keeps a few samples per bucket, so the trace may have made way for
// a newer one; the id on the page is what to search for in Jaeger.
func tracezLink(e recentExchange) string {
	name := "CONNECT"
	if e.kind != wire.KindTunnel {
		name = spanMethod(e.method) + " " + string(e.kind.Normal())
	}
	q := url.Values{"zspanname": {name}, "ztype": {"1"}}
	if e.status >= 500 {
		q.Set("ztype", "2") // the server span of a 5xx is an error span
	} else {
		q.Set("zlatencybucket", strconv.Itoa(tracezBucket(e.duration)))
	}
	return "debug/tracez?" + q.Encode()
}

// tracezBucket is the zPages latency bucket of d: bounds at 10 µs, 100 µs,
// 1 ms, ... 100 s.
func tracezBucket(d time.Duration) int {
	i := 0
	for bound := 10 * time.Microsecond; i < 8 && d >= bound; bound *= 10 {
		i++
	}
	return i
}

// spanMethod is the method as server span names spell it (otelhttp names
// an unknown method "HTTP").
func spanMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "HTTP"
}

func age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func duration(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return d.Round(time.Second).String()
}
