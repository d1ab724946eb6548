package telemetry

import (
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
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

// Request kinds (DESIGN.md, "Request classes"). A kind outside this list is
// recorded as KindOther.
const (
	KindList           = "list"
	KindInfo           = "info"
	KindMod            = "mod"
	KindZip            = "zip"
	KindLatest         = "latest"
	KindSumDBSupported = "sumdb-supported"
	KindSumDBLookup    = "sumdb-lookup"
	KindSumDBTile      = "sumdb-tile"
	KindSumDBLatest    = "sumdb-latest"
	KindGoGet          = "go-get"
	KindVCS            = "vcs"
	KindTunnel         = "tunnel"
	KindOther          = "other"
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

// Cache results, for AddCacheRequest. Any other value is recorded as "other".
const (
	CacheHit   = "hit"
	CacheMiss  = "miss"
	CacheStale = "stale"
	// CacheShared: not in the local cache, served from the shared store.
	CacheShared = "shared"
)

// Directions of tunnel bytes: up is client to origin, down is origin to
// client.
const (
	DirectionUp   = "up"
	DirectionDown = "down"
)

// Modes, for the modgate.mode span attribute.
const (
	ModeReverse = "reverse"
	ModeForward = "forward"
	ModeMITM    = "mitm"
)

// otherValue replaces any value outside a closed set, or past the cap of an
// open one. It equals KindOther on purpose: one word for "not one of ours".
const otherValue = "other"

// closedSet maps the accepted values of an attribute to themselves, so that
// normalising a value costs one map lookup and no allocation.
type closedSet map[string]struct{}

func newClosedSet(values ...string) closedSet {
	s := closedSet{}
	for _, v := range values {
		s[v] = struct{}{}
	}
	return s
}

func (s closedSet) value(v string) string {
	if _, ok := s[v]; ok {
		return v
	}
	return otherValue
}

var (
	kinds = newClosedSet(KindList, KindInfo, KindMod, KindZip, KindLatest,
		KindSumDBSupported, KindSumDBLookup, KindSumDBTile, KindSumDBLatest,
		KindGoGet, KindVCS, KindTunnel, KindOther)
	outcomes     = newClosedSet(OutcomeOK, OutcomeNotFound, OutcomeError, OutcomeTimeout, OutcomeRejected)
	cacheResults = newClosedSet(CacheHit, CacheMiss, CacheStale, CacheShared)
	decisions    = newClosedSet(DecisionAllow, DecisionDeny)
)

// Policy decisions, for AddPolicyDecision. Any other value is recorded as
// "other".
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// NormalizeKind returns kind if it is one of the request kinds, else
// KindOther.
func NormalizeKind(kind string) string { return kinds.value(kind) }

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
// atomic load and one map lookup: the map is replaced, never changed.
type cappedSet struct {
	max int
	// names, if set, admits only name-shaped values: a module path or a
	// URL handed over by mistake is "other" from the first request on,
	// not only past the cap.
	names bool
	mu    sync.Mutex // serialises additions
	seen  atomic.Pointer[map[string]struct{}]
}

func (c *cappedSet) value(v string) string {
	if v == "" || (c.names && !nameShaped(v)) {
		return otherValue
	}
	if m := c.seen.Load(); m != nil {
		if _, ok := (*m)[v]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.seen.Load()
	if old != nil {
		if _, ok := (*old)[v]; ok {
			return v
		}
		if len(*old) >= c.max {
			return otherValue
		}
	}
	m := make(map[string]struct{}, 1+lenOf(old))
	if old != nil {
		for k := range *old {
			m[k] = struct{}{}
		}
	}
	m[v] = struct{}{}
	c.seen.Store(&m)
	return v
}

func lenOf(m *map[string]struct{}) int {
	if m == nil {
		return 0
	}
	return len(*m)
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
