package sidecar

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// A build (`modgate exec`, or CI settings from `modgate env --trace`)
// carries its trace context to modgate in the URLs it is given, because
// the go command sends no traceparent: in a GOPROXY URL's path
// (/.trace/<traceparent>/...) and in a proxy URL's user name
// (trace-<traceparent>, or <name>+trace-<traceparent>), which net/http and
// git send as Proxy-Authorization. README.md, "Traces and metrics".

// How much of the recent builds modgate keeps for their summaries.
const (
	buildsKept          = 16    // builds, the least recently active forgotten first
	buildWaterfallKept  = 5000  // requests shown one by one per build
	buildIntervalsKept  = 20000 // request intervals per build, for the waiting time
	buildModulesKept    = 5000  // module@versions per build, for the slowest
	buildFailuresKept   = 50
	buildSlowestShown   = 10
	buildBreakersKept   = 50
	maxBuildWait        = 30 * time.Second
	maxBuildRegistering = 8 << 10
)

// buildKey marks a request's context with the build it belongs to.
type buildKey struct{}

// carryBuild wraps h: a request that carries a build's trace context has
// it removed from its path or Proxy-Authorization and continues that
// trace (a traceparent header, from a client that speaks OpenTelemetry
// itself, still wins), and is counted in flight for its build until its
// audit line is written.
func (s *Server) carryBuild(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sc trace.SpanContext
		switch {
		case r.Method == http.MethodConnect || r.URL.IsAbs():
			var ok bool
			if sc, ok = s.proxyAuthBuild(r); ok {
				r = stripProxyAuthBuild(r)
			}
		case r.URL.Path == "/"+telemetry.TracePathElem || strings.HasPrefix(r.URL.Path, "/"+telemetry.TracePathElem+"/"):
			var msg string
			sc, msg = s.pathBuild(r)
			if msg != "" {
				s.newExchange(w, r, wire.ModeReverse).end(invalid(msg,
					"the GOPROXY entry of a build is http(s)://<modgate>/"+telemetry.TracePathElem+"/<traceparent>, as `modgate exec` and `modgate env --trace` write it"))
				return
			}
			r = stripPathBuild(r)
		}
		if !sc.IsValid() {
			h.ServeHTTP(w, r)
			return
		}
		b := s.builds.begin(sc.TraceID())
		defer s.builds.done(b)
		ctx := trace.ContextWithRemoteSpanContext(r.Context(), sc)
		h.ServeHTTP(w, r.WithContext(context.WithValue(ctx, buildKey{}, true)))
	})
}

// pathBuild reads the trace context of a /.trace/<traceparent>/... path,
// or says why it cannot.
func (s *Server) pathBuild(r *http.Request) (trace.SpanContext, string) {
	rest := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/"+telemetry.TracePathElem), "/")
	tp, _, _ := strings.Cut(rest, "/")
	sc, err := telemetry.ParseTraceparent(tp)
	if err != nil {
		return sc, "GOPROXY path /" + telemetry.TracePathElem + "/: " + err.Error()
	}
	return sc, ""
}

// stripPathBuild returns r with its path as the go command would have
// sent it to a GOPROXY of modgate's own URL.
func stripPathBuild(r *http.Request) *http.Request {
	strip := func(p string) string {
		rest := strings.TrimPrefix(strings.TrimPrefix(p, "/"+telemetry.TracePathElem), "/")
		_, after, _ := strings.Cut(rest, "/")
		return "/" + after
	}
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.Path = strip(u.Path)
	if u.RawPath != "" {
		u.RawPath = strip(u.RawPath)
		if u.Path != "" && u.RawPath == u.Path {
			u.RawPath = ""
		}
	}
	r2.URL = &u
	r2.RequestURI = u.RequestURI()
	return r2
}

// proxyAuthBuild reads the trace context from a Basic Proxy-Authorization
// user name. One that does not parse is left alone, for authentication to
// judge like any other user name.
func (s *Server) proxyAuthBuild(r *http.Request) (trace.SpanContext, bool) {
	h := r.Header.Get("Proxy-Authorization")
	if h == "" {
		return trace.SpanContext{}, false
	}
	user, _, ok := parseBasic(h)
	if !ok {
		return trace.SpanContext{}, false
	}
	_, sc, ok := telemetry.SplitTraceUser(user)
	return sc, ok
}

// stripProxyAuthBuild returns r with the trace context taken out of its
// Proxy-Authorization: the user's own credentials stay, and a header that
// carried nothing else goes.
func stripProxyAuthBuild(r *http.Request) *http.Request {
	user, pass, _ := parseBasic(r.Header.Get("Proxy-Authorization"))
	name, _, _ := telemetry.SplitTraceUser(user)
	r2 := new(http.Request)
	*r2 = *r
	r2.Header = r.Header.Clone()
	if name == "" && pass == "" {
		r2.Header.Del("Proxy-Authorization")
	} else {
		r2.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(name+":"+pass)))
	}
	return r2
}

// buildTracker keeps the summaries of recent builds, fed by every
// exchange of a build from the same place as its audit line. Safe for
// concurrent use.
type buildTracker struct {
	mu     sync.Mutex
	builds map[trace.TraceID]*build
	// breakers are the recent openings of the chain's breakers, which a
	// build's summary picks from by time.
	breakers []telemetry.BreakerOpening
	// uses counts calls of get: a build's lastSeen orders builds by their
	// last use, for forgetting the least recent.
	uses uint64
}

// build is one build's running summary.
type build struct {
	id        trace.TraceID
	lastSeen  uint64 // buildTracker.uses when last asked for
	inFlight  int
	settled   chan struct{} // closed and replaced when inFlight reaches 0
	sum       telemetry.BuildSummary
	intervals [][2]int64 // start, end in UnixNano
	modules   map[string]*telemetry.ModuleTime
}

func (t *buildTracker) get(id trace.TraceID) *build {
	if t.builds == nil {
		t.builds = map[trace.TraceID]*build{}
	}
	b := t.builds[id]
	if b == nil {
		if len(t.builds) >= buildsKept {
			var oldest *build
			for _, o := range t.builds {
				if o.inFlight == 0 && (oldest == nil || o.lastSeen < oldest.lastSeen) {
					oldest = o
				}
			}
			if oldest != nil {
				delete(t.builds, oldest.id)
			}
		}
		b = &build{id: id, settled: make(chan struct{}), modules: map[string]*telemetry.ModuleTime{}}
		b.sum.TraceID = id.String()
		b.sum.ByKind = map[string]telemetry.KindSummary{}
		b.sum.ByOutcome = map[string]int{}
		t.builds[id] = b
	}
	t.uses++
	b.lastSeen = t.uses
	return b
}

// begin counts a request of build id in flight.
func (t *buildTracker) begin(id trace.TraceID) *build {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.get(id)
	b.inFlight++
	return b
}

// done ends what begin started.
func (t *buildTracker) done(b *build) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b.inFlight--
	if b.inFlight == 0 {
		close(b.settled)
		b.settled = make(chan struct{})
	}
}

// summaryOutcome sorts an answer for the summary: ok, notfound, denied, error,
// or gone (the client went away first: the go command cancels what it no
// longer needs, which is no failure of the build's).
func summaryOutcome(decision wire.Decision, status int) string {
	switch {
	case decision == wire.DecisionDeny:
		return "denied"
	case status < 400:
		return "ok"
	case status == http.StatusNotFound || status == http.StatusGone:
		return "notfound"
	case status == statusClientGone:
		return "gone"
	}
	return "error"
}

// record adds a finished exchange of a build to its summary.
func (t *buildTracker) record(x *exchange, sc trace.SpanContext, e ended) {
	if on, _ := x.r.Context().Value(buildKey{}).(bool); !on || !sc.IsValid() {
		return
	}
	end, status := e.at, e.status
	d := end.Sub(x.start)
	ms := float64(d.Microseconds()) / 1000
	kind := string(x.req.Kind)
	out := summaryOutcome(x.verdict.decision, status)
	served := "modgate" // answered by modgate itself: a denial, a bad request
	switch {
	case x.out.cache == wire.CacheHit:
		served = "cache"
	case x.out.served != nil:
		served = x.out.served.Name
	}
	var code string
	var answer []string
	if p := x.out.problem; p != nil && p.code != "" {
		code = string(p.code)
		answer = strings.Split(strings.TrimSuffix(errorBody(p.code, p.lines...), "\n"), "\n")
	}
	fell := x.fellThrough()

	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.get(sc.TraceID())
	s := &b.sum
	s.Requests++
	if s.First.IsZero() || x.start.Before(s.First) {
		s.First = x.start
	}
	if end.After(s.Last) {
		s.Last = end
	}
	k := s.ByKind[kind]
	if k.Outcomes == nil {
		k.Outcomes = map[string]int{}
	}
	k.Requests++
	k.Outcomes[out]++
	k.SumMS += ms
	k.MaxMS = max(k.MaxMS, ms)
	k.MeanMS = k.SumMS / float64(k.Requests)
	s.ByKind[kind] = k
	s.ByOutcome[out]++
	s.Bytes += x.w.bytes
	if x.out.cache == wire.CacheHit {
		s.CacheHits++
	}
	s.SumMS += ms
	if fell {
		s.Fallthroughs++
	}
	if s.Upstreams == nil {
		s.Upstreams = map[string]telemetry.UpstreamTime{}
	}
	u := s.Upstreams[served]
	u.Requests++
	u.SumMS += ms
	s.Upstreams[served] = u
	if len(b.intervals) < buildIntervalsKept {
		b.intervals = append(b.intervals, [2]int64{x.start.UnixNano(), end.UnixNano()})
	}
	if x.req.Module != "" {
		key := x.req.Module + "@" + x.req.Version
		m := b.modules[key]
		if m == nil && len(b.modules) < buildModulesKept {
			m = &telemetry.ModuleTime{Module: x.req.Module, Version: x.req.Version}
			b.modules[key] = m
		}
		if m != nil {
			m.Requests++
			m.SumMS += ms
			if served != "modgate" {
				m.Upstream = served
			}
		}
	}
	if (out == "error" || out == "denied") && len(s.Failures) < buildFailuresKept {
		s.Failures = append(s.Failures, telemetry.BuildFailure{
			Kind: kind, Module: x.req.Module, Version: x.req.Version, Host: x.host, Status: status, Code: code, Answer: answer,
		})
	}
	if len(s.Waterfall) < buildWaterfallKept {
		s.Waterfall = append(s.Waterfall, telemetry.BuildRequest{
			Start: x.start, DurationMS: ms, Method: x.r.Method, Mode: string(x.mode), Kind: kind,
			Module: x.req.Module, Version: x.req.Version, Host: x.host, Upstream: served, Cache: string(x.out.cache),
			Status: status, Outcome: out, Bytes: x.w.bytes, Code: code, SpanID: spanIDOf(x),
		})
	} else {
		s.WaterfallTruncated = true
	}
}

func spanIDOf(x *exchange) string {
	if sc := trace.SpanContextFromContext(x.r.Context()); sc.IsValid() && sc.IsSampled() {
		return sc.SpanID().String()
	}
	return ""
}

// fellThrough reports whether the chain moved past the first upstream
// that could have served the request (a 404, a failure, an open breaker).
func (x *exchange) fellThrough() bool {
	if x.out.served == nil || x.mode != wire.ModeReverse || x.req.Kind.IsSumDB() || x.out.cache == wire.CacheHit {
		return false
	}
	for _, u := range x.s.chain.Upstreams() {
		if u.Kind != upstream.Proxy || x.eligible(u) != nil {
			continue
		}
		return u != x.out.served
	}
	return false
}

// noteBreakers makes the chain's breaker openings part of the summaries
// of the builds under way when they open, keeping whatever else is told.
func (s *Server) noteBreakers(opts *upstream.Options) {
	next := opts.BreakerNews
	opts.BreakerNews = func(name string, open bool, until time.Time, reason string) {
		if open {
			t := &s.builds
			t.mu.Lock()
			if len(t.breakers) == buildBreakersKept {
				t.breakers = slices.Delete(t.breakers, 0, 1)
			}
			t.breakers = append(t.breakers, telemetry.BreakerOpening{Time: s.now(), Upstream: name, Reason: reason})
			t.mu.Unlock()
		}
		if next != nil {
			next(name, open, until, reason)
		}
	}
}

// summary returns build id's summary, after waiting up to wait for its
// requests in flight to finish. ok is false for a build modgate has not
// seen (or has forgotten).
func (t *buildTracker) summary(ctx context.Context, id trace.TraceID, wait time.Duration, waterfall bool) (telemetry.BuildSummary, bool) {
	deadline := time.After(wait)
	for {
		t.mu.Lock()
		b := t.builds[id]
		if b == nil {
			t.mu.Unlock()
			return telemetry.BuildSummary{}, false
		}
		if b.inFlight == 0 || wait <= 0 {
			defer t.mu.Unlock()
			return t.summaryLocked(b, waterfall), true
		}
		settled := b.settled
		t.mu.Unlock()
		select {
		case <-settled:
		case <-deadline:
			wait = 0
		case <-ctx.Done():
			wait = 0
		}
	}
}

func (t *buildTracker) summaryLocked(b *build, waterfall bool) telemetry.BuildSummary {
	s := b.sum
	s.InFlight = b.inFlight
	s.WaitMS = unionMS(b.intervals)
	s.ByKind = make(map[string]telemetry.KindSummary, len(b.sum.ByKind))
	for k, v := range b.sum.ByKind {
		v.Outcomes = maps(v.Outcomes)
		s.ByKind[k] = v
	}
	s.ByOutcome = maps(b.sum.ByOutcome)
	s.Upstreams = maps(b.sum.Upstreams)
	s.Failures = slices.Clone(b.sum.Failures)
	mods := make([]telemetry.ModuleTime, 0, len(b.modules))
	for _, m := range b.modules {
		mods = append(mods, *m)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].SumMS > mods[j].SumMS })
	s.Slowest = mods[:min(len(mods), buildSlowestShown)]
	from, to := s.First, s.Last
	if !s.Start.IsZero() {
		from = s.Start
	}
	if !s.End.IsZero() {
		to = s.End
	}
	for _, o := range t.breakers {
		if !o.Time.Before(from) && !o.Time.After(to) {
			s.Breakers = append(s.Breakers, o)
		}
	}
	if waterfall {
		s.Waterfall = slices.Clone(b.sum.Waterfall)
		sort.SliceStable(s.Waterfall, func(i, j int) bool { return s.Waterfall[i].Start.Before(s.Waterfall[j].Start) })
	} else {
		s.Waterfall = nil
	}
	return s
}

func maps[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// unionMS is the time covered by at least one interval, in ms.
func unionMS(iv [][2]int64) float64 {
	iv = slices.Clone(iv)
	sort.Slice(iv, func(i, j int) bool { return iv[i][0] < iv[j][0] })
	var total, curStart, curEnd int64
	for i, v := range iv {
		switch {
		case i == 0:
			curStart, curEnd = v[0], v[1]
		case v[0] > curEnd:
			total += curEnd - curStart
			curStart, curEnd = v[0], v[1]
		case v[1] > curEnd:
			curEnd = v[1]
		}
	}
	if len(iv) > 0 {
		total += curEnd - curStart
	}
	return float64(total/1000) / 1000
}

// recentBuilds returns the kept builds' summaries without their
// waterfalls, the most recent first.
func (t *buildTracker) recentBuilds() []telemetry.BuildSummary {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]telemetry.BuildSummary, 0, len(t.builds))
	for _, b := range t.builds {
		out = append(out, t.summaryLocked(b, false))
	}
	sort.Slice(out, func(i, j int) bool { return buildTime(out[i]).After(buildTime(out[j])) })
	return out
}

func buildTime(s telemetry.BuildSummary) time.Time {
	if !s.Start.IsZero() {
		return s.Start
	}
	return s.First
}

// BuildRegistration is what `modgate exec` tells modgate of a build, at
// its start and again at its end, so that summaries and the status page
// name the command.
type BuildRegistration struct {
	Name     string    `json:"name"`
	Command  string    `json:"command"`
	Dir      string    `json:"dir"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end,omitzero"`
	ExitCode *int      `json:"exit_code,omitempty"`
}

func (t *buildTracker) register(id trace.TraceID, reg BuildRegistration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := &t.get(id).sum
	s.Name, s.Command, s.Dir, s.Start, s.End, s.ExitCode = reg.Name, reg.Command, reg.Dir, reg.Start, reg.End, reg.ExitCode
}

// buildID reads the {trace_id} of an admin path.
func buildID(w http.ResponseWriter, r *http.Request) (trace.TraceID, bool) {
	id, err := trace.TraceIDFromHex(r.PathValue("trace_id"))
	if err != nil {
		http.Error(w, "modgate: bad-request: want a trace ID of 32 hex digits", http.StatusBadRequest)
		return id, false
	}
	return id, true
}

// handleBuilds serves /debug/builds: the recent builds, without their
// waterfalls.
func (s *Server) handleBuilds(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]any{"builds": s.builds.recentBuilds()})
}

// handleBuild serves /debug/builds/{trace_id}: one build's summary.
// ?wait=5s waits for its requests in flight (the last ones of a build
// that just ended) up to that long; ?waterfall=1 adds the requests one
// by one.
func (s *Server) handleBuild(w http.ResponseWriter, r *http.Request) {
	id, ok := buildID(w, r)
	if !ok {
		return
	}
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	sum, ok := s.builds.summary(r.Context(), id, min(wait, maxBuildWait), r.URL.Query().Get("waterfall") != "")
	if !ok {
		http.Error(w, "modgate: not-found: no request of trace "+id.String()+" has reached this modgate (or it is no longer kept)", http.StatusNotFound)
		return
	}
	writeJSON(w, sum)
}

// handleRegisterBuild serves POST /debug/builds/{trace_id}. The body must
// be JSON, so that a browser cannot send it from another site's page
// without a preflight, which the admin port never answers.
func (s *Server) handleRegisterBuild(w http.ResponseWriter, r *http.Request) {
	id, ok := buildID(w, r)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "modgate: bad-request: want Content-Type: application/json", http.StatusUnsupportedMediaType)
		return
	}
	var reg BuildRegistration
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBuildRegistering)).Decode(&reg); err != nil {
		http.Error(w, "modgate: bad-request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.builds.register(id, reg)
	w.WriteHeader(http.StatusNoContent)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
