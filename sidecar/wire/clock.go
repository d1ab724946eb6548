package wire

import (
	"context"
	"time"
)

// Clock tells time and makes timers for everything in modgate that waits
// or compares times (breakers, retry back-off, budgets, hedging, tunnels'
// idle timeouts, cache ages, baselines, the fleet's leases and news), so
// that tests move time instead of sleeping or comparing wall clocks.
// sidecar/modtest.Clock is the fake one.
type Clock interface {
	Now() time.Time
	// Sleep waits for d, or until ctx is done and then returns its error.
	Sleep(ctx context.Context, d time.Duration) error
	// After returns a channel that receives the time once d has passed,
	// and a func that stops the timer (true if it had not fired).
	After(d time.Duration) (c <-chan time.Time, stop func() bool)
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After is time.NewTimer.
func (SystemClock) After(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Sleep waits for d or until ctx is done.
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
