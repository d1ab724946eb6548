package sidecar

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/modgate/modgate/sidecar/fleet"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// A fleet is many modgates (a sidecar per build pod, or replicas behind a
// Service) that share a store (CacheConfig.Shared) and coordinate through
// Redis (Config.Fleet): one replica fetches an artifact that every cache
// lacks while the others wait for it to appear in the store, and a breaker
// that opens in one replica is open in all of them for the rest of its
// open period. Redis is only ever an optimisation: when it is down, each
// replica fetches for itself.

// DefaultFleetWait is how long a replica waits for another's fetch.
const DefaultFleetWait = 30 * time.Second

// leaseTTL is how long a lease outlives the replica holding it: it renews
// the lease while it fetches, so the others wait for a live replica up
// to FleetConfig.Wait, and for a dead one no longer than this.
const leaseTTL = 10 * time.Second

// FleetConfig is the coordination of a fleet's replicas.
type FleetConfig struct {
	// Fleet is the replicas' Redis. If nil, each replica is on its own.
	Fleet *fleet.Fleet
	// Wait is how long a replica waits for the replica that took the
	// lease on an artifact; past it, it fetches the artifact itself. If
	// zero, DefaultFleetWait.
	Wait time.Duration
}

func (c FleetConfig) wait() time.Duration {
	if c.Wait > 0 {
		return c.Wait
	}
	return DefaultFleetWait
}

// leaseCounts are the fleet's lease outcomes, for the
// modgate.fleet.leases metric.
type leaseCounts struct {
	taken, waited, waitTimeout, waitEmpty, unavailable atomic.Int64
}

// claim sees to it that one replica of the fleet fetches the artifact: it
// takes the fleet's lease on key, or waits for the replica that holds it
// and copies what that one stored. It returns the func that gives the
// lease up, told whether the artifact is in the store by then, and
// whether the artifact is in the local cache now. Redis being down, the
// wait running out, or the holder giving up leaves the fetch to this
// replica.
func (s *Server) claim(ctx context.Context, t tiers, key string) (release func(stored bool), stored bool) {
	noLease := func(bool) {}
	f := s.cfg.Fleet.Fleet
	if f == nil || t.shared == nil {
		return noLease, false
	}
	wait := s.cfg.Fleet.wait()
	lease, err := f.Lease(ctx, key, min(wait, leaseTTL))
	switch {
	case errors.Is(err, fleet.ErrStored):
		// Its last holder stored it after this replica looked.
		if s.fromStore(ctx, t, key) {
			s.leases.waited.Add(1)
			return noLease, true
		}
		s.leases.waitEmpty.Add(1)
		return noLease, false
	case errors.Is(err, fleet.ErrHeld):
		// Another replica fetches it: wait for that one, below.
	case err != nil:
		s.leases.unavailable.Add(1)
		return noLease, false
	case lease != nil:
		s.leases.taken.Add(1)
		lease.KeepAlive()
		return func(stored bool) {
			if stored {
				lease.Stored()
			} else {
				lease.Release()
			}
		}, false
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	err = f.Wait(wctx, key)
	cancel()
	switch {
	case err == nil && s.fromStore(ctx, t, key):
		s.leases.waited.Add(1)
		return noLease, true
	case err == nil:
		s.leases.waitEmpty.Add(1) // the holder failed, or the store did
	case errors.Is(err, context.DeadlineExceeded):
		s.leases.waitTimeout.Add(1)
	default:
		s.leases.unavailable.Add(1)
	}
	return noLease, false
}

// redisCheckEvery is how often an idle replica checks that Redis answers,
// so that its status, metrics and alerts tell the truth without traffic.
const redisCheckEvery = 2 * time.Second

// watchRedis pings Redis every redisCheckEvery until stop is called.
func (s *Server) watchRedis(f *fleet.Fleet) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(redisCheckEvery)
		defer t.Stop()
		for {
			f.Ping(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// chainNews is the upstream chain's side of breaker news: what this
// replica's breakers do is published, what the others' do is held.
func (s *Server) chainNews(opts *upstream.Options) {
	f := s.cfg.Fleet.Fleet
	if f == nil {
		return
	}
	opts.BreakerNews = func(name string, open bool, until time.Time, reason string) {
		u := s.chainUpstream(name)
		if u == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		f.Publish(ctx, fleet.News{Upstream: u.NewsID(), Open: open, Until: until, Reason: reason})
	}
}

// chainUpstream returns the chain's upstream called name, or nil.
func (s *Server) chainUpstream(name string) *upstream.Upstream {
	if s.chain == nil {
		return nil
	}
	for _, u := range s.chain.Upstreams() {
		if u.Name == name && u.Kind == upstream.Proxy {
			return u
		}
	}
	return nil
}

// heed applies another replica's breaker news to the chain.
func (s *Server) heed(n fleet.News) {
	for _, u := range s.chain.Upstreams() {
		if u.Kind != upstream.Proxy || u.NewsID() != n.Upstream {
			continue
		}
		if n.Open {
			u.HoldOpen(n.Until, n.Reason)
			s.log.Info("upstream held open: its breaker opened in another replica", "upstream", u.Name, "replica", n.Replica, "until", n.Until, "reason", n.Reason)
		} else {
			u.ReleaseHold()
			s.log.Info("upstream hold released: its breaker closed in another replica", "upstream", u.Name, "replica", n.Replica)
		}
	}
}

// fleetReading reads the shared stores, leases and news for the metrics.
func (s *Server) fleetReading() telemetry.FleetReading {
	var r telemetry.FleetReading
	for _, st := range s.sharedStores() {
		sr := telemetry.SharedReading{Tier: st.tier, Up: st.Status().State != "down"}
		for _, c := range st.Counts() {
			sr.Counts = append(sr.Counts, telemetry.SharedCount{Op: c.Op, Result: c.Result, N: c.N})
		}
		r.Stores = append(r.Stores, sr)
	}
	if f := s.cfg.Fleet.Fleet; f != nil {
		fs := f.Status()
		r.Redis, r.RedisUp = true, fs.Up
		r.Leases = map[string]int64{
			"taken": s.leases.taken.Load(), "waited": s.leases.waited.Load(), "wait_timeout": s.leases.waitTimeout.Load(),
			"wait_empty": s.leases.waitEmpty.Load(), "unavailable": s.leases.unavailable.Load(),
		}
		r.News = map[string]int64{"sent": fs.NewsSent, "received": fs.NewsReceived, "rejected": fs.Rejected}
	}
	return r
}

// tieredStore is a shared store and the tier it serves.
type tieredStore struct {
	*store.Store
	tier string // public or private
}

func (s *Server) sharedStores() []tieredStore {
	var out []tieredStore
	if st := s.cacheCfg.Shared; st != nil {
		out = append(out, tieredStore{st, "public"})
	}
	if st := s.cacheCfg.SharedPrivate; st != nil {
		out = append(out, tieredStore{st, "private"})
	}
	return out
}

// fleetStatus is the fleet as /debug/upstreams and the status page show
// it.
type fleetStatus struct {
	Stores []sharedStatus `json:"shared_stores,omitempty"`
	Redis  *redisStatus   `json:"redis,omitempty"`
}

type sharedStatus struct {
	Tier string `json:"tier"`
	store.Status
}

type redisStatus struct {
	fleet.Status
	Leases map[string]int64 `json:"leases"`
}

func (s *Server) fleetStatus() fleetStatus {
	var st fleetStatus
	for _, ts := range s.sharedStores() {
		st.Stores = append(st.Stores, sharedStatus{Tier: ts.tier, Status: ts.Status()})
	}
	if f := s.cfg.Fleet.Fleet; f != nil {
		st.Redis = &redisStatus{Status: f.Status(), Leases: s.fleetReading().Leases}
	}
	return st
}
