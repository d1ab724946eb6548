package explain

import (
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// The go command's own errors are stored as fixtures (testdata/gocmd):
// some take long to provoke (timeouts) or need git, and none depends on
// what modgate writes. They are made by
//
//	go test ./cmd/modgate/internal/explain -run TestGenerateGoFixtures -gen -v
//
// which runs the real go command against local servers and writes what it
// printed to testdata/gocmd/<name>.txt, with addresses and temporary
// directories replaced by stable ones. Then run with -update and review the
// golden diffs. modgate's own answers are never stored: sidecar_test.go
// provokes them from a real sidecar in every test run.

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

func TestGenerateGoFixtures(t *testing.T) {
	if !*gen {
		t.Skip("run with -gen to regenerate the fixtures")
	}
	scenarios := map[string]func(t *testing.T) string{
		"nothing-wrong": func(t *testing.T) string {
			e := newWorld(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod()
			return e.run(true, "get", "fixture.test/dep13@v1.0.0")
		},
		"modgate-not-running": func(t *testing.T) string {
			e := newWorld(t)
			dead := modtest.DeadURL(t)
			e.stable(dead, "127.0.0.1:7070")
			e.g.UseProxy(dead, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"goproxy-off": func(t *testing.T) string {
			e := newWorld(t)
			e.g.UseProxy("off", nil)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"io-timeout": func(t *testing.T) string {
			e := newWorld(t)
			addr := blackholeAddr(t)
			e.stable(addr, "127.0.0.1:7070")
			e.g.UseProxy("http://"+addr, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"tls-handshake-timeout": func(t *testing.T) string {
			e := newWorld(t)
			addr := silentListener(t)
			e.stable(addr, "mods.corp.example.test")
			e.g.UseProxy("https://"+addr, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"x509-unknown-authority": func(t *testing.T) string {
			e := newWorld(t)
			p := modtest.NewProxyTLS(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "127.0.0.1:7070")
			e.g.UseProxy(p.URL, e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"http-response-to-https": func(t *testing.T) string {
			e := newWorld(t)
			p := e.proxy()
			url := e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.g.UseProxy(strings.Replace(url, "http://", "https://", 1), e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxyconnect-refused": func(t *testing.T) string {
			e := newWorld(t)
			dead := modtest.DeadURL(t)
			e.httpsProxy(dead, "127.0.0.1:7070")
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"connect-forbidden": func(t *testing.T) string {
			e := newWorld(t)
			fwd := connectStub(t, http.StatusForbidden)
			e.httpsProxy(fwd, "proxy.corp.example.test:3128")
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxy-auth-required": func(t *testing.T) string {
			e := newWorld(t)
			fwd := connectStub(t, http.StatusProxyAuthRequired)
			e.httpsProxy(fwd, "proxy.corp.example.test:3128")
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"proxy-not-found": func(t *testing.T) string {
			// A module proxy that is not modgate says not found.
			e := newWorld(t)
			p := modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "mods.corp.example.test")
			e.g.UseProxy(p.URL, e.db)
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/dep01@v1.0.1")
		},
		"proxy-429": func(t *testing.T) string {
			e := newWorld(t)
			p := modtest.NewProxy(t, e.fx, modtest.WithSumDB(e.db))
			e.stable(p.URL, "mods.corp.example.test")
			e.g.UseProxy(p.URL+"/f/429ra30", e.db)
			return e.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
		"no-matching-versions": func(t *testing.T) string {
			e := newWorld(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod()
			return e.run(false, "get", "fixture.test/dep01@v1.9")
		},
		"checksum-mismatch-gosum": func(t *testing.T) string {
			e := newWorld(t)
			p := e.proxy()
			e.gate(upstream.Config{Name: "public", URL: p.URL})
			e.writeGoMod("fixture.test/dep13 v1.0.0")
			e.g.WriteFile("go.sum", "fixture.test/dep13 v1.0.0 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
			return e.run(false, "mod", "download", "fixture.test/dep13")
		},
		"checksum-mismatch-sumdb": func(t *testing.T) string {
			// The database vouches for the fixtures; the upstream serves a
			// dep13 v1.0.0 whose zip differs.
			e := newWorld(t)
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
			e := newWorld(t)
			root := t.TempDir()
			makeBareRepo(t, filepath.Join(root, "team", "repo.git"), "git.fixture.test/team/repo")
			origin := gitOrigin(t, root)
			e.useGitOrigin(origin)
			e.writeGoMod()
			return e.run(false, "get", "git.fixture.test/team/repo@v9.9.9")
		},
		"terminal-prompts-disabled": func(t *testing.T) string {
			e := newWorld(t)
			origin := gitOrigin(t, t.TempDir())
			e.useGitOrigin(origin)
			e.writeGoMod()
			return e.run(false, "get", "git.fixture.test/team/private@latest")
		},
	}
	if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, f := range scenarios {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out := f(t)
			if err := os.WriteFile(filepath.Join(fixtureDir, name+".txt"), []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// httpsProxy makes the go command fetch from https://proxy.example.test
// through the HTTP proxy at proxyURL (its HTTPS_PROXY), shown as shownAs.
func (e *world) httpsProxy(proxyURL, shownAs string) {
	e.stable(proxyURL, shownAs)
	e.g.UseProxy("https://proxy.example.test", e.db)
	e.g.Setenv("HTTPS_PROXY", proxyURL)
}

// useGitOrigin makes the go command fetch git.fixture.test directly, through
// origin as its HTTP proxy, over plain HTTP.
func (e *world) useGitOrigin(origin string) {
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
