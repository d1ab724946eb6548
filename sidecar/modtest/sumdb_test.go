package modtest

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/note"
)

// clientOps is an in-memory sumdb.ClientOps that reads from a server URL.
type clientOps struct {
	t      *testing.T
	client *http.Client
	url    string
	key    string

	mu       sync.Mutex
	config   map[string][]byte
	security []string
}

func (c *clientOps) ReadRemote(path string) ([]byte, error) {
	r, err := get(c.t, c.client, c.url+path)
	if err != nil {
		return nil, err
	}
	if r.code != 200 {
		return nil, fmt.Errorf("GET %s: %d %s", path, r.code, r.body)
	}
	return []byte(r.body), nil
}

func (c *clientOps) ReadConfig(file string) ([]byte, error) {
	if file == "key" {
		return []byte(c.key), nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.config[file], nil
}

func (c *clientOps) WriteConfig(file string, old, new []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !bytes.Equal(c.config[file], old) {
		return sumdb.ErrWriteConflict
	}
	if c.config == nil {
		c.config = make(map[string][]byte)
	}
	c.config[file] = new
	return nil
}

func (c *clientOps) ReadCache(string) ([]byte, error) { return nil, fmt.Errorf("no cache") }
func (c *clientOps) WriteCache(string, []byte)        {}
func (c *clientOps) Log(msg string)                   { c.t.Log(msg) }
func (c *clientOps) SecurityError(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.security = append(c.security, msg)
}

// TestSumDBClient verifies lookups, the signed tree and its tiles with the
// client the go command uses.
func TestSumDBClient(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	if !strings.HasPrefix(db.VerifierKey, "sum.fixture.test+") || db.Name != "sum.fixture.test" {
		t.Fatalf("Name %q, VerifierKey %q", db.Name, db.VerifierKey)
	}
	url := db.Serve(t)
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("Serve() = %s", url)
	}
	ops := &clientOps{t: t, client: http.DefaultClient, url: url, key: db.VerifierKey}
	client := sumdb.NewClient(ops)
	for _, m := range fx.Modules() {
		var lines []string
		for _, v := range []string{m.Version, m.Version + "/go.mod"} {
			l, err := client.Lookup(m.Path, v)
			if err != nil {
				t.Fatalf("Lookup(%s, %s): %v", m.Path, v, err)
			}
			lines = append(lines, l...)
		}
		want, _ := fx.GoSumLines(m.Path, m.Version)
		if got := strings.Join(lines, "\n") + "\n"; got != string(want) {
			t.Errorf("Lookup(%s) = %q, want %q", m, got, want)
		}
	}
	if _, err := client.Lookup("fixture.test/nosuch", "v1.0.0"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Lookup of an unknown module: %v, want 404", err)
	}

	// A second client starting from the first one's tree checks that the
	// tree grew consistently.
	ops2 := &clientOps{t: t, client: http.DefaultClient, url: url, key: db.VerifierKey, config: ops.config}
	if _, err := sumdb.NewClient(ops2).Lookup("fixture.test/app", "v1.0.0"); err != nil {
		t.Errorf("second client: %v", err)
	}
	if len(ops.security)+len(ops2.security) != 0 {
		t.Errorf("security errors: %q %q", ops.security, ops2.security)
	}

	// Another key with the same name does not verify.
	_, otherKey, err := note.GenerateKey(rand.Reader, db.Name)
	if err != nil {
		t.Fatal(err)
	}
	bad := &clientOps{t: t, client: http.DefaultClient, url: url, key: otherKey}
	if _, err := sumdb.NewClient(bad).Lookup("fixture.test/app", "v1.0.0"); err == nil {
		t.Errorf("Lookup with the wrong verifier key succeeded")
	}

	if db.Count("") == 0 || db.CountMatching("/lookup/fixture.test/app@v1.0.0") != 3 || db.CountMatching("/tile/") == 0 {
		t.Errorf("Count(\"\") = %d, requests %q", db.Count(""), db.Requests())
	}
	db.Reset()
	if len(db.Requests()) != 0 {
		t.Errorf("Requests() after Reset = %q", db.Requests())
	}
}

func TestSumDBServeFaults(t *testing.T) {
	t.Parallel()
	db := NewSumDB(t, "sum.fixture.test", testFixtures(t))
	url := db.Serve(t)
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/latest", 200},
		{"/f/500/latest", 500},
		{"/f/429ra3/lookup/fixture.test/app@v1.0.0", 429},
		{"/f/ok/lookup/fixture.test/app@v1.0.0", 200},
		{"/lookup/fixture.test/nosuch@v1.0.0", 404},
		{"/lookup/fixture.test/app@latest", 400},
		{"/nothing", 404},
	} {
		if r := mustGet(t, http.DefaultClient, url+tc.path); r.code != tc.code {
			t.Errorf("GET %s: %d %q, want %d", tc.path, r.code, r.body, tc.code)
		}
	}
	if db.Count("500") != 1 || db.Count("ok") != 1 || db.Count("") != 4 {
		t.Errorf("requests %q", db.Requests())
	}
	if got := db.GOSUMDB(url); got != db.VerifierKey+" "+url {
		t.Errorf("GOSUMDB(url) = %q", got)
	}
	if got := db.GOSUMDB(""); got != db.VerifierKey {
		t.Errorf("GOSUMDB(\"\") = %q", got)
	}
}

func TestSumDBServeTLS(t *testing.T) {
	t.Parallel()
	db := NewSumDB(t, "sum.fixture.test", testFixtures(t))
	url, caPEM := db.ServeTLS(t)
	pool := x509.NewCertPool()
	if !strings.HasPrefix(url, "https://127.0.0.1:") || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ServeTLS() = %s, %q", url, caPEM)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	r := mustGet(t, &http.Client{Transport: tr}, url+"/latest")
	if r.code != 200 {
		t.Fatalf("GET /latest: %d %q", r.code, r.body)
	}
	v, err := note.NewVerifier(db.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open([]byte(r.body), note.VerifierList(v))
	if err != nil || !strings.HasPrefix(n.Text, "go.sum database tree\n0\n") {
		t.Errorf("/latest: %v, %q", err, r.body)
	}
}

func TestNewSumDBBadName(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"bad+name", "", "bad name", "sum.fixture.test/", "sum.fixture.test?x"} {
		ft := &fatalRecorder{TB: t}
		func() {
			defer func() { recover() }()
			NewSumDB(ft, name, nil)
		}()
		if !ft.failed {
			t.Errorf("NewSumDB(%q) did not fail the test", name)
		}
	}
}

// fatalRecorder records Fatalf instead of failing the test, and stops the
// caller with a panic as t.Fatalf stops it with runtime.Goexit.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.failed = true
	panic(fmt.Sprintf(format, args...))
}
