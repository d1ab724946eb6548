package telemetry

import (
	"go.opentelemetry.io/otel/attribute"

	"github.com/modgate/modgate/sidecar/wire"
)

// Attribute keys of the telemetry contract. The data plane uses the same
// keys for span attributes, so that a span and a metric series that describe
// the same thing say so in the same words.
const (
	AttrRequestKind    = attribute.Key("modgate.request.kind")
	AttrMode           = attribute.Key("modgate.mode")
	AttrModulePath     = attribute.Key("modgate.module.path")    // spans only: unbounded
	AttrModuleVersion  = attribute.Key("modgate.module.version") // spans only: unbounded
	AttrPolicyDecision = attribute.Key("modgate.policy.decision")
	AttrPolicyRule     = attribute.Key("modgate.policy.rule")
	AttrCacheResult    = attribute.Key("modgate.cache.result")
	AttrChecksumResult = attribute.Key("modgate.checksum.result")
	AttrUpstreamName   = attribute.Key("modgate.upstream.name")
	AttrBreakerState   = attribute.Key("modgate.breaker.state")
	AttrOutcome        = attribute.Key("modgate.outcome")
	AttrRetryReason    = attribute.Key("modgate.retry.reason")
	AttrDirection      = attribute.Key("modgate.direction")
	AttrHedge          = attribute.Key("modgate.hedge") // sent or won; on a hedged attempt's span: true
	// AttrTunnelBytesUp and AttrTunnelBytesDown are set on the span in the
	// context given to RecordTunnel: the CONNECT span carries the bytes
	// each way.
	AttrTunnelBytesUp   = attribute.Key("modgate.tunnel.bytes_up")
	AttrTunnelBytesDown = attribute.Key("modgate.tunnel.bytes_down")
)

// Outcomes of one upstream attempt, for RecordUpstream. Any other value is
// recorded as "other".
const (
	OutcomeOK       = "ok"
	OutcomeNotFound = "notfound" // 404 or 410: how proxies say "try the next one"
	OutcomeError    = "error"
	OutcomeTimeout  = "timeout"
	OutcomeRejected = "rejected" // not sent: the breaker is open or the retry budget is spent
)

// Directions of tunnel bytes: up is client to origin, down is origin to
// client.
const (
	DirectionUp   = "up"
	DirectionDown = "down"
)

// otherValue replaces any value outside a closed set, or past the cap of an
// open one. It equals wire.KindOther on purpose: one word for "not one of
// ours".
const otherValue = string(wire.KindOther)

// closedSet maps the accepted values of an attribute to themselves, so that
// normalising a value costs one map lookup and no allocation.
type closedSet[V ~string] map[V]struct{}

func newClosedSet[V ~string](values ...V) closedSet[V] {
	s := closedSet[V]{}
	for _, v := range values {
		s[v] = struct{}{}
	}
	return s
}

func (s closedSet[V]) value(v V) string {
	if _, ok := s[v]; ok {
		return string(v)
	}
	return otherValue
}

// The closed sets of the recording methods. Request kinds are wire's
// closed set (wire.Kind.Normal); of the decisions, only policy's own reach
// the decisions metric.
var (
	outcomes     = newClosedSet(OutcomeOK, OutcomeNotFound, OutcomeError, OutcomeTimeout, OutcomeRejected)
	cacheResults = newClosedSet(wire.CacheHit, wire.CacheMiss, wire.CacheStale, wire.CacheShared)
	decisions    = newClosedSet(wire.DecisionAllow, wire.DecisionDeny)
)

// Caps on the number of distinct values an open attribute takes in metrics.
// These values come from configuration, so a real deployment stays far below
// them; the caps only stop a bug (say, a host passed as an upstream name)
// from turning into one series per request.
const (
	maxUpstreams    = 64
	maxRules        = 256
	maxRetryReasons = 32
)

// cappedSet admits the first max distinct values of an attribute and maps
// every later one to "other". The common case, a value seen before, is one
// atomic load and one map lookup.
type cappedSet struct {
	max int
	// names, if set, admits only name-shaped values: a module path or a
	// URL handed over by mistake is "other" from the first request on,
	// not only past the cap.
	names bool
	seen  cowMap[string, struct{}]
}

func (c *cappedSet) value(v string) string {
	if v == "" || (c.names && !nameShaped(v)) {
		return otherValue
	}
	if _, ok := c.seen.getOrAdd(v, c.max, func(string) struct{} { return struct{}{} }); !ok {
		return otherValue
	}
	return v
}

// nameShaped reports whether v looks like a configured name (an upstream
// named after its host, "5xx", "dial-timeout"): short, printable, and
// without the slashes, @ and spaces of paths, URLs and versions.
func nameShaped(v string) bool {
	if len(v) > 100 {
		return false
	}
	for _, r := range v {
		switch {
		case r <= ' ' || r == 0x7f || r == '/' || r == '@' || r == '?' || r == '%' || r > 0x7e:
			return false
		}
	}
	return true
}
