// Package fleet lets the replicas of modgate coordinate through Redis
// (issue #18): a lease per artifact, so that one replica of the fleet
// fetches it from upstream while the others wait for it, and news of
// upstream breakers, so that an upstream one replica found broken is
// treated as open by all of them.
//
// Redis is an optimisation, never a dependency: when it is slow or down,
// every call fails fast (short socket timeouts, and a circuit breaker that
// answers ErrUnavailable at once after a few failures) and the caller does
// what it would do alone.
package fleet

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/sony/gobreaker/v2"

	"github.com/modgate/modgate/sidecar/wire"
)

// Config says how to reach Redis. It is plain data, filled by the CLI.
type Config struct {
	// URL is redis://[user:pass@]host:port/db or rediss://... (TLS), as
	// redis.ParseURL reads it.
	URL string
	// Password, if set, is Redis's password (or the ACL user's, whose
	// name is the URL's user), read from fleet.password_file so that it
	// need not be in the URL: it replaces the URL's.
	Password string
	// Secret is the fleet's shared secret (fleet.secret_file), at least
	// MinSecret bytes: news, leases and artifact keys are signed or
	// hashed with it (see sign.go). Required.
	Secret []byte
	// RootCAs verifies a rediss:// server's certificate (tls_ca_file, for
	// an internal CA). If nil, the system pool.
	RootCAs *x509.CertPool
	// Replica identifies this replica in leases and news. If empty, a
	// random id is used.
	Replica string
	// Logger receives Redis going down and coming back (info) and failed
	// news (debug). If nil, logs are discarded.
	Logger *slog.Logger
	// Prefix starts every key and channel name. If empty, "modgate:".
	Prefix string
	// BackOff is how long Redis is treated as unavailable, without being
	// asked, after a few calls in a row failed. If zero, 3s.
	BackOff time.Duration
	// Clock tells time to news (when it was sent, how long an open
	// breaker lasts), leases' renewal and waits, and Status. If nil,
	// wire.SystemClock. Redis keeps its own time for keys' TTLs.
	Clock wire.Clock
}

// Timeouts of the Redis client: Redis is on the same network, and a
// replica that cannot have an answer this quickly is better off alone.
const (
	ioTimeout = 500 * time.Millisecond // dial, read, write
	opTimeout = time.Second            // one call, retry included
	// tripAfter failures in a row open the breaker around Redis.
	tripAfter = 3
	// pollEvery is the safety net of Wait under its pub/sub wake-ups.
	pollEvery = 500 * time.Millisecond
)

// ErrUnavailable is returned (wrapped) while the breaker around Redis is
// open: recent calls failed, and Redis is not asked again for a while.
var ErrUnavailable = errors.New("redis unavailable")

// Fleet is this replica's link to the others. Its methods are safe for
// concurrent use.
type Fleet struct {
	rdb      *redis.Client
	replica  string
	prefix   string
	log      *slog.Logger
	url      string // redacted
	password string // to scrub from error texts
	secret   []byte
	clock    wire.Clock
	cb       *gobreaker.CircuitBreaker[struct{}]

	watchOnce sync.Once
	watch     *watcher

	mu     sync.Mutex
	subs   map[*subscription]struct{}
	closed bool

	up          atomic.Bool
	errMu       sync.Mutex
	lastErr     string
	lastErrAt   time.Time
	leases      atomic.Int64
	waits       atomic.Int64
	waitTimeout atomic.Int64
	newsSent    atomic.Int64
	newsRecv    atomic.Int64
	rejected    atomic.Int64 // news, lease values and release notes that did not verify
}

// Open returns the fleet that cfg describes. It does not talk to Redis:
// a fleet opened while Redis is down works once Redis is up.
func Open(cfg Config) (*Fleet, error) {
	opt, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if len(cfg.Secret) < MinSecret {
		return nil, fmt.Errorf("fleet: the fleet's secret (fleet.secret_file) has %d bytes; want at least %d, the same on every replica (e.g. openssl rand -hex 32)", len(cfg.Secret), MinSecret)
	}
	if cfg.Password != "" {
		opt.Password = cfg.Password
	}
	if opt.TLSConfig != nil && cfg.RootCAs != nil {
		opt.TLSConfig.RootCAs = cfg.RootCAs
	}
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = ioTimeout, ioTimeout, ioTimeout
	opt.ContextTimeoutEnabled = true
	opt.DialerRetries = 1
	opt.MaxRetries = 1 // a pooled connection that died with a restarted Redis
	opt.PoolTimeout = ioTimeout
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	f := &Fleet{
		replica:  cfg.Replica,
		prefix:   cfg.Prefix,
		log:      cfg.Logger,
		url:      redactURL(cfg.URL),
		password: opt.Password,
		secret:   append([]byte(nil), cfg.Secret...),
		clock:    cfg.Clock,
		subs:     map[*subscription]struct{}{},
	}
	if f.clock == nil {
		f.clock = wire.SystemClock{}
	}
	if f.replica == "" {
		f.replica = randomHex(8)
	}
	if f.prefix == "" {
		f.prefix = "modgate:"
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	backOff := cfg.BackOff
	if backOff <= 0 {
		backOff = 3 * time.Second
	}
	f.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1,
		Timeout:     backOff,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= tripAfter },
		IsExcluded:  func(err error) bool { return errors.As(err, new(callerGone)) },
		IsSuccessful: func(err error) bool {
			return err == nil || errors.Is(err, redis.Nil)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			f.log.Info("fleet: redis breaker "+to.String(), "from", from.String(), "redis", f.url)
		},
	})
	f.rdb = redis.NewClient(opt)
	return f, nil
}

// CheckURL says what is wrong with a Redis URL, as Open would, without
// opening anything.
func CheckURL(rawURL string) error {
	_, err := parseURL(rawURL)
	return err
}

// parseURL reads a Redis URL as redis.ParseURL does, with errors that do
// not show its password.
func parseURL(rawURL string) (*redis.Options, error) {
	if rawURL == "" {
		return nil, errors.New("fleet: no Redis URL")
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		// url.Parse's error repeats the URL, password and all.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("fleet: redis URL %q: %v", redactURL(rawURL), scrub(err.Error(), passwordOf(rawURL)))
	}
	return opt, nil
}

// Close stops every subscription and Wait's watcher and closes the
// connections to Redis.
func (f *Fleet) Close() error {
	f.mu.Lock()
	f.closed = true
	subs := f.subs
	f.subs = map[*subscription]struct{}{}
	f.mu.Unlock()
	for s := range subs {
		s.stop()
	}
	f.watchOnce.Do(func() {}) // no watcher starts after Close
	if f.watch != nil {
		f.watch.stop()
	}
	return f.rdb.Close()
}

// Replica returns this replica's id.
func (f *Fleet) Replica() string { return f.replica }

// callerGone marks an error caused by the caller's context, which says
// nothing of Redis.
type callerGone struct{ error }

func (e callerGone) Unwrap() error { return e.error }

// do runs one Redis call through the breaker, bounded by opTimeout.
// redis.Nil comes back as is and counts as success.
func (f *Fleet) do(ctx context.Context, call func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := f.cb.Execute(func() (struct{}, error) {
		err := call(cctx)
		if err != nil && !errors.Is(err, redis.Nil) && ctx.Err() != nil {
			return struct{}{}, callerGone{err}
		}
		return struct{}{}, err
	})
	switch {
	case errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests):
		return fmt.Errorf("fleet: %w (%s)", ErrUnavailable, f.lastError())
	case errors.As(err, new(callerGone)):
		return ctx.Err()
	case err == nil || errors.Is(err, redis.Nil):
		f.up.Store(true)
		return err
	}
	f.failed(err)
	return fmt.Errorf("fleet: redis: %s", f.scrub(err.Error()))
}

// failed records a failed exchange with Redis for Status.
func (f *Fleet) failed(err error) {
	f.up.Store(false)
	f.errMu.Lock()
	f.lastErr, f.lastErrAt = f.scrub(err.Error()), f.clock.Now()
	f.errMu.Unlock()
}

func (f *Fleet) lastError() string {
	f.errMu.Lock()
	defer f.errMu.Unlock()
	return f.lastErr
}

func (f *Fleet) scrub(s string) string { return scrub(s, f.password) }

// key is the Redis key of a name in a namespace.
func (f *Fleet) key(kind, name string) string { return f.prefix + kind + ":" + name }

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Status is a snapshot of the fleet for /debug pages.
type Status struct {
	URL         string    `json:"url"` // password hidden
	Replica     string    `json:"replica"`
	Up          bool      `json:"up"` // the last exchange with Redis succeeded (false before the first)
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Counters since Open: leases taken, Wait calls, Waits that ran out
	// of time, news published and news received from other replicas, and
	// messages dropped because they did not verify (unsigned, badly
	// signed or stale news; forged lease values and release notes).
	Leases       int64 `json:"leases_taken"` // not "leases": /debug/upstreams has lease outcomes under that
	Waits        int64 `json:"waits"`
	WaitTimeouts int64 `json:"wait_timeouts"`
	NewsSent     int64 `json:"news_sent"`
	NewsReceived int64 `json:"news_received"`
	Rejected     int64 `json:"rejected"`
}

// Status returns a snapshot of the fleet.
func (f *Fleet) Status() Status {
	f.errMu.Lock()
	last, at := f.lastErr, f.lastErrAt
	f.errMu.Unlock()
	return Status{
		URL: f.url, Replica: f.replica,
		Up:        f.up.Load() && f.cb.State() == gobreaker.StateClosed,
		LastError: last, LastErrorAt: at,
		Leases: f.leases.Load(), Waits: f.waits.Load(), WaitTimeouts: f.waitTimeout.Load(),
		NewsSent: f.newsSent.Load(), NewsReceived: f.newsRecv.Load(), Rejected: f.rejected.Load(),
	}
}

// redactURL hides the password of a Redis URL (and a user name given
// alone, which may be a token); a URL that does not parse loses
// everything between "://" and its last "@".
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.Index(raw, "://"); i >= 0 {
			if j := strings.LastIndex(raw[i+3:], "@"); j >= 0 {
				return raw[:i+3] + "xxxxx" + raw[i+3+j:]
			}
		}
		if strings.Contains(raw, "@") {
			return "(unreadable URL)"
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	} else {
		u.User = url.User("xxxxx")
	}
	return u.String()
}

// passwordOf returns the password of raw, if it parses and has one.
func passwordOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		p, _ := u.User.Password()
		return p
	}
	return ""
}

// scrub hides password wherever it appears in s.
func scrub(s, password string) string {
	if password == "" {
		return s
	}
	return strings.ReplaceAll(s, password, "xxxxx")
}

// Ping asks Redis for PONG (modgate doctor).
func (f *Fleet) Ping(ctx context.Context) error {
	return f.do(ctx, func(ctx context.Context) error { return f.rdb.Ping(ctx).Err() })
}

// LogTo sends the Redis client's own messages (a dial that failed, a
// subscription that reconnects: many a second while Redis is down) to l
// at debug level, instead of standard error. The client's logger is one
// per process, hence a function of its own.
func LogTo(l *slog.Logger) { redis.SetLogger(redisLogger{l}) }

type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}
