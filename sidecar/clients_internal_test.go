package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/modgate/modgate/sidecar/wire"
)

func TestParseClientFiles(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	users, err := parseHtpasswd([]byte("# team A\n\nalice:" + string(hash) + "\n"))
	if err != nil || len(users) != 1 || string(users["alice"]) != string(hash) {
		t.Errorf("htpasswd: %v %v", users, err)
	}
	for in, want := range map[string]string{
		"alice\n":           "line 1: want name:hash (htpasswd -B)",
		"alice:$apr1$x$y\n": "line 1: user alice: not a bcrypt hash: create it with htpasswd -B",
		"a:" + string(hash) + "\na:" + string(hash) + "\n": "line 2: user a is listed twice",
	} {
		if _, err := parseHtpasswd([]byte(in)); err == nil || err.Error() != want {
			t.Errorf("htpasswd %q: %v, want %q", in, err, want)
		}
	}
	tokens, err := parseTokens([]byte("ci tok-1\n# x\nbot tok-2\n"))
	if err != nil || len(tokens) != 2 {
		t.Errorf("tokens: %v %v", tokens, err)
	}
	for in, want := range map[string]string{
		"ci\n":                  `line 1: want "name token"`,
		"ci tok-1\nbot tok-1\n": "line 2: bot has the token of ci",
	} {
		if _, err := parseTokens([]byte(in)); err == nil || err.Error() != want {
			t.Errorf("tokens %q: %v, want %q", in, err, want)
		}
	}
}

// TestPasswordCheckedOnceWithBcrypt: a user's second request with the same
// password does not pay for bcrypt again, and a changed password in the
// file is checked afresh.
func TestPasswordCheckedOnceWithBcrypt(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	c := testClients(t, map[string][]byte{"alice": hash})
	calls := countBcrypt(t)
	check := func(user, pass string) bool {
		ok, p := c.checkLogin(context.Background(), "192.0.2.1", user, pass)
		if p != nil {
			t.Fatalf("%s: %v", user, p.lines)
		}
		return ok
	}
	if !check("alice", "pw") || check("alice", "wrong") || check("bob", "pw") {
		t.Fatal("checkLogin got a login wrong")
	}
	before := calls.Load()
	if !check("alice", "pw") || calls.Load() != before {
		t.Error("a good login was not remembered")
	}
	other, _ := bcrypt.GenerateFromPassword([]byte("pw2"), bcrypt.MinCost)
	setHtpasswd(c, map[string][]byte{"alice": other})
	if check("alice", "pw") || !check("alice", "pw2") {
		t.Error("a remembered login outlived its hash")
	}
}

// testClients is a clients with an htpasswd file of users.
func testClients(t *testing.T, users map[string][]byte) *clients {
	t.Helper()
	c := &clients{cfg: ClientsConfig{HtpasswdFile: "x"}, logins: newLoginLimiter(wire.SystemClock{}), pw: newPasswords(), clock: wire.SystemClock{}}
	c.htpasswd = &watchedFile[*htpasswd]{}
	setHtpasswd(c, users)
	return c
}

func setHtpasswd(c *clients, users map[string][]byte) {
	c.htpasswd.val.Store(&[]*htpasswd{{users: users, dummy: dummyHash(commonCost(users))}}[0])
	stamp := c.htpasswd.stampNow()
	c.htpasswd.stamp.Store(&stamp)
}

// countBcrypt counts bcrypt comparisons (and the cost of each) while the
// test runs.
func countBcrypt(t *testing.T) *atomic.Int64 {
	var n atomic.Int64
	orig := compareHash
	compareHash = func(hash, pass []byte) error {
		n.Add(1)
		return orig(hash, pass)
	}
	t.Cleanup(func() { compareHash = orig })
	return &n
}

// TestConcurrentBadLogins: 200 concurrent wrong passwords from one address
// get at most the bucket's 10 bcrypt checks; the rest are 429 unchecked.
// Before, the address was checked for a block before the password and
// charged after it: 53 of 200 were checked.
func TestConcurrentBadLogins(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), 6)
	c := testClients(t, map[string][]byte{"alice": hash})
	calls := countBcrypt(t)
	var wg sync.WaitGroup
	var refused, tooMany atomic.Int64
	start := make(chan struct{})
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r := httptest.NewRequest("GET", "/x/@v/list", nil)
			r.RemoteAddr = "192.0.2.7:1234"
			r.SetBasicAuth("alice", fmt.Sprint("guess-", i))
			_, err := c.authenticate(r, false)
			switch p, _ := err.(*problem); {
			case p == nil:
				t.Errorf("a wrong password was let in")
			case p.status() == 401:
				refused.Add(1)
			case p.status() == 429:
				tooMany.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("%d bcrypt checks, %d × 401, %d × 429", calls.Load(), refused.Load(), tooMany.Load())
	if n := calls.Load(); n > loginBurst {
		t.Errorf("%d concurrent bad logins from one address made %d bcrypt checks; want at most %d", 200, n, loginBurst)
	}
	if refused.Load() > loginBurst || refused.Load()+tooMany.Load() != 200 {
		t.Errorf("%d × 401 and %d × 429; want at most %d × 401, 429 for the rest", refused.Load(), tooMany.Load(), loginBurst)
	}
}

// TestConcurrentGoodLoginsCostOneBcrypt: a build's first hundred
// concurrent requests with the same right password cost one bcrypt, and
// all of them are let in (none is charged as a failure).
func TestConcurrentGoodLoginsCostOneBcrypt(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), 6)
	c := testClients(t, map[string][]byte{"alice": hash})
	calls := countBcrypt(t)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r := httptest.NewRequest("GET", "/x/@v/list", nil)
			r.RemoteAddr = "192.0.2.8:1234"
			r.SetBasicAuth("alice", "pw")
			if id, err := c.authenticate(r, false); err != nil || id != "alice" {
				t.Errorf("alice: %q %v", id, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("200 concurrent good logins made %d bcrypt checks; want 1", n)
	}
}

// TestPasswordChecksBounded: at most passwordChecks bcrypt checks run at
// once, passwordQueue more wait, and past that a check is answered 503
// with Retry-After, without bcrypt.
func TestPasswordChecksBounded(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	c := testClients(t, map[string][]byte{"alice": hash})
	release := make(chan struct{})
	var running, most atomic.Int64
	orig := compareHash
	compareHash = func(h, p []byte) error {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		running.Add(-1)
		return orig(h, p)
	}
	t.Cleanup(func() { compareHash = orig })
	total := passwordChecks + passwordQueue
	var wg sync.WaitGroup
	login := func(i int) error {
		r := httptest.NewRequest("GET", "/x/@v/list", nil)
		r.RemoteAddr = fmt.Sprintf("192.0.2.%d:1234", i%250+1) // many addresses: no bucket runs dry
		r.SetBasicAuth("alice", fmt.Sprint("guess-", i))
		_, err := c.authenticate(r, false)
		return err
	}
	for i := range total {
		wg.Add(1)
		go func() { defer wg.Done(); login(i) }()
	}
	// Wait until the slots are taken and the queue is full.
	for deadline := time.Now().Add(10 * time.Second); running.Load() < int64(passwordChecks) || c.pw.queue.Load() < int64(passwordQueue); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("running %d, queued %d; want %d and %d", running.Load(), c.pw.queue.Load(), passwordChecks, passwordQueue)
		}
	}
	err := login(total)
	p, _ := err.(*problem)
	if p == nil || p.status() != 503 || p.header.Get("Retry-After") == "" {
		t.Errorf("a password check past the bound: %v; want 503 with Retry-After", err)
	}
	close(release)
	wg.Wait()
	if m := most.Load(); m > int64(passwordChecks) {
		t.Errorf("%d bcrypt checks at once; want at most %d", m, passwordChecks)
	}
}

// TestUnknownUsersCostTheSame: an unknown user is checked against a hash
// of the file's own cost, so that it takes as long as a known user with a
// wrong password (htpasswd -B makes cost 5; the dummy hash was cost 10,
// 20 times slower). The mechanism is checked exactly (the cost each
// comparison pays) and the effect by medians of repeated timings, with a
// tolerance wide enough for a loaded machine.
func TestUnknownUsersCostTheSame(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), 5)
	c := testClients(t, map[string][]byte{"alice": hash, "bob": hash})
	var costs []int
	var mu sync.Mutex
	orig := compareHash
	compareHash = func(h, p []byte) error {
		cost, _ := bcrypt.Cost(h)
		mu.Lock()
		costs = append(costs, cost)
		mu.Unlock()
		return orig(h, p)
	}
	t.Cleanup(func() { compareHash = orig })
	ctx := context.Background()
	var known, unknown []time.Duration
	for i := range 15 {
		c.logins = newLoginLimiter(wire.SystemClock{}) // no 429 in the way
		start := time.Now()
		c.checkLogin(ctx, "192.0.2.9", "alice", fmt.Sprint("wrong-", i))
		known = append(known, time.Since(start))
		start = time.Now()
		c.checkLogin(ctx, "192.0.2.9", fmt.Sprint("nobody-", i), "wrong")
		unknown = append(unknown, time.Since(start))
	}
	for i, cost := range costs {
		if cost != 5 {
			t.Errorf("comparison %d paid cost %d; want the file's 5 for known and unknown users alike", i, cost)
		}
	}
	if len(costs) != 30 {
		t.Errorf("%d comparisons for 30 logins", len(costs))
	}
	mk, mu2 := median(known), median(unknown)
	t.Logf("median known %v, unknown %v", mk, mu2)
	if ratio := float64(mu2) / float64(mk); ratio > 4 || ratio < 0.25 {
		t.Errorf("median time of an unknown user %v, of a known one %v: want them alike", mu2, mk)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestCertificateWithManyCommonNames: a client certificate whose subject
// has several common names (/CN=bob/CN=alice) is refused: x509 takes the
// last as CommonName, other tools the first.
func TestCertificateWithManyCommonNames(t *testing.T) {
	c := &clients{cfg: ClientsConfig{ClientCAFile: "c"}, cas: &watchedFile[*x509.CertPool]{}}
	cert := &x509.Certificate{Subject: pkix.Name{Names: []pkix.AttributeTypeAndValue{
		{Type: oidCommonName, Value: "bob"}, {Type: oidCommonName, Value: "alice"},
	}, CommonName: "alice"}}
	r := httptest.NewRequest("GET", "/x/@v/list", nil)
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}
	if cn, why := c.certIdentity(r); cn != "" || !strings.Contains(why, "2 common names") {
		t.Errorf("a certificate for /CN=bob/CN=alice: identity %q, refusal %q; want it refused", cn, why)
	}
	if id, err := c.authenticate(r, false); err == nil || id == "alice" {
		t.Errorf("authenticate: %q %v; want a refusal", id, err)
	}
	one := &x509.Certificate{Subject: pkix.Name{Names: []pkix.AttributeTypeAndValue{{Type: oidCommonName, Value: "bob"}}, CommonName: "bob"}}
	r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{one}}}
	if cn, why := c.certIdentity(r); cn != "bob" || why != "" {
		t.Errorf("one CN: %q %q", cn, why)
	}
}

// FuzzClientFiles: whatever a clients file holds, parsing it never panics
// and an error never repeats a secret (a hash or a token) from it.
func FuzzClientFiles(f *testing.F) {
	f.Add("alice:$2a$04$abcdefghijklmnopqrstuu5fYZ0sZiVEo1Wr3Qz0vZ0yXbY1GdH8y\n")
	f.Add("ci tok-secret-1\nbot tok-secret-1\n")
	f.Add("x:$apr1$secret\n#c\n\n y  z  w\n")
	f.Fuzz(func(t *testing.T, data string) {
		// The secrets of each file: hashes after "name:", tokens after
		// "name "; a secret within some line's name may be named.
		names := map[string]bool{}
		var hashes, toks []string
		for _, line := range strings.Split(data, "\n") {
			line = strings.TrimSpace(line)
			if n, h, ok := strings.Cut(line, ":"); ok {
				names[n] = true
				hashes = append(hashes, h)
			}
			if f := strings.Fields(line); len(f) > 0 {
				names[f[0]] = true
				toks = append(toks, f[1:]...)
			}
		}
		inName := func(s string) bool {
			for n := range names {
				if strings.Contains(n, s) {
					return true
				}
			}
			return false
		}
		check := func(err error, secrets []string) {
			if err == nil {
				return
			}
			// Names are public: a secret that only appears once a name
			// and the message's own punctuation meet ("user 0000 : ..."
			// for the name "0000 " and the hash "0000 :") is not repeated.
			msg := err.Error()
			for n := range names {
				if n != "" {
					msg = strings.ReplaceAll(msg, n, "")
				}
			}
			for _, s := range secrets {
				if len(s) >= 6 && !inName(s) && strings.Contains(msg, s) {
					t.Fatalf("error %q repeats %q", err, s)
				}
			}
		}
		_, err := parseHtpasswd([]byte(data))
		check(err, hashes)
		_, err = parseTokens([]byte(data))
		check(err, toks)
	})
}

// TestRefusalFitsTheGoCommand: the 401's body is what the go command
// prints whole: at most 8 lines, 648 bytes.
func TestRefusalFitsTheGoCommand(t *testing.T) {
	c := &clients{cfg: ClientsConfig{HtpasswdFile: "h", TokensFile: "t", ClientCAFile: "c"}}
	c.htpasswd, c.tokens, c.cas = &watchedFile[*htpasswd]{}, &watchedFile[map[[32]byte]string]{}, &watchedFile[*x509.CertPool]{}
	r := httptest.NewRequest("GET", "https://modgate.corp.example.test:7443/x/@v/list", nil)
	p := c.refusal(r, false, "wrong user name or password")
	rec := httptest.NewRecorder()
	writeError(rec, p.status(), p.code, p.lines...)
	body := rec.Body.String()
	if n := strings.Count(body, "\n"); n > 8 || len(body)+n > 648 || strings.Contains(body, "\n\n") {
		t.Errorf("401 body of %d lines, %d bytes:\n%s", n, len(body), body)
	}
	if !strings.Contains(body, "machine modgate.corp.example.test:7443 login <name> password <password>") {
		t.Errorf("401 body lacks the netrc line:\n%s", body)
	}
}
