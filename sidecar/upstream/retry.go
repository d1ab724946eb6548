package upstream

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// RetrySettings configure retries against one upstream. A zero field takes
// its value from DefaultRetry().
type RetrySettings struct {
	// Attempts is the most tries of one request, the first included.
	// 1 means no retry.
	Attempts int
	// Base and Cap bound the full-jitter exponential back-off: the wait
	// before try n+1 is random in [0, min(Cap, Base*2^n)). Cap also bounds
	// how long a Retry-After is honoured: a longer one fails over instead.
	Base, Cap time.Duration
	// BudgetRatio caps retries at that share of the requests of the last
	// window (at least minRetryBudget), so a storm of failures is not
	// multiplied.
	BudgetRatio float64
	// Window is the budget's window. If zero, the breaker's window is used.
	Window time.Duration
}

// DefaultRetry returns the retry settings of an upstream whose config
// gives none: one retry, soon, and retries at most a fifth of the traffic.
func DefaultRetry() RetrySettings {
	return RetrySettings{Attempts: 2, Base: 100 * time.Millisecond, Cap: 2 * time.Second, BudgetRatio: 0.2}
}

// minRetryBudget retries are allowed in any window, so that a lone failure
// on a quiet upstream is still retried.
const minRetryBudget = 3

func (s RetrySettings) withDefaults(window time.Duration) RetrySettings {
	d := DefaultRetry()
	return RetrySettings{
		Attempts:    positiveOr(s.Attempts, d.Attempts),
		Base:        positiveOr(s.Base, d.Base),
		Cap:         positiveOr(s.Cap, d.Cap),
		BudgetRatio: positiveOr(s.BudgetRatio, d.BudgetRatio),
		Window:      positiveOr(s.Window, window),
	}
}

// positiveOr returns v when it is set (positive), else def.
func positiveOr[T int | uint32 | float64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// statusError is a try that got an answer the breaker counts as a failure.
type statusError struct{ code int }

func (e *statusError) Error() string {
	return strconv.Itoa(e.code) + " " + http.StatusText(e.code)
}

// errClientCanceled marks a try that ended because the client went away.
var errClientCanceled = errors.New("client canceled")

// isFailureStatus reports whether status says the upstream is unwell:
// 5xx and 429. 404 and 410 are how proxies say "try the next one".
func isFailureStatus(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}

// retryable reports whether a failed try may be tried again on the same
// upstream. A timeout is not: the chain can fail over sooner than a second
// wait would end.
func retryable(status int, err error) bool {
	if err != nil {
		var ce *CredentialsError // the same credentials would fail the same way
		return !isTimeout(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, errRedirect) && !errors.Is(err, ErrRefused) && !errors.As(err, &ce)
	}
	switch status {
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported, http.StatusLoopDetected:
		return false
	}
	return isFailureStatus(status)
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, t.Sub(now)), true
	}
	return 0, false
}

// backoff is the full-jitter wait before try n+1 (n from 0).
func (s RetrySettings) backoff(n int) time.Duration {
	ceiling := s.Cap
	if n < 30 && s.Base<<n < s.Cap {
		ceiling = s.Base << n
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

// budget counts requests and retries in fixed windows of the clock and
// allows a retry while retries stay within the ratio of the previous and
// current window's requests.
type budget struct {
	ratio  float64
	window time.Duration
	clock  wire.Clock

	mu                     sync.Mutex
	start                  time.Time // of the current window
	requests, retries      int
	prevRequests, prevRetr int
}

func (b *budget) roll(now time.Time) {
	if b.start.IsZero() {
		b.start = now.Truncate(b.window)
	}
	for now.Sub(b.start) >= b.window {
		b.prevRequests, b.prevRetr = b.requests, b.retries
		b.requests, b.retries = 0, 0
		b.start = b.start.Add(b.window)
		if now.Sub(b.start) >= b.window { // idle for more than a window
			b.prevRequests, b.prevRetr = 0, 0
			b.start = now.Truncate(b.window)
		}
	}
}

func (b *budget) onRequest() {
	b.mu.Lock()
	b.roll(b.clock.Now())
	b.requests++
	b.mu.Unlock()
}

// allowRetry takes one retry from the budget if there is one.
func (b *budget) allowRetry() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(b.clock.Now())
	limit := max(minRetryBudget, int(b.ratio*float64(b.requests+b.prevRequests)))
	if b.retries+b.prevRetr >= limit {
		return false
	}
	b.retries++
	return true
}
