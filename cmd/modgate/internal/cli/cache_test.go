package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

func runApp(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	// The commands that serve in-process (warm, verify) log from other
	// goroutines, as a process's stderr takes.
	var out, errb syncBuffer
	app := &App{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, GoEnv: goEnv}
	code = app.Run(context.Background(), args)
	return code, out.String(), errb.String()
}

// cache warm fills the cache from a go.sum (no modgate running: straight
// into the cache), and an offline modgate on that cache then serves a
// fresh module cache the whole build; ls, du and rm see and remove what
// warm put there.
func TestCacheWarmThenServeOffline(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)

	// A project and its go.sum, made by the go command from the fixtures.
	g := modtest.NewGo(t)
	g.UseProxy(p.URL, nil)
	g.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
	g.WriteFile("main.go", "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n")
	g.MustRun("mod", "tidy")
	sum := filepath.Join(g.Dir(), "go.sum")

	dir := filepath.Join(t.TempDir(), "cache")
	code, out, errs := runApp(t, "cache", "warm", "--cache-dir", dir, "--upstream", p.URL, "--sumdb", "off", "--listen", freeAddr(t), sum)
	if code != 0 || !strings.Contains(out, ", 0 failed") || !strings.Contains(errs, "fetching straight into") {
		t.Fatalf("cache warm: exit %d\n%s%s", code, out, errs)
	}
	warmed := len(p.Requests())

	gate := sidecartest.Start(t, nil, sidecar.Config{Offline: true, Upstreams: []upstream.Config{{URL: "off"}}, Cache: sidecar.CacheConfig{Dir: dir}})
	fresh := modtest.NewGo(t)
	fresh.UseProxy("http://"+gate.Addr, nil)
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		data, err := os.ReadFile(filepath.Join(g.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		fresh.WriteFile(name, string(data))
	}
	if _, stderr, err := fresh.Run("mod", "download"); err != nil {
		t.Fatalf("offline go mod download from the warmed cache: %v\n%s", err, stderr)
	}
	if _, stderr, err := fresh.Run("build", "./..."); err != nil {
		t.Fatalf("offline go build from the warmed cache: %v\n%s", err, stderr)
	}
	if n := len(p.Requests()); n != warmed {
		t.Errorf("the upstream saw %d requests after warm; want none", n-warmed)
	}

	code, out, errs = runApp(t, "cache", "ls", "--cache-dir", dir, "fixture.test/app")
	if code != 0 || !strings.Contains(out, "fixture.test/app@v1.0.0") || !strings.Contains(out, "public") {
		t.Errorf("cache ls: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs = runApp(t, "cache", "du", "--cache-dir", dir)
	if code != 0 || !strings.Contains(out, "zip") || !strings.Contains(out, "total") {
		t.Errorf("cache du: exit %d\n%s%s", code, out, errs)
	}
	code, out, errs = runApp(t, "cache", "rm", "--cache-dir", dir, "fixture.test/app@v1.*")
	if code != 0 || !strings.Contains(out, "removed fixture.test/app@v1.0.0") {
		t.Errorf("cache rm: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = runApp(t, "cache", "ls", "--cache-dir", dir)
	if code != 0 || strings.Contains(out, "fixture.test/app@") || !strings.Contains(out, "fixture.test/") {
		t.Errorf("cache ls after rm: exit %d\n%s", code, out)
	}
}

// cache warm fetches through a running modgate when one answers on the
// config's listen address, and that modgate caches what it serves.
func TestCacheWarmThroughRunningModgate(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	dir := filepath.Join(t.TempDir(), "cache")
	gate := sidecartest.Start(t, nil, sidecar.Config{Upstreams: []upstream.Config{{URL: p.URL}}, Cache: sidecar.CacheConfig{Dir: dir}})
	mod := filepath.Join(t.TempDir(), "go.mod")
	os.WriteFile(mod, []byte("module example.test/m\n\ngo 1.21\n\nrequire (\n\tfixture.test/dep01 v1.0.0\n\tfixture.test/dep02 v1.0.0\n)\n"), 0o644)
	code, out, errs := runApp(t, "cache", "warm", "--cache-dir", "", "--upstream", "off", "--sumdb", "off", "--listen", gate.Addr, mod)
	if code != 0 || !strings.Contains(out, "warmed 2 module versions: 6 files") || strings.Contains(errs, "straight into") {
		t.Fatalf("cache warm: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = runApp(t, "cache", "ls", "--cache-dir", dir)
	if code != 0 || !strings.Contains(out, "fixture.test/dep01@v1.0.0") || !strings.Contains(out, "fixture.test/dep02@v1.0.0") {
		t.Errorf("cache ls: exit %d\n%s", code, out)
	}
}

// TestCacheVerify: modgate cache verify finds an entry that is not what
// the checksum database holds, removes it, exits 1, and says so; a
// second run finds the cache clean.
func TestCacheVerify(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	dir := filepath.Join(t.TempDir(), "cache")
	gate := sidecartest.Start(t, nil, sidecar.Config{SumDB: db.Name, SumDBKey: db.VerifierKey, Cache: sidecar.CacheConfig{Dir: dir},
		Upstreams: []upstream.Config{{URL: p.URL}}})
	g := modtest.NewGo(t)
	g.UseProxy(gate.URL, db)
	g.MustRun("mod", "download", "fixture.test/dep01@v1.0.0", "fixture.test/dep02@v1.0.0")
	gate.Stop()

	// Written behind modgate's back: dep02's go.mod under dep01's key.
	c, err := cache.Open(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	dep02, _ := fx.Lookup("fixture.test/dep02", "v1.0.0")
	w, err := c.Create("fixture.test/dep01/@v/v1.0.0.mod", "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(dep02.Mod)
	if err := w.Commit(int64(len(dep02.Mod)), nil); err != nil {
		t.Fatal(err)
	}

	args := []string{"cache", "verify", "--cache-dir", dir, "--upstream", p.URL, "--sumdb", db.VerifierKey}
	code, out, errs := runApp(t, args...)
	if code != 1 || !strings.Contains(out, "removed  local fixture.test/dep01/@v/v1.0.0.mod: checksum mismatch") || !strings.Contains(out, "1 removed") {
		t.Fatalf("cache verify: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs = runApp(t, args...); code != 0 || !strings.Contains(out, "0 removed") {
		t.Fatalf("cache verify after the repair: exit %d\n%s%s", code, out, errs)
	}
	code, _, errs = runApp(t, "cache", "verify", "--cache-dir", dir, "--upstream", p.URL, "--sumdb", "off")
	if code != 1 || !strings.Contains(errs, "cannot verify") {
		t.Errorf("cache verify without a database: exit %d, %s", code, errs)
	}
}
