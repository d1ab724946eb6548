package sidecar

import (
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modgate/modgate/telemetry"
)

//go:embed build.html
var buildHTML string

var buildTemplate = template.Must(template.New("build").Parse(buildHTML))

// buildPage is what build.html shows: one build's summary and the
// waterfall of its requests.
type buildPage struct {
	Title, TraceID, TraceLink string
	Command, Dir, When        string
	Exit                      string
	Facts                     []buildFact
	Kinds                     []buildKindRow
	Slowest                   []telemetry.ModuleTime
	Failures                  []telemetry.BuildFailure
	Breakers                  []telemetry.BreakerOpening
	Rows                      []waterfallRow
	Ticks                     []waterfallTick
	Truncated                 bool
	Total                     int
}

type buildFact struct{ Name, Value string }

type buildKindRow struct {
	Kind           string
	Requests       int
	Outcomes       string
	Mean, Max, Sum string
}

type waterfallRow struct {
	What, Kind, Mode, Upstream, Cache string
	Status                            int
	StatusClass                       string
	Outcome                           string
	Duration                          string
	Left, Width                       string // of the bar, in % of the build's span
	Title                             string
}

type waterfallTick struct {
	Left, Label string
	End         bool // the last tick, its label left of the line
}

// handleBuildPage serves /builds/{trace_id}: a self-contained page with
// one build's summary and the waterfall of its requests, for a laptop
// without Jaeger.
func (s *Server) handleBuildPage(w http.ResponseWriter, r *http.Request) {
	id, ok := buildID(w, r)
	if !ok {
		return
	}
	sum, ok := s.builds.summary(r.Context(), id, 0, true)
	if !ok {
		http.Error(w, "modgate: not-found: no request of trace "+id.String()+" has reached this modgate (or it is no longer kept)", http.StatusNotFound)
		return
	}
	page := newBuildPage(sum, s.cfg.TraceURL)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := buildTemplate.Execute(w, page); err != nil {
		s.log.Warn("build page", "err", err)
	}
}

// TraceLink fills a trace URL template (MODGATE_TRACE_URL, e.g.
// http://jaeger.example.test:16686/trace/{trace_id}) with a trace ID; ""
// without a template.
func TraceLink(template, traceID string) string {
	if template == "" {
		return ""
	}
	return strings.ReplaceAll(template, "{trace_id}", traceID)
}

func newBuildPage(sum telemetry.BuildSummary, traceURL string) buildPage {
	p := buildPage{
		Title: buildTitle(sum), TraceID: sum.TraceID, TraceLink: TraceLink(traceURL, sum.TraceID),
		Command: sum.Command, Dir: sum.Dir,
		Slowest: sum.Slowest, Failures: sum.Failures, Breakers: sum.Breakers,
		Truncated: sum.WaterfallTruncated, Total: sum.Requests,
	}
	if t := buildTime(sum); !t.IsZero() {
		p.When = t.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	if sum.ExitCode != nil {
		p.Exit = strconv.Itoa(*sum.ExitCode)
	}
	hits := "0"
	if sum.Requests > 0 {
		hits = fmt.Sprintf("%d (%.0f %%)", sum.CacheHits, 100*float64(sum.CacheHits)/float64(sum.Requests))
	}
	p.Facts = []buildFact{
		{"requests", strconv.Itoa(sum.Requests)},
		{"waiting on modgate", msText(sum.WaitMS)},
		{"cache hits", hits},
		{"bytes", byteText(sum.Bytes)},
		{"failures", strconv.Itoa(sum.ByOutcome["error"] + sum.ByOutcome["denied"])},
		{"fall-throughs", strconv.Itoa(sum.Fallthroughs)},
	}
	for _, k := range sortedKinds(sum.ByKind) {
		ks := sum.ByKind[k]
		var outs []string
		for _, o := range []string{"ok", "notfound", "denied", "error", "gone"} {
			if n := ks.Outcomes[o]; n > 0 {
				outs = append(outs, fmt.Sprintf("%s %d", o, n))
			}
		}
		p.Kinds = append(p.Kinds, buildKindRow{Kind: k, Requests: ks.Requests, Outcomes: strings.Join(outs, ", "),
			Mean: msText(ks.MeanMS), Max: msText(ks.MaxMS), Sum: msText(ks.SumMS)})
	}
	if len(sum.Waterfall) == 0 {
		return p
	}
	start := sum.Waterfall[0].Start
	end := start
	for _, q := range sum.Waterfall {
		if e := q.Start.Add(time.Duration(q.DurationMS * float64(time.Millisecond))); e.After(end) {
			end = e
		}
	}
	span := end.Sub(start)
	if span <= 0 {
		span = time.Millisecond
	}
	pct := func(d time.Duration) float64 { return 100 * float64(d) / float64(span) }
	for i := 0; i <= 4; i++ {
		p.Ticks = append(p.Ticks, waterfallTick{Left: fmt.Sprintf("%.2f", float64(i)*25), Label: msText(float64(span.Microseconds()) / 1000 * float64(i) / 4), End: i == 4})
	}
	for _, q := range sum.Waterfall {
		what := q.Module
		switch {
		case q.Module != "" && q.Version != "":
			what = q.Module + "@" + q.Version
		case q.Module == "" && q.Host != "":
			what = q.Host
		case q.Module == "":
			what = "(" + q.Kind + ")"
		}
		d := time.Duration(q.DurationMS * float64(time.Millisecond))
		left := pct(q.Start.Sub(start))
		width := max(pct(d), 0.15)
		row := waterfallRow{
			What: what, Kind: q.Kind, Mode: q.Mode, Upstream: q.Upstream, Cache: q.Cache,
			Status: q.Status, StatusClass: "s" + strconv.Itoa(q.Status/100) + "xx", Outcome: q.Outcome,
			Duration: msText(q.DurationMS),
			Left:     fmt.Sprintf("%.3f", min(left, 99.85)), Width: fmt.Sprintf("%.3f", min(width, 100-min(left, 99.85))),
			Title: fmt.Sprintf("%s %s: +%s, %s, %d", q.Method, what, msText(float64(q.Start.Sub(start).Microseconds())/1000), msText(q.DurationMS), q.Status),
		}
		if q.Code != "" {
			row.Title += " " + q.Code
		}
		p.Rows = append(p.Rows, row)
	}
	return p
}

func buildTitle(sum telemetry.BuildSummary) string {
	switch {
	case sum.Name != "":
		return sum.Name
	case sum.Command != "":
		return sum.Command
	}
	return "trace " + sum.TraceID
}

func sortedKinds(m map[string]telemetry.KindSummary) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]].SumMS != m[keys[j]].SumMS {
			return m[keys[i]].SumMS > m[keys[j]].SumMS
		}
		return keys[i] < keys[j]
	})
	return keys
}

func msText(ms float64) string {
	return duration(time.Duration(ms * float64(time.Millisecond)))
}

func byteText(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// statusBuild is a row of the status page's recent builds.
type statusBuild struct {
	Command, Age, Time string
	Requests           int
	CacheHits          int
	Wait               string
	Failures           int
	Exit               string
	Failed             bool
	TraceID, TraceLink string
}

// statusBuilds are the status page's recent builds, at most ten.
func (s *Server) statusBuilds(now time.Time) []statusBuild {
	var rows []statusBuild
	for _, b := range s.builds.recentBuilds() {
		if len(rows) == 10 {
			break
		}
		row := statusBuild{
			Command: buildTitle(b), Requests: b.Requests, CacheHits: b.CacheHits, Wait: msText(b.WaitMS),
			Failures: b.ByOutcome["error"] + b.ByOutcome["denied"], Exit: "—",
			TraceID: b.TraceID, TraceLink: TraceLink(s.cfg.TraceURL, b.TraceID),
		}
		if t := buildTime(b); !t.IsZero() {
			row.Age, row.Time = age(now, t), t.UTC().Format(time.RFC3339)
		}
		if b.ExitCode != nil {
			row.Exit, row.Failed = strconv.Itoa(*b.ExitCode), *b.ExitCode != 0
		}
		rows = append(rows, row)
	}
	return rows
}
