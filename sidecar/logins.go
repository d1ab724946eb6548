package sidecar

import (
	"fmt"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// Failed logins are rate-limited per client address: a token bucket that
// holds loginBurst failures and refills one every loginRefill. A client
// whose bucket is empty gets 429 without its credentials being checked, so
// guessing a password costs the guesser time, not modgate CPU.
const (
	loginBurst   = 10
	loginRefill  = 6 * time.Second // 10 a minute
	loginClients = 4096            // addresses remembered; the stalest go first
)

// loginLimiter is the buckets of the clients that failed a login lately.
type loginLimiter struct {
	clock wire.Clock

	mu      sync.Mutex
	buckets map[string]*loginBucket
}

type loginBucket struct {
	tokens float64
	last   time.Time
}

func newLoginLimiter(clock wire.Clock) *loginLimiter {
	return &loginLimiter{clock: clock, buckets: map[string]*loginBucket{}}
}

// refill brings b up to date and returns it; callers hold l.mu.
func (l *loginLimiter) refill(client string) *loginBucket {
	now := l.clock.Now()
	b := l.buckets[client]
	if b == nil {
		return &loginBucket{tokens: loginBurst, last: now}
	}
	b.tokens = min(loginBurst, b.tokens+float64(now.Sub(b.last))/float64(loginRefill))
	b.last = now
	if b.tokens >= loginBurst {
		delete(l.buckets, client) // full again: nothing to remember
	}
	return b
}

// blocked returns the 429 for a client that has no failures left, or nil.
func (l *loginLimiter) blocked(client string) *problem {
	l.mu.Lock()
	defer l.mu.Unlock()
	return tooMany(client, l.refill(client))
}

func tooMany(client string, b *loginBucket) *problem {
	if b.tokens >= 1 {
		return nil
	}
	wait := time.Duration((1-b.tokens)*float64(loginRefill)).Round(time.Second) + time.Second
	return deny(wire.TooManyLogins, "too many failed logins from "+client,
		fmt.Sprintf("too many failed logins from %s; credentials are not checked for %s", client, wait),
		"fix the user and password, then retry").retryAfter(int(wait.Seconds()))
}

// take takes one token from client's bucket before its credentials are
// checked, or returns the 429 when none is left: a check counts as failed
// until refund says otherwise, so that concurrent guesses from one
// address get no more checks than the bucket holds.
func (l *loginLimiter) take(client string) *problem {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(client)
	if p := tooMany(client, b); p != nil {
		return p
	}
	b.tokens--
	if _, ok := l.buckets[client]; !ok {
		if len(l.buckets) >= loginClients {
			l.forgetStalest()
		}
		l.buckets[client] = b
	}
	return nil
}

// refund gives back the token of a check that succeeded (or was never
// made).
func (l *loginLimiter) refund(client string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[client]; ok {
		b.tokens = min(loginBurst, b.tokens+1)
	}
}

// forgetStalest drops the bucket that failed longest ago.
func (l *loginLimiter) forgetStalest() {
	var stalest string
	var at time.Time
	for c, b := range l.buckets {
		if stalest == "" || b.last.Before(at) {
			stalest, at = c, b.last
		}
	}
	delete(l.buckets, stalest)
}
