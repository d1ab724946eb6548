package fleet

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestForgedNewsIsDropped: whoever can PUBLISH or SET on the fleet's
// Redis cannot open a breaker on the replicas: unsigned news (the format
// a replica sent before news was signed), news signed with another
// secret, a genuine message replayed once stale, and an unsigned open
// breaker stored for replicas that start later are all dropped and
// counted; genuine news still arrives.
func TestForgedNewsIsDropped(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	b := openFleet(t, Config{URL: srv.URL(""), Replica: "b"})
	other := openFleet(t, Config{URL: srv.URL(""), Replica: "x", Secret: []byte("another-fleet-secret-0123456789")})
	inB := &inbox{}
	defer b.Subscribe(inB.handle)()
	subscribers(t, srv, "", 1)
	raw := srv.client("")
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	forged := func(upstream string) string {
		body, _ := json.Marshal(News{Upstream: upstream, Open: true, Until: until, Replica: "mallory"})
		return string(body)
	}
	channel := "modgate:news:breakers"
	msgs := map[string]string{
		"unsigned":     forged("unsigned@x"),
		"other secret": other.seal("news", time.Now(), forged("other@x")),
		"stale replay": a.seal("news", time.Now().Add(-2*newsMaxAge), forged("stale@x")),
		"future":       a.seal("news", time.Now().Add(2*clockSkew), forged("future@x")),
		"tampered":     strings.Replace(a.seal("news", time.Now(), forged("tampered@x")), "tampered@x", "tampere2@x", 1),
	}
	for what, m := range msgs {
		if err := raw.Publish(ctx, channel, m).Err(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// Genuine news after them: once it is in, the forged ones were read.
	a.Publish(ctx, News{Upstream: "genuine@x", Open: true, Until: until})
	eventually(t, 5*time.Second, "genuine news", func() bool { return inB.has("genuine@x", true) })
	for _, n := range inB.all() {
		if n.Upstream != "genuine@x" {
			t.Errorf("a forged message was delivered: %+v", n)
		}
	}
	if got := b.Status().Rejected; got != int64(len(msgs)) {
		t.Errorf("%d messages counted as rejected; want %d", got, len(msgs))
	}

	// An unsigned open breaker stored in Redis is not applied by a
	// replica that starts later; a genuine one is.
	raw.Set(ctx, "modgate:breaker:stored@x", forged("stored@x"), time.Hour)
	c := openFleet(t, Config{URL: srv.URL(""), Replica: "c"})
	inC := &inbox{}
	defer c.Subscribe(inC.handle)()
	eventually(t, 5*time.Second, "genuine stored news", func() bool { return inC.has("genuine@x", true) })
	if inC.has("stored@x", true) {
		t.Errorf("an unsigned stored breaker was applied at start-up")
	}
	if c.Status().Rejected == 0 {
		t.Errorf("the unsigned stored breaker was not counted")
	}
}

// TestForgedLeasesAreIgnored: a lease value, a "stored just now" mark or
// a release note written by someone without the fleet's secret neither
// stalls waiters nor sends replicas to the store for an artifact nobody
// stored.
func TestForgedLeasesAreIgnored(t *testing.T) {
	srv := startRedis(t)
	a := openFleet(t, Config{URL: srv.URL(""), Replica: "a"})
	raw := srv.client("")
	ctx := context.Background()
	h := a.hashKey(artifact)

	// A forged lease: Wait does not wait for it.
	raw.Set(ctx, "modgate:lease:"+h, "mallory:1234", time.Hour)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := a.Wait(wctx, artifact); err != nil || time.Since(start) > 2*time.Second {
		t.Errorf("Wait on a forged lease: %v after %v; want nil at once", err, time.Since(start))
	}
	raw.Del(ctx, "modgate:lease:"+h)

	// A forged "stored" mark: Lease takes the lease, not ErrStored.
	raw.Set(ctx, "modgate:stored:"+h, "1", time.Hour)
	l, err := a.Lease(ctx, artifact, 10*time.Second)
	if err != nil || l == nil {
		t.Fatalf("Lease with a forged stored mark: %v, %v; want the lease", l, err)
	}
	// A genuine one still sends the next replica to the store.
	l.Stored()
	if _, err := a.Lease(ctx, artifact, 10*time.Second); err != ErrStored {
		t.Errorf("Lease after Stored: %v; want ErrStored", err)
	}
	if a.Status().Rejected == 0 {
		t.Errorf("the forged lease was not counted")
	}
}

// TestArtifactKeysNeedTheSecret: the Redis key of an artifact is not a
// hash anyone can compute: a reader of Redis cannot confirm a guessed
// private module@version.
func TestArtifactKeysNeedTheSecret(t *testing.T) {
	f := &Fleet{secret: testSecret, prefix: "modgate:"}
	g := &Fleet{secret: []byte("another-fleet-secret-0123456789"), prefix: "modgate:"}
	bare := sha256.Sum256([]byte(artifact))
	if k := f.hashKey(artifact); k == hex.EncodeToString(bare[:]) || k == g.hashKey(artifact) {
		t.Errorf("artifact key %s can be computed without the fleet's secret", k)
	}
}

// TestRedisACLUser: a Redis ACL user (redis://USER@host) with its
// password given apart from the URL (fleet.password_file) takes leases
// and hears news; the password is in no status or error.
func TestRedisACLUser(t *testing.T) {
	srv := startRedis(t)
	raw := srv.client("")
	ctx := context.Background()
	const password = "acl-Pa55word-S3CRET"
	if err := raw.Do(ctx, "ACL", "SETUSER", "modgate", "on", ">"+password, "~modgate:*", "&modgate:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	// The default user can no longer get in: only the ACL user works.
	if err := raw.Do(ctx, "ACL", "SETUSER", "default", "off").Err(); err != nil {
		t.Fatal(err)
	}
	url := "redis://modgate@" + srv.Addr + "/0"
	f := openFleet(t, Config{URL: url, Password: password, Replica: "a"})
	l, err := f.Lease(ctx, artifact, 10*time.Second)
	if err != nil || l == nil {
		t.Fatalf("Lease as an ACL user: %v, %v", l, err)
	}
	l.Release()
	bad := openFleet(t, Config{URL: url, Password: "wrong", Replica: "b"})
	if _, err := bad.Lease(ctx, artifact, 10*time.Second); err == nil {
		t.Error("Lease with a wrong password: no error")
	}
	for _, s := range []string{f.Status().URL, bad.Status().LastError} {
		if strings.Contains(s, password) {
			t.Errorf("shows the password: %s", s)
		}
	}
}
