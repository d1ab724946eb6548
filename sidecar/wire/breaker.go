package wire

import "fmt"

// BreakerState is a circuit breaker's state, numbered as the
// modgate.upstream.breaker.state gauge reports it.
type BreakerState int

// The breaker states.
const (
	Closed   BreakerState = 0
	HalfOpen BreakerState = 1
	Open     BreakerState = 2
)

func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}
