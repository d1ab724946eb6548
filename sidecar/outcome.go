package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// Audit decisions (wire.Decision): a problem that policy or a guard raised
// is deny; bad input is invalid; a request that came back is loop. A
// request policy allowed stays allow whatever the upstreams then did: its
// status says that.

// statusClientGone is what the audit log records for a request whose
// client went away before its answer (nginx's and Caddy's 499).
const statusClientGone = 499

// problem is an answer modgate gives instead of the one asked for: a
// refusal (policy, a guard, bad input) or a failure (no upstream could
// serve). Every step of the pipeline returns one as its error, and
// exchange.end turns it into the status, the body the go command prints,
// the audit line, the span's attributes and the metrics, in one place.
//
// Its status is its code's (wire.Code.Status): no step chooses one.
type problem struct {
	code wire.Code
	// lines are the body: the message, then details. For a CONNECT only
	// the message is sent, in the status line.
	lines []string
	// decision, rule and ruleText go to the audit line; an empty decision
	// leaves the exchange's own.
	decision wire.Decision
	rule     int
	ruleText string
	// reason is the audit line's reason; if empty, the details, or the
	// message when there are none.
	reason string
	// header is set on the answer (Allow, Retry-After, Proxy-Authenticate).
	header http.Header
	// abort: the answer has started and broke off; the connection is cut
	// so that the client never takes a short body for a whole one.
	abort bool
	// gone: the client went away; nothing is written.
	gone bool
	// proxyAuth: forward mode's own login challenge, 407 instead of
	// AuthRequired's 401.
	proxyAuth bool
}

// status is the answer's HTTP status.
func (p *problem) status() int {
	switch {
	case p.gone:
		return statusClientGone
	case p.proxyAuth:
		return http.StatusProxyAuthRequired
	}
	return p.code.Status()
}

func (p *problem) Error() string {
	if len(p.lines) == 0 {
		return string(p.code)
	}
	return string(p.code) + ": " + p.lines[0]
}

// auditReason is the reason the audit line gives for p.
func (p *problem) auditReason() string {
	switch {
	case p.reason != "":
		return p.reason
	case len(p.lines) > 1:
		return strings.Join(p.lines[1:], "; ")
	case len(p.lines) == 1:
		return p.lines[0]
	}
	return string(p.code)
}

// asProblem turns any error of the pipeline into a problem: a guard's
// refusal is a 403, anything else modgate's own 500.
func asProblem(err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	if ref, ok := isRefusal(err); ok {
		return refused(ref.reason)
	}
	return fail(wire.Internal, err.Error())
}

// fail is an answer with code: its message, then details.
func fail(code wire.Code, lines ...string) *problem {
	return &problem{code: code, lines: lines}
}

// retryAfter tells the client when to try again.
func (p *problem) retryAfter(seconds int) *problem {
	p.header = http.Header{"Retry-After": {strconv.Itoa(seconds)}}
	return p
}

// deny is a refusal by policy or a guard: code, and the audit line's
// reason.
func deny(code wire.Code, reason string, lines ...string) *problem {
	return &problem{code: code, lines: lines, decision: wire.DecisionDeny, reason: reason}
}

// invalid is a request modgate will not pass on: 400 with the reason.
func invalid(lines ...string) *problem {
	return invalidAs(wire.BadRequest, lines...)
}

// invalidAs is a request modgate will not pass on, with code.
func invalidAs(code wire.Code, lines ...string) *problem {
	return &problem{code: code, lines: lines, decision: wire.DecisionInvalid}
}

// refused is a destination forward mode will not reach.
func refused(reason string, details ...string) *problem {
	return deny(wire.Refused, reason, append([]string{reason}, details...)...)
}

// loop is a request that came back to this modgate, or to one it passed.
func loop(reason string, lines ...string) *problem {
	return &problem{code: wire.Loop, lines: lines, decision: wire.DecisionLoop, reason: reason}
}

// clientGone is a request whose client went away; nothing is answered.
func clientGone(reason string) *problem {
	return &problem{gone: true, reason: reason}
}

// aborted is an answer cut off mid-way because its upstream broke off.
func aborted(reason string) *problem {
	return &problem{code: wire.UpstreamCut, abort: true, reason: reason}
}

// upstreamCut is the 502 of an answer its upstream broke off before
// modgate relayed any of it: the client gets a status and the reason.
func upstreamCut(lines ...string) *problem {
	return fail(wire.UpstreamCut, lines...)
}

// tooLarge is the 502 of an answer larger than any of its kind may be.
func (x *exchange) tooLarge(n, limit int64) *problem {
	return fail(wire.BadUpstream, describeRequest(x.req)+": the upstream's answer is too large for its kind; not relayed, not kept",
		fmt.Sprintf("%s: %d bytes or more, the limit is %d", x.servedName(), n, limit))
}

// chainProblem explains why no upstream answered 200: which upstreams were
// asked, what each said, and what the client can do.
func (x *exchange) chainProblem(res upstream.Result) *problem {
	if x.r.Context().Err() != nil {
		return clientGone("client went away while upstreams were asked")
	}
	code := chainCode(res)
	for _, a := range res.Attempts {
		if ref, ok := isRefusal(a.Err); ok {
			// The guard refused a destination: not the upstream's doing.
			return refused(fmt.Sprintf("%s %s refused: %s", x.r.Method, x.host, ref.reason))
		}
		if errors.Is(a.Err, errOverBudget) {
			return x.overBudget()
		}
		var off *offlineError
		if errors.As(a.Err, &off) {
			return x.notOffline(off.why)
		}
		var bad *badAnswer
		var unproven *verifyError
		switch {
		case code != wire.UpstreamFailed:
		case errors.As(a.Err, &bad):
			code = wire.BadUpstream
		case isMismatch(a.Err), errors.As(a.Err, &unproven):
			code = wire.ChecksumMismatch
		}
	}
	subject := describeRequest(x.req)
	lines := make([]string, 0, len(res.Attempts)+3)
	switch {
	case x.req.Kind.IsSumDB():
		if code == wire.Off {
			// off ends a module chain, not the search for a database.
			code = wire.UpstreamFailed
		}
		text := http.StatusText(code.Status())
		if code.Status() == http.StatusNotFound {
			text = "not found"
		}
		lines = append(lines, subject+": "+text)
	case chainMessages[code] != "":
		lines = append(lines, subject+": "+chainMessages[code])
	default:
		lines = append(lines, subject+": no upstream could serve it")
	}
	for _, a := range res.Attempts {
		lines = append(lines, a.String())
	}
	if res.Stopped {
		lines = append(lines, `the chain stops there: after "," only 404 and 410 move on ("|" moves on after any error)`)
	}
	p := fail(code, lines...)
	status := p.status()
	if ra := res.RetryAfter(); ra > 0 && status == http.StatusServiceUnavailable {
		p.header = http.Header{"Retry-After": {strconv.Itoa(ra)}}
	}
	if x.verdict.private != "" && status == http.StatusNotFound && x.mode == wire.ModeReverse {
		p.lines = append(p.lines, fmt.Sprintf("%s is private (%s): only upstreams marked private are asked", x.req.Module, x.verdict.private))
	}
	if code == wire.Loop {
		p.decision = wire.DecisionLoop
	}
	if status >= 500 {
		x.s.log.Warn("no upstream could serve", "kind", x.req.Kind, "module", x.req.Module, "version", x.req.Version, "status", status, "attempts", attemptsAttr(res.Attempts))
	}
	return p
}

// chainMessages say, after the request, why a walk of the chain that
// ended with the code had no answer.
var chainMessages = map[wire.Code]string{
	wire.Loop:             "request loop: an upstream leads back to a modgate this request already passed",
	wire.Off:              "module lookup disabled by GOPROXY=off in modgate's upstream chain",
	wire.Direct:           "not found upstream; the chain ends in direct: fetch it from its origin (GOPROXY=<modgate>,direct)",
	wire.NotFound:         "not found in any upstream",
	wire.BadUpstream:      "the upstream's answer is not what the module proxy protocol allows; not relayed, not kept",
	wire.ChecksumMismatch: "the upstream's answer is not what the checksum database vouches for; not relayed, not kept",
}

// chainCode is the error code of a walk that had no answer, as Status
// ranks it.
func chainCode(res upstream.Result) wire.Code {
	switch status := res.Status(); {
	case status == http.StatusLoopDetected:
		return wire.Loop
	case status == http.StatusForbidden:
		return wire.Off
	case status == http.StatusNotFound && res.End == upstream.Direct:
		return wire.Direct
	case status == http.StatusNotFound:
		return wire.NotFound
	case status == http.StatusServiceUnavailable:
		return wire.CircuitOpen
	case status == http.StatusGatewayTimeout:
		return wire.Timeout
	}
	return wire.UpstreamFailed
}

// attemptsAttr is what each upstream did, for a log line.
func attemptsAttr(as []upstream.Attempt) slog.Value {
	ss := make([]string, len(as))
	for i, a := range as {
		ss[i] = a.String()
	}
	return slog.StringValue(strings.Join(ss, "; "))
}
