package sidecar

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// Hedging: a request for an immutable artifact whose first upstream has
// not sent headers within that upstream's usual p95 also goes to the next
// eligible upstream; the first good answer wins.
const (
	hedgeFloor      = 50 * time.Millisecond // never hedge sooner
	hedgeMinSamples = 20                    // a p95 needs this many requests behind it
	hedgeRatio      = 0.1                   // at most this share of requests is hedged...
	hedgeBurst      = 10                    // ...after a burst of this many
)

// hedgeBudget is a token bucket that starts full: each request earns
// hedgeRatio of a token, each hedge spends one, and at most hedgeBurst are
// saved up. Over any stretch of load, hedges stay within 10% of requests
// plus the burst. It keeps the tokens missing from a full bucket, so that
// its zero value is full.
type hedgeBudget struct {
	mu      sync.Mutex
	missing float64
}

func (b *hedgeBudget) earn() {
	b.mu.Lock()
	b.missing = max(0, b.missing-hedgeRatio)
	b.mu.Unlock()
}

func (b *hedgeBudget) spend() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.missing+1 > hedgeBurst {
		return false
	}
	b.missing++
	return true
}

// walk asks the chain for an artifact, hedging immutable ones.
func (s *Server) walk(ctx context.Context, x *exchange, path string, hdr http.Header, check upstream.Check) upstream.Result {
	opts := upstream.WalkOptions{Skip: x.eligible, Check: check}
	// Not an immutable artifact, or no telemetry: no baselines to hedge on.
	if opts.Hedge = s.hedgers[x.req.Kind]; opts.Hedge != nil {
		s.hedges.earn()
	}
	return s.chain.WalkWith(ctx, http.MethodGet, path, hdr, opts)
}

// newHedgers returns the hedging of each immutable kind, made once: the
// delay is the upstream's p95 for that kind, at least hedgeFloor.
func (s *Server) newHedgers() map[wire.Kind]*upstream.Hedge {
	if s.tel == nil {
		return nil
	}
	hedgers := map[wire.Kind]*upstream.Hedge{}
	for _, kind := range []wire.Kind{wire.KindInfo, wire.KindMod, wire.KindZip} {
		hedgers[kind] = &upstream.Hedge{
			Delay: func(u *upstream.Upstream) time.Duration {
				p95, n := s.tel.UpstreamQuantile(u.Name, kind, 0.95)
				if n < hedgeMinSamples {
					return 0
				}
				return max(p95, hedgeFloor)
			},
			Allow: s.hedges.spend,
			Sent:  func(ctx context.Context, u *upstream.Upstream) { s.tel.AddHedge(ctx, u.Name, false) },
			Won:   func(ctx context.Context, u *upstream.Upstream) { s.tel.AddHedge(ctx, u.Name, true) },
			Mark: func(ctx context.Context) context.Context {
				return telemetry.WithClientAttributes(ctx, attribute.Bool(string(telemetry.AttrHedge), true))
			},
		}
	}
	return hedgers
}
