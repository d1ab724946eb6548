package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
	"github.com/modgate/modgate/telemetry/jaegertest"
)

const execSumDB = "sum.fixture.test"

// fixturesURL stands for the URL of the world's proxy in a config given
// to newExecWorld.
const fixturesURL = "fixtures:"

// execWorld is a modgate (with an admin port and an audit log) in front of
// a fake module proxy that serves the checksum database too, and a
// hermetic go command.
type execWorld struct {
	fx    *modtest.Fixtures
	db    *modtest.SumDB
	p     *modtest.Proxy
	gate  *sidecartest.Gate
	audit string // the audit log's path
}

func newExecWorld(t *testing.T, tel *telemetry.Telemetry, cfg sidecar.Config) *execWorld {
	t.Helper()
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	w := &execWorld{fx: fx, db: modtest.NewSumDB(t, execSumDB, fx)}
	w.p = modtest.NewProxy(t, fx, modtest.WithSumDB(w.db))
	w.audit = filepath.Join(t.TempDir(), "audit.jsonl")
	audit, err := policy.NewAuditLog(w.audit, policy.AuditOptions{FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	cfg.Audit, cfg.Telemetry, cfg.SumDB, cfg.Admin = audit, tel, execSumDB, "127.0.0.1:0"
	if cfg.Upstreams == nil {
		cfg.Upstreams = []upstream.Config{{Name: "fixtures", URL: fixturesURL}}
	}
	for i, u := range cfg.Upstreams {
		if u.URL == fixturesURL {
			cfg.Upstreams[i].URL = w.p.URL
		}
	}
	w.gate = sidecartest.Start(t, nil, cfg)
	return w
}

// goCmd is a fresh go command (empty module cache) set up for modgate:
// exec rewrites its GOPROXY.
func (w *execWorld) goCmd(t *testing.T) *modtest.Go {
	g := modtest.NewGo(t)
	g.UseProxy(w.gate.URL, w.db)
	return g
}

// auditLines reads the audit log.
func (w *execWorld) auditLines(t *testing.T) []policy.AuditEntry {
	t.Helper()
	f, err := os.Open(w.audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []policy.AuditEntry
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var e policy.AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// runExec runs `modgate exec` with args in g's environment plus extra,
// in g's directory, and returns its exit code and stderr.
func runExec(t *testing.T, g *modtest.Go, getenv map[string]string, extra []string, args ...string) (int, string) {
	t.Helper()
	t.Chdir(g.Dir())
	var stdout, stderr bytes.Buffer
	app := &App{
		Stdout: &stdout, Stderr: &stderr,
		Getenv:  func(k string) string { return getenv[k] },
		Environ: func() []string { return append(g.Environ(), extra...) },
	}
	code := app.Run(context.Background(), append([]string{"exec"}, args...))
	t.Logf("modgate exec %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return code, stderr.String()
}

func readReport(t *testing.T, name string) BuildReport {
	t.Helper()
	r, err := readBuildReport(name)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func modules(n int) []string {
	var mods []string
	for i := 1; i <= n; i++ {
		mods = append(mods, fmt.Sprintf("fixture.test/dep%02d@v1.0.0", i))
	}
	return mods
}

// TestExecOneTraceAndReport: without TRACEPARENT, every audit line of the
// build carries the build span's trace ID (exported to the command as
// TRACEPARENT), and the report's requests are those audit lines, by kind.
func TestExecOneTraceAndReport(t *testing.T) {
	w := newExecWorld(t, nil, sidecar.Config{})
	g := w.goCmd(t)
	report := filepath.Join(t.TempDir(), "report.json")
	seen := filepath.Join(t.TempDir(), "traceparent")
	script := fmt.Sprintf(`echo "$TRACEPARENT" > %s && go mod download %s`, seen, strings.Join(modules(5), " "))
	code, stderr := runExec(t, g, nil, nil, "--proxy", w.gate.URL, "--admin", "http://"+w.gate.AdminAddr, "--report", report, "--name", "download five", "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, report)
	lines := w.auditLines(t)
	if len(lines) < 15 {
		t.Fatalf("%d audit lines; want the 5 modules' info, mod and zip at least", len(lines))
	}
	for _, l := range lines {
		if l.TraceID != r.TraceID {
			t.Errorf("audit line %s %s %s has trace %q; want the build's %s", l.Kind, l.Module, l.Version, l.TraceID, r.TraceID)
		}
	}
	if r.Requests != len(lines) {
		t.Errorf("report: %d requests; the audit log has %d lines for the build", r.Requests, len(lines))
	}
	byKind := map[string]int{}
	for _, l := range lines {
		byKind[string(l.Kind)]++
	}
	for k, n := range byKind {
		if r.ByKind[k].Requests != n {
			t.Errorf("report: %d %s requests; the audit log has %d", r.ByKind[k].Requests, k, n)
		}
	}
	if byKind["sumdb-supported"] == 0 {
		t.Errorf("no /sumdb/.../supported request under the trace's GOPROXY path: %v", byKind)
	}
	if r.Bytes == 0 || r.WaitMS <= 0 || len(r.Slowest) == 0 || r.Slowest[0].Upstream != "fixtures" {
		t.Errorf("report: bytes %d, wait %.1f ms, slowest %+v", r.Bytes, r.WaitMS, r.Slowest)
	}
	tp, _ := os.ReadFile(seen)
	if sc, err := telemetry.ParseTraceparent(strings.TrimSpace(string(tp))); err != nil || sc.TraceID().String() != r.TraceID {
		t.Errorf("the command's TRACEPARENT %q; want one of trace %s", tp, r.TraceID)
	}
	if !strings.Contains(stderr, "requests to modgate") || !strings.Contains(stderr, r.TraceID) {
		t.Errorf("no summary on stderr")
	}
	if r.Name != "download five" || r.ExitCode == nil || *r.ExitCode != 0 {
		t.Errorf("report: name %q, exit %v", r.Name, r.ExitCode)
	}

	// The status page lists the build and links its waterfall page.
	for _, path := range []string{"/", "/builds/" + r.TraceID} {
		resp, err := http.Get("http://" + w.gate.AdminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(body.String(), "download five") || !strings.Contains(body.String(), r.TraceID) {
			t.Errorf("GET %s: %s; want the build by name and trace", path, resp.Status)
		}
		if path != "/" && strings.Count(body.String(), `class="bar `) != r.Requests {
			t.Errorf("the build page has %d waterfall bars; want %d", strings.Count(body.String(), `class="bar `), r.Requests)
		}
	}
}

// TestExecExitStatus: the command's exit status is modgate exec's, and its
// failures are in the report with their codes, explained.
func TestExecExitStatus(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, pol, "rules:\n  - deny: \"fixture.test/dep02\"\n    reason: \"malware, see SEC-123\"\n")
	st, err := policy.NewStore(pol)
	if err != nil {
		t.Fatal(err)
	}
	w := newExecWorld(t, nil, sidecar.Config{Policy: st})
	g := w.goCmd(t)
	report := filepath.Join(t.TempDir(), "report.json")
	code, stderr := runExec(t, g, nil, nil, "--proxy", w.gate.URL, "--admin", "http://"+w.gate.AdminAddr, "--report", report, "--", "go", "mod", "download", "fixture.test/dep02@v1.0.0")
	if code != 1 {
		t.Errorf("exit %d; want the go command's 1", code)
	}
	r := readReport(t, report)
	if len(r.Failures) == 0 || r.Failures[0].Code != "denied" || !strings.Contains(r.Failures[0].Explain, "SEC-123") && !strings.Contains(r.Failures[0].Explain, "policy") {
		t.Errorf("report failures: %+v", r.Failures)
	}
	if !strings.Contains(stderr, "failed: ") {
		t.Errorf("stderr names no failure")
	}
	// Under the CI's trace, the command's own TRACEPARENT is the build
	// span's, a child of the CI's span.
	const ciTrace = "5b8efff798038103d269b633813fc60c"
	ci := map[string]string{"TRACEPARENT": "00-" + ciTrace + "-eee19b7ec3c1b174-01"}
	if code, _ := runExec(t, g, ci, nil, "--proxy", w.gate.URL, "--admin", "http://"+w.gate.AdminAddr, "--report", report,
		"--", "sh", "-c", `case "$TRACEPARENT" in 00-`+ciTrace+`-eee19b7ec3c1b174-*) exit 9;; *) exit 7;; esac`); code != 7 {
		t.Errorf("exit %d; want the command's 7 (9: its TRACEPARENT is the CI's own span, not the build span)", code)
	}
	if r := readReport(t, report); r.TraceID != ciTrace || r.ExitCode == nil || *r.ExitCode != 7 {
		t.Errorf("report: trace %s, exit %d; want the CI's trace %s and 7", r.TraceID, exitOf(r), ciTrace)
	}
}

// TestExecTraceInJaeger: with the CI's TRACEPARENT and a rate limit of one
// new trace a second, the build is one trace in Jaeger: a build span under
// the CI's span, and one server span per audited request under it.
func TestExecTraceInJaeger(t *testing.T) {
	j := jaegertest.Start(t) // skips without JAEGER_BIN
	otel := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": j.OTLPHTTP,
		"OTEL_METRICS_EXPORTER":       "none",
	}
	for k, v := range otel { // autoexport reads the process environment
		t.Setenv(k, v)
	}
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{
		ServiceName: "modgate-exec-test", Getenv: func(k string) string { return otel[k] }, MaxTracesPerSecond: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	w := newExecWorld(t, tel, sidecar.Config{})
	g := w.goCmd(t)
	const ciTrace, ciSpan = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
	getenv := map[string]string{"TRACEPARENT": "00-" + ciTrace + "-" + ciSpan + "-01"}
	for k, v := range otel {
		getenv[k] = v
	}
	report := filepath.Join(t.TempDir(), "report.json")
	code, _ := runExec(t, g, getenv, nil, append([]string{"--proxy", w.gate.URL, "--admin", "http://" + w.gate.AdminAddr, "--report", report,
		"--", "go", "mod", "download"}, modules(20)...)...)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil { // flush modgate's spans
		t.Fatal(err)
	}
	r := readReport(t, report)
	lines := w.auditLines(t)
	if r.TraceID != ciTrace || r.Requests != len(lines) || len(lines) < 60 {
		t.Fatalf("report: trace %s, %d requests; want trace %s and the %d audit lines (at least 60)", r.TraceID, r.Requests, ciTrace, len(lines))
	}
	tr, err := j.WaitForTrace(ciTrace, len(lines)+1, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]jaegertest.Span{}
	var build *jaegertest.Span
	for i, s := range tr.Spans {
		byID[s.SpanID] = s
		if s.ParentSpanID == ciSpan {
			if build != nil {
				t.Errorf("two spans under the CI's: %s and %s", build.OperationName, s.OperationName)
			}
			build = &tr.Spans[i]
		}
	}
	if build == nil || build.OperationName != "go mod download" || build.ServiceName != "modgate-exec" {
		t.Fatalf("no build span named \"go mod download\" under the CI's span; spans: %d", len(tr.Spans))
	}
	var servers int
	for _, s := range tr.Spans {
		if s.Tags["span.kind"] != "server" {
			continue
		}
		servers++
		a := s
		for a.ParentSpanID != build.SpanID {
			p, ok := byID[a.ParentSpanID]
			if !ok {
				t.Fatalf("server span %s (%v) does not descend from the build span", s.OperationName, s.Tags["modgate.module.path"])
			}
			a = p
		}
	}
	if servers != len(lines) {
		t.Errorf("%d server spans in trace %s; want one per audit line (%d)", servers, ciTrace, len(lines))
	}
}

// TestExecForwardModeJoinsTrace: git through a tunnel, with a forward-mode
// user, lands in the build's trace.
func TestExecForwardModeJoinsTrace(t *testing.T) {
	const host = "git.fixture.test"
	const mod = host + "/lib"
	git := modtest.NewGitOrigin(t, mod, map[string]string{"go.mod": "module " + mod + "\n\ngo 1.21\n", "lib.go": "package lib\n"})
	cert := modtest.SelfSigned(t, host)
	origin := httptest.NewUnstartedServer(git)
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	origin.StartTLS()
	t.Cleanup(origin.Close)

	w := newExecWorld(t, nil, sidecar.Config{
		Resolve: map[string]string{host + ":443": origin.Listener.Addr().String()},
		Forward: sidecar.ForwardConfig{AllowHosts: []string{host}, Users: map[string]string{"alice": "s3cret"}},
	})
	g := w.goCmd(t)
	g.TrustPEM(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}))
	g.Setenv("GOPRIVATE", host)
	g.Setenv("GIT_TERMINAL_PROMPT", "0")
	proxy := strings.Replace(w.gate.URL, "http://", "http://alice:s3cret@", 1)
	report := filepath.Join(t.TempDir(), "report.json")
	code, _ := runExec(t, g, nil, []string{"HTTPS_PROXY=" + proxy, "https_proxy=" + proxy, "NO_PROXY=", "no_proxy="},
		"--proxy", w.gate.URL, "--admin", "http://"+w.gate.AdminAddr, "--report", report, "--", "go", "mod", "download", mod+"@v1.0.0", "fixture.test/dep01@v1.0.0")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, report)
	lines := w.auditLines(t)
	var tunnels int
	for _, l := range lines {
		if l.TraceID != r.TraceID {
			t.Errorf("audit line %s %s %s %s: trace %s; want the build's %s", l.Mode, l.Kind, l.Host, l.Module, l.TraceID, r.TraceID)
		}
		if l.Kind == "tunnel" {
			tunnels++
			if l.Identity != "alice" || l.Status != 200 {
				t.Errorf("tunnel to %s: identity %q, status %d; want alice's, 200", l.Host, l.Identity, l.Status)
			}
		}
	}
	if tunnels < 2 {
		t.Errorf("%d tunnels in the audit log; want go-get discovery and git", tunnels)
	}
	if r.Requests != len(lines) || r.ByKind["tunnel"].Requests != tunnels {
		t.Errorf("report: %d requests, %d tunnels; the audit log has %d and %d", r.Requests, r.ByKind["tunnel"].Requests, len(lines), tunnels)
	}
}

// TestExecBaselineNamesSlowUpstream: a build made slow by a slow upstream
// fails against the baseline of a good day, naming the upstream.
func TestExecBaselineNamesSlowUpstream(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	mirror := modtest.NewProxy(t, fx)
	// The modules come from mirror; the checksum database from the
	// world's proxy, which stays fast.
	w := newExecWorld(t, nil, sidecar.Config{Upstreams: []upstream.Config{{Name: "mirror", URL: mirror.URL}, {Name: "fixtures", URL: fixturesURL}}})
	dir := t.TempDir()
	good, slow := filepath.Join(dir, "good.json"), filepath.Join(dir, "slow.json")
	args := func(extra ...string) []string {
		return append(append([]string{"--proxy", w.gate.URL, "--admin", "http://" + w.gate.AdminAddr}, extra...),
			append([]string{"--", "go", "mod", "download"}, modules(4)...)...)
	}
	if code, _ := runExec(t, w.goCmd(t), nil, nil, args("--report", good)...); code != 0 {
		t.Fatalf("good day: exit %d", code)
	}
	if code, _ := runExec(t, w.goCmd(t), nil, nil, args("--baseline", good, "--max-ratio", "3")...); code != 0 {
		t.Errorf("a second good day fails against the first: exit %d", code)
	}
	mirror.SetFault("slow300")
	code, stderr := runExec(t, w.goCmd(t), nil, nil, args("--baseline", good, "--max-ratio", "3", "--report", slow)...)
	if code != 1 {
		t.Errorf("slow day: exit %d; want 1", code)
	}
	if !strings.Contains(stderr, "SLOWER THAN THE BASELINE") || !strings.Contains(stderr, "upstream mirror") {
		t.Errorf("stderr does not name the slow upstream")
	}
	if r := readReport(t, slow); r.Baseline == nil || r.Baseline.Worst != "mirror" {
		t.Errorf("report's baseline comparison: %+v", r.Baseline)
	}
}

// TestEnvTrace: env --trace carries the CI's TRACEPARENT in GOPROXY and in
// the proxy URLs, as exec does, and refuses to go without one.
func TestEnvTrace(t *testing.T) {
	const tp = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"
	env := map[string]string{"GOPROXY": "https://proxy.example.test", "GOSUMDB": "off", "TRACEPARENT": tp}
	code, stdout, stderr := runEnv(t, t.TempDir(), env, "--trace")
	if code != 0 {
		t.Fatalf("env --trace: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{
		"export GOPROXY='http://127.0.0.1:7070/.trace/" + tp + ",direct'",
		"export HTTPS_PROXY='http://trace-" + tp + ":@127.0.0.1:7070'",
		"export https_proxy='http://trace-" + tp + ":@127.0.0.1:7070'",
		"export GIT_HTTP_PROXY_AUTHMETHOD='basic'",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("env --trace lacks %s:\n%s", want, stdout)
		}
	}
	delete(env, "TRACEPARENT")
	if code, _, stderr := runEnv(t, t.TempDir(), env, "--trace"); code != 1 || !strings.Contains(stderr, "TRACEPARENT is not set") {
		t.Errorf("env --trace without TRACEPARENT: exit %d, %q", code, stderr)
	}
}

func exitOf(r BuildReport) int {
	if r.ExitCode == nil {
		return -1
	}
	return *r.ExitCode
}
