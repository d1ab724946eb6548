package telemetry

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics of a fleet: the shared store and the coordination over Redis.
const (
	MetricSharedRequests = "modgate.cache.shared.requests"
	MetricSharedUp       = "modgate.cache.shared.up"
	MetricFleetLeases    = "modgate.fleet.leases"
	MetricFleetNews      = "modgate.fleet.breaker_news"
	MetricFleetRedisUp   = "modgate.fleet.redis.up"
)

// Attributes of the fleet's metrics, all with small fixed value sets.
const (
	AttrSharedTier    = attribute.Key("modgate.cache.shared.tier")    // public, private
	AttrSharedOp      = attribute.Key("modgate.cache.shared.op")      // get, put
	AttrSharedResult  = attribute.Key("modgate.cache.shared.result")  // hit, miss, damaged, error, skipped
	AttrLeaseResult   = attribute.Key("modgate.fleet.lease.result")   // taken, waited, wait_timeout, unavailable
	AttrNewsDirection = attribute.Key("modgate.fleet.news.direction") // sent, received
)

// SharedCount is one series of modgate.cache.shared.requests.
type SharedCount struct {
	Op, Result string
	N          int64
}

// SharedReading is one shared store at a metrics collection.
type SharedReading struct {
	Tier   string // public or private
	Up     bool   // not being skipped for its failures
	Counts []SharedCount
}

// FleetReading is what ObserveFleet reads.
type FleetReading struct {
	Stores []SharedReading
	// Redis is set when the fleet coordinates over Redis; the rest of
	// the fields are only read then.
	Redis   bool
	RedisUp bool
	Leases  map[string]int64 // by result
	News    map[string]int64 // by direction
}

// ObserveFleet makes read the source of the fleet's metrics: requests to
// the shared stores and whether each is up, leases by result, breaker news
// sent and received, and whether Redis is up. Call the returned function
// to stop.
func (t *Telemetry) ObserveFleet(read func() FleetReading) (unregister func() error, err error) {
	if t == nil {
		return func() error { return nil }, nil
	}
	m := t.meter
	requests, err1 := m.Int64ObservableCounter(MetricSharedRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests to the shared store, by operation and result; skipped: the store failed repeatedly and upstreams were asked instead."))
	up, err2 := m.Int64ObservableGauge(MetricSharedUp,
		metric.WithDescription("1 while the shared store is used, 0 while it is skipped for its failures."))
	leases, err3 := m.Int64ObservableCounter(MetricFleetLeases, metric.WithUnit("{lease}"),
		metric.WithDescription("Artifacts missing from every cache: taken (this replica fetched it for the fleet), waited (another replica did), wait_timeout, unavailable (Redis down: fetched without a lease)."))
	news, err4 := m.Int64ObservableCounter(MetricFleetNews, metric.WithUnit("{message}"),
		metric.WithDescription("Breaker news: an upstream's breaker opened or closed in this replica (sent) or another (received); rejected: news, lease values and release notes in Redis that were not signed with fleet.secret_file, or stale, and were dropped."))
	redisUp, err5 := m.Int64ObservableGauge(MetricFleetRedisUp,
		metric.WithDescription("1 while Redis answers, 0 while the fleet falls back to each replica on its own."))
	for _, err := range []error{err1, err2, err3, err4, err5} {
		if err != nil {
			return nil, err
		}
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r := read()
		for _, s := range r.Stores {
			tier := AttrSharedTier.String(s.Tier)
			o.ObserveInt64(up, boolInt(s.Up), metric.WithAttributes(tier))
			for _, c := range s.Counts {
				o.ObserveInt64(requests, c.N, metric.WithAttributes(tier, AttrSharedOp.String(c.Op), AttrSharedResult.String(c.Result)))
			}
		}
		if !r.Redis {
			return nil
		}
		o.ObserveInt64(redisUp, boolInt(r.RedisUp))
		for result, n := range r.Leases {
			o.ObserveInt64(leases, n, metric.WithAttributes(AttrLeaseResult.String(result)))
		}
		for dir, n := range r.News {
			o.ObserveInt64(news, n, metric.WithAttributes(AttrNewsDirection.String(dir)))
		}
		return nil
	}, requests, up, leases, news, redisUp)
	if err != nil {
		return nil, fmt.Errorf("telemetry: observe fleet: %w", err)
	}
	return reg.Unregister, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
