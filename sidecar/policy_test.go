package sidecar_test

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// policyStore writes text as a policy file and loads it.
func policyStore(t *testing.T, text string) (*policy.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := policy.NewStore(path)
	if err != nil {
		t.Fatal(err)
	}
	return st, path
}

// requestsFor returns the requests among reqs that name one of mods.
func requestsFor(reqs []string, mods ...string) []string {
	var out []string
	for _, r := range reqs {
		for _, m := range mods {
			if strings.Contains(r, "/"+m+"/") || strings.Contains(r, "/"+m+"@") {
				out = append(out, r)
			}
		}
	}
	return out
}

var privateMods = []string{"fixture.test/dep01", "fixture.test/dep02", "fixture.test/dep03", "fixture.test/dep04", "fixture.test/dep05", "fixture.test/dep06", "fixture.test/dep07", "fixture.test/dep08", "fixture.test/dep09"}

func TestPrivateModulesNeverLeak(t *testing.T) {
	e := newEnv(t)
	public := e.proxy(t, true)
	internal := e.proxy(t, false)
	st, _ := policyStore(t, "private: [\"fixture.test/dep0*\"]\n")
	url := startGate(t, sidecar.Config{
		Policy: st,
		Upstreams: []upstream.Config{
			{Name: "public", URL: public.URL},
			{Name: "internal", URL: internal.URL, Private: true},
		},
	})
	e.go_.UseProxy(url, e.db)

	// A client that knows the module is private keeps it from the
	// checksum database; modgate keeps it from the public upstream.
	e.go_.Setenv("GONOSUMDB", "fixture.test/dep0*")
	e.go_.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n\nrequire fixture.test/app v1.0.0\n")
	e.go_.WriteFile("main.go", "package main\n\nimport \"fixture.test/app\"\n\nfunc main() { println(app.Name()) }\n")
	if _, stderr, err := e.go_.Run("mod", "tidy"); err != nil {
		t.Fatalf("go mod tidy: %v\n%s", err, stderr)
	}
	if leaked := requestsFor(public.Requests(), privateMods...); len(leaked) != 0 {
		t.Errorf("private module paths reached the public upstream: %v", leaked)
	}
	if got := requestsFor(internal.Requests(), privateMods...); len(got) == 0 {
		t.Errorf("the private upstream served no private module")
	}
	if other := requestsFor(internal.Requests(), "fixture.test/dep10", "fixture.test/app"); len(other) != 0 {
		t.Errorf("public modules went to the private upstream first: %v", other)
	}

	// A client that does not: the lookup is refused with the fix, and
	// still nothing reaches any upstream.
	g := modtest.NewGo(t)
	g.UseProxy(url, e.db)
	_, stderr, err := g.Run("mod", "download", "fixture.test/dep01@v1.0.0")
	if err == nil || !strings.Contains(stderr, "403 Forbidden") || !strings.Contains(stderr, "add fixture.test/dep0* to GONOSUMDB") {
		t.Errorf("private lookup: %v\n%s", err, stderr)
	}
	if leaked := requestsFor(public.Requests(), privateMods...); len(leaked) != 0 {
		t.Errorf("private module paths reached the public upstream: %v", leaked)
	}
}

func TestRoutesChooseUpstreams(t *testing.T) {
	e := newEnv(t)
	first := e.proxy(t, true)
	second := e.proxy(t, true)
	st, _ := policyStore(t, "routes:\n  - modules: [\"fixture.test/dep1*\"]\n    upstreams: [second]\n")
	url := startGate(t, sidecar.Config{Policy: st, Upstreams: []upstream.Config{{Name: "first", URL: first.URL}, {Name: "second", URL: second.URL}}})
	e.go_.UseProxy(url, e.db)
	if out, err := e.download("fixture.test/dep10@v1.0.0", "fixture.test/dep20@v1.0.0"); err != nil {
		t.Fatalf("download: %v\n%s", err, out)
	}
	// Routes choose who serves module content; checksum lookups go to the
	// checksum database wherever it was found.
	for _, r := range requestsFor(first.Requests(), "fixture.test/dep10") {
		if !strings.HasPrefix(r, "/sumdb/") {
			t.Errorf("a routed module went to the other upstream: %s", r)
		}
	}
	if requestsFor(second.Requests(), "fixture.test/dep10") == nil || requestsFor(first.Requests(), "fixture.test/dep20") == nil {
		t.Errorf("first %v\nsecond %v", first.Requests(), second.Requests())
	}
}

func TestDenialReachesTheDeveloper(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	st, _ := policyStore(t, `rules:
  - allow: "fixture.test/dep01"
  - deny: "fixture.test/dep02"
    reason: "malware, see SEC-123"
default: allow
contact: "ask #platform-builds"
`)
	url := startGate(t, sidecar.Config{Policy: st, Upstreams: []upstream.Config{{URL: p.URL}}})
	e.go_.UseProxy(url, e.db)
	out, err := e.download("fixture.test/dep02@v1.0.0")
	want := "403 Forbidden\n\tserver response:\n\tmodgate: denied: fixture.test/dep02@v1.0.0 denied by policy rule 2 (deny fixture.test/dep02): malware, see SEC-123\n\task #platform-builds"
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("go command output lacks\n%s\n---\n%s", want, out)
	}
	if got := requestsFor(p.Requests(), "fixture.test/dep02"); len(got) != 0 {
		t.Errorf("a denied module reached the upstream: %v", got)
	}
}

func TestDeniedVersionsLeaveTheList(t *testing.T) {
	e := newEnv(t)
	p := e.proxy(t, true)
	st, _ := policyStore(t, `rules:
  - deny: "fixture.test/dep05"
    versions: ">=v1.1.0"
    reason: "regression, see BUG-7"
  - deny: "fixture.test/pseudo"
    versions: "<v0.0.1"
    reason: "unreleased"
`)
	url := startGate(t, sidecar.Config{Policy: st, Upstreams: []upstream.Config{{URL: p.URL}}})
	e.go_.UseProxy(url, e.db)
	stdout, stderr, err := e.go_.Run("list", "-m", "-versions", "fixture.test/dep05")
	if err != nil || strings.TrimSpace(stdout) != "fixture.test/dep05 v1.0.0" {
		t.Errorf("go list -m -versions: %q %v\n%s", stdout, err, stderr)
	}
	e.go_.WriteFile("go.mod", "module example.test/consumer\n\ngo 1.21\n")
	if _, stderr, err := e.go_.Run("get", "fixture.test/dep05@latest"); err != nil {
		t.Fatalf("go get @latest: %v\n%s", err, stderr)
	}
	mod, _ := os.ReadFile(filepath.Join(e.go_.Dir(), "go.mod"))
	if !strings.Contains(string(mod), "fixture.test/dep05 v1.0.0") {
		t.Errorf("go get @latest picked a denied version:\n%s", mod)
	}
	out, err := e.download("fixture.test/dep05@v1.1.0")
	if err == nil || !strings.Contains(out, "denied by policy rule 1") || !strings.Contains(out, "regression, see BUG-7") {
		t.Errorf("denied version: %v\n%s", err, out)
	}
	// A module with no release: @latest names a denied pseudo-version and
	// there is nothing else to offer.
	_, stderr, err = e.go_.Run("list", "-m", "fixture.test/pseudo@latest")
	if err == nil || !strings.Contains(stderr, "denied by policy rule 2") {
		t.Errorf("go list @latest of a denied pseudo-version: %v\n%s", err, stderr)
	}
}

func TestAuditLogHasALinePerRequest(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	st, _ := policyStore(t, "rules:\n  - deny: \"fixture.test/dep02\"\n    reason: nope\n")
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	audit, err := policy.NewAuditLog(path, policy.AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := startGate(t, sidecar.Config{Policy: st, Audit: audit, Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}})
	targets := []string{
		"/fixture.test/dep01/@v/list", "/fixture.test/dep01/@v/v1.0.0.info", "/fixture.test/dep02/@v/v1.0.0.zip",
		"/fixture.test/nope/@v/list", "/fixture.test/Bad/@v/list",
	}
	var wg sync.WaitGroup
	const rounds = 20
	for range rounds {
		for _, target := range targets {
			wg.Add(1)
			go func() { defer wg.Done(); rawGet(t, url, target) }()
		}
	}
	wg.Wait()
	if err := audit.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	count := map[string]int{}
	n := 0
	for sc := bufio.NewScanner(f); sc.Scan(); n++ {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d: %v: %s", n+1, err, sc.Text())
		}
		for _, k := range []string{"time", "client", "mode", "kind", "decision", "status", "duration_ms"} {
			if _, ok := e[k]; !ok {
				t.Errorf("line %d lacks %s: %s", n+1, k, sc.Text())
			}
		}
		count[e["decision"].(string)+" "+jsonString(e["status"])]++
		if e["module"] == "fixture.test/dep01" && e["kind"] == "info" && (e["upstream"] != "fixtures" || e["bytes"] == nil) {
			t.Errorf("served line without upstream or bytes: %s", sc.Text())
		}
	}
	if n != rounds*len(targets) {
		t.Errorf("%d audit lines for %d requests", n, rounds*len(targets))
	}
	want := map[string]int{"allow 200": 2 * rounds, "deny 403": rounds, "allow 404": rounds, "invalid 400": rounds}
	for k, v := range want {
		if count[k] != v {
			t.Errorf("%q: %d lines; want %d (all: %v)", k, count[k], v, count)
		}
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestPolicyHotReload(t *testing.T) {
	fx := loadFixtures(t)
	p := modtest.NewProxy(t, fx)
	st, path := policyStore(t, "rules:\n  - allow: \"*\"\n")
	st.Debounce = 10 * time.Millisecond
	url := startGate(t, sidecar.Config{Policy: st, Upstreams: []upstream.Config{{URL: p.URL}}})
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan error, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, func(err error) { results <- err })
	}()
	defer func() { cancel(); <-done }()

	if status, _, _ := rawGet(t, url, "/fixture.test/dep03/@v/list"); status != 200 {
		t.Fatalf("before: %d", status)
	}
	write := func(text string) error {
		t.Helper()
		tmp := path + ".tmp"
		os.WriteFile(tmp, []byte(text), 0o644)
		os.Rename(tmp, path) // as editors and ConfigMap updates do
		select {
		case err := <-results:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("no reload after the file changed")
			return nil
		}
	}
	if err := write("rules:\n  - deny: \"fixture.test/dep03\"\n    reason: reloaded\n"); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if status, _, body := rawGet(t, url, "/fixture.test/dep03/@v/list"); status != 403 || !strings.Contains(body, "reloaded") {
		t.Errorf("after reload: %d %q", status, body)
	}
	err := write("rules:\n  - deny: \"fixture.test/dep03\"\n    versions: \"<1.0\"\n")
	if err == nil || !strings.Contains(err.Error(), "policy.yaml:3: rules[1].versions") {
		t.Errorf("invalid policy: err = %v; want file, line and key", err)
	}
	if status, _, _ := rawGet(t, url, "/fixture.test/dep03/@v/list"); status != 403 {
		t.Errorf("an invalid file replaced the policy: %d", status)
	}
	if st.ReloadFailures() != 1 {
		t.Errorf("reload failures %d; want 1", st.ReloadFailures())
	}
}

// TestFilteredListsComeUncompressed: a client that accepts gzip still gets
// a filtered list, because modgate asks for lists uncompressed.
func TestFilteredListsComeUncompressed(t *testing.T) {
	var gotEncoding atomic.Value
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotEncoding.Store(r.Header.Get("Accept-Encoding"))
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			io.WriteString(gz, "v1.0.0\nv1.1.0\n")
			gz.Close()
			return
		}
		io.WriteString(w, "v1.0.0\nv1.1.0\n")
	}))
	defer origin.Close()
	st, _ := policyStore(t, "rules:\n  - deny: \"fixture.test/dep05\"\n    versions: \">=v1.1.0\"\n")
	url := startGate(t, sidecar.Config{Policy: st, Upstreams: []upstream.Config{{URL: origin.URL}}})
	req, _ := http.NewRequest("GET", url+"/fixture.test/dep05/@v/list", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "v1.0.0\n" || gotEncoding.Load() != "" {
		t.Errorf("list %q (upstream asked with Accept-Encoding %q)", body, gotEncoding.Load())
	}
}
