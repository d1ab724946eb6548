package wire

// Mode is how a request reached modgate, as the audit log's mode field
// and the modgate.mode span attribute spell it.
type Mode string

// The modes.
const (
	ModeReverse Mode = "reverse" // origin-form: modgate is the GOPROXY
	ModeForward Mode = "forward" // absolute-form or CONNECT: modgate is the HTTP(S)_PROXY
	ModeMITM    Mode = "mitm"    // a request inside an intercepted CONNECT
)

// Decision is what became of a request at the gate, as the audit log's
// decision field, the modgate.policy.decision span attribute and the
// modgate.policy.decisions metric spell it.
type Decision string

// The decisions. Policy decides allow or deny; a guard's refusal is also
// deny; a request that does not parse is invalid; a request that came back
// to modgate is loop. A request policy allowed stays allow whatever the
// upstreams then did: its status says that.
const (
	DecisionAllow   Decision = "allow"
	DecisionDeny    Decision = "deny"
	DecisionInvalid Decision = "invalid"
	DecisionLoop    Decision = "loop"
)

// CacheResult is what a cache lookup found, as the modgate.cache.result
// attribute and the modgate.cache.requests metric spell it.
type CacheResult string

// The cache results.
const (
	CacheHit   CacheResult = "hit"
	CacheMiss  CacheResult = "miss"
	CacheStale CacheResult = "stale"
	// CacheShared: not in the local cache, served from the shared store.
	CacheShared CacheResult = "shared"
)
