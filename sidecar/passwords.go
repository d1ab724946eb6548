package sidecar

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/modgate/modgate/sidecar/wire"
)

// Password checks cost bcrypt's CPU, which a client must not be able to
// spend at will. Three bounds hold that cost:
//   - a check takes one of its client address's failed-login tokens
//     before it starts (given back when the password is right), so that
//     concurrent guesses from one address get at most loginBurst checks;
//   - concurrent checks with the same credentials from the same address
//     (a build's first hundred requests) share one check;
//   - at most passwordChecks run at once, passwordQueue more wait, and
//     the rest are answered 503 with Retry-After.
//
// A right password is remembered for goodFor, keyed by an HMAC (under a
// key of this process) of the user name and password, so that a build's
// hundreds of requests cost one bcrypt.
const (
	goodFor   = 5 * time.Minute
	goodLimit = 4096 // remembered logins; the oldest go first
)

var (
	passwordChecks = max(2, runtime.GOMAXPROCS(0))
	passwordQueue  = 8 * passwordChecks
)

// compareHash is bcrypt's check; tests count its calls.
var compareHash = bcrypt.CompareHashAndPassword

// passwords is the shared state of password checks.
type passwords struct {
	key   [32]byte      // HMAC key of the remembered logins, random per process
	slots chan struct{} // running checks
	queue atomic.Int64  // checks waiting for a slot

	mu       sync.Mutex
	inflight map[[32]byte]*passwordCall
	good     map[[32]byte]goodLogin
}

type passwordCall struct {
	done chan struct{}
	ok   bool
	p    *problem
}

type goodLogin struct {
	hash    []byte // the hash the password matched: a changed file forgets it
	expires time.Time
}

func newPasswords() *passwords {
	p := &passwords{slots: make(chan struct{}, passwordChecks), inflight: map[[32]byte]*passwordCall{}, good: map[[32]byte]goodLogin{}}
	rand.Read(p.key[:])
	return p
}

// credKey is the HMAC of user and pass: what the cache keys, never the
// password itself or a fast unkeyed hash of it.
func (p *passwords) credKey(user, pass string) [32]byte {
	m := hmac.New(sha256.New, p.key[:])
	fmt.Fprintf(m, "%d:%s:%s", len(user), user, pass)
	var k [32]byte
	m.Sum(k[:0])
	return k
}

// remembered reports whether key logged in lately against hash.
func (p *passwords) remembered(key [32]byte, hash []byte, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.good[key]
	if !ok {
		return false
	}
	if now.After(g.expires) || !hmac.Equal(g.hash, hash) {
		delete(p.good, key)
		return false
	}
	return true
}

func (p *passwords) remember(key [32]byte, hash []byte, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.good) >= goodLimit {
		var oldest [32]byte
		var at time.Time
		first := true
		for k, g := range p.good {
			if first || g.expires.Before(at) {
				oldest, at, first = k, g.expires, false
			}
		}
		delete(p.good, oldest)
	}
	p.good[key] = goodLogin{hash: hash, expires: now.Add(goodFor)}
}

// once runs check for key, or waits for the run already under way for
// it and returns its result.
func (p *passwords) once(key [32]byte, check func() (bool, *problem)) (bool, *problem) {
	p.mu.Lock()
	if c, ok := p.inflight[key]; ok {
		p.mu.Unlock()
		<-c.done
		return c.ok, c.p
	}
	c := &passwordCall{done: make(chan struct{})}
	p.inflight[key] = c
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.inflight, key)
		p.mu.Unlock()
		close(c.done)
	}()
	c.ok, c.p = check()
	return c.ok, c.p
}

// bcrypt compares pass with hash in one of the slots, waiting for one
// (while the queue has room and ctx lasts); a full queue is a 503.
func (p *passwords) bcrypt(ctx context.Context, hash []byte, pass string) (bool, *problem) {
	select {
	case p.slots <- struct{}{}:
	default:
		if p.queue.Add(1) > int64(passwordQueue) {
			p.queue.Add(-1)
			return false, busyLogins()
		}
		select {
		case p.slots <- struct{}{}:
			p.queue.Add(-1)
		case <-ctx.Done():
			p.queue.Add(-1)
			return false, busyLogins()
		}
	}
	defer func() { <-p.slots }()
	return compareHash(hash, []byte(pass)) == nil, nil
}

func busyLogins() *problem {
	return deny(wire.Busy, "too many password checks at once",
		"modgate is checking too many passwords at once; retry in a second").retryAfter(1)
}

// dummyHash is compared against for unknown users at the cost of the
// file's own hashes (the most common one), so that an unknown user takes
// as long as a known one: htpasswd -B's default cost is 5, not bcrypt's
// DefaultCost.
func dummyHash(cost int) []byte {
	h, err := bcrypt.GenerateFromPassword([]byte("modgate: no such user"), cost)
	if err != nil {
		h, _ = bcrypt.GenerateFromPassword([]byte("modgate: no such user"), bcrypt.DefaultCost)
	}
	return h
}

// commonCost is the cost most of hashes have (the higher one on a tie),
// or bcrypt.DefaultCost for none.
func commonCost(hashes map[string][]byte) int {
	counts := map[int]int{}
	best, bestN := bcrypt.DefaultCost, 0
	for _, h := range hashes {
		c, err := bcrypt.Cost(h)
		if err != nil {
			continue
		}
		counts[c]++
		if n := counts[c]; n > bestN || (n == bestN && c > best) {
			best, bestN = c, n
		}
	}
	return best
}
