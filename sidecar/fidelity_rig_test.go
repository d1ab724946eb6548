package sidecar_test

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// The protocol fidelity oracle (issue #15): the go command itself judges
// modgate. A script of go commands runs twice in fresh module directories
// and module caches, once straight against the fixture proxy and once
// through modgate in front of it, and each step must end with the same
// exit status and the same standard output. Standard error may differ:
// modgate's explanations are meant to be clearer.

// fidelityToolchain is the Go version of the fake toolchain module that
// the fidelity fixtures hold, for GOTOOLCHAIN switches.
const fidelityToolchain = "go1.99.0"

var (
	fidelityFixturesOnce sync.Once
	fidelityFixtures     *modtest.Fixtures
)

// loadFidelityFixtures loads testdata/mod plus the fake toolchain for this
// host; a set of its own so that no other test sees the toolchain.
func loadFidelityFixtures(t *testing.T) *modtest.Fixtures {
	fidelityFixturesOnce.Do(func() {
		fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
		tc, err := modtest.NewToolchain(fidelityToolchain, runtime.GOOS, runtime.GOARCH)
		if err != nil {
			t.Fatal(err)
		}
		if err := fx.Add(tc); err != nil {
			t.Fatal(err)
		}
		fidelityFixtures = fx
	})
	if fidelityFixtures == nil {
		t.Fatal("fidelity fixtures failed to load")
	}
	return fidelityFixtures
}

// rigOptions shape one fidelity rig.
type rigOptions struct {
	// sumdbName names the checksum database; empty means sumdbName.
	sumdbName string
	// sumdbAtURL serves the database at https://<name> (modtest.ServeNamed)
	// instead of through the fixture proxy.
	sumdbAtURL bool
	// prefix mounts the fixture proxy under a path.
	prefix string
	// policy is modgate's policy file; empty means none.
	policy string
	// fixtures are the modules served; nil means testdata/mod and the
	// fake toolchain.
	fixtures *modtest.Fixtures
}

// fidelityRig is the fixture proxy and checksum database, and modgate in
// front of them in one mode: "reverse" (GOPROXY=modgate), "forward"
// (GOPROXY=http://proxy.fixture.test<prefix>, HTTP_PROXY=modgate) or "mitm"
// (GOPROXY=https://proxy.fixture.test<prefix>, HTTPS_PROXY=modgate, which
// intercepts proxy.fixture.test and sum.fixture.test).
type fidelityRig struct {
	mode  string
	opts  rigOptions
	fx    *modtest.Fixtures
	db    *modtest.SumDB
	up    *modtest.Proxy       // the fixture proxy
	named *modtest.NamedServer // the database at its URL, with sumdbAtURL
	gate  *sidecartest.Gate    // modgate
	caPEM []byte               // modgate's CA, in mitm mode
	cfg   sidecar.Config       // modgate's configuration, as started
}

// sumdbHost stands for the checksum database's host in mitm mode.
const sumdbHost = "sum.fixture.test"

func newFidelityRig(t *testing.T, mode string, opts rigOptions) *fidelityRig {
	t.Helper()
	if opts.sumdbName == "" {
		opts.sumdbName = sumdbName
	}
	fx := opts.fixtures
	if fx == nil {
		fx = loadFidelityFixtures(t)
	}
	r := &fidelityRig{mode: mode, opts: opts, fx: fx, db: modtest.NewSumDB(t, opts.sumdbName, fx)}
	// A tree that grows while the go command reads it makes the tiles it
	// reads depend on the order of its lookups; then a warm cache would
	// miss tiles for no fault of modgate's.
	r.db.Preload(t)
	var popts []modtest.ProxyOption
	if !opts.sumdbAtURL {
		popts = append(popts, modtest.WithSumDB(r.db))
	}
	if opts.prefix != "" {
		popts = append(popts, modtest.WithPathPrefix(opts.prefix))
	}
	roots := x509.NewCertPool()
	if mode == "mitm" {
		r.up = modtest.NewProxyTLS(t, fx, append(popts, modtest.WithTLSNames(proxyHost))...)
		roots.AppendCertsFromPEM(r.up.CAPEM())
	} else {
		r.up = modtest.NewProxy(t, fx, popts...)
	}
	cfg := sidecar.Config{
		SumDB:    opts.sumdbName,
		SumDBKey: r.db.VerifierKey,
		RootCAs:  roots,
		Resolve:  map[string]string{},
		Cache:    sidecar.CacheConfig{Dir: t.TempDir()},
	}
	if opts.sumdbAtURL {
		r.named = r.db.ServeNamed(t)
		roots.AppendCertsFromPEM(r.named.CAPEM)
		if mode == "reverse" {
			// GOSUMDB's "name+key URL" form, as modgate's config has it.
			cfg.SumDBURL = r.named.Local
		} else {
			// The go command goes to https://<name> through modgate.
			cfg.Resolve[r.named.Host+":443"] = r.named.Addr
		}
	}
	if opts.policy != "" {
		cfg.Policy, _ = policyStore(t, opts.policy)
	}
	switch mode {
	case "reverse":
		cfg.Upstreams = []upstream.Config{{Name: "fixtures", URL: r.up.URL}}
	case "forward", "mitm":
		// The chain is a laptop's go env GOPROXY, the same proxy: only
		// modgate's own lookups (verification) take it.
		cfg.Upstreams = []upstream.Config{{Name: "fixtures", URL: r.up.URL}}
		upURL, err := url.Parse(r.up.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Forward.AllowHosts = []string{proxyHost, sumdbHost}
		if mode == "forward" {
			cfg.Resolve[proxyHost+":80"] = upURL.Host
			break
		}
		ca, pem := newCA(t)
		r.caPEM = pem
		cfg.Resolve[proxyHost+":443"] = upURL.Host
		cfg.Forward.MITMHosts, cfg.Forward.CA = []string{proxyHost, sumdbHost}, ca
	default:
		t.Fatalf("unknown fidelity mode %q", mode)
	}
	r.cfg = cfg
	r.gate = sidecartest.Start(t, nil, cfg)
	return r
}

// direct returns a go command that reaches the fixtures straight.
func (r *fidelityRig) direct(t *testing.T) *modtest.Go {
	g := modtest.NewGo(t)
	g.UseProxy(r.up.URL, r.db)
	if r.mode == "mitm" {
		g.TrustPEM(r.up.CAPEM())
	}
	if r.named != nil {
		g.Setenv("GOSUMDB", r.db.GOSUMDB(r.named.Local))
		g.TrustPEM(r.named.CAPEM)
	}
	return g
}

// through returns a go command that reaches the fixtures through modgate.
func (r *fidelityRig) through(t *testing.T) *modtest.Go {
	g := modtest.NewGo(t)
	switch r.mode {
	case "reverse":
		// The go command asks modgate for /sumdb/<name>/..., whatever
		// modgate does to reach the database.
		g.UseProxy(r.gate.URL, r.db)
	case "forward":
		g.UseProxy("http://"+proxyHost+r.opts.prefix, r.db)
		g.Setenv("HTTP_PROXY", r.gate.URL)
		g.Setenv("http_proxy", r.gate.URL)
	case "mitm":
		g.UseProxy("https://"+proxyHost+r.opts.prefix, r.db)
		if r.named != nil {
			// GOSUMDB's "name+key URL" form: straight to the URL, which
			// HTTPS_PROXY sends through modgate.
			g.Setenv("GOSUMDB", r.db.GOSUMDB(r.named.URL))
		}
		g.TrustPEM(r.caPEM)
		g.Setenv("HTTPS_PROXY", r.gate.URL)
		g.Setenv("https_proxy", r.gate.URL)
	}
	return g
}

// A stepResult is what one step of a script did.
type stepResult struct {
	step   string
	exit   int // 0, or the go command's exit status; -1 if it did not run
	stdout string
	stderr string
}

// runScript writes files into g's working directory and runs the steps in
// order, each "go ..." (arguments split on spaces) or "cat FILE" (the
// file's content, "" when it does not exist). A step that starts with "! "
// is expected to fail, as in testscript; the expectation is checked on the
// direct side only (checkExpectations), so that it judges the fixtures, not
// modgate.
func runScript(t *testing.T, g *modtest.Go, files map[string]string, steps []string) []stepResult {
	t.Helper()
	for name, content := range files {
		g.WriteFile(name, content)
	}
	var out []stepResult
	for _, step := range steps {
		res := stepResult{step: step}
		args := strings.Fields(strings.TrimPrefix(step, "! "))
		switch args[0] {
		case "go":
			stdout, stderr, err := g.Run(args[1:]...)
			res.stdout, res.stderr = normalize(g, stdout), stderr
			var ee *exec.ExitError
			switch {
			case err == nil:
			case errors.As(err, &ee):
				res.exit = ee.ExitCode()
			default:
				res.exit = -1
				res.stderr += "\n" + err.Error()
			}
		case "cat":
			data, err := os.ReadFile(filepath.Join(g.Dir(), args[1]))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			res.stdout = string(data)
		default:
			t.Fatalf("fidelity script: unknown step %q", step)
		}
		out = append(out, res)
	}
	return out
}

// normalize replaces the directories of one side with names, so that
// output that shows paths (-json) compares across sides.
func normalize(g *modtest.Go, s string) string {
	for _, k := range []string{"GOMODCACHE", "GOPATH"} {
		if v := g.Getenv(k); v != "" {
			s = strings.ReplaceAll(s, v, "$"+k)
		}
	}
	return strings.ReplaceAll(s, g.Dir(), "$WORK")
}

// checkExpectations fails the test when the direct side does not do what
// the script says, so that a case cannot pass by failing on both sides.
func checkExpectations(t *testing.T, steps []string, direct []stepResult) {
	t.Helper()
	for i, step := range steps {
		wantFail := strings.HasPrefix(step, "! ")
		if got := direct[i]; (got.exit != 0) != wantFail {
			t.Errorf("direct: %s: exit %d, want failure=%v (the fixtures, not modgate, are wrong)\n%s", step, got.exit, wantFail, got.stderr)
		}
	}
}

// diffSides lists every step whose exit status or standard output differs
// between two runs of one script (named a and b), with both runs' standard
// error.
func diffSides(a, b string, runA, runB []stepResult) []string {
	var diffs []string
	for i := range runA {
		x, y := runA[i], runB[i]
		if x.exit == y.exit && x.stdout == y.stdout {
			continue
		}
		diffs = append(diffs, fmt.Sprintf("%s:\n  %s: exit %d, stdout %q\n  %s: exit %d, stdout %q\n  %s stderr:\n%s\n  %s stderr:\n%s",
			x.step, a, x.exit, x.stdout, b, y.exit, y.stdout, a, indentLines(x.stderr), b, indentLines(y.stderr)))
	}
	return diffs
}

func indentLines(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "\t(empty)"
	}
	return "\t" + strings.ReplaceAll(s, "\n", "\n\t")
}
