package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// TestBuildPageInChromium runs a build of twenty modules (one of them
// denied) with the real go command under one trace context, and renders
// its waterfall page in a real browser. With MODGATE_SCREENSHOTS=1 it also
// saves deploy/screenshots/build-waterfall.png for the README.
func TestBuildPageInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("%s is not installed (make chromium installs it): %v", chromiumPath, err)
	}
	shot, err := filepath.Abs(filepath.Join("..", "deploy", "screenshots", "build-waterfall.png"))
	if err != nil {
		t.Fatal(err)
	}
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(pol, []byte("rules:\n  - deny: \"fixture.test/dep13\"\n    reason: \"malware, see SEC-123\"\n"), 0o644)
	st, err := policy.NewStore(pol)
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	adminLn, _ := net.Listen("tcp", "127.0.0.1:0")
	s, err := New(Config{
		Listen: ln.Addr().String(), Admin: adminLn.Addr().String(), SumDB: "sum.fixture.test", Version: "v0.9.0-test",
		Policy: st, TraceURL: "http://jaeger.example.test:16686/trace/{trace_id}",
		Upstreams: []upstream.Config{
			{Name: "mirror", URL: p.URL + "/f/404"}, // falls through to public for everything
			{Name: "public", URL: p.URL + "/f/slow25"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, adminLn) }()
	t.Cleanup(func() { cancel(); <-done })
	admin := "http://" + adminLn.Addr().String()

	const traceID = "8d3fd2b4a5e1c6f70912ab34cd56ef78"
	tp := "00-" + traceID + "-a1b2c3d4e5f60718-01"
	reg := func(r BuildRegistration) {
		body, _ := json.Marshal(r)
		resp, err := http.Post(admin+"/debug/builds/"+traceID, "application/json", bytes.NewReader(body))
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("registering the build: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	var args []string
	for i := 1; i <= 20; i++ {
		args = append(args, fmt.Sprintf("fixture.test/dep%02d@v1.0.0", i))
	}
	start := time.Now()
	r := BuildRegistration{Name: "go mod download", Command: "go mod download " + strings.Join(args[:3], " ") + " ...", Dir: "/src/app", Start: start}
	reg(r)
	g := modtest.NewGo(t)
	g.UseProxy("http://"+ln.Addr().String()+"/"+telemetry.TracePathElem+"/"+tp, db)
	if _, _, err := g.Run(append([]string{"mod", "download"}, args...)...); err == nil {
		t.Fatal("a denied module downloaded")
	}
	exit := 1
	r.End, r.ExitCode = time.Now(), &exit
	reg(r)

	dom := chromium(t, "--dump-dom", admin+"/builds/"+traceID)
	for _, want := range []string{"go mod download", "fixture.test/dep13@v1.0.0", "malware, see SEC-123", "Waterfall", "public", "http://jaeger.example.test:16686/trace/" + traceID} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered build page lacks %q", want)
		}
	}
	if n := strings.Count(dom, `class="bar `); n < 60 {
		t.Errorf("%d bars in the waterfall; want the build's requests (at least 60)", n)
	}
	if page := chromium(t, "--dump-dom", admin+"/"); !strings.Contains(page, "Recent builds") || !strings.Contains(page, "builds/"+traceID) {
		t.Errorf("the status page does not list the build")
	}
	if os.Getenv("MODGATE_SCREENSHOTS") != "1" {
		return
	}
	if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
		t.Fatal(err)
	}
	chromium(t, "--screenshot="+shot, "--window-size=1200,900", admin+"/builds/"+traceID)
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
	t.Logf("screenshot: %s", shot)
}
