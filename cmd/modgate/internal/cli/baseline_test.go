package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
	"github.com/modgate/modgate/telemetry"
)

// fixedClock stands still; nothing here sleeps or waits on it.
type fixedClock struct {
	wire.SystemClock
	t time.Time
}

func (c fixedClock) Now() time.Time { return c.t }

// adminWith serves /debug/baseline as a modgate whose zip requests to
// "public" took d each would.
func adminWith(t *testing.T, d time.Duration, failed int) *httptest.Server {
	t.Helper()
	b := telemetry.NewBaselines(0, fixedClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)})
	for i := range 50 {
		b.Observe("public", wire.KindZip, d, i < failed)
		b.Observe("internal", wire.KindInfo, 2*time.Millisecond, false)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /debug/baseline", b.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func runBaseline(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	a := &App{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
	code = a.Run(context.Background(), append([]string{"baseline"}, args...))
	return code, out.String(), errb.String()
}

func TestBaselineRecordAndCompare(t *testing.T) {
	dir := t.TempDir()
	then := filepath.Join(dir, "then.json")
	steady := filepath.Join(dir, "steady.json")
	slow := filepath.Join(dir, "slow.json")

	fast := adminWith(t, 40*time.Millisecond, 0)
	if code, _, stderr := runBaseline(t, nil, "record", "--admin", fast.URL, "--out", then); code != 0 {
		t.Fatalf("record: exit %d\n%s", code, stderr)
	}
	var rep telemetry.BaselineReport
	b, _ := os.ReadFile(then)
	if err := json.Unmarshal(b, &rep); err != nil || len(rep.Rows) != 2 || rep.Rows[1].Upstream != "public" || rep.Rows[1].Count != 50 {
		t.Fatalf("saved baseline %s (%v)", b, err)
	}
	// host:port works as well as a URL.
	if code, _, stderr := runBaseline(t, nil, "record", "--admin", strings.TrimPrefix(fast.URL, "http://"), "--out", steady); code != 0 {
		t.Fatalf("record host:port: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := runBaseline(t, nil, "record", "--admin", adminWith(t, 200*time.Millisecond, 10).URL, "--out", slow); code != 0 {
		t.Fatalf("record: exit %d\n%s", code, stderr)
	}

	code, stdout, _ := runBaseline(t, nil, "compare", "--baseline", then, "--current", steady)
	if code != 0 || strings.Contains(stdout, "REGRESSED") || !strings.Contains(stdout, "UPSTREAM") {
		t.Errorf("steady: exit %d\n%s", code, stdout)
	}

	code, stdout, stderr := runBaseline(t, nil, "compare", "--baseline", then, "--current", slow)
	if code != 1 || !strings.Contains(stdout, "REGRESSED") || !strings.Contains(stderr, "regressed") {
		t.Errorf("slow: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "internal") && strings.Contains(line, "REGRESSED") {
			t.Errorf("a steady upstream regressed: %s", line)
		}
	}
	// A larger ratio tolerates the latency, not the errors.
	if code, stdout, _ := runBaseline(t, nil, "compare", "--baseline", then, "--current", slow, "--max-ratio", "10"); code != 1 || strings.Contains(stdout, "p50") || !strings.Contains(stdout, "errors +20.0 points") {
		t.Errorf("max-ratio 10: exit %d\n%s", code, stdout)
	}

	// Against the running modgate, found through MODGATE_ADMIN.
	slowAdmin := adminWith(t, 200*time.Millisecond, 0)
	code, stdout, _ = runBaseline(t, map[string]string{"MODGATE_ADMIN": slowAdmin.URL}, "compare", "--baseline", then)
	if code != 1 || !strings.Contains(stdout, slowAdmin.URL) || !strings.Contains(stdout, "REGRESSED: p50 5.0×, p95 5.0×, p99 5.0×") {
		t.Errorf("compare --admin: exit %d\n%s", code, stdout)
	}
	if code, _, _ := runBaseline(t, nil, "compare", "--baseline", then, "--admin", fast.URL); code != 0 {
		t.Errorf("compare with the same admin: exit %d", code)
	}
}

func TestBaselineRecordToStdout(t *testing.T) {
	code, stdout, _ := runBaseline(t, nil, "record", "--admin", adminWith(t, time.Millisecond, 0).URL, "--out", "-")
	var rep telemetry.BaselineReport
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || len(rep.Rows) != 2 {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
}

func TestBaselineErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	if code, _, stderr := runBaseline(t, nil, "record", "--admin", adminWith(t, time.Millisecond, 0).URL, "--out", good); code != 0 {
		t.Fatal(stderr)
	}
	notBaseline := filepath.Join(dir, "other.json")
	os.WriteFile(notBaseline, []byte(`{"upstreams": []}`), 0o644)
	html := filepath.Join(dir, "page.html")
	os.WriteFile(html, []byte("<html>oops</html>"), 0o644)

	deadAdmin := httptest.NewServer(http.NotFoundHandler())
	deadAdmin.Close()
	noBaseline := httptest.NewServer(http.NotFoundHandler())
	defer noBaseline.Close()

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no subcommand", nil, 2, "usage:"},
		{"unknown subcommand", []string{"erase"}, 2, `unknown subcommand "erase"`},
		{"help", []string{"-h"}, 0, ""},
		{"record without --out", []string{"record"}, 2, "--out is required"},
		{"record bad flag", []string{"record", "--bogus"}, 2, "flag provided but not defined"},
		{"record extra argument", []string{"record", "--out", "x", "y"}, 2, `unexpected argument "y"`},
		{"record admin down", []string{"record", "--admin", deadAdmin.URL, "--out", filepath.Join(dir, "x")}, 1, "is modgate running"},
		{"record admin without baseline", []string{"record", "--admin", noBaseline.URL, "--out", filepath.Join(dir, "x")}, 1, "404 Not Found"},
		{"compare without --baseline", []string{"compare", "--current", good}, 2, "--baseline is required"},
		{"compare both sources", []string{"compare", "--baseline", good, "--current", good, "--admin", "127.0.0.1:1"}, 2, "not both"},
		{"compare bad ratio", []string{"compare", "--baseline", good, "--current", good, "--max-ratio", "0.5"}, 2, "above 1"},
		{"compare missing file", []string{"compare", "--baseline", filepath.Join(dir, "nope.json"), "--current", good}, 1, "no such file"},
		{"compare not a baseline", []string{"compare", "--baseline", notBaseline, "--current", good}, 1, "not a modgate baseline"},
		{"compare html", []string{"compare", "--baseline", good, "--current", html}, 1, "not a modgate baseline"},
	} {
		code, _, stderr := runBaseline(t, nil, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, want %d; stderr:\n%s", tc.name, code, tc.code, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Error("a failed record wrote its --out file")
	}
}
