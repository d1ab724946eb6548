package sidecar

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// exchange is one request on its way through the pipeline. Its parts
// are written in turn, each by one step: the way in says who asks and for
// what, policy says what it decided (verdict), the pipeline says how the
// request was answered (out), and end records it all. Every exchange ends
// in exactly one call of end, and so in exactly one audit line.
type exchange struct {
	s     *Server
	w     *responseRecorder
	r     *http.Request
	start time.Time
	// connect answers a CONNECT that is refused; nil for other requests.
	connect func(p *problem)

	// Who asks, and for what: set by the way in.
	mode     wire.Mode // wire.ModeReverse, wire.ModeForward or wire.ModeMITM
	identity string    // who is asking (Config.Clients, Forward.Users); "" when nobody has to say
	claimed  string    // the name a refused login gave: audited as claimed_identity, never as identity
	host     string    // the destination host:port (normalised), in forward mode
	req      Request

	pol     *policy.Policy // one snapshot for the whole request
	verdict verdict        // set by decide (and resolved, for a query)
	out     outcome        // set by the pipeline's steps and by end

	buffered int64 // bytes of the server's buffer budget this exchange holds

	// Kept in the exchange, so that they cost no allocation of their own.
	rec responseRecorder // what w points to
	dw  deadlineWriter   // send's writers
	cw  clientWriter
}

// verdict is what policy decided of an exchange.
type verdict struct {
	decision wire.Decision // allow, deny, invalid, loop
	rule     int
	ruleText string
	reason   string   // the rule's reason
	private  string   // the private pattern the module matches, if any
	route    []string // upstream names the policy's route allows, if any
	routed   bool
	decided  bool // a module-bearing request went through policy
}

// outcome is how an exchange was answered.
type outcome struct {
	served  *upstream.Upstream // who answered; nil: the cache, or nobody
	cache   wire.CacheResult   // hit, miss, stale or shared; "" when the cache was not asked
	note    string             // what the pipeline did to the answer, for the audit line
	problem *problem           // the answer given instead of the one asked for; nil when served
}

// attrEndUser is OpenTelemetry's semantic convention for who made the
// request.
const attrEndUser = attribute.Key("enduser.id")

// attrResponseBodySize is OpenTelemetry's semantic convention for the
// bytes of an answer's body.
const attrResponseBodySize = attribute.Key("http.response.body.size")

// ctx is the request's context, telling upstreams the request's kind.
func (x *exchange) ctx() context.Context {
	return upstream.WithKind(x.r.Context(), x.req.Kind)
}

func (s *Server) newExchange(w http.ResponseWriter, r *http.Request, mode wire.Mode) *exchange {
	x := &exchange{
		s: s, r: r, start: s.now(), mode: mode, rec: responseRecorder{ResponseWriter: w},
		pol: s.policy(), verdict: verdict{decision: wire.DecisionAllow}, req: Request{Kind: wire.KindOther},
	}
	x.w = &x.rec
	return x
}

// end is the one exit of every exchange: it answers a problem (err) if
// there is one, then records the exchange (span attributes, metrics, the
// audit line). An answer that broke off mid-way is aborted after it is
// recorded.
func (x *exchange) end(err error) {
	if err == nil {
		x.finish()
		return
	}
	p := asProblem(err)
	x.out.problem = p
	// A refusal is the final decision: a guard's, or policy's own.
	if p.decision != "" {
		x.verdict.decision = p.decision
	}
	if p.rule != 0 || p.ruleText != "" {
		x.verdict.rule, x.verdict.ruleText = p.rule, p.ruleText
	}
	switch {
	case p.gone:
		// Nobody is listening; an answer that started is cut, so that a
		// client that comes back to it never takes it for a whole one.
		p.abort = x.w.status != 0 && x.connect == nil
		x.w.status = p.status()
	case p.abort && !p.gone:
		x.s.log.Warn("upstream body failed; aborting the response", "kind", x.req.Kind, "path", x.r.URL.Path, "bytes", x.w.bytes, "reason", p.reason)
	case x.connect != nil:
		// Answered once the audit line is written: a refusal a client
		// has seen is always on record.
		x.w.status = p.status()
		defer x.connect(p)
	case x.w.status != 0:
		// The answer has started: all that is left is to cut it.
		p.abort = true
	default:
		for k, vs := range p.header {
			x.w.Header()[k] = vs
		}
		writeError(x.w, p.status(), p.code, p.lines...)
	}
	x.finish()
	if p.abort {
		panic(http.ErrAbortHandler)
	}
}

// decide applies the policy to a classified request: a problem when a
// rule denies it, or when it would send a private module path to a
// checksum database.
func (x *exchange) decide() error {
	req := x.req
	if req.Module == "" {
		return nil // tiles and tree heads name no module: nothing to decide
	}
	x.verdict.decided = true
	if req.Module != toolchainModule {
		// The go command ignores GOPRIVATE and GONOSUMDB for toolchains.
		x.verdict.private, _ = x.pol.IsPrivate(req.Module)
	}
	x.verdict.route, x.verdict.routed = x.pol.RouteFor(req.Module, x.identity)
	version := req.Version
	if req.Query {
		version = "" // decided again on the version the query resolves to
	}
	d := x.pol.Decide(policy.Request{Module: req.Module, Version: version, Kind: req.Kind, Host: x.destination(), Identity: x.identity})
	x.verdict.rule, x.verdict.ruleText, x.verdict.reason = d.Rule, d.RuleText, d.Reason
	if !d.Allow {
		x.s.log.Info("denied by policy", "module", req.Module, "version", req.Version, "kind", req.Kind, "rule", d.Rule, "reason", d.Reason)
		return x.denial(d, req.Version)
	}
	if req.Kind == wire.KindSumDBLookup && x.verdict.private != "" {
		p := deny(wire.PrivateLookup, "private modules are never looked up in a checksum database",
			fmt.Sprintf("checksum database lookup of %s@%s refused: %s is private %s and is never sent to a checksum database", req.Module, req.Version, req.Module, wire.PatternNote(x.verdict.private)),
			wire.NoSumDBHint(x.verdict.private))
		p.ruleText = "private " + x.verdict.private
		return p
	}
	return nil
}

// toolchainModule is the module the go command downloads toolchains as
// (GOTOOLCHAIN); it is never private.
const toolchainModule = "golang.org/toolchain"

// denial is the 403 of a policy decision d against version.
func (x *exchange) denial(d policy.Decision, version string) *problem {
	p := deny(wire.Denied, d.Reason, x.pol.DenyMessage(d, x.req.Module, version)...)
	p.rule, p.ruleText = d.Rule, d.RuleText
	return p
}

// policyRequest is what policy is asked of the exchange's module at
// version.
func (x *exchange) policyRequest(version string) policy.Request {
	return policy.Request{Module: x.req.Module, Version: version, Host: x.destination(), Identity: x.identity}
}

// servedName names the upstream that answered, for logs.
func (x *exchange) servedName() string {
	if x.out.served == nil {
		return "upstream"
	}
	return x.out.served.Name
}

// destination is the host the request goes to: the origin in forward
// mode, modgate itself in reverse mode.
func (x *exchange) destination() string {
	if x.host != "" {
		return x.host
	}
	return x.r.Host
}

// eligible says why an upstream may not be asked for this module: the
// policy routes the module elsewhere, or the module is private and the
// upstream is not.
func (x *exchange) eligible(u *upstream.Upstream) error {
	if x.verdict.routed && !slices.Contains(x.verdict.route, u.Name) {
		return fmt.Errorf("not in the policy's route for %s", x.req.Module)
	}
	if x.verdict.private != "" && !u.Private {
		return fmt.Errorf("not private, and %s is private (%s)", x.req.Module, x.verdict.private)
	}
	return nil
}

// reason is the audit line's reason: why the answer was refused or
// failed; else what the pipeline did to it; else the reason of the policy
// rule that allowed it; else where the cache stood.
func (x *exchange) reason() string {
	switch {
	case x.out.problem != nil:
		return x.out.problem.auditReason()
	case x.out.note != "":
		return x.out.note
	case x.verdict.reason != "":
		return x.verdict.reason
	case x.out.cache != "":
		return cacheReason(x.out.cache)
	}
	return ""
}

// cacheReason is the audit reason of a cache result: a constant for
// each known result, no string built per request.
func cacheReason(c wire.CacheResult) string {
	switch c {
	case wire.CacheHit:
		return "cache hit"
	case wire.CacheMiss:
		return "cache miss"
	case wire.CacheStale:
		return "cache stale"
	case wire.CacheShared:
		return "cache shared"
	}
	return "cache " + string(c)
}

// finish records the exchange: the server span's attributes, the policy
// decision metric, and the audit line.
func (x *exchange) finish() {
	x.s.buffers.give(x.buffered)
	x.buffered = 0
	span := trace.SpanFromContext(x.r.Context())
	if span.IsRecording() {
		attrs := append(make([]attribute.KeyValue, 0, 8), telemetry.AttrMode.String(string(x.mode)), telemetry.AttrPolicyDecision.String(string(x.verdict.decision)))
		if x.req.Module != "" {
			attrs = append(attrs, telemetry.AttrModulePath.String(x.req.Module))
		}
		if x.req.Version != "" {
			attrs = append(attrs, telemetry.AttrModuleVersion.String(x.req.Version))
		}
		if x.verdict.ruleText != "" {
			attrs = append(attrs, telemetry.AttrPolicyRule.String(x.verdict.ruleText))
		}
		if x.out.served != nil {
			attrs = append(attrs, telemetry.AttrUpstreamName.String(x.out.served.Name))
		}
		if x.out.cache != "" {
			attrs = append(attrs, telemetry.AttrCacheResult.String(string(x.out.cache)))
		}
		if x.w.bytes > 0 {
			// otelhttp counts only what goes through Write; a cached file
			// that went to sendfile(2) goes through ReadFrom.
			attrs = append(attrs, attrResponseBodySize.Int64(x.w.bytes))
		}
		if x.identity != "" {
			// Spans and the audit log only: identities are unbounded,
			// so never a metric's label.
			attrs = append(attrs, attrEndUser.String(x.identity))
		}
		span.SetAttributes(attrs...)
		if x.verdict.decision == wire.DecisionDeny {
			span.AddEvent("modgate.policy.denied", trace.WithAttributes(
				telemetry.AttrPolicyRule.String(x.verdict.ruleText), attribute.String("modgate.policy.reason", x.reason())))
		}
	}
	if x.verdict.decided || x.verdict.decision == wire.DecisionDeny {
		x.s.tel.AddPolicyDecision(x.r.Context(), x.verdict.decision, x.verdict.ruleText)
	}
	if x.out.cache != "" {
		x.s.tel.AddCacheRequest(x.r.Context(), x.out.cache)
	}
	e := x.ending()
	x.s.recent().record(x, e) // the status page's recent requests and denials
	x.s.builds.record(x, span.SpanContext(), e)
	if x.s.cfg.LogRequests {
		x.logRequest(e)
	}
	if x.s.audit.Enabled() {
		x.audit(e, span.SpanContext())
	}
}

// ended is what finish works out once for everything that records an
// exchange.
type ended struct {
	at     time.Time // when the exchange ended, on the server's clock
	status int       // the status the client got
	reason string    // exchange.reason
}

// ending works out how the exchange ended, now.
func (x *exchange) ending() ended {
	e := ended{at: x.s.now(), status: x.w.status, reason: x.reason()}
	if e.status == 0 {
		e.status = http.StatusOK // the handler wrote nothing: net/http answers 200
	}
	return e
}

// audit writes the exchange's audit line.
func (x *exchange) audit(end ended, sc trace.SpanContext) {
	e := policy.AuditEntry{
		Time:       x.start,
		Client:     clientIP(x.r.RemoteAddr),
		Identity:   x.identity,
		Host:       x.host,
		Mode:       x.mode,
		Kind:       x.req.Kind,
		Module:     x.req.Module,
		Version:    x.req.Version,
		Decision:   x.verdict.decision,
		Rule:       x.verdict.rule,
		Reason:     end.reason,
		Status:     end.status,
		Bytes:      x.w.bytes,
		DurationMS: float64(end.at.Sub(x.start).Microseconds()) / 1000,
	}
	e.ClaimedIdentity = x.claimed
	if x.out.served != nil {
		e.Upstream = x.out.served.Name
		if x.out.served.URL != nil && e.Host == "" {
			e.Host = x.out.served.URL.Host
		}
	}
	if sc.IsValid() {
		e.TraceID, e.SpanID = traceIDs(sc)
	}
	if err := x.s.audit.Log(e); err != nil {
		x.s.log.Error("audit log", "err", err)
	}
}

// traceIDs is sc's trace and span IDs in hex, as their String methods
// write them, in one allocation where those take two.
func traceIDs(sc trace.SpanContext) (traceID, spanID string) {
	tid, sid := sc.TraceID(), sc.SpanID()
	var b [2*len(tid) + 2*len(sid)]byte
	hex.Encode(b[:2*len(tid)], tid[:])
	hex.Encode(b[2*len(tid):], sid[:])
	both := string(b[:])
	return both[:2*len(tid)], both[2*len(tid):]
}

// logRequest writes the exchange's access log line: what a user of any
// proxy expects to see scroll by. The audit log is the record; this is
// for eyes.
func (x *exchange) logRequest(e ended) {
	if !x.s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	target := x.r.URL.Path
	if x.r.Method == http.MethodConnect {
		target = x.r.Host
	}
	// slog.Attr values, not a []any of pairs: no boxing of every value.
	var buf [10]slog.Attr
	attrs := append(buf[:0], slog.String("method", x.r.Method), slog.String("path", target), slog.Int("status", e.status),
		slog.Int64("bytes", x.w.bytes), slog.String("duration", e.at.Sub(x.start).Round(time.Microsecond).String()),
		slog.String("mode", string(x.mode)), slog.String("kind", string(x.req.Kind)), slog.String("client", clientIP(x.r.RemoteAddr)))
	if x.out.served != nil {
		attrs = append(attrs, slog.String("upstream", x.out.served.Name))
	}
	if x.out.cache != "" {
		attrs = append(attrs, slog.String("cache", string(x.out.cache)))
	}
	// Straight to the handler: Logger.LogAttrs would also walk the stack
	// for the line's source position, which is always this function (a
	// handler with AddSource shows none for it).
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	rec.AddAttrs(attrs...)
	x.s.log.Handler().Handle(context.Background(), rec)
}

func clientIP(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// responseRecorder notes the status and size of an answer for the audit
// line, passing everything through.
type responseRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *responseRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom counts what it copies, and passes the copy on to the writer
// underneath when that has a ReadFrom (net/http's hands a file to
// sendfile(2)).
func (w *responseRecorder) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		bp := bufPool.Get().(*[]byte)
		n, err = io.CopyBuffer(struct{ io.Writer }{w.ResponseWriter}, r, *bp)
		bufPool.Put(bp)
	}
	w.bytes += n
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *responseRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
