package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// Flags are prefixed so that they cannot collide with flags of other test
// files of this package.
var (
	explainUpdate = flag.Bool("explain.update", false, "rewrite testdata/explain/*.golden from what modgate explain prints")
	explainGen    = flag.Bool("explain.gen", false, "regenerate testdata/explain/*.txt by running the go command against local servers (slow: about 35 s)")
)

const explainDir = "testdata/explain"

// explainCases says, for each fixture, which explanations (rule IDs, in
// order) modgate explain must find. The golden files hold the full text; this
// table keeps an -explain.update from quietly accepting a wrong match.
var explainCases = map[string][]string{
	"chain-ends-in-direct":        {"not-found-upstream"},
	"checksum-mismatch-gosum":     {"checksum-mismatch"},
	"checksum-mismatch-sumdb":     {"checksum-mismatch"},
	"circuit-open":                {"circuit-open"},
	"gateway-timeout":             {"gateway-timeout"},
	"http-response-to-https":      {"http-to-https"},
	"io-timeout":                  {"io-timeout"},
	"leak-guard":                  {"leak-guard"},
	"loop":                        {"loop"},
	"modgate-not-running":         {"proxy-refused"},
	"no-matching-versions":        {"no-matching-versions"},
	"nothing-wrong":               nil,
	"policy-deny":                 {"policy-deny"},
	"proxy-429":                   {"rate-limited"},
	"proxyconnect-refused":        {"proxyconnect"},
	"terminal-prompts-disabled":   {"terminal-prompts"},
	"tls-handshake-timeout":       {"tls-handshake-timeout"},
	"unknown-revision":            {"unknown-revision"},
	"upstream-403-comma":          {"upstream-failed"},
	"upstream-404-410":            {"not-found-upstream"},
	"upstream-429":                {"upstream-failed"},
	"upstream-500-pipe":           {"upstream-failed"},
	"upstream-dial-timeout":       {"upstream-failed"},
	"upstream-refused":            {"upstream-failed"},
	"x509-unknown-authority":      {"x509-unknown-authority"},
	"several-errors":              {"policy-deny", "not-found-upstream"},
	"proxy-not-found":             {"not-found"},
	"private-no-private-upstream": {"not-found-upstream"},
	"goproxy-off":                 {"goproxy-off"},
	"chain-off":                   {"chain-off"},
	"connect-forbidden":           {"connect-refused"},
	"connect-refused-by-modgate":  {"connect-refused"},
	"proxy-auth-required":         {"proxy-auth"},
	"private-module-sumdb-proxy":  {"leak-guard"},
}

func TestExplainFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(explainDir, "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in %s (%v)", explainDir, err)
	}
	seen := map[string]bool{}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			want, ok := explainCases[name]
			if !ok {
				t.Fatalf("fixture %s is not in explainCases", name)
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range explainText(string(data)) {
				got = append(got, f.Rule)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("rules = %q, want %q", got, want)
			}

			var stdout, stderr bytes.Buffer
			app := &App{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
			code := app.Run(context.Background(), []string{"explain", file})
			wantCode := 0
			if len(want) == 0 {
				wantCode = 1
			}
			if code != wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, wantCode, &stderr)
			}
			golden := filepath.Join(explainDir, name+".golden")
			if *explainUpdate {
				if err := os.WriteFile(golden, stdout.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantOut, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestExplainFixtures -explain.update)", err)
			}
			if stdout.String() != string(wantOut) {
				t.Errorf("modgate explain %s printed:\n%s\nwant (%s):\n%s", file, &stdout, golden, wantOut)
			}
		})
	}
	for name := range explainCases {
		if !seen[name] {
			t.Errorf("explainCases names %s, which has no fixture %s.txt", name, name)
		}
	}
}

// publicHostHashes are the first 8 bytes (hex) of the SHA-256 of the names
// of public module proxies and checksum databases (the go command's
// defaults and the common mirrors). They are hashed so that this file does
// not name them either.
var publicHostHashes = map[string]bool{
	"00a7dc5a0cc38858": true, "9da5f32d96412512": true, "048e76c14ef34200": true, "be57af6b78a7faca": true,
	"d738bc3c3b285b0f": true, "7fa4043c8f9d788b": true, "4937f51ce9345681": true, "c8c04dcc52594ed7": true,
	"dab06815d8c81f11": true, "83ebc76e70e6df34": true,
}

// TestExplainFixturesNameNoPublicHost keeps public module proxies and
// checksum databases out of the fixtures and goldens: the go command's
// output names its defaults, and the generator must have replaced them.
func TestExplainFixturesNameNoPublicHost(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(explainDir, "*"))
	hostRE := regexp.MustCompile(`(?i)(?:[a-z0-9-]+\.)+[a-z]{2,}`)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hostRE.FindAllString(string(data), -1) {
			sum := sha256.Sum256([]byte(strings.ToLower(h)))
			if publicHostHashes[hex.EncodeToString(sum[:8])] {
				t.Errorf("%s names a public module proxy or checksum database (%s...)", file, h[:3])
			}
		}
	}
}

// TestExplainStdin runs modgate explain as a process, the way it is used:
// go build 2>&1 | modgate explain.
func TestExplainStdin(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		in, want string
		code     int
	}{
		{[]string{"explain"}, "go: downloading fixture.test/dep01 v1.0.0\n", "found no go command error it recognises", 1},
		{[]string{"explain", "-"}, "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.info\": dial tcp 127.0.0.1:7070: connect: connection refused\n", "modgate run", 0},
	} {
		cmd, out := modgate(t, tc.args...)
		cmd.Stdin = strings.NewReader(tc.in)
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("modgate %s < %q: exit %d, want %d; printed:\n%s", strings.Join(tc.args, " "), tc.in, code, tc.code, out)
		}
	}
}

func TestExplainUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	app := &App{Stdout: &stdout, Stderr: &stderr}
	if code := app.Run(context.Background(), []string{"explain", "a", "b"}); code != 2 {
		t.Errorf("two files: exit code %d, want 2", code)
	}
	if code := app.Run(context.Background(), []string{"explain", filepath.Join(t.TempDir(), "missing.txt")}); code != 1 {
		t.Errorf("missing file: exit code %d, want 1", code)
	}
	stdout.Reset()
	if code := app.Run(context.Background(), []string{"explain", "-h"}); code != 0 {
		t.Errorf("-h: exit code %d, want 0", code)
	}
}

// TestExplainCases covers messages and variants that the fixtures do not:
// text that modgate's other answers print, and output pasted with its
// indentation lost.
func TestExplainCases(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		rules    []string
		contains []string
	}{
		{
			name: "policy deny without contact, indentation lost",
			in: "go: github.com/evil/x@v1.0.0: reading http://127.0.0.1:7070/github.com/evil/x/@v/v1.0.0.info: 403 Forbidden\n" +
				"server response: modgate: github.com/evil/x@v1.0.0 denied by policy rule 2 (deny github.com/evil/*): malware, see SEC-123\n",
			rules:    []string{"policy-deny"},
			contains: []string{"rule 2 (deny github.com/evil/*)", "malware, see SEC-123", "modgate policy check github.com/evil/x@v1.0.0"},
		},
		{
			name:     "policy default deny",
			in:       "go: example.test/x@v1.0.0: reading http://127.0.0.1:7070/example.test/x/@v/v1.0.0.info: 403 Forbidden\n\tserver response: modgate: example.test/x@v1.0.0 denied by policy (no rule matched, default deny)\n",
			rules:    []string{"policy-deny"},
			contains: []string{"default"},
		},
		{
			name:     "GOPROXY=off in modgate's chain",
			in:       "go: fixture.test/dep01@v1.0.0: reading http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.info: 403 Forbidden\n\tserver response:\n\tmodgate: fixture.test/dep01@v1.0.0 (.info): module lookup disabled by GOPROXY=off in modgate's upstream chain\n",
			rules:    []string{"chain-off"},
			contains: []string{"off"},
		},
		{
			name:     "GOPROXY=off in the go command",
			in:       "go: fixture.test/dep01@v1.0.0: module lookup disabled by GOPROXY=off\n",
			rules:    []string{"goproxy-off"},
			contains: []string{"go env -w GOPROXY=http://127.0.0.1:7070"},
		},
		{
			name:     "CONNECT refused by modgate, reason in the status line",
			in:       "go: fixture.test/dep01@v1.0.0: Get \"https://proxy.example.test/fixture.test/dep01/@v/v1.0.0.info\": modgate: CONNECT to proxy.example.test:443 refused: not in forward.allow_hosts\n",
			rules:    []string{"connect-refused"},
			contains: []string{"forward.allow_hosts", "modgate refused the tunnel"},
		},
		{
			name:     "nothing recognised",
			in:       "go: downloading fixture.test/dep01 v1.0.0\n./main.go:3:8: \"fmt\" imported and not used\n",
			rules:    nil,
			contains: nil,
		},
		{
			name:     "bad request",
			in:       "go: fixture.test/dep01@v1.0.0: reading http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.info: 400 Bad Request\n\tserver response:\n\tmodgate: invalid version: \"v1\" is not canonical\n",
			rules:    []string{"bad-request"},
			contains: []string{"is not canonical"},
		},
		{
			name: "the same failure for many modules is one finding",
			in: "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep02@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep02/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep03@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep03/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep04@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep04/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n",
			rules:    []string{"proxy-refused"},
			contains: []string{"(and 3 more failures like it)"},
		},
		{
			name:     "CRLF line ends",
			in:       "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\r\n",
			rules:    []string{"proxy-refused"},
			contains: []string{"make run"},
		},
		{
			name:     "verifying through modgate's leak guard without a pattern",
			in:       "verifying corp.example.test/lib@v1.0.0/go.mod: corp.example.test/lib@v1.0.0/go.mod: reading http://127.0.0.1:7070/sumdb/sum.example.test/lookup/corp.example.test/lib@v1.0.0: 403 Forbidden\n\tserver response:\n\tmodgate: corp.example.test/lib is private: not looked up in a checksum database\n",
			rules:    []string{"leak-guard"},
			contains: []string{"GONOSUMDB=corp.example.test/lib"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, f := range explainText(tc.in) {
				got = append(got, f.Rule)
			}
			if !reflect.DeepEqual(got, tc.rules) {
				t.Errorf("rules = %q, want %q", got, tc.rules)
			}
			var out bytes.Buffer
			writeExplanation(&out, explainText(tc.in))
			for _, s := range tc.contains {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, &out)
				}
			}
		})
	}
}

// ---- Fixture generator ----
//
// go test ./cmd/modgate/internal/cli -run TestGenerateExplainFixtures -explain.gen -v
//
// runs the real go command in hermetic environments against local servers
// (modtest proxies, real modgates, small stubs for what modgate cannot be
// made to say yet) and writes its output to testdata/explain/<name>.txt.
// Addresses and temporary directories are replaced by stable ones, so that a
// regeneration changes only what the go command or modgate now say. Then
// run with -explain.update and review the golden diffs.

// gen is one scenario's world.
type gen struct {
	t    *testing.T
	fx   *modtest.Fixtures
	db   *modtest.SumDB
	g    *modtest.Go
	repl []string // old, new pairs for strings.NewReplacer
	next int      // next stable upstream port
}

const genSumDB = "sum.fixture.test"

func newGen(t *testing.T) *gen {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	e := &gen{t: t, fx: fx, db: modtest.NewSumDB(t, genSumDB, fx), g: modtest.NewGo(t), next: 9001}
	root := filepath.Dir(e.g.Dir())
	// Telemetry off: the go command's telemetry files in HOME would race
	// with the removal of the test's directories.
	telemetry := filepath.Join(root, "home", ".config", "go", "telemetry")
	if err := os.MkdirAll(telemetry, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(telemetry, "mode"), []byte("off"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.repl = append(e.repl, root, "/home/dev")
	return e
}

// stable records that addr ("127.0.0.1:41234") is to appear as the next
// stable upstream address, or as want if it is given.
func (e *gen) stable(addr string, want ...string) {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
	to := fmt.Sprintf("127.0.0.1:%d", e.next)
	if len(want) > 0 {
		to = want[0]
	} else {
		e.next++
	}
	e.repl = append(e.repl, addr, to)
}

// gate starts a modgate with ups, stably named 127.0.0.1:7070, and points
// the go command at it.
func (e *gen) gate(ups ...upstream.Config) string {
	return e.gateConfig(sidecar.Config{Upstreams: ups})
}

// gateConfig is gate with a whole config.
func (e *gen) gateConfig(cfg sidecar.Config) string {
	url := startExplainGate(e.t, nil, cfg)
	e.stable(url, "127.0.0.1:7070")
	e.g.UseProxy(url, e.db)
	return url
}

// withPolicy returns the store of a policy file holding text.
func (e *gen) withPolicy(text string) *policy.Store {
	file := filepath.Join(e.t.TempDir(), "policy.yaml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	st, err := policy.NewStore(file)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// startExplainGate serves a modgate with cfg on ln (a fresh listener when
// nil) until the test ends.
func startExplainGate(t *testing.T, ln net.Listener, cfg sidecar.Config) string {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Listen = ln.Addr().String()
	if cfg.SumDB == "" {
		cfg.SumDB = genSumDB
	}
	s, err := sidecar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, nil) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return "http://" + ln.Addr().String()
}

// proxy starts a modtest proxy that also serves the checksum database.
func (e *gen) proxy() *modtest.Proxy {
	p := modtest.NewProxy(e.t, e.fx, modtest.WithSumDB(e.db))
	e.stable(p.URL)
	return p
}

// run runs the go command and returns what it printed, with the
// replacements applied. A scenario is meant to fail: success is an error
// unless ok is set.
func (e *gen) run(ok bool, args ...string) string {
	e.t.Helper()
	stdout, stderr, err := e.g.Run(args...)
	if (err == nil) != ok {
		e.t.Fatalf("go %s: err = %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.NewReplacer(e.repl...).Replace(stdout + stderr)
}

// addModule adds a one-file module to the fixtures.
func (e *gen) addModule(path, version string) {
	m, err := modtest.NewModule(path, version,
		modtest.File{Name: "go.mod", Data: []byte("module " + path + "\n\ngo 1.21\n")},
		modtest.File{Name: "x.go", Data: []byte("// Package x is a fixture.\npackage x\n")})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.fx.Add(m); err != nil {
		e.t.Fatal(err)
	}
}

func (e *gen) writeGoMod(requires ...string) {
	mod := "module example.test/app\n\ngo 1.21\n"
	for _, r := range requires {
		mod += "\nrequire " + r + "\n"
	}
	e.g.WriteFile("go.mod", mod)
}

// silentListener accepts connections and never says a word: a TLS
// handshake with it times out.
func silentListener(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// blackholeAddr returns a loopback address whose connection attempts time
// out: a listener with a backlog of 0 that never accepts, its one queue slot
// taken, so that Linux drops every further SYN. It stays on 127.0.0.1, so no
// packet leaves the machine.
func blackholeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	// listen(2) again on a listening socket changes its backlog. syscall's
	// descriptor type differs by OS (int, Handle): convert by reflection so
	// that this file builds everywhere; only Linux runs the generator.
	rc.Control(func(fd uintptr) {
		listen := reflect.ValueOf(syscall.Listen)
		out := listen.Call([]reflect.Value{reflect.ValueOf(fd).Convert(listen.Type().In(0)), reflect.ValueOf(0)})
		if !out[0].IsNil() {
			t.Fatalf("listen: %v", out[0].Interface())
		}
	})
	addr := ln.Addr().String()
	for i := 0; i < 4; i++ {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	if c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("blackhole %s accepted a connection", addr)
	}
	return addr
}

// forbiddenUpstream answers every request 403 with a one-line text body,
// as an upstream that wants credentials does.
func forbiddenUpstream(t *testing.T) string {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "forbidden: token required for "+r.URL.Path+"\n")
	})}
	return serveLoopback(t, srv)
}

func serveLoopback(t *testing.T, srv *http.Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// connectStub is an HTTP forward proxy that refuses every CONNECT with
// code, as a corporate proxy does for a host it blocks (403) or a client
// without credentials (407).
func connectStub(t *testing.T, code int) string {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code == http.StatusProxyAuthRequired {
			w.Header().Set("Proxy-Authenticate", `Basic realm="proxy.corp.example.test"`)
		}
		http.Error(w, http.StatusText(code), code)
	})}
	return serveLoopback(t, srv)
}

// gitOrigin is an HTTP forward proxy that plays git.fixture.test: it
// answers ?go-get=1 discovery, serves the bare repositories under root with
// git http-backend (CGI), asks for credentials under /team/private, and
// refuses CONNECT, so that the go command (GOINSECURE) falls back to plain
// HTTP. Nothing is resolved or dialled: the go command and git send every
// request to it through HTTP_PROXY.
func gitOrigin(t *testing.T, root string) string {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		t.Skip("no git")
	}
	backend := &cgi.Handler{
		Path: gitBin,
		Args: []string{"http-backend"},
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			http.Error(w, "no TLS here", http.StatusForbidden)
			return
		}
		repo, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), ".git")
		// Like a forge, the repository is the first two path elements.
		if elems := strings.SplitN(repo, "/", 3); len(elems) >= 2 {
			repo = elems[0] + "/" + elems[1]
		} else {
			http.NotFound(w, r)
			return
		}
		switch {
		case r.URL.Query().Get("go-get") == "1":
			fmt.Fprintf(w, `<html><head><meta name="go-import" content="git.fixture.test/%s git http://git.fixture.test/%s.git"></head></html>`, repo, repo)
		case strings.HasPrefix(repo, "team/private"):
			w.Header().Set("WWW-Authenticate", `Basic realm="git.fixture.test"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
		default:
			r2 := r.Clone(r.Context())
			r2.URL.Scheme, r2.URL.Host = "", ""
			r2.RequestURI = r2.URL.RequestURI()
			backend.ServeHTTP(w, r2)
		}
	})}
	return serveLoopback(t, srv)
}

func TestGenerateExplainFixtures(t *testing.T) {
	if !*explainGen {
		t.Skip("run with -explain.gen to regenerate the fixtures")
	}
	scenarios := map[string]func(t *testing.T) string{
		"nothing-wrong": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod()
			return e.run(true, "get", "fixture.test/dep13@v1.0.0")
		},
		"modgate-not-running": func(t *testing.T) string {
			e := newGen(t)
			dead := modtest.DeadURL(t)
			e.stable(dead, "127.0.0.1:7070")
			e.g.UseProxy(dead, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"several-errors": func(t *testing.T) string {
			// One go mod download, three modules: one denied by policy, one
			// that no upstream has, one fine.
			e := newGen(t)
			p := e.proxy()
			e.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}}, Policy: e.withPolicy(`rules:
  - deny: "fixture.test/dep05"
    versions: "<v1.1.0"
    reason: "CVE-2099-0001, fixed in v1.1.0"
`)})
			return e.run(false, "mod", "download", "fixture.test/dep05@v1.0.0", "fixture.test/nosuch@v1.2.3", "fixture.test/dep13@v1.0.0")
		},
		"goproxy-off": func(t *testing.T) string {
			e := newGen(t)
			e.g.UseProxy("off", nil)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"chain-off": func(t *testing.T) string {
			e := newGen(t)
			e.gate(upstream.Config{URL: "off"})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"io-timeout": func(t *testing.T) string {
			e := newGen(t)
			addr := blackholeAddr(t)
			e.stable(addr, "127.0.0.1:7070")
			e.g.UseProxy("http://"+addr, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"tls-handshake-timeout": func(t *testing.T) string {
			e := newGen(t)
			addr := silentListener(t)
			e.stable(addr, "mods.corp.example.test")
			e.g.UseProxy("https://"+addr, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"x509-unknown-authority": func(t *testing.T) string {
			e := newGen(t)
			p := modtest.NewProxyTLS(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "127.0.0.1:7070")
			e.g.UseProxy(p.URL, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"http-response-to-https": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			url := e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.g.UseProxy(strings.Replace(url, "http://", "https://", 1), e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxyconnect-refused": func(t *testing.T) string {
			e := newGen(t)
			dead := modtest.DeadURL(t)
			e.stable(dead, "127.0.0.1:7070")
			e.g.UseProxy("https://proxy.example.test", e.db)
			e.g.Setenv("HTTPS_PROXY", dead)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"connect-forbidden": func(t *testing.T) string {
			e := newGen(t)
			fwd := connectStub(t, http.StatusForbidden)
			e.stable(fwd, "proxy.corp.example.test:3128")
			e.g.UseProxy("https://proxy.example.test", e.db)
			e.g.Setenv("HTTPS_PROXY", fwd)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxy-auth-required": func(t *testing.T) string {
			e := newGen(t)
			fwd := connectStub(t, http.StatusProxyAuthRequired)
			e.stable(fwd, "proxy.corp.example.test:3128")
			e.g.UseProxy("https://proxy.example.test", e.db)
			e.g.Setenv("HTTPS_PROXY", fwd)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"policy-deny": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}}, Policy: e.withPolicy(`private: ["*.corp.example.test"]
rules:
  - deny: "fixture.test/dep05"
    versions: "<v1.1.0"
    reason: "CVE-2099-0001, fixed in v1.1.0"
  - allow: "*"
contact: "ask #platform-builds"
`)})
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/dep05@v1.0.0")
		},
		"leak-guard": func(t *testing.T) string {
			e := newGen(t)
			e.addModule("git.corp.example.test/team/lib", "v1.0.0")
			p := e.proxy()
			e.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "internal", URL: p.URL, Private: true}},
				Policy: e.withPolicy("private: [\"*.corp.example.test\"]\n")})
			e.writeGoMod()
			return e.run(false, "get", "git.corp.example.test/team/lib@v1.0.0")
		},
		"private-no-private-upstream": func(t *testing.T) string {
			// The module is private, and the only upstream is not marked
			// private: modgate asks nobody.
			e := newGen(t)
			e.addModule("git.corp.example.test/team/lib", "v1.0.0")
			p := e.proxy()
			e.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}},
				Policy: e.withPolicy("private: [\"*.corp.example.test\"]\n")})
			e.writeGoMod()
			return e.run(false, "get", "git.corp.example.test/team/lib@v1.0.0")
		},
		"private-module-sumdb-proxy": func(t *testing.T) string {
			// The same leak guard, hit by go mod download in a module.
			e := newGen(t)
			e.addModule("github.com/acme/secret", "v0.3.0")
			p := e.proxy()
			e.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "internal", URL: p.URL, Private: true}},
				Policy: e.withPolicy("private: [\"github.com/acme/*\"]\n")})
			e.writeGoMod("github.com/acme/secret v0.3.0")
			return e.run(false, "mod", "download")
		},
		"connect-refused-by-modgate": func(t *testing.T) string {
			// modgate in forward mode refuses a CONNECT to a host outside
			// allow_hosts, with the reason in the status line.
			e := newGen(t)
			p := e.proxy()
			url := startExplainGate(t, nil, sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}},
				Forward: sidecar.ForwardConfig{AllowHosts: []string{"mods.corp.example.test"}}})
			e.stable(url, "127.0.0.1:7070")
			e.g.UseProxy("https://proxy.example.test", e.db)
			e.g.Setenv("HTTPS_PROXY", url)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"upstream-403-comma": func(t *testing.T) string {
			e := newGen(t)
			internal := forbiddenUpstream(t)
			e.stable(internal)
			p := e.proxy()
			e.gate(upstream.Config{Name: "internal", URL: internal}, upstream.Config{Name: "public", URL: p.URL})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"upstream-404-410": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "internal", URL: p.URL + "/f/410"}, upstream.Config{Name: "public", URL: p.URL + "/f/404"})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"chain-ends-in-direct": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL}, upstream.Config{URL: "direct"})
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/nosuchmodule@v1.0.0")
		},
		"upstream-500-pipe": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "internal", URL: p.URL + "/f/500", Fallthrough: upstream.OnError, Retry: upstream.RetrySettings{Attempts: 1}},
				upstream.Config{Name: "public", URL: p.URL + "/f/503", Retry: upstream.RetrySettings{Attempts: 1}})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"upstream-429": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL + "/f/429"})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxy-not-found": func(t *testing.T) string {
			// A module proxy that is not modgate says not found.
			e := newGen(t)
			p := modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "mods.corp.example.test")
			e.g.UseProxy(p.URL, e.db)
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/dep01@v1.0.1")
		},
		"proxy-429": func(t *testing.T) string {
			e := newGen(t)
			p := modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "mods.corp.example.test")
			e.g.UseProxy(p.URL+"/f/429ra30", e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"upstream-refused": func(t *testing.T) string {
			e := newGen(t)
			dead := modtest.DeadURL(t)
			e.stable(dead)
			e.gate(upstream.Config{Name: "internal", URL: dead, Retry: upstream.RetrySettings{Attempts: 1}})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"upstream-dial-timeout": func(t *testing.T) string {
			e := newGen(t)
			addr := blackholeAddr(t)
			e.stable(addr)
			e.gate(upstream.Config{Name: "internal", URL: "http://" + addr, Timeouts: upstream.Timeouts{Dial: time.Second}, Retry: upstream.RetrySettings{Attempts: 1}})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"gateway-timeout": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL + "/f/hang", Timeouts: upstream.Timeouts{Header: 2 * time.Second}})
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"circuit-open": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL + "/f/500", Retry: upstream.RetrySettings{Attempts: 1},
				Breaker: upstream.BreakerSettings{ConsecutiveFailures: 1, OpenFor: 30 * time.Second}})
			e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"loop": func(t *testing.T) string {
			e := newGen(t)
			lnA, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			lnB, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			a := startExplainGate(t, lnA, sidecar.Config{Upstreams: []upstream.Config{{Name: "mirror", URL: "http://" + lnB.Addr().String()}}})
			startExplainGate(t, lnB, sidecar.Config{Upstreams: []upstream.Config{{Name: "edge", URL: a}}})
			e.stable(a, "127.0.0.1:7070")
			e.stable(lnB.Addr().String(), "mirror.corp.example.test:7070")
			e.g.UseProxy(a, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"no-matching-versions": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/dep01@v1.9")
		},
		"checksum-mismatch-gosum": func(t *testing.T) string {
			e := newGen(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod("fixture.test/dep13 v1.0.0")
			e.g.WriteFile("go.sum", "fixture.test/dep13 v1.0.0 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
			return e.run(false, "mod", "download", "fixture.test/dep13")
		},
		"checksum-mismatch-sumdb": func(t *testing.T) string {
			// The database vouches for the fixtures; the upstream serves a
			// dep13 v1.0.0 whose zip differs.
			e := newGen(t)
			tampered := &modtest.Fixtures{}
			orig, _ := e.fx.Lookup("fixture.test/dep13", "v1.0.0")
			m, err := modtest.NewModule("fixture.test/dep13", "v1.0.0",
				modtest.File{Name: "go.mod", Data: orig.Mod},
				modtest.File{Name: "dep13.go", Data: []byte("// Package dep13 was replaced.\npackage dep13\n\n// Name says who.\nfunc Name() string { return \"mallory\" }\n")})
			if err != nil {
				t.Fatal(err)
			}
			tampered.Add(m)
			p := modtest.NewProxy(t, tampered, modtest.WithSumDB(e.db))
			e.stable(p.URL)
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			return e.run(false, "mod", "download", "fixture.test/dep13@v1.0.0")
		},
		"unknown-revision": func(t *testing.T) string {
			e := newGen(t)
			root := t.TempDir()
			makeBareRepo(t, filepath.Join(root, "team", "repo.git"), "git.fixture.test/team/repo")
			origin := gitOrigin(t, root)
			e.useGitOrigin(origin)
			e.writeGoMod()
			return e.run(false, "get", "git.fixture.test/team/repo@v9.9.9")
		},
		"terminal-prompts-disabled": func(t *testing.T) string {
			e := newGen(t)
			origin := gitOrigin(t, t.TempDir())
			e.useGitOrigin(origin)
			e.writeGoMod()
			return e.run(false, "get", "git.fixture.test/team/private@latest")
		},
	}
	if err := os.MkdirAll(explainDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, f := range scenarios {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out := f(t)
			if err := os.WriteFile(filepath.Join(explainDir, name+".txt"), []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// useGitOrigin makes the go command fetch git.fixture.test directly, through
// origin as its HTTP proxy, over plain HTTP.
func (e *gen) useGitOrigin(origin string) {
	e.stable(origin, "proxy.corp.example.test:3128")
	e.g.Setenv("GOPROXY", "direct")
	e.g.Setenv("GOSUMDB", "off")
	e.g.Setenv("GOPRIVATE", "git.fixture.test")
	e.g.Setenv("GOINSECURE", "git.fixture.test")
	for _, k := range []string{"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"} {
		e.g.Setenv(k, origin)
	}
	e.g.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	e.g.Setenv("GIT_CONFIG_GLOBAL", os.DevNull)
	// The go command names its VCS cache directory by a hash of the
	// repository URL; the hash is stable, the root is replaced already.
}

// makeBareRepo creates a bare git repository at dir holding one commit of a
// module named path, tagged v1.0.0.
func makeBareRepo(t *testing.T, dir, path string) {
	work := t.TempDir()
	git := func(dir string, args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL="+os.DevNull,
			"GIT_AUTHOR_NAME=dev", "GIT_AUTHOR_EMAIL=dev@example.test", "GIT_COMMITTER_NAME=dev", "GIT_COMMITTER_EMAIL=dev@example.test",
			"GIT_AUTHOR_DATE=2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE=2024-01-01T00:00:00Z")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	os.WriteFile(filepath.Join(work, "go.mod"), []byte("module "+path+"\n\ngo 1.21\n"), 0o644)
	os.WriteFile(filepath.Join(work, "repo.go"), []byte("// Package repo is a fixture.\npackage repo\n"), 0o644)
	git(work, "init", "-q", "-b", "main")
	git(work, "add", ".")
	git(work, "commit", "-q", "-m", "first")
	git(work, "tag", "v1.0.0")
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	git(work, "clone", "-q", "--bare", work, dir)
}

// FuzzExplain feeds explain arbitrary output: it never panics, and every
// explanation it gives quotes lines that were in the input.
func FuzzExplain(f *testing.F) {
	entries, _ := os.ReadDir(filepath.Join("testdata", "explain"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".txt") {
			b, _ := os.ReadFile(filepath.Join("testdata", "explain", e.Name()))
			f.Add(string(b))
		}
	}
	f.Add("go: example.test/m@v1.0.0: reading http://127.0.0.1:7070/x: 502 Bad Gateway\n\tserver response:\n\tmodgate: x\n")
	f.Fuzz(func(t *testing.T, text string) {
		for _, e := range explainText(text) {
			for _, line := range e.Saw {
				if !strings.Contains(text, strings.TrimSpace(line)) {
					t.Fatalf("explanation quotes %q, which is not in the input", line)
				}
			}
		}
	})
}
