package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// News is the news of an upstream's breaker, from one replica to the
// others.
type News struct {
	// Upstream is the identity the caller gives the upstream (its name
	// and a hash of its URL: replicas may name different URLs alike).
	Upstream string `json:"upstream"`
	// Open is true when the breaker opened, false when it closed again.
	Open bool `json:"open"`
	// Until is the end of the open period (Open only).
	Until  time.Time `json:"until,omitzero"`
	Reason string    `json:"reason,omitempty"`
	// Replica is the replica that sent the news; Publish sets it.
	Replica string `json:"replica"`
}

// newsTimeout bounds Publish: news late by more than this is not worth
// holding up the caller.
const newsTimeout = time.Second

// Publish tells the other replicas news of one of this replica's
// breakers: an open breaker is stored (until it closes by itself) for
// replicas that start or reconnect later, and published. It is best
// effort and bounded in time; a failure is logged at debug.
func (f *Fleet) Publish(ctx context.Context, n News) {
	n.Replica = f.replica
	rkey := f.key("breaker", n.Upstream)
	var left time.Duration
	if n.Open {
		if left = n.Until.Sub(f.clock.Now()); left <= 0 {
			return // already over
		}
	} else {
		n.Until = time.Time{}
	}
	body, err := json.Marshal(n)
	if err != nil {
		return
	}
	payload := f.seal("news", f.clock.Now(), string(body))
	ctx, cancel := context.WithTimeout(ctx, newsTimeout)
	defer cancel()
	err = f.do(ctx, func(ctx context.Context) error {
		_, err := f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			if n.Open {
				p.SetArgs(ctx, rkey, payload, redis.SetArgs{TTL: left})
			} else {
				p.Del(ctx, rkey)
			}
			p.Publish(ctx, f.key("news", "breakers"), payload)
			return nil
		})
		return err
	})
	if err != nil {
		f.log.Debug("fleet: breaker news not sent", "upstream", n.Upstream, "open", n.Open, "error", err)
		return
	}
	f.newsSent.Add(1)
}

// subscription is one Subscribe.
type subscription struct {
	ps   *redis.PubSub
	done chan struct{}
	once sync.Once
}

func (s *subscription) stop() {
	s.once.Do(func() {
		s.ps.Close()
		<-s.done
	})
}

// Subscribe calls handle with the news of other replicas' breakers, one
// at a time, until stop is called (or the fleet is closed). Each time it
// (re)connects to Redis, it first hands over the breakers that are open
// now, so that a replica that starts or reconnects late learns of them.
// It reconnects by itself when Redis comes back. The same news may come
// twice (read back as well as published): handle must be idempotent, as
// Upstream.HoldOpen is.
func (f *Fleet) Subscribe(handle func(News)) (stop func()) {
	s := &subscription{
		ps:   f.rdb.Subscribe(context.Background(), f.key("news", "breakers")),
		done: make(chan struct{}),
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		s.ps.Close()
		return func() {}
	}
	f.subs[s] = struct{}{}
	f.mu.Unlock()
	ch := s.ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second))
	go func() {
		defer close(s.done)
		for m := range ch {
			switch m := m.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					f.openNow(handle)
				}
			case *redis.Message:
				n, err := f.readNews(m.Payload, true)
				if err != nil {
					f.reject("breaker news", err)
					continue
				}
				f.deliver(n, handle)
			}
		}
	}()
	return func() {
		f.mu.Lock()
		delete(f.subs, s)
		f.mu.Unlock()
		s.stop()
	}
}

// deliver hands n to handle if another replica sent it.
func (f *Fleet) deliver(n News, handle func(News)) {
	if n.Replica == f.replica {
		return
	}
	f.newsRecv.Add(1)
	handle(n)
}

// openNow hands the breakers that other replicas have open now to handle.
// It asks Redis directly, not through the breaker around Redis: the
// subscription has just (re)connected, so Redis is up.
func (f *Fleet) openNow(handle func(News)) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*opTimeout)
	defer cancel()
	var keys []string
	iter := f.rdb.Scan(ctx, 0, f.key("breaker", "*"), 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		f.failed(err)
		f.log.Debug("fleet: open breakers not read", "error", f.scrub(err.Error()))
		return
	}
	f.up.Store(true)
	if len(keys) == 0 {
		return
	}
	vals, err := f.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		f.failed(err)
		f.log.Debug("fleet: open breakers not read", "error", f.scrub(err.Error()))
		return
	}
	for _, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue // expired since the scan
		}
		n, err := f.readNews(s, false)
		if err != nil {
			f.reject("stored breaker news", err)
			continue
		}
		if !n.Open || !n.Until.After(f.clock.Now()) {
			continue
		}
		f.deliver(n, handle)
	}
}

// readNews verifies and reads a news message: signed with the fleet's
// secret, not from the future, and, when published (not read back from
// its key, where it lives until its breaker closes), not stale.
func (f *Fleet) readNews(msg string, published bool) (News, error) {
	var n News
	body, at, err := f.unseal("news", msg)
	if err != nil {
		return n, err
	}
	now := f.clock.Now()
	if at.After(now.Add(clockSkew)) {
		return n, fmt.Errorf("fleet: news from the future (%s)", at.UTC().Format(time.RFC3339))
	}
	if published && at.Before(now.Add(-newsMaxAge)) {
		return n, fmt.Errorf("fleet: stale news from %s (a replay?)", at.UTC().Format(time.RFC3339))
	}
	if err := json.Unmarshal([]byte(body), &n); err != nil {
		return n, err
	}
	return n, nil
}

// reject counts and logs a message that did not verify.
func (f *Fleet) reject(what string, err error) {
	f.rejected.Add(1)
	f.log.Warn("fleet: "+what+" dropped", "error", err)
}
