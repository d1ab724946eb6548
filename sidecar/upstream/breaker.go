package upstream

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/modgate/modgate/sidecar/wire"
)

// BreakerSettings configure one upstream's circuit breaker. A zero field
// takes its value from DefaultBreaker().
type BreakerSettings struct {
	// ConsecutiveFailures trips the breaker after that many failures in a row.
	ConsecutiveFailures uint32
	// FailureRatio trips the breaker when that share of the requests in
	// Window failed, once there were at least MinRequests.
	FailureRatio float64
	MinRequests  uint32
	Window       time.Duration
	// OpenFor is how long the breaker stays open before it lets probes through.
	OpenFor time.Duration
	// HalfOpenProbes requests may probe at once; that many successes close it.
	HalfOpenProbes uint32
	// Disabled turns the breaker off: every request goes through.
	Disabled bool
}

// DefaultBreaker returns the breaker settings of an upstream whose config
// gives none: open after 5 failures in a row, or half the requests of 30 s
// (10 at least), for 30 s.
func DefaultBreaker() BreakerSettings {
	return BreakerSettings{
		ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 10,
		Window: 30 * time.Second, OpenFor: 30 * time.Second, HalfOpenProbes: 1,
	}
}

func (s BreakerSettings) withDefaults() BreakerSettings {
	d := DefaultBreaker()
	return BreakerSettings{
		ConsecutiveFailures: positiveOr(s.ConsecutiveFailures, d.ConsecutiveFailures),
		FailureRatio:        positiveOr(s.FailureRatio, d.FailureRatio),
		MinRequests:         positiveOr(s.MinRequests, d.MinRequests),
		Window:              positiveOr(s.Window, d.Window),
		OpenFor:             positiveOr(s.OpenFor, d.OpenFor),
		HalfOpenProbes:      positiveOr(s.HalfOpenProbes, d.HalfOpenProbes),
		Disabled:            s.Disabled,
	}
}

// BreakerState is a breaker's state (wire.BreakerState), numbered as the
// modgate.upstream.breaker.state metric reports it.
type BreakerState = wire.BreakerState

// The breaker states.
const (
	Closed   = wire.Closed
	HalfOpen = wire.HalfOpen
	Open     = wire.Open
)

// OpenError is returned for a request that an open breaker refused without
// asking the upstream.
type OpenError struct {
	Upstream string
	Reason   string        // why it opened
	RetryIn  time.Duration // until probes are let through
}

func (e *OpenError) Error() string {
	if e.RetryIn <= 0 {
		return fmt.Sprintf("circuit half-open, a probe is in flight (%s)", e.Reason)
	}
	return fmt.Sprintf("circuit open: %s; probed again in %ds", e.Reason, e.RetryAfterSeconds())
}

// RetryAfterSeconds is RetryIn in whole seconds, rounded up and at least 1,
// as a Retry-After header gives it.
func (e *OpenError) RetryAfterSeconds() int {
	return max(1, int(math.Ceil(e.RetryIn.Seconds())))
}

// errAbandoned is the outcome of a body closed before its end without an
// error: the client went away, which says nothing of the upstream.
var errAbandoned = errors.New("abandoned by the client")

// breaker wraps gobreaker's two-step breaker. gobreaker counts outcomes,
// decides when to trip and admits half-open probes; the open period is kept
// here, on the injected clock, so that tests move time instead of sleeping
// (gobreaker reads time.Now itself, and its own open period is set to a
// nanosecond).
type breaker struct {
	name     string
	settings BreakerSettings
	clock    wire.Clock
	log      *slog.Logger
	describe func(error) string // a failure in words
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]

	openUntil atomic.Int64 // unix nanoseconds on clock; 0 when not open
	// newsUntil is the end of an open period that another replica's
	// breaker reported (HoldOpen), kept apart from this breaker's own.
	newsUntil atomic.Int64 // unix nanoseconds on clock; 0 when not held

	// news, if set, is told of this breaker opening and closing again,
	// in order, by one goroutine at a time (never under gobreaker's lock).
	news func(open bool, until time.Time, reason string)

	mu         sync.Mutex
	reason     string // why it last opened
	newsReason string // why another replica's breaker opened
	tripCause  string // what ReadyToTrip saw
	failures   []Failure
	lastFail   string
	pending    []breakerNews // for news, oldest first
	draining   bool          // a goroutine is delivering pending
}

// breakerNews is one change of state for breaker.news.
type breakerNews struct {
	open   bool
	until  time.Time
	reason string
}

// Failure is a recent failure of an upstream, for /debug/upstreams.
type Failure struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason"`
}

const keepFailures = 10

func newBreaker(name string, s BreakerSettings, clock wire.Clock, log *slog.Logger, describe func(error) string) *breaker {
	b := &breaker{name: name, settings: s, clock: clock, log: log, describe: describe}
	if s.Disabled {
		return b
	}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:         name,
		MaxRequests:  s.HalfOpenProbes,
		Interval:     s.Window,
		BucketPeriod: max(time.Second, s.Window/10),
		Timeout:      time.Nanosecond,
		ReadyToTrip:  b.readyToTrip,
		IsExcluded: func(err error) bool {
			return errors.Is(err, errAbandoned) || errors.Is(err, errClientCanceled) || errors.Is(err, ErrRefused)
		},
		// Called under gobreaker's lock: it must not call back into the
		// breaker, and only records and logs.
		OnStateChange: b.onStateChange,
	})
	return b
}

// readyToTrip is called under gobreaker's lock, after recordFailure.
func (b *breaker) readyToTrip(c gobreaker.Counts) bool {
	s := b.settings
	var cause string
	switch {
	case c.ConsecutiveFailures >= s.ConsecutiveFailures:
		cause = fmt.Sprintf("%d failures in a row", c.ConsecutiveFailures)
	case c.Requests >= s.MinRequests && float64(c.TotalFailures) >= s.FailureRatio*float64(c.Requests):
		cause = fmt.Sprintf("%d of %d requests failed", c.TotalFailures, c.Requests)
	default:
		return false
	}
	b.mu.Lock()
	b.tripCause = cause
	b.mu.Unlock()
	return true
}

func (b *breaker) onStateChange(_ string, from, to gobreaker.State) {
	b.mu.Lock()
	reason := b.lastFail
	if to == gobreaker.StateOpen {
		cause := b.tripCause
		if from == gobreaker.StateHalfOpen {
			cause = "the probe failed"
		}
		reason = fmt.Sprintf("%s (last: %s)", cause, b.lastFail)
		b.reason = reason
		until := b.clock.Now().Add(b.settings.OpenFor)
		b.openUntil.Store(until.UnixNano())
		b.tell(breakerNews{open: true, until: until, reason: reason})
	}
	if to == gobreaker.StateClosed && from == gobreaker.StateHalfOpen {
		b.tell(breakerNews{reason: "a probe succeeded"})
	}
	b.mu.Unlock()
	if to != gobreaker.StateOpen {
		b.openUntil.Store(0)
	}
	if to == gobreaker.StateHalfOpen {
		// gobreaker moves to half-open on its own nanosecond timer; the
		// clock-kept open period has already passed when this is reached.
		return
	}
	b.log.Info("upstream breaker "+to.String(), "upstream", b.name, "from", from.String(), "reason", reason)
}

// tell queues n for b.news and makes sure a goroutine delivers it. It is
// called with b.mu held, under gobreaker's lock: the hook may take its
// time (it talks to other replicas) and must not hold up requests.
func (b *breaker) tell(n breakerNews) {
	if b.news == nil {
		return
	}
	b.pending = append(b.pending, n)
	if !b.draining {
		b.draining = true
		go b.drain()
	}
}

// drain delivers pending news in order until there is none.
func (b *breaker) drain() {
	for {
		b.mu.Lock()
		batch := b.pending
		b.pending = nil
		if len(batch) == 0 {
			b.draining = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		for _, n := range batch {
			b.news(n.open, n.until, n.reason)
		}
	}
}

// hold treats the upstream as open until until, as another replica's
// breaker reported it, whatever this breaker's own state; after until,
// this breaker decides again. A disabled breaker ignores it. until is
// capped at one open period from now: a replica's news cannot keep an
// upstream shut for longer than this replica would itself.
func (b *breaker) hold(until time.Time, reason string) {
	if b.cb == nil {
		return
	}
	if limit := b.clock.Now().Add(b.settings.OpenFor); until.After(limit) {
		until = limit
	}
	b.mu.Lock()
	b.newsReason = reason
	b.mu.Unlock()
	b.newsUntil.Store(until.UnixNano())
}

// releaseHold ends hold's open period (the other replica's breaker closed).
func (b *breaker) releaseHold() { b.newsUntil.Store(0) }

// heldFor is how long hold's open period has left, 0 if none.
func (b *breaker) heldFor() time.Duration {
	if until := b.newsUntil.Load(); until != 0 {
		if left := time.Duration(until - b.clock.Now().UnixNano()); left > 0 {
			return left
		}
	}
	return 0
}

// allow admits a request or refuses it with an *OpenError. The outcome goes
// to b.report with the returned func: nil for success, errAbandoned or
// errClientCanceled for neither.
func (b *breaker) allow() (report func(error), err error) {
	if b.cb == nil {
		return nil, nil
	}
	if until := b.openUntil.Load(); until != 0 {
		if left := time.Duration(until - b.clock.Now().UnixNano()); left > 0 {
			return nil, b.openError(left)
		}
	}
	if left := b.heldFor(); left > 0 {
		b.mu.Lock()
		reason := b.newsReason
		b.mu.Unlock()
		return nil, &OpenError{Upstream: b.name, Reason: heldReason(reason), RetryIn: left}
	}
	report, err = b.cb.Allow()
	if err != nil {
		// Half-open with every probe slot taken: as good as open.
		return nil, b.openError(0)
	}
	return report, nil
}

// report tells gobreaker the outcome of a request that allow admitted,
// remembering failures for /debug/upstreams first.
func (b *breaker) report(done func(error), err error) {
	if done == nil {
		return
	}
	if err != nil && !errors.Is(err, errAbandoned) && !errors.Is(err, errClientCanceled) && !errors.Is(err, ErrRefused) {
		b.recordFailure(err)
	}
	done(err)
}

// heldReason is the reason of an open period that hold set.
func heldReason(reason string) string {
	if reason == "" {
		return "opened by another replica"
	}
	return "opened by another replica: " + reason
}

func (b *breaker) openError(left time.Duration) *OpenError {
	b.mu.Lock()
	defer b.mu.Unlock()
	reason := b.reason
	if reason == "" {
		reason = "probing"
	}
	return &OpenError{Upstream: b.name, Reason: reason, RetryIn: left}
}

func (b *breaker) recordFailure(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastFail = b.describe(err)
	if len(b.failures) == keepFailures {
		copy(b.failures, b.failures[1:])
		b.failures = b.failures[:keepFailures-1]
	}
	b.failures = append(b.failures, Failure{Time: b.clock.Now(), Reason: b.lastFail})
}

// state is the breaker's state as the clock sees it.
func (b *breaker) state() BreakerState {
	if b.cb == nil {
		return Closed
	}
	if until := b.openUntil.Load(); until != 0 && until > b.clock.Now().UnixNano() {
		return Open
	}
	if b.heldFor() > 0 {
		return Open
	}
	switch b.cb.State() {
	case gobreaker.StateOpen:
		return Open
	case gobreaker.StateHalfOpen:
		return HalfOpen
	}
	return Closed
}

// BreakerStatus is a snapshot of a breaker for /debug/upstreams.
type BreakerStatus struct {
	State          string    `json:"state"`
	Requests       uint32    `json:"requests"`
	Failures       uint32    `json:"failures"`
	Consecutive    uint32    `json:"consecutive_failures"`
	OpenReason     string    `json:"open_reason,omitempty"`
	HalfOpenInSecs float64   `json:"half_open_in_seconds,omitempty"`
	Recent         []Failure `json:"recent_failures"`
}

func (b *breaker) status() BreakerStatus {
	st := BreakerStatus{State: b.state().String(), Recent: []Failure{}}
	if b.cb == nil {
		st.State = "disabled"
		return st
	}
	c := b.cb.Counts()
	st.Requests, st.Failures, st.Consecutive = c.Requests, c.TotalFailures, c.ConsecutiveFailures
	var own time.Duration
	if until := b.openUntil.Load(); until != 0 {
		if left := time.Duration(until - b.clock.Now().UnixNano()); left > 0 {
			own = left
			st.HalfOpenInSecs = math.Ceil(left.Seconds())
		}
	}
	held := b.heldFor()
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case own <= 0 && held > 0:
		st.OpenReason = heldReason(b.newsReason)
		st.HalfOpenInSecs = math.Ceil(held.Seconds())
	case st.State != wire.Closed.String():
		st.OpenReason = b.reason
	}
	st.Recent = append(st.Recent, b.failures...)
	return st
}
