package modtest

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// downloaded is what "go mod download -json" prints per module.
type downloaded struct {
	Path, Version string
	Error         string
	Info, GoMod   string
	Zip, Dir      string
	Sum, GoModSum string
}

// download runs "go mod download -json args..." and decodes its output.
func download(t *testing.T, g *Go, args ...string) []downloaded {
	t.Helper()
	stdout, _ := g.MustRun(append([]string{"mod", "download", "-json"}, args...)...)
	var list []downloaded
	dec := json.NewDecoder(strings.NewReader(stdout))
	for {
		var d downloaded
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding go mod download -json: %v\n%s", err, stdout)
		}
		list = append(list, d)
	}
	return list
}

// checkSums checks that the go command computed the same hashes as
// GoSumLines, and returns the path@version of every module.
func checkSums(t *testing.T, fx *Fixtures, list []downloaded) []string {
	t.Helper()
	var mods []string
	for _, d := range list {
		if d.Error != "" {
			t.Errorf("%s@%s: %s", d.Path, d.Version, d.Error)
			continue
		}
		mods = append(mods, d.Path+"@"+d.Version)
		want, err := fx.GoSumLines(d.Path, d.Version)
		if err != nil {
			t.Errorf("%s@%s: %v", d.Path, d.Version, err)
			continue
		}
		got := d.Path + " " + d.Version + " " + d.Sum + "\n" + d.Path + " " + d.Version + "/go.mod " + d.GoModSum + "\n"
		if got != string(want) {
			t.Errorf("the go command computed\n%swant\n%s", got, want)
		}
	}
	return mods
}

func newTestSetup(t *testing.T) (*Fixtures, *SumDB, *Proxy, *Go) {
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	p := NewProxy(t, fx, WithSumDB(db))
	g := NewGo(t)
	g.UseProxy(p.URL, db)
	return fx, db, p, g
}

// TestGoCommandEndToEnd is the harness's own acceptance test: the real go
// command resolves, downloads, verifies and builds fixture.test/app's whole
// graph from the fake proxy, checking every module against the checksum
// database through the proxy.
func TestGoCommandEndToEnd(t *testing.T) {
	t.Parallel()
	fx, _, p, g := newTestSetup(t)
	g.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
	g.WriteFile("main.go", `package main

import (
	"fmt"

	"fixture.test/app"
)

func main() { fmt.Println(app.Name()) }
`)
	mods := checkSums(t, fx, download(t, g, "all"))
	zips := p.CountMatching(".zip")
	g.MustRun("mod", "tidy")
	if p.CountMatching(".zip") != zips {
		t.Errorf("go mod tidy fetched zips that go mod download all did not")
	}
	var want []string
	for i := 1; i <= 20; i++ {
		v := "v1.0.0"
		if i == 5 {
			v = "v1.1.0" // dep01 wants v1.0.0, dep03 wants v1.1.0
		}
		want = append(want, "fixture.test/dep"+twoDigits(i)+"@"+v)
	}
	want = append(want, "fixture.test/app@v1.0.0", "fixture.test/UpperCase@v1.0.0", "fixture.test/pre@v1.0.0")
	for _, m := range want {
		if !slices.Contains(mods, m) {
			t.Errorf("go mod download all did not report %s; got %q", m, mods)
		}
	}

	// go.sum holds exactly the lines GoSumLines computes.
	gosum, err := os.ReadFile(filepath.Join(g.Dir(), "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.SplitAfter(strings.TrimSpace(string(gosum)), "\n") {
		f := strings.Fields(line)
		want, err := fx.GoSumLines(f[0], strings.TrimSuffix(f[1], "/go.mod"))
		if err != nil || !strings.Contains(string(want), strings.TrimSpace(line)+"\n") {
			t.Errorf("go.sum line %q is not one of %q (%v)", line, want, err)
		}
	}

	stdout, _ := g.MustRun("mod", "verify")
	if !strings.Contains(stdout, "all modules verified") {
		t.Errorf("go mod verify: %q", stdout)
	}
	stdout, _ = g.MustRun("run", ".")
	for _, s := range []string{"fixture.test/app@v1.0.0", "fixture.test/dep05@v1.1.0", "fixture.test/dep20@v1.0.0", "fixture.test/UpperCase@v1.0.0"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("go run output %q lacks %s", stdout, s)
		}
	}

	// Every module was checked against the database, through the proxy;
	// the graph is tidy, so nothing needed a query.
	if n := p.CountMatching("/sumdb/sum.fixture.test/supported"); n != 1 {
		t.Errorf("%d requests for /supported, want 1", n)
	}
	if n := p.CountMatching("/sumdb/sum.fixture.test/lookup/"); n < len(want) {
		t.Errorf("%d checksum database lookups, want at least %d", n, len(want))
	}
	if n := p.CountMatching("/@latest") + p.CountMatching("/@v/list"); n != 0 {
		t.Errorf("%d version queries; the fixtures' go.mod files are not tidy", n)
	}
	if p.CountMatching("/fixture.test/!upper!case/@v/v1.0.0.zip") != 1 {
		t.Errorf("UpperCase zip not fetched once: %q", p.Requests())
	}
}

func TestGoCommandCapitalsAndPrerelease(t *testing.T) {
	t.Parallel()
	fx, _, p, g := newTestSetup(t)
	list := download(t, g,
		"fixture.test/UpperCase@v1.0.0",
		"fixture.test/pre@v1.1.0-rc.1",
		"fixture.test/pre@latest",
		"fixture.test/major/v2@v2.0.0",
		"fixture.test/pseudo@latest",
	)
	got := checkSums(t, fx, list)
	want := []string{
		"fixture.test/UpperCase@v1.0.0",
		"fixture.test/pre@v1.1.0-rc.1",
		"fixture.test/pre@v1.0.0",
		"fixture.test/major/v2@v2.0.0",
		"fixture.test/pseudo@v0.0.0-20240102030405-0123456789ab",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("downloaded %q, want %q", got, want)
	}
	for _, path := range []string{
		"/fixture.test/!upper!case/@v/v1.0.0.zip",
		"/fixture.test/pre/@v/v1.1.0-rc.1.zip",
		"/sumdb/sum.fixture.test/lookup/fixture.test/!upper!case@v1.0.0",
		"/sumdb/sum.fixture.test/lookup/fixture.test/pre@v1.1.0-rc.1",
	} {
		if p.CountMatching(path) != 1 {
			t.Errorf("no request for %s: %q", path, p.Requests())
		}
	}
}

func TestGoCommandWrongSumDBKey(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	p := NewProxy(t, fx, WithSumDB(db))
	_, otherKey, err := note.GenerateKey(rand.Reader, db.Name)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGo(t)
	g.Setenv("GOPROXY", p.URL)
	g.Setenv("GOSUMDB", otherKey)
	_, stderr, err := g.Run("mod", "download", "fixture.test/dep20@v1.0.0")
	if err == nil || !strings.Contains(stderr, "verifying") {
		t.Errorf("download with the wrong key: %v\n%s", err, stderr)
	}
	entries, _ := os.ReadDir(filepath.Join(g.Getenv("GOMODCACHE"), "fixture.test"))
	if len(entries) != 0 {
		t.Errorf("an unverified module reached the module cache: %v", entries)
	}
}

func TestGoCommandSumDBDirect(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	p := NewProxy(t, fx) // no WithSumDB: the go command must go direct
	g := NewGo(t)
	g.Setenv("GOPROXY", p.URL)
	g.Setenv("GOSUMDB", db.GOSUMDB(db.Serve(t)))
	checkSums(t, fx, download(t, g, "fixture.test/dep13@v1.0.0"))
	if db.CountMatching("/lookup/fixture.test/dep13@v1.0.0") != 1 || p.CountMatching("/sumdb/") != 0 {
		t.Errorf("database requests %q, proxy requests %q", db.Requests(), p.Requests())
	}
}

func TestGoCommandTLSAndFaults(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	db := NewSumDB(t, "sum.fixture.test", fx)
	p := NewProxyTLS(t, fx, WithSumDB(db))
	g := NewGo(t)
	g.TrustPEM(p.CAPEM())
	// "|" falls through on any error, "," only on 404 and 410.
	g.UseProxy(p.URL+"/f/503|"+p.URL+"/f/404,"+p.URL+"/f/ok", db)
	checkSums(t, fx, download(t, g, "fixture.test/dep14@v1.0.0"))
	if p.Count("503") == 0 || p.Count("404") == 0 || p.Count("ok") == 0 {
		t.Errorf("requests %q", p.Requests())
	}

	g2 := NewGo(t) // without the certificate
	g2.UseProxy(p.URL, db)
	_, stderr, err := g2.Run("mod", "download", "fixture.test/dep14@v1.0.0")
	if err == nil || !strings.Contains(stderr, "certificate") {
		t.Errorf("download from an untrusted TLS proxy: %v\n%s", err, stderr)
	}
}

func TestGoEnvironment(t *testing.T) {
	// Not parallel: it sets the process environment.
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"} {
		t.Setenv(k, "http://proxy.example.test:3128")
	}
	t.Setenv("GOFLAGS", "-mod=vendor")
	t.Setenv("GOPROXY", "http://proxy.example.test")
	t.Setenv("GONOSUMDB", "*")
	t.Setenv("GOPRIVATE", "*")
	t.Setenv("GOWORK", "/nonexistent/go.work")
	t.Setenv("MODTEST_SECRET", "x")
	g := NewGo(t)
	for _, kv := range g.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.Contains(strings.ToUpper(k), "PROXY") && k != "GOPROXY" && k != "GONOPROXY" || k == "MODTEST_SECRET" {
			t.Errorf("environment has %s", kv)
		}
	}
	for _, kv := range []string{"PATH=" + os.Getenv("PATH"), "GOENV=off", "GONOSUMCHECK="} {
		if !slices.Contains(g.Environ(), kv) {
			t.Errorf("environment lacks %s", kv)
		}
	}

	stdout, _ := g.MustRun("env", "-json")
	var env map[string]string
	if err := json.Unmarshal([]byte(stdout), &env); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"GOPROXY":     "off",
		"GOSUMDB":     "off",
		"GOFLAGS":     "-modcacherw",
		"GOTOOLCHAIN": "local",
		"GONOSUMDB":   "",
		"GOPRIVATE":   "",
		"GONOPROXY":   "",
		"GOINSECURE":  "",
		"GOWORK":      "off",
		"GOMOD":       os.DevNull, // no go.mod in the working directory
	} {
		if env[k] != want {
			t.Errorf("go env %s = %q, want %q", k, env[k], want)
		}
	}
	for _, k := range []string{"GOPATH", "GOMODCACHE"} {
		if !strings.HasPrefix(env[k], os.TempDir()) && !strings.Contains(env[k], t.Name()) {
			t.Errorf("go env %s = %q, not a fresh directory", k, env[k])
		}
	}
	if env["GOCACHE"] == "" || strings.Contains(env["GOCACHE"], t.Name()) {
		t.Errorf("go env GOCACHE = %q, want the shared cache", env["GOCACHE"])
	}

	g.WriteFile("sub/dir/x.txt", "hello")
	if data, err := os.ReadFile(filepath.Join(g.Dir(), "sub", "dir", "x.txt")); err != nil || string(data) != "hello" {
		t.Errorf("WriteFile: %q, %v", data, err)
	}
	g.Setenv("GOFLAGS", "-bogusflag")
	if _, stderr, err := g.Run("list", "."); err == nil || !strings.Contains(stderr, "bogusflag") {
		t.Errorf("go with a bad GOFLAGS: %v, %q", err, stderr)
	}
	g.Unsetenv("GOFLAGS")
	if g.Getenv("GOFLAGS") != "" || slices.ContainsFunc(g.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GOFLAGS=") }) {
		t.Errorf("Unsetenv(GOFLAGS) left it set")
	}
}

func TestGoTimeout(t *testing.T) {
	t.Parallel()
	g := NewGo(t)
	g.Timeout = 1 // a nanosecond
	_, _, err := g.Run("version")
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Run with a 1ns timeout: %v", err)
	}
}

func TestDeadURL(t *testing.T) {
	t.Parallel()
	url := DeadURL(t)
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Errorf("DeadURL() = %s", url)
	}
	_, err := get(t, http.DefaultClient, url+"/fixture.test/app/@v/list")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("GET from DeadURL: %v, want connection refused", err)
	}
}
