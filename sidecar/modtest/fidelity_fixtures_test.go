package modtest

import (
	"archive/zip"
	"bytes"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

const branchHead = "v1.0.1-0.20240301000000-23179ee2d0f1"

// TestProxyQueries: /@v/<query>.info answers a branch name, a commit hash
// and a hash prefix with the info of the version they resolve to; .mod and
// .zip do not take queries; a canonical version is never a query.
func TestProxyQueries(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	p := NewProxy(t, fx)
	head, ok := fx.Lookup("fixture.test/branch", branchHead)
	if !ok || !strings.Contains(strings.Join(head.Queries, " "), "main") {
		t.Fatalf("fixture.test/branch@%s: %v, queries %q", branchHead, ok, head.Queries)
	}
	for _, q := range []string{"main", "23179ee", "23179ee2d0f1c8a7b5e4d3c2b1a0f9e8d7c6b5a4", branchHead} {
		r := mustGet(t, p.Client(), p.URL+"/fixture.test/branch/@v/"+q+".info")
		if r.code != 200 || r.body != string(head.Info) || !strings.Contains(r.body, `"Version":"`+branchHead+`"`) {
			t.Errorf("%s.info: %d %q, want the info of %s", q, r.code, r.body, branchHead)
		}
	}
	for _, path := range []string{
		"/fixture.test/branch/@v/main.mod",
		"/fixture.test/branch/@v/main.zip",
		"/fixture.test/branch/@v/dev.info",
		"/fixture.test/app/@v/main.info", // queries belong to one module
	} {
		if r := mustGet(t, p.Client(), p.URL+path); r.code != 404 {
			t.Errorf("GET %s: %d %q, want 404", path, r.code, r.body)
		}
	}
	// The branch head is a pseudo-version: listed by neither list nor @latest.
	if r := mustGet(t, p.Client(), p.URL+"/fixture.test/branch/@v/list"); r.body != "v1.0.0\n" {
		t.Errorf("list = %q", r.body)
	}
	if r := mustGet(t, p.Client(), p.URL+"/fixture.test/branch/@latest"); !strings.Contains(r.body, `"v1.0.0"`) {
		t.Errorf("@latest = %q", r.body)
	}
}

func TestFixtureQueryErrors(t *testing.T) {
	t.Parallel()
	const body = "-- .mod --\nmodule fixture.test/q\n-- q.go --\npackage q\n"
	for _, bad := range []string{"v1.0.0", "latest", "upgrade", "a b\x00"} {
		_, err := ParseFixture("fixture.test_q_v1.0.0.txtar", []byte("module fixture.test/q@v1.0.0\nquery: "+bad+"\n"+body))
		if err == nil || !strings.Contains(err.Error(), "query") {
			t.Errorf("query %q: %v, want an error", bad, err)
		}
	}
	m, err := ParseFixture("fixture.test_q_v1.0.0.txtar", []byte("module fixture.test/q@v1.0.0\nquery: main abc\nquery: def\n"+body))
	if err != nil || strings.Join(m.Queries, " ") != "main abc def" {
		t.Fatalf("ParseFixture: %v, queries %q", err, m.Queries)
	}
	// v2.0.0 is no version of a path without /v2: the proxy resolves it.
	if m, err := ParseFixture("fixture.test_q_v1.0.0.txtar", []byte("module fixture.test/q@v1.0.0\nquery: v2.0.0\n"+body)); err != nil || m.Queries[0] != "v2.0.0" {
		t.Errorf("query v2.0.0 of a path without /v2: %v", err)
	}
	var fx Fixtures
	if err := fx.Add(m); err != nil {
		t.Fatal(err)
	}
	other, _ := NewModule("fixture.test/q", "v1.1.0")
	other.Queries = []string{"abc"}
	if err := fx.Add(other); err == nil || !strings.Contains(err.Error(), "already resolves to v1.0.0") {
		t.Errorf("a second version with the same query: %v", err)
	}
	if got, ok := fx.Resolve("fixture.test/q", "def"); !ok || got.Version != "v1.0.0" {
		t.Errorf("Resolve(def) = %s, %v", got, ok)
	}
}

func TestFixtureIncompatible(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	m, ok := fx.Lookup("fixture.test/incompat", "v2.0.0+incompatible")
	if !ok || string(m.Mod) != "module fixture.test/incompat\n" {
		t.Fatalf("fixture.test/incompat@v2.0.0+incompatible: %v, .mod %q", ok, m.Mod)
	}
	if names := zipNames(t, m.Zip); strings.Contains(names, "go.mod") {
		t.Errorf("the zip of a +incompatible version has a go.mod: %s", names)
	}
	gen, err := NewModule("example.test/old", "v3.1.0+incompatible", File{Name: "old.go", Data: []byte("package old\n")})
	if err != nil || string(gen.Mod) != "module example.test/old\n" || strings.Contains(zipNames(t, gen.Zip), "go.mod") {
		t.Errorf("NewModule(+incompatible): %v, .mod %q, zip %s", err, gen.Mod, zipNames(t, gen.Zip))
	}
}

func zipNames(t *testing.T, data []byte) string {
	t.Helper()
	z, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range z.File {
		names = append(names, f.Name)
	}
	return strings.Join(names, " ")
}

// TestGoCommandFixtureKinds runs the go command against the new kinds of
// fixture: queries, retractions and deprecation, +incompatible.
func TestGoCommandFixtureKinds(t *testing.T) {
	t.Parallel()
	_, _, _, g := newTestSetup(t)
	g.WriteFile("go.mod", "module example.test/kinds\n\ngo 1.21\n")
	for _, q := range []string{"main", "23179ee", "23179ee2d0f1c8a7b5e4d3c2b1a0f9e8d7c6b5a4"} {
		if out, _ := g.MustRun("list", "-m", "fixture.test/branch@"+q); out != "fixture.test/branch "+branchHead+"\n" {
			t.Errorf("go list -m fixture.test/branch@%s = %q", q, out)
		}
	}
	if out, _ := g.MustRun("list", "-m", "-versions", "-retracted", "fixture.test/retract"); out != "fixture.test/retract v1.0.0 v1.1.0 v1.2.0\n" {
		t.Errorf("go list -m -versions -retracted = %q", out)
	}
	if out, _ := g.MustRun("list", "-m", "-versions", "fixture.test/retract"); out != "fixture.test/retract v1.0.0 v1.2.0\n" {
		t.Errorf("go list -m -versions = %q", out)
	}
	g.MustRun("get", "fixture.test/retract@v1.1.0", "fixture.test/incompat@v2.0.0+incompatible")
	out, _ := g.MustRun("list", "-m", "-u", "fixture.test/retract")
	if !strings.Contains(out, "(retracted)") || !strings.Contains(out, "(deprecated)") || !strings.Contains(out, "[v1.2.0]") {
		t.Errorf("go list -m -u = %q, want it retracted and deprecated with an upgrade", out)
	}
	if out, _ := g.MustRun("list", "-m", "fixture.test/incompat"); out != "fixture.test/incompat v2.0.0+incompatible\n" {
		t.Errorf("go list -m fixture.test/incompat = %q", out)
	}
}

// TestGoCommandToolchainSwitch: GOTOOLCHAIN=go1.99.0 makes the go command
// download the fake toolchain through the proxy, verify it in the checksum
// database and run it.
func TestGoCommandToolchainSwitch(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("sh"); err != nil || runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("the fake toolchain is a /bin/sh script")
	}
	fx, db, p, g := newTestSetup(t)
	tc, err := NewToolchain("go1.99.0", runtime.GOOS, runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.Add(tc); err != nil {
		t.Fatal(err)
	}
	g.Setenv("GOTOOLCHAIN", "go1.99.0")
	out, _ := g.MustRun("version")
	if want := ToolchainBanner("go1.99.0", runtime.GOOS, runtime.GOARCH) + "\n"; out != want {
		t.Errorf("go version = %q, want %q", out, want)
	}
	if p.CountMatching("/golang.org/toolchain/@v/"+tc.Version+".zip") != 1 || p.CountMatching("/sumdb/"+db.Name+"/lookup/golang.org/toolchain@") != 1 {
		t.Errorf("the toolchain did not come through the proxy and database: %q", p.Requests())
	}
}

// TestProxyPathPrefix: a proxy mounted under a path, as repository managers
// serve them, with faults after the prefix.
func TestProxyPathPrefix(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	const prefix = "/artifactory/api/go/go-remote"
	p := NewProxyTLS(t, fx, WithPathPrefix(prefix+"/"), WithTLSNames("proxy.fixture.test"))
	if !strings.HasSuffix(p.URL, prefix) {
		t.Fatalf("URL = %s", p.URL)
	}
	if r := mustGet(t, p.Client(), p.URL+"/fixture.test/dep01/@v/list"); r.code != 200 || r.body != "v1.0.0\n" {
		t.Errorf("list under the prefix: %d %q", r.code, r.body)
	}
	if r := mustGet(t, p.Client(), p.URL+"/f/503/fixture.test/dep01/@v/list"); r.code != 503 {
		t.Errorf("fault under the prefix: %d %q", r.code, r.body)
	}
	base := strings.TrimSuffix(p.URL, prefix)
	for _, path := range []string{"/fixture.test/dep01/@v/list", prefix + "x/fixture.test/dep01/@v/list", "/artifactory/fixture.test/dep01/@v/list"} {
		if r := mustGet(t, p.Client(), base+path); r.code != 404 {
			t.Errorf("GET %s outside the prefix: %d %q", path, r.code, r.body)
		}
	}
	if got := p.Requests(); len(got) < 2 || got[0] != "/fixture.test/dep01/@v/list" {
		t.Errorf("Requests() = %q, want paths without the prefix", got)
	}
	// The certificate names the host a go command would be told.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.CertPool(), ServerName: "proxy.fixture.test"}}
	defer tr.CloseIdleConnections()
	if r := mustGet(t, &http.Client{Transport: tr}, p.URL+"/fixture.test/dep01/@latest"); r.code != 200 {
		t.Errorf("@latest as proxy.fixture.test: %d", r.code)
	}
}

// TestSumDBNameWithPath: a database whose name has a path, served through a
// proxy under /sumdb/<host>/<path>/ and on its own at https://<host>/<path>/,
// verified by the real go command both ways.
func TestSumDBNameWithPath(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test/sumdb", fx)

	p := NewProxy(t, fx, WithSumDB(db))
	if r := mustGet(t, p.Client(), p.URL+"/sumdb/sum.fixture.test/sumdb/supported"); r.code != 200 {
		t.Errorf("supported: %d %q", r.code, r.body)
	}
	if r := mustGet(t, p.Client(), p.URL+"/sumdb/sum.fixture.test/supported"); r.code != 404 {
		t.Errorf("supported for the host alone: %d, want 404", r.code)
	}
	g := NewGo(t)
	g.UseProxy(p.URL, db)
	download(t, g, "fixture.test/dep01@v1.0.0")
	if p.CountMatching("/sumdb/sum.fixture.test/sumdb/lookup/fixture.test/dep01@v1.0.0") != 1 {
		t.Errorf("no lookup through the proxy: %q", p.Requests())
	}

	named := db.ServeNamed(t)
	if named.URL != "https://sum.fixture.test/sumdb" || !strings.HasSuffix(named.Local, "/sumdb") || named.Host != "sum.fixture.test" {
		t.Errorf("ServeNamed() = %+v", named)
	}
	bare := NewProxy(t, fx) // serves no database: the go command goes to the URL
	g2 := NewGo(t)
	g2.UseProxy(bare.URL, db)
	g2.Setenv("GOSUMDB", db.GOSUMDB(named.Local))
	g2.TrustPEM(named.CAPEM)
	download(t, g2, "fixture.test/dep02@v1.0.0")
	if db.CountMatching("/lookup/fixture.test/dep02@v1.0.0") != 1 { // counted without the prefix
		t.Errorf("no lookup at the database's URL: %q", db.Requests())
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: named.CertPool, ServerName: named.Host}}
	defer tr.CloseIdleConnections()
	if r := mustGet(t, &http.Client{Transport: tr}, "https://"+named.Addr+"/latest"); r.code != 404 {
		t.Errorf("/latest outside the name's path: %d, want 404", r.code)
	}
}

// TestSumDBPreload: after Preload the tree holds every fixture and lookups
// do not grow it.
func TestSumDBPreload(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	db.Preload(t)
	client := &http.Client{Transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		return httptestRecorder(db.Handler(), r), nil
	})}
	size := func() string {
		r := mustGet(t, client, "http://db/latest")
		return strings.SplitN(r.body, "\n", 3)[1]
	}
	before := size()
	if want := len(fx.Modules()); before != strconv.Itoa(want) {
		t.Errorf("tree size after Preload = %s, want %d", before, want)
	}
	if r := mustGet(t, client, "http://db/lookup/fixture.test/dep20@v1.0.0"); r.code != 200 {
		t.Fatalf("lookup: %d %q", r.code, r.body)
	}
	if after := size(); after != before {
		t.Errorf("a lookup grew the preloaded tree from %s to %s", before, after)
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func httptestRecorder(h http.Handler, r *http.Request) *http.Response {
	rr := httptest.NewRecorder()
	h.ServeHTTP(rr, r)
	return rr.Result()
}
