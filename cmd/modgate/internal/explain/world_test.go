package explain

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// TestMain checks that the sidecars and servers the scenarios start are
// all gone when the tests end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// world is one scenario: module fixtures, a checksum database that vouches
// for them, a hermetic go command, and the modgates and servers the
// scenario starts. Its run replaces addresses and temporary directories by
// stable ones, so that what the go command printed can be stored and
// compared.
type world struct {
	t    *testing.T
	fx   *modtest.Fixtures
	db   *modtest.SumDB
	g    *modtest.Go
	repl []string // old, new pairs for strings.NewReplacer
	next int      // next stable upstream port
}

const sumdbName = "sum.fixture.test"

func newWorld(t *testing.T) *world {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	e := &world{t: t, fx: fx, db: modtest.NewSumDB(t, sumdbName, fx), g: modtest.NewGo(t), next: 9001}
	e.repl = append(e.repl, filepath.Dir(e.g.Dir()), "/home/dev")
	return e
}

// stable records that addr ("127.0.0.1:41234") is to appear as the next
// stable upstream address, or as want if it is given.
func (e *world) stable(addr string, want ...string) {
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
func (e *world) gate(ups ...upstream.Config) string {
	return e.gateConfig(sidecar.Config{Upstreams: ups})
}

// gateConfig is gate with a whole config.
func (e *world) gateConfig(cfg sidecar.Config) string {
	url := startGate(e.t, nil, cfg)
	e.stable(url, "127.0.0.1:7070")
	e.g.UseProxy(url, e.db)
	return url
}

// withPolicy returns the store of a policy file holding text.
func (e *world) withPolicy(text string) *policy.Store {
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

// startGate serves a modgate with cfg on ln (a fresh listener when nil)
// until the test ends, and returns its URL.
func startGate(t *testing.T, ln net.Listener, cfg sidecar.Config) string {
	t.Helper()
	if cfg.SumDB == "" {
		cfg.SumDB = sumdbName
	}
	return sidecartest.Start(t, ln, cfg).URL
}

// proxy starts a modtest proxy that also serves the checksum database.
func (e *world) proxy() *modtest.Proxy {
	p := modtest.NewProxy(e.t, e.fx, modtest.WithSumDB(e.db))
	e.stable(p.URL)
	return p
}

// run runs the go command and returns what it printed, with the
// replacements applied. A scenario is meant to fail: success is an error
// unless ok is set.
func (e *world) run(ok bool, args ...string) string {
	e.t.Helper()
	stdout, stderr, err := e.g.Run(args...)
	if (err == nil) != ok {
		e.t.Fatalf("go %s: err = %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return strings.NewReplacer(e.repl...).Replace(stdout + stderr)
}

// addModule adds a one-file module to the fixtures.
func (e *world) addModule(path, version string) {
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

func (e *world) writeGoMod(requires ...string) {
	mod := "module example.test/app\n\ngo 1.21\n"
	for _, r := range requires {
		mod += "\nrequire " + r + "\n"
	}
	e.g.WriteFile("go.mod", mod)
}

// silentListener accepts connections and never says a word: a TLS
// handshake with it times out.
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
