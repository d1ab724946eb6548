package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is this replica's claim on an artifact: while it holds it, the
// other replicas wait for it instead of fetching the artifact too.
type Lease struct {
	f     *Fleet
	rkey  string // the Redis key (hashed)
	hash  string
	token string
	ttl   time.Duration
	once  sync.Once

	stopKeep  chan struct{} // closed by Release: KeepAlive's renewals stop
	keepDone  chan struct{}
	keepStart sync.Once
}

// ErrStored is Lease's answer when the last holder of the lease stored
// the artifact moments ago (Lease.Stored): the caller takes it from the
// shared store instead of fetching it.
var ErrStored = errors.New("fleet: another replica stored it just now")

// ErrHeld is Lease's answer when another replica holds the lease: the
// caller waits for it (Wait) instead of fetching the artifact too.
var ErrHeld = errors.New("fleet: another replica holds the lease")

// storedFor is how long Lease answers ErrStored after Lease.Stored: long
// enough for a replica that missed the artifact in the store just before
// it was written, and asks for the lease just after.
const storedFor = time.Minute

// leaseScript answers 2 when the artifact was stored just now, else takes
// the lease (1) unless another replica holds it (0).
var leaseScript = redis.NewScript(`
if redis.call("GET", KEYS[2]) == ARGV[3] then
	return 2
end
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
	return 1
end
return 0
`)

// Lease tries to take the lease on key (an artifact key such as
// "example.test/m/@v/v1.0.0.zip") for ttl. It returns the lease if this
// replica got it, ErrHeld if another replica holds it, ErrStored if
// the last holder stored the artifact just now, and another error if
// Redis could not be asked (the caller then fetches by itself). The key
// is stored hashed: module paths may be private.
func (f *Fleet) Lease(ctx context.Context, key string, ttl time.Duration) (*Lease, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("fleet: lease ttl %v: must be positive", ttl)
	}
	h := f.hashKey(key)
	l := &Lease{f: f, rkey: f.key("lease", h), hash: h, token: f.leaseToken(h), ttl: ttl,
		stopKeep: make(chan struct{}), keepDone: make(chan struct{})}
	var got int64
	err := f.do(ctx, func(ctx context.Context) error {
		var err error
		got, err = leaseScript.Run(ctx, f.rdb, []string{l.rkey, f.key("stored", h)}, l.token, ttl.Milliseconds(), f.storedMark(h)).Int64()
		return err
	})
	switch {
	case err != nil:
		return nil, err
	case got == 2:
		return nil, ErrStored
	case got == 0:
		return nil, ErrHeld
	}
	f.leases.Add(1)
	return l, nil
}

// releaseScript deletes the lease only if it is still the caller's (it
// may have expired and been taken by another replica), marks the artifact
// stored (with the signed mark ARGV[5]) when ARGV[4] (milliseconds) is
// not 0, and then tells the waiters (with the signed note ARGV[3]).
var releaseScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	if tonumber(ARGV[4]) > 0 then
		redis.call("SET", KEYS[2], ARGV[5], "PX", ARGV[4])
	end
	redis.call("DEL", KEYS[1])
	redis.call("PUBLISH", ARGV[2], ARGV[3])
	return 1
end
return 0
`)

// Stored is Release for a holder that put the artifact in the shared
// store: for a while, Lease answers ErrStored for it.
func (l *Lease) Stored() { l.release(storedFor) }

// Release gives the lease up, if it is still this replica's, and wakes
// the replicas waiting for it. It is best effort and bounded in time (a
// lease not released expires with its ttl); calls after the first do
// nothing.
func (l *Lease) Release() { l.release(0) }

func (l *Lease) release(stored time.Duration) {
	l.once.Do(func() {
		close(l.stopKeep)
		l.keepStart.Do(func() { close(l.keepDone) }) // KeepAlive never started
		<-l.keepDone                                 // no renewal after the delete
		f := l.f
		err := f.do(context.Background(), func(ctx context.Context) error {
			return releaseScript.Run(ctx, f.rdb, []string{l.rkey, f.key("stored", l.hash)}, l.token, f.key("release", "leases"), f.releaseNote(l.hash), stored.Milliseconds(), f.storedMark(l.hash)).Err()
		})
		if err != nil {
			f.log.Debug("fleet: lease not released; it expires with its ttl", "error", err)
		}
	})
}

// renewScript extends the lease only if it is still the caller's.
var renewScript = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

// KeepAlive renews the lease every third of its ttl until Release, so
// that a short ttl can bound how long the others wait for a replica that
// died holding it, while a live one keeps it through a long fetch. It
// stops early when the lease is lost (expired and taken, or Redis down):
// the worst that follows is a second fetch of the artifact.
func (l *Lease) KeepAlive() {
	l.keepStart.Do(func() {
		go func() {
			defer close(l.keepDone)
			for {
				tick, stop := l.f.clock.After(l.ttl / 3)
				select {
				case <-l.stopKeep:
					stop()
					return
				case <-tick:
				}
				var kept int64
				err := l.f.do(context.Background(), func(ctx context.Context) error {
					var err error
					kept, err = renewScript.Run(ctx, l.f.rdb, []string{l.rkey}, l.token, l.ttl.Milliseconds()).Int64()
					return err
				})
				if err != nil || kept == 0 {
					l.f.log.Debug("fleet: lease lost; another replica may fetch the artifact too", "error", err)
					return
				}
			}
		}()
	})
}

// Wait waits until the lease on key is released or has expired, and
// returns nil then (the artifact is in the shared store, or its fetcher
// gave up). It returns ctx's error when ctx ends first, and another error
// when Redis fails: the caller then fetches by itself. It is woken by the
// release's pub/sub message, and checks the lease every pollEvery (and at
// its expiry) in case a message was lost.
func (f *Fleet) Wait(ctx context.Context, key string) error {
	f.waits.Add(1)
	w := f.watcher()
	if w == nil {
		return errors.New("fleet: closed")
	}
	h := f.hashKey(key)
	wake := w.add(h)
	defer w.remove(h, wake)
	rkey := f.key("lease", h)
	for {
		var left time.Duration
		var holder string
		err := f.do(ctx, func(ctx context.Context) error {
			var get *redis.StringCmd
			var pttl *redis.DurationCmd
			_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				get, pttl = p.Get(ctx, rkey), p.PTTL(ctx, rkey)
				return nil
			})
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
			holder, left = get.Val(), pttl.Val()
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				f.waitTimeout.Add(1)
			}
			return err
		}
		if left == -2 || left == 0 {
			return nil // no such key (PTTL's -2), or expiring now
		}
		if !f.validLease(h, holder) {
			// Not a lease a replica took: nothing to wait for.
			f.reject("lease", fmt.Errorf("fleet: lease value not signed with the fleet's secret"))
			return nil
		}
		next := pollEvery
		if left > 0 && left < next {
			next = left + time.Millisecond
		}
		timer, stop := f.clock.After(next)
		select {
		case <-wake:
			stop()
		case <-timer:
		case <-ctx.Done():
			stop()
			f.waitTimeout.Add(1)
			return ctx.Err()
		}
	}
}

// watcher returns the fleet's release watcher, starting it on first use,
// or nil once the fleet is closed.
func (f *Fleet) watcher() *watcher {
	f.watchOnce.Do(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.closed {
			f.watch = startWatcher(f)
		}
	})
	return f.watch
}

// watcher is one subscription, shared by every Wait of the process, to
// the channel on which releases are published. It wakes the waiters of
// the released key, and every waiter when it (re)subscribes: a release
// made while it was not subscribed is then seen by the waiter's check.
type watcher struct {
	f    *Fleet
	ps   *redis.PubSub
	done chan struct{}

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func startWatcher(f *Fleet) *watcher {
	w := &watcher{
		f:       f,
		ps:      f.rdb.Subscribe(context.Background(), f.key("release", "leases")),
		done:    make(chan struct{}),
		waiters: map[string]map[chan struct{}]struct{}{},
	}
	ch := w.ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second))
	go func() {
		defer close(w.done)
		for m := range ch {
			switch m := m.(type) {
			case *redis.Subscription:
				w.wakeAll()
			case *redis.Message:
				if h, ok := f.releasedHash(m.Payload); ok {
					w.wakeKey(h)
				} else {
					f.reject("lease release note", errBadSignature)
				}
			}
		}
	}()
	return w
}

func (w *watcher) add(h string) chan struct{} {
	c := make(chan struct{}, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiters[h] == nil {
		w.waiters[h] = map[chan struct{}]struct{}{}
	}
	w.waiters[h][c] = struct{}{}
	return c
}

func (w *watcher) remove(h string, c chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiters[h], c)
	if len(w.waiters[h]) == 0 {
		delete(w.waiters, h)
	}
}

// wakeKey wakes the waiters for the lease of hash h.
func (w *watcher) wakeKey(h string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	notify(w.waiters[h])
}

// wakeAll wakes every waiter, to check its lease again.
func (w *watcher) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, cs := range w.waiters {
		notify(cs)
	}
}

func notify(cs map[chan struct{}]struct{}) {
	for c := range cs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) stop() {
	w.ps.Close()
	<-w.done
}
