package modtest

import (
	"context"
	"sync"
	"time"
)

// Clock is a fake clock for code that takes one with Now, Sleep and After
// (sidecar/wire.Clock, which every package takes): time moves only when
// the test calls Advance, Sleep moves it at once instead of waiting, and
// timers from After fire when time passes them. Safe for concurrent use.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	slept  []time.Duration
	timers []*fakeTimer
	armed  *sync.Cond // signalled when a timer is made
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

// NewClock returns a clock that starts at a fixed date.
func NewClock() *Clock {
	c := &Clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	c.armed = sync.NewCond(&c.mu)
	return c
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Sleep advances the clock by d at once and records d; it returns ctx's
// error if ctx is done.
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.slept = append(c.slept, d)
	c.advance(d)
	c.mu.Unlock()
	return ctx.Err()
}

// After returns a channel that receives the clock's time once it has
// moved d past now, and a func that stops the timer.
func (c *Clock) After(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- c.now
		return t.c, func() bool { return false }
	}
	c.timers = append(c.timers, t)
	c.armed.Broadcast()
	return t.c, func() bool { return c.stop(t) }
}

func (c *Clock) stop(t *fakeTimer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Advance moves the clock forward by d, firing the timers it passes.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.advance(d)
	c.mu.Unlock()
}

func (c *Clock) advance(d time.Duration) {
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.c <- c.now
	}
	c.timers = kept
}

// WaitForTimers waits until at least n timers are pending (made by After,
// neither fired nor stopped), for at most limit of real time; it reports
// whether they are. A test uses it to know that the code under test is
// waiting on the clock before it moves time.
func (c *Clock) WaitForTimers(n int, limit time.Duration) bool {
	expired := false
	t := time.AfterFunc(limit, func() {
		c.mu.Lock()
		expired = true
		c.armed.Broadcast()
		c.mu.Unlock()
	})
	defer t.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.timers) < n && !expired {
		c.armed.Wait()
	}
	return len(c.timers) >= n
}

// Slept returns every duration passed to Sleep, in order.
func (c *Clock) Slept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.slept...)
}
