package sidecar_test

import (
	"archive/zip"
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// Odd but valid modules beyond what fidelityCases compare: what modgate
// keeps of them, and what policy decides on.

// TestResolvedVersionKeptForTTL: v2.0.0 of a path without /v2 is no
// version of the module but a query the proxy resolves (to
// v2.0.0+incompatible, or to a pseudo-version), so its .info is kept for
// the TTL like a branch's, never as an immutable artifact: when the proxy
// resolves it elsewhere, modgate follows once the TTL is over. The .info
// of the version it resolved to is a key of its own, fetched as such.
func TestResolvedVersionKeptForTTL(t *testing.T) {
	t.Parallel()
	const path = "fixture.test/moving"
	const pseudo = "v1.0.1-0.20240401000000-5d7e1f0a9b3c"
	fx := &modtest.Fixtures{}
	old, err := modtest.NewModule(path, pseudo, modtest.File{Name: "go.mod", Data: []byte("module " + path + "\n")})
	if err != nil {
		t.Fatal(err)
	}
	old.Queries = []string{"v2.0.0"}
	add(t, fx, old)
	p := modtest.NewProxy(t, fx)
	clock := modtest.NewClock()
	url := startGate(t, sidecar.Config{
		Clock:     clock,
		Cache:     sidecar.CacheConfig{Dir: t.TempDir(), ListTTL: time.Minute},
		Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}},
	})
	info := func(version, want string) (age string) {
		t.Helper()
		status, h, body := rawGet(t, url, "/"+path+"/@v/"+version+".info")
		if status != 200 || !strings.Contains(body, `"Version":"`+want+`"`) {
			t.Errorf("%s.info: %d %q; want the info of %s", version, status, body, want)
		}
		return h.Get("Age")
	}
	info("v2.0.0", pseudo)

	// The tag moves: the proxy now resolves v2.0.0 to +incompatible.
	old.Queries = nil
	add(t, fx, old)
	incompat, err := modtest.NewModule(path, "v2.0.0+incompatible", modtest.File{Name: "moving.go", Data: []byte("package moving\n")})
	if err != nil {
		t.Fatal(err)
	}
	incompat.Queries = []string{"v2.0.0"}
	add(t, fx, incompat)
	if age := info("v2.0.0", pseudo); age != "0" { // within the TTL, as kept
		t.Errorf("v2.0.0.info within the TTL: Age %q; want 0, an answer kept for the TTL", age)
	}
	clock.Advance(2 * time.Minute)
	info("v2.0.0", "v2.0.0+incompatible")
	info("v2.0.0+incompatible", "v2.0.0+incompatible")
	if n := p.CountMatching("/@v/v2.0.0+incompatible.info"); n != 1 {
		t.Errorf("v2.0.0+incompatible.info reached the upstream %d times; want once, for its own key", n)
	}
	if n := p.CountMatching("/@v/v2.0.0.info"); n != 2 {
		t.Errorf("v2.0.0.info reached the upstream %d times; want twice, once a TTL", n)
	}
}

func add(t *testing.T, fx *modtest.Fixtures, m modtest.Module) {
	t.Helper()
	if err := fx.Add(m); err != nil {
		t.Fatal(err)
	}
}

// TestFidelityDeniedResolvedTag: policy is decided on the version that
// v2.0.0 of a path without /v2 resolves to, not on "v2.0.0": a rule that
// denies every version below v2.0.0 denies the pseudo-version the tag
// resolves to, and its files never reach the build.
func TestFidelityDeniedResolvedTag(t *testing.T) {
	t.Parallel()
	r := newFidelityRig(t, "reverse", rigOptions{policy: `rules:
  - deny: "fixture.test/tagged"
    versions: "<v2.0.0"
    reason: "untagged commits, see REL-12"
default: allow
`})
	steps := []string{"go get fixture.test/tagged@v2.0.0"}
	files := map[string]string{"go.mod": consumerMod}
	checkExpectations(t, steps, runScript(t, r.direct(t), files, steps))
	res := runScript(t, r.through(t), files, steps)[0]
	// Refused at the .info already: the go command never learns the
	// denied version (its .mod would be refused too).
	if res.exit == 0 || !strings.Contains(res.stderr, "/@v/v2.0.0.info: 403 Forbidden") || !strings.Contains(res.stderr, "untagged commits, see REL-12") {
		t.Errorf("%s through modgate: exit %d; want modgate's 403 for v2.0.0.info\n%s", res.step, res.exit, res.stderr)
	}
	head := "/fixture.test/tagged/@v/v1.0.1-0.20240401000000-5d7e1f0a9b3c"
	for _, ext := range []string{".mod", ".zip"} {
		if n := r.up.CountMatching(head + ext); n > 1 {
			t.Errorf("%s%s reached the fixture proxy %d times; want at most once (the direct side's)", head, ext, n)
		}
	}
}

// TestFidelityOddZipKept: a zip that golang.org/x/mod/zip's CheckZip
// refuses (two names that differ only in case) but the go command
// downloads (cmd/go/internal/modfetch/fetch.go, downloadZip) and keeps in
// its module cache, refusing it only when it extracts it: modgate keeps
// it too, so that with the upstream gone a build gets the go command's own
// error, as it does straight from the proxy.
func TestFidelityOddZipKept(t *testing.T) {
	t.Parallel()
	const path, version = "fixture.test/oddzip", "v1.0.0"
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{
		{"go.mod", "module " + path + "\n\ngo 1.21\n"},
		{"oddzip.go", "package oddzip\n"},
		{"README", "upper\n"},
		{"readme", "lower\n"},
	} {
		w, err := zw.Create(path + "@" + version + "/" + f.name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(f.body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	fx := &modtest.Fixtures{}
	add(t, fx, modtest.Module{Path: path, Version: version, Mod: []byte("module " + path + "\n\ngo 1.21\n"), Zip: buf.Bytes()})
	r := newFidelityRig(t, "reverse", rigOptions{fixtures: fx})
	steps := []string{"! go mod download -json " + path + "@" + version}
	files := map[string]string{"go.mod": consumerMod}
	direct := runScript(t, r.direct(t), files, steps)
	checkExpectations(t, steps, direct)
	if !strings.Contains(direct[0].stdout, "case-insensitive file name collision") {
		t.Fatalf("direct: want the go command's own refusal on extraction:\n%s", direct[0].stdout)
	}
	warm := runScript(t, r.through(t), files, steps)
	r.gate.Server.Settle() // the zip is checked and kept once it is relayed
	r.up.Close()
	cold := runScript(t, r.through(t), files, steps)
	for _, d := range append(diffSides("direct", "modgate", direct, warm), diffSides("direct", "modgate, upstream gone", direct, cold)...) {
		t.Errorf("the go command disagrees through modgate: %s", d)
	}
}
