package fleet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const artifact = "corp.example.test/secret/m/@v/v1.0.0.zip"

// testSecret is the fleet secret of the tests' replicas.
var testSecret = []byte("test-fleet-secret-0123456789abcdef")

func openFleet(t *testing.T, cfg Config) *Fleet {
	t.Helper()
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	f, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// eventually polls cond every 10ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waiting reports whether f has a Wait registered for key.
func waiting(f *Fleet, key string) bool {
	f.mu.Lock()
	w := f.watch
	f.mu.Unlock()
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiters[f.hashKey(key)]) > 0
}

func TestLeaseOneHolderAndWaitWakesAtRelease(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	ctx := context.Background()

	la, err := a.Lease(ctx, artifact, 10*time.Second)
	if err != nil || la == nil {
		t.Fatalf("A: Lease = %v, %v; want a lease", la, err)
	}
	if lb, err := b.Lease(ctx, artifact, 10*time.Second); lb != nil || !errors.Is(err, ErrHeld) {
		t.Fatalf("B: Lease = %v, %v; want ErrHeld while A holds it", lb, err)
	}
	if la2, err := a.Lease(ctx, artifact, 10*time.Second); la2 != nil || !errors.Is(err, ErrHeld) {
		t.Fatalf("A again: Lease = %v, %v; want ErrHeld (one lease per key)", la2, err)
	}

	done := make(chan time.Time, 1)
	errc := make(chan error, 1)
	go func() {
		err := b.Wait(ctx, artifact)
		done <- time.Now()
		errc <- err
	}()
	eventually(t, 2*time.Second, "B waiting", func() bool { return waiting(b, artifact) })
	// Let the first check and the subscription settle: the wake-up must
	// come from the release, not from the first check.
	time.Sleep(100 * time.Millisecond)
	select {
	case <-done:
		t.Fatalf("Wait returned while A holds the lease: %v", <-errc)
	default:
	}
	released := time.Now()
	la.Release()
	select {
	case at := <-done:
		if err := <-errc; err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if d := at.Sub(released); d > 100*time.Millisecond {
			t.Errorf("Wait returned %v after Release; want within 100ms", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not return after Release")
	}
	if lb, err := b.Lease(ctx, artifact, 10*time.Second); lb == nil || err != nil {
		t.Fatalf("B after release: Lease = %v, %v; want a lease", lb, err)
	}
	if st := b.Status(); st.Waits != 1 || st.Leases != 1 || st.WaitTimeouts != 0 || !st.Up {
		t.Errorf("B status %+v", st)
	}
}

func TestLeaseExpires(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	ctx := context.Background()

	start := time.Now()
	if la, err := a.Lease(ctx, artifact, 300*time.Millisecond); la == nil || err != nil {
		t.Fatalf("A: Lease = %v, %v", la, err)
	}
	// A never releases (it died): B's Wait ends with the ttl.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := b.Wait(wctx, artifact); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("Wait returned after %v, before the ttl (300ms) ran out", d)
	}
	if lb, err := b.Lease(ctx, artifact, time.Second); lb == nil || err != nil {
		t.Fatalf("B after expiry: Lease = %v, %v", lb, err)
	}
}

// A lease kept alive outlives its ttl until it is released: a long
// fetch keeps the others waiting, a dead holder only for one ttl.
func TestLeaseKeepAlive(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	ctx := context.Background()
	la, err := a.Lease(ctx, artifact, 300*time.Millisecond)
	if la == nil || err != nil {
		t.Fatalf("A: Lease = %v, %v", la, err)
	}
	la.KeepAlive()
	wctx, cancel := context.WithTimeout(ctx, time.Second) // three ttls
	defer cancel()
	if err := b.Wait(wctx, artifact); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("B's Wait on a lease kept alive = %v; want its deadline", err)
	}
	if lb, err := b.Lease(ctx, artifact, time.Second); lb != nil || !errors.Is(err, ErrHeld) {
		t.Fatalf("B took a lease kept alive: %v, %v", lb, err)
	}
	la.Release()
	wctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := b.Wait(wctx, artifact); err != nil {
		t.Fatalf("B's Wait after Release: %v", err)
	}
	if lb, err := b.Lease(ctx, artifact, time.Second); lb == nil || err != nil {
		t.Fatalf("B after Release: Lease = %v, %v", lb, err)
	}
}

// A holder that stored the artifact says so as it lets go: a replica that
// missed the artifact in the store just before is told to look again,
// not handed the lease to fetch it a second time. Release alone says
// nothing of the kind.
func TestLeaseStored(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	ctx := context.Background()
	la, err := a.Lease(ctx, artifact, 10*time.Second)
	if la == nil || err != nil {
		t.Fatalf("A: Lease = %v, %v", la, err)
	}
	la.Stored()
	if lb, err := b.Lease(ctx, artifact, 10*time.Second); !errors.Is(err, ErrStored) || lb != nil {
		t.Fatalf("B after A stored it: Lease = %v, %v; want ErrStored", lb, err)
	}
	other := "example.test/other/@v/v1.0.0.zip"
	la, _ = a.Lease(ctx, other, 10*time.Second)
	la.Release()
	if lb, err := b.Lease(ctx, other, 10*time.Second); lb == nil || err != nil {
		t.Fatalf("B after A let go without storing: Lease = %v, %v; want the lease", lb, err)
	}
}

func TestWaitTimesOut(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	if la, err := a.Lease(context.Background(), artifact, 10*time.Second); la == nil || err != nil {
		t.Fatalf("Lease = %v, %v", la, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := a.Wait(ctx, artifact); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v; want the context's deadline", err)
	}
	if st := a.Status(); st.WaitTimeouts != 1 {
		t.Errorf("WaitTimeouts = %d; want 1", st.WaitTimeouts)
	}
}

func TestReleaseKeepsANewHoldersLease(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	raw := srv.client("")
	ctx := context.Background()

	la, err := a.Lease(ctx, artifact, 200*time.Millisecond)
	if la == nil || err != nil {
		t.Fatalf("A: Lease = %v, %v", la, err)
	}
	eventually(t, 2*time.Second, "A's lease expired", func() bool {
		n, _ := raw.Exists(ctx, la.rkey).Result()
		return n == 0
	})
	lb, err := b.Lease(ctx, artifact, 10*time.Second)
	if lb == nil || err != nil {
		t.Fatalf("B: Lease = %v, %v", lb, err)
	}
	la.Release() // late: the lease is B's now
	if v, err := raw.Get(ctx, lb.rkey).Result(); err != nil || v != lb.token {
		t.Fatalf("after A's late Release, the key holds %q, %v; want B's token %q", v, err, lb.token)
	}
	lb.Release()
	if n, _ := raw.Exists(ctx, lb.rkey).Result(); n != 0 {
		t.Errorf("B's Release left the key")
	}
}

func TestLeaseKeyIsHashed(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	raw := srv.client("")
	ctx := context.Background()
	if la, err := a.Lease(ctx, artifact, 10*time.Second); la == nil || err != nil {
		t.Fatalf("Lease = %v, %v", la, err)
	}
	keys, err := raw.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Fatalf("keys %q; want one", keys)
	}
	for _, part := range []string{"corp.example.test", "secret", "v1.0.0"} {
		if strings.Contains(keys[0], part) {
			t.Errorf("key %q holds %q in clear", keys[0], part)
		}
	}
	if want := "modgate:lease:" + a.hashKey(artifact); keys[0] != want {
		t.Errorf("key %q; want %q", keys[0], want)
	}
	if len(a.hashKey(artifact)) != 64 {
		t.Errorf("hash %q is not sha256 hex", a.hashKey(artifact))
	}
}

// inbox collects the news a handler receives.
type inbox struct {
	mu   sync.Mutex
	news []News
}

func (in *inbox) handle(n News) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.news = append(in.news, n)
}

func (in *inbox) all() []News {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]News(nil), in.news...)
}

// has reports whether in received news of upstream with open.
func (in *inbox) has(upstream string, open bool) bool {
	for _, n := range in.all() {
		if n.Upstream == upstream && n.Open == open {
			return true
		}
	}
	return false
}

// subscribers waits until the news channel has n subscribers.
func subscribers(t *testing.T, srv *redisServer, password string, n int64) {
	t.Helper()
	raw := srv.client(password)
	eventually(t, 5*time.Second, fmt.Sprintf("%d subscribers", n), func() bool {
		m, err := raw.PubSubNumSub(context.Background(), "modgate:news:breakers").Result()
		return err == nil && m["modgate:news:breakers"] >= n
	})
}

func TestBreakerNews(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	var inA, inB, inC inbox
	defer a.Subscribe(inA.handle)()
	defer b.Subscribe(inB.handle)()
	subscribers(t, srv, "", 2)

	const up = "corp@0123456789ab"
	until := time.Now().Add(30 * time.Second).Truncate(time.Millisecond)
	sent := time.Now()
	a.Publish(context.Background(), News{Upstream: up, Open: true, Until: until, Reason: "5 failures in a row"})
	eventually(t, time.Second, "B hears A's breaker open", func() bool { return inB.has(up, true) })
	t.Logf("delivered in %v", time.Since(sent))
	n := inB.all()[0]
	if n.Replica != "a" || !n.Until.Equal(until) || n.Reason != "5 failures in a row" {
		t.Errorf("B got %+v", n)
	}

	// C starts late: it learns what is open from the stored key.
	c := openFleet(t, Config{URL: srv.URL(""), Replica: "c"})
	defer c.Subscribe(inC.handle)()
	eventually(t, 2*time.Second, "C learns of the open breaker", func() bool { return inC.has(up, true) })

	a.Publish(context.Background(), News{Upstream: up, Open: false})
	eventually(t, time.Second, "B hears A's breaker closed", func() bool { return inB.has(up, false) })
	eventually(t, time.Second, "C hears A's breaker closed", func() bool { return inC.has(up, false) })
	if n, _ := srv.client("").Exists(context.Background(), "modgate:breaker:"+up).Result(); n != 0 {
		t.Errorf("the breaker key outlived the closed news")
	}
	if got := inA.all(); len(got) != 0 {
		t.Errorf("A heard its own news: %+v", got)
	}
	if st := a.Status(); st.NewsSent != 2 || st.NewsReceived != 0 {
		t.Errorf("A status %+v", st)
	}
	// The open news may come twice: published, and read back by the
	// subscription's first scan if that ran after the publish.
	if st := b.Status(); st.NewsReceived < 2 {
		t.Errorf("B status %+v", st)
	}
}

func TestRedisDown(t *testing.T) {
	srv := startRedis(t)
	cfg := Config{URL: srv.URL(""), Replica: "a", BackOff: 500 * time.Millisecond}
	a := openFleet(t, cfg)
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	var inB inbox
	defer b.Subscribe(inB.handle)()
	subscribers(t, srv, "", 1)
	ctx := context.Background()
	if l, err := a.Lease(ctx, "example.test/m/@v/v1.0.0.zip", time.Second); l == nil || err != nil {
		t.Fatalf("Lease with Redis up: %v, %v", l, err)
	}

	srv.kill()
	start := time.Now()
	if l, err := a.Lease(ctx, artifact, time.Second); l != nil || err == nil {
		t.Fatalf("Lease with Redis down = %v, %v; want an error", l, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("first Lease with Redis down took %v", d)
	}
	// A few failures open the breaker: then the answer is immediate.
	for range tripAfter {
		a.Lease(ctx, artifact, time.Second)
	}
	start = time.Now()
	if _, err := a.Lease(ctx, artifact, time.Second); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Lease after %d failures: %v; want ErrUnavailable", tripAfter+1, err)
	}
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Errorf("Lease with the breaker open took %v", d)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := a.Wait(wctx, artifact); err == nil || wctx.Err() != nil {
		t.Errorf("Wait with Redis down = %v (ctx %v); want an error at once", err, wctx.Err())
	}
	start = time.Now()
	a.Publish(ctx, News{Upstream: "u@x", Open: true, Until: time.Now().Add(time.Minute)})
	b.Publish(ctx, News{Upstream: "u@x", Open: true, Until: time.Now().Add(time.Minute)})
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("two Publish with Redis down took %v", d)
	}
	if st := a.Status(); st.Up || st.LastError == "" || st.LastErrorAt.IsZero() {
		t.Errorf("status with Redis down: %+v", st)
	}

	srv.start()
	eventually(t, 10*time.Second, "Lease once Redis is back", func() bool {
		l, err := a.Lease(ctx, artifact, time.Second)
		return l != nil && err == nil
	})
	if st := a.Status(); !st.Up {
		t.Errorf("status with Redis back: %+v", st)
	}
	// B's subscription comes back by itself and hears news again.
	until := time.Now().Add(time.Minute)
	eventually(t, 10*time.Second, "B hears news after the restart", func() bool {
		a.Publish(ctx, News{Upstream: "back@x", Open: true, Until: until})
		return inB.has("back@x", true)
	})
}

func TestStatusHidesPassword(t *testing.T) {
	const password = "s3cret-Pa55word"
	srv := startRedis(t, "--requirepass", password)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	good := openFleet(t, Config{URL: srv.URL(password), Replica: "a", Logger: logger})
	if l, err := good.Lease(context.Background(), artifact, time.Second); l == nil || err != nil {
		t.Fatalf("Lease with the password: %v, %v", l, err)
	}
	st := good.Status()
	if !st.Up || st.LastError != "" {
		t.Errorf("status %+v; want up", st)
	}
	if want := "redis://:xxxxx@" + srv.Addr + "/0"; st.URL != want {
		t.Errorf("status URL %q; want %q", st.URL, want)
	}

	const wrong = "wr0ng-Pa55word"
	bad := openFleet(t, Config{URL: srv.URL(wrong), Replica: "b", Logger: logger})
	for range tripAfter + 1 {
		if _, err := bad.Lease(context.Background(), artifact, time.Second); err == nil {
			t.Fatal("Lease with a wrong password: no error")
		} else if strings.Contains(err.Error(), wrong) {
			t.Errorf("error shows the password: %v", err)
		}
	}
	bad.Publish(context.Background(), News{Upstream: "u@x", Open: true, Until: time.Now().Add(time.Minute)})
	st = bad.Status()
	if st.Up || st.LastError == "" {
		t.Errorf("status %+v; want down with an error", st)
	}
	t.Logf("status with a wrong password: %+v", st)
	for _, s := range []string{fmt.Sprintf("%+v", good.Status()), fmt.Sprintf("%+v", st), logs.String()} {
		if strings.Contains(s, password) || strings.Contains(s, wrong) {
			t.Errorf("shows a password: %s", s)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	const password = "s3cret-Pa55word"
	for _, tc := range []struct{ url, want string }{
		{"", "no Redis URL"},
		{"http://:" + password + "@127.0.0.1:1/0", "scheme"},
		{"redis://:" + password + "@127.0.0.1:1/zero", "database number"},
		{"redis://:" + password + "@127.0.0.1:1/0/1", "path"},
		{"redis://:" + password + "@127.0.0.1:port/0", "port"},
	} {
		f, err := Open(Config{URL: tc.url, Secret: testSecret})
		if err == nil {
			f.Close()
			t.Errorf("Open(%q): no error", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), password) {
			t.Errorf("Open(%q) = %v; want an error about %s that hides the password", tc.url, err, tc.want)
		}
	}
	// A fleet needs its secret, of some length.
	for _, secret := range [][]byte{nil, []byte("short")} {
		if f, err := Open(Config{URL: "redis://127.0.0.1:1/0", Secret: secret}); err == nil || !strings.Contains(err.Error(), "fleet.secret_file") {
			if f != nil {
				f.Close()
			}
			t.Errorf("Open with a secret of %d bytes: %v; want an error naming fleet.secret_file", len(secret), err)
		}
	}
	// Redis need not be up to open a fleet.
	f, err := Open(Config{URL: "redis://127.0.0.1:1/0", Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
