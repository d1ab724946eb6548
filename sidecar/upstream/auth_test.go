package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// lockedServer answers 200 to requests whose Authorization is the one it
// currently wants, 401 to others, and remembers what it saw.
type lockedServer struct {
	*httptest.Server
	want atomic.Value // string
	mu   sync.Mutex
	seen []string
}

func newLockedServer(t *testing.T, want string) *lockedServer {
	s := &lockedServer{}
	s.want.Store(want)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, r.Header.Get("Authorization"))
		s.mu.Unlock()
		if r.Header.Get("Authorization") != s.want.Load().(string) {
			w.Header().Set("WWW-Authenticate", `Basic realm="mods"`)
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "v1.0.0\n")
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *lockedServer) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func basicValue(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// rotate replaces a secret file as Kubernetes does: a new file renamed
// over the old one, with a later modification time.
func rotate(t *testing.T, name, content string) {
	t.Helper()
	tmp := name + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(tmp, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

func status(t *testing.T, u *Upstream) int {
	t.Helper()
	resp, err := u.Get(context.Background(), "GET", "/fixture.test/a/@v/list", nil)
	if err != nil {
		t.Fatalf("%s: %v", u.Name, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Credentials from files reach the upstream, and a rotated file is read
// again without a restart.
func TestAuthFromFilesRotates(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		kind            string
		auth            func(host string) Auth
		file            func(host, secret string) (name, content string)
		header          func(secret string) string
		wantFileInError bool
	}{
		{
			kind:   AuthBasic,
			auth:   func(string) Auth { return Auth{Username: "builder", PasswordFile: filepath.Join(dir, "password")} },
			file:   func(_, s string) (string, string) { return filepath.Join(dir, "password"), s + "\n" },
			header: func(s string) string { return basicValue("builder", s) },
		},
		{
			kind:   AuthBearer,
			auth:   func(string) Auth { return Auth{BearerFile: filepath.Join(dir, "token")} },
			file:   func(_, s string) (string, string) { return filepath.Join(dir, "token"), s + "\n" },
			header: func(s string) string { return "Bearer " + s },
		},
		{
			kind: AuthNetrc,
			auth: func(string) Auth { return Auth{Netrc: filepath.Join(dir, "netrc")} },
			file: func(host, s string) (string, string) {
				// The go command's rules: an entry without a password does
				// not count, the first complete entry for the host wins,
				// and nothing after "default" is read.
				return filepath.Join(dir, "netrc"), fmt.Sprintf(`machine other.example.test login x password nope
machine %[1]s login builder
machine %[1]s login builder password %[2]s
machine %[1]s login second password wrong
default login anon password anon
`, host, s)
			},
			header: func(s string) string { return basicValue("builder", s) },
		},
	} {
		t.Run(c.kind, func(t *testing.T) {
			srv := newLockedServer(t, c.header("first-secret"))
			host := strings.TrimPrefix(srv.URL, "http://")
			name, content := c.file(host, "first-secret")
			if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			u := newTestUpstream(t, Config{URL: srv.URL, Auth: c.auth(host), Retry: RetrySettings{Attempts: 1}}, wire.SystemClock{})
			if u.AuthKind() != c.kind || u.Status().Auth != c.kind {
				t.Errorf("kind %q, status %q; want %q", u.AuthKind(), u.Status().Auth, c.kind)
			}
			if got := status(t, u); got != 200 {
				t.Fatalf("with the first secret: %d", got)
			}
			srv.want.Store(c.header("second-secret"))
			name, content = c.file(host, "second-secret")
			rotate(t, name, content)
			if got := status(t, u); got != 200 {
				t.Errorf("after the file was rotated: %d (the old secret is still sent)", got)
			}
		})
	}
}

// A redirect to another origin (a subdomain, which the HTTP client would
// give a copied Authorization header, on another port) carries no
// credentials; a redirect to the upstream's own origin does.
func TestAuthNeverLeavesTheUpstreamsOrigin(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("tok-abcdef123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var cdnSaw atomic.Value
	cdnSaw.Store("(no request)")
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cdnSaw.Store(r.Header.Get("Authorization") + r.Header.Get("X-Api-Key"))
		io.WriteString(w, "v1.0.0\n")
	}))
	defer cdn.Close()
	var mu sync.Mutex
	var ownSaw []string
	var cdnPort string
	own := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ownSaw = append(ownSaw, r.URL.Path+" "+r.Header.Get("Authorization")+r.Header.Get("X-Api-Key"))
		mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/hop/"):
			http.Redirect(w, r, strings.TrimPrefix(r.URL.Path, "/hop"), http.StatusFound)
		default:
			http.Redirect(w, r, "http://cdn.mods.example.test:"+cdnPort+r.URL.Path, http.StatusFound)
		}
	}))
	defer own.Close()
	_, ownPort, _ := strings.Cut(strings.TrimPrefix(own.URL, "http://"), ":")
	_, cdnPort, _ = strings.Cut(strings.TrimPrefix(cdn.URL, "http://"), ":")
	resolve := map[string]string{
		"mods.example.test:" + ownPort:     strings.TrimPrefix(own.URL, "http://"),
		"cdn.mods.example.test:" + cdnPort: strings.TrimPrefix(cdn.URL, "http://"),
	}
	script := writeScript(t, dir, "printf 'http://mods.example.test:"+ownPort+"\\n\\nX-Api-Key: key-abcdef123\\n\\n'")
	for _, c := range []struct {
		name string
		url  string
		auth Auth
	}{
		{"bearer", "http://mods.example.test:" + ownPort, Auth{BearerFile: token}},
		{"url", "http://ci:pw-abcdef123@mods.example.test:" + ownPort, Auth{}},
		{"command", "http://mods.example.test:" + ownPort, Auth{Command: script}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			ownSaw = nil
			mu.Unlock()
			cdnSaw.Store("(no request)")
			u, err := New(Config{Name: c.name, URL: c.url, Auth: c.auth, RedirectHosts: []string{"cdn.mods.example.test"}, Retry: RetrySettings{Attempts: 1}},
				Options{Resolve: resolve})
			if err != nil {
				t.Fatal(err)
			}
			if got := status(t, u); got != 200 {
				t.Fatalf("status %d", got)
			}
			if got := cdnSaw.Load().(string); got != "" {
				t.Errorf("the other host got credentials %q", got)
			}
			resp, err := u.Get(context.Background(), "GET", "/hop/same", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if len(ownSaw) != 3 {
				t.Fatalf("the upstream saw %q", ownSaw)
			}
			for _, s := range ownSaw {
				if strings.HasSuffix(s, " ") {
					t.Errorf("a request to the upstream's own origin had no credentials: %q", ownSaw)
				}
			}
		})
	}
}

func writeScript(t *testing.T, dir, body string) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the auth command is a shell script")
	}
	f, err := os.CreateTemp(dir, "auth-*.sh")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("#!/bin/sh\n" + body + "\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chmod(f.Name(), 0o755); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// The command runs once at first use; a 401 runs it again once (with the
// answer on its standard input) and the request is tried again; its
// standard error reaches the log with the token hidden.
func TestAuthCommandRerunsAfter401(t *testing.T) {
	dir := t.TempDir()
	srv := newLockedServer(t, "Bearer tok-1-abcdef")
	counter := filepath.Join(dir, "runs")
	stdin := filepath.Join(dir, "stdin")
	script := writeScript(t, dir, fmt.Sprintf(`n=$(( $(cat %[1]s 2>/dev/null || echo 0) + 1 ))
echo $n > %[1]s
cat > %[2]s
echo "issued tok-$n-abcdef for $1" >&2
printf '%%s\n\nAuthorization: Bearer tok-%%s-abcdef\n\n' "%[3]s" "$n"`, counter, stdin, srv.URL))
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil))
	u, err := New(Config{Name: "cmd", URL: srv.URL, Auth: Auth{Command: script + " --flag"}, Retry: RetrySettings{Attempts: 1}}, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	runs := func() string {
		b, _ := os.ReadFile(counter)
		return strings.TrimSpace(string(b))
	}
	if got := status(t, u); got != 200 || runs() != "1" {
		t.Fatalf("first request: %d after %s runs", got, runs())
	}
	if got := status(t, u); got != 200 || runs() != "1" {
		t.Fatalf("second request: %d after %s runs; want the command run once", got, runs())
	}
	// The token changes: one 401, one run, one retry.
	srv.want.Store("Bearer tok-2-abcdef")
	n := srv.requests()
	if got := status(t, u); got != 200 {
		t.Errorf("after the token changed: %d after %s runs", got, runs())
	}
	if runs() != "2" || srv.requests() != n+2 {
		t.Errorf("%s runs and %d requests; want 2 runs, the request and its retry", runs(), srv.requests()-n)
	}
	if in, _ := os.ReadFile(stdin); !strings.HasPrefix(string(in), "HTTP/1.1 401 Unauthorized\n") || !strings.Contains(string(in), "Www-Authenticate: Basic") {
		t.Errorf("the command's standard input: %q", in)
	}
	// Credentials that a new run cannot fix: one more run, then the 401.
	srv.want.Store("never")
	if got := status(t, u); got != 401 || runs() != "3" {
		t.Errorf("refused for good: %d after %s runs; want 401 after 3", got, runs())
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logs.String(), "issued xxxxx for --flag") {
		t.Errorf("the command's standard error is not logged (redacted):\n%s", &logs)
	}
	if strings.Contains(logs.String(), "abcdef") {
		t.Errorf("the log shows the token:\n%s", &logs)
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A command that hangs is stopped by its timeout; one that fails or
// prints nonsense is an error that shows none of its output.
func TestAuthCommandFailures(t *testing.T) {
	dir := t.TempDir()
	srv := newLockedServer(t, "Bearer x")
	for _, c := range []struct{ name, body, want string }{
		{"hangs", "sleep 5", "timed out after"},
		{"fails", "echo 'secret-abcdef' ; exit 3", "exit status 3"},
		{"garbage", "echo 'secret-abcdef'", "not an absolute URL"},
		{"bad header", "printf 'https://x.example.test\\n\\nsecret-abcdef\\n\\n'", "not \"Name: value\""},
	} {
		t.Run(c.name, func(t *testing.T) {
			u, err := New(Config{Name: "cmd", URL: srv.URL, Auth: Auth{Command: writeScript(t, dir, c.body), CommandTimeout: 200 * time.Millisecond}, Retry: RetrySettings{Attempts: 1}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = u.Get(context.Background(), "GET", "/x", nil)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
				t.Errorf("error %v; want one that says %q and shows no output", err, c.want)
			}
			if retryable(0, err) {
				t.Errorf("credentials that cannot be had are retried")
			}
		})
	}
}

// Check refuses what cannot work, naming files and never their content.
func TestAuthCheck(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	netrc := filepath.Join(dir, "netrc")
	os.WriteFile(empty, []byte("\n"), 0o600)
	os.WriteFile(netrc, []byte("machine other.example.test login u password secret-abcdef\n"), 0o600)
	for _, c := range []struct {
		url  string
		auth Auth
		want string
	}{
		{"https://mods.example.test", Auth{Username: "u", PasswordFile: filepath.Join(dir, "missing")}, "no such file"},
		{"https://mods.example.test", Auth{BearerFile: empty}, "is empty"},
		{"https://mods.example.test", Auth{Username: "u"}, "need a username and a password file"},
		{"https://mods.example.test", Auth{Netrc: netrc}, "has no machine mods.example.test"},
		{"https://mods.example.test", Auth{Command: "no-such-command-xyz --flag"}, "not found"},
		{"https://mods.example.test", Auth{Command: `"unterminated`}, "unterminated"},
		{"https://u:p@mods.example.test", Auth{BearerFile: netrc}, "the URL carries credentials"},
		{"file:///tmp", Auth{BearerFile: netrc}, "http and https upstreams only"},
	} {
		err := c.auth.Check(c.url)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Check(%s, %+v) = %v; want %q", c.url, c.auth, err, c.want)
		}
	}
	if err := (Auth{Netrc: netrc}).Check("https://other.example.test"); err != nil {
		t.Errorf("a netrc with the host: %v", err)
	}
}

func TestParseAuthOutput(t *testing.T) {
	out := "https://a.example.test\nhttps://b.example.test/path\n\nAuthorization: Bearer one\nX-Other: two\n\nhttps://b.example.test/path/deeper\n\nAuthorization: Bearer three\n\n"
	ps, err := parseAuthOutput(out)
	if err != nil {
		t.Fatal(err)
	}
	c := &commandCreds{prefixes: ps}
	for _, m := range []struct{ url, want string }{
		{"https://a.example.test/x/@v/list", "Bearer one"},
		{"https://b.example.test/path/x", "Bearer one"},
		{"https://b.example.test/path/deeper/x", "Bearer three"},
		{"https://b.example.test/pathological", ""},
		{"http://a.example.test/x", ""}, // another scheme
		{"https://a.example.test:8443/x", ""},
	} {
		u, _ := url.Parse(m.url)
		if got := c.match(u).Get("Authorization"); got != m.want {
			t.Errorf("%s: %q; want %q", m.url, got, m.want)
		}
	}
	for _, bad := range []string{"https://a.example.test\n", "https://a.example.test\n\nAuthorization: x\n", "not a url\n\nA: b\n\n", "https://u:p@a.example.test\n\nA: b\n\n"} {
		if _, err := parseAuthOutput(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	words, err := splitCommand(` corp-go-auth  --realm "two words" 'x y'z `)
	if err != nil || strings.Join(words, "|") != "corp-go-auth|--realm|two words|x y|z" {
		t.Errorf("%q, %v", words, err)
	}
}

// Walking the chain, each upstream gets its own credentials and never
// another's, even when two upstreams share a host.
func TestAuthEachUpstreamItsOwn(t *testing.T) {
	dir := t.TempDir()
	tokA, tokB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(tokA, []byte("tok-a-abcdef\n"), 0o600)
	os.WriteFile(tokB, []byte("tok-b-abcdef\n"), 0o600)
	var mu sync.Mutex
	seen := map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		mu.Lock()
		seen[first] = r.Header.Get("Authorization")
		mu.Unlock()
		if first != "last" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "v1.0.0\n")
	}))
	defer srv.Close()
	chain, err := NewChain([]Config{
		{Name: "a", URL: srv.URL + "/a", Auth: Auth{BearerFile: tokA}},
		{Name: "none", URL: srv.URL + "/none"},
		{Name: "b", URL: srv.URL + "/b", Auth: Auth{BearerFile: tokB}},
		{Name: "last", URL: srv.URL + "/last"},
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := chain.Walk(context.Background(), "GET", "/fixture.test/m/@v/list", nil, nil)
	if res.Response == nil {
		t.Fatalf("no answer: %+v", res)
	}
	res.Response.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"a": "Bearer tok-a-abcdef", "none": "", "b": "Bearer tok-b-abcdef", "last": ""}
	for name, w := range want {
		if got, ok := seen[name]; !ok || got != w {
			t.Errorf("upstream %s got Authorization %q (asked: %v); want %q", name, got, ok, w)
		}
	}
}
