package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
)

// TestMain lets the test binary stand in for modgate itself, so that tests
// can run the real process and send it signals.
func TestMain(m *testing.M) {
	if os.Getenv("MODGATE_TEST_MAIN") == "1" {
		os.Exit(Main())
	}
	// modgate env's output (goldens, SSL_CERT_FILE) is the one for Linux
	// on every system the tests run on.
	hostGOOS = "linux"
	os.Exit(m.Run())
}

// modgate starts this binary as modgate with args.
func modgate(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// The default cache is a per-user folder: each test gets its own.
	cmd.Env = append(os.Environ(), "MODGATE_TEST_MAIN=1", "XDG_CACHE_HOME="+t.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	listen, admin := freeAddr(t), freeAddr(t)
	cmd, out := modgate(t, "run", "--listen", listen, "--admin", admin, "--upstream", p.URL+"/f/slow500", "--sumdb", "off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitReady(t, admin, out)

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/fixture.test/dep01/@v/list")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- resp.Status + " " + string(b)
	}()
	for p.Count("slow500") == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r != "200 OK v1.0.0\n" {
		t.Errorf("in-flight request during SIGTERM: %q", r)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("modgate exited with %v:\n%s", err, out)
	}
	// Not a terminal: logs are JSON lines.
	var sawShutdown bool
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", line)
		}
		if rec["msg"] == "shutting down" {
			sawShutdown = true
			// A duration, as people write it (slog's JSON would give
			// nanoseconds).
			if rec["grace"] != "10s" {
				t.Errorf("shutdown log: grace %v, want \"10s\"", rec["grace"])
			}
		}
	}
	if !sawShutdown {
		t.Errorf("no shutdown log:\n%s", out)
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "modgate.yaml")
	os.WriteFile(file, []byte("listen: 127.0.0.1:0\nupstreams:\n  - url: https://a.example.test\n    retries: 3\n"), 0o644)
	cmd, out := modgate(t, "run", "--config", file)
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v; want 1\n%s", err, out)
	}
	if want := "modgate.yaml:4: upstreams[1].retries: unknown key \"retries\""; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
}

func TestRunRefusesItself(t *testing.T) {
	listen := freeAddr(t)
	cmd, out := modgate(t, "run", "--listen", listen, "--admin", "", "--upstream", "http://"+listen, "--sumdb", "off")
	if err := cmd.Run(); err == nil || !strings.Contains(out.String(), "modgate's own listener") {
		t.Errorf("err %v:\n%s", err, out)
	}
}

func TestVersionAndUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	app := &App{Stdout: &stdout, Stderr: &stderr, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"version"}); code != 0 || !strings.HasPrefix(stdout.String(), "modgate ") {
		t.Errorf("version: %d %q", code, stdout.String())
	}
	if code := app.Run(context.Background(), []string{"frobnicate"}); code != 2 || !strings.Contains(stderr.String(), `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, stderr.String())
	}
	stderr.Reset()
	if code := app.Run(context.Background(), []string{"run", "--no-such-flag"}); code != 2 || !strings.Contains(stderr.String(), "flag provided but not defined") {
		t.Errorf("bad flag: %d %q", code, stderr.String())
	}
}

func TestPolicyCheckAndLint(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(file, []byte(`private: ["*.corp.example.test"]
rules:
  - deny: "github.com/evil/*"
    reason: "malware, see SEC-123"
contact: "ask #platform-builds"
`), 0o644)
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
		return app.Run(context.Background(), args), out.String()
	}
	code, out := run("policy", "check", "--policy", file, "github.com/evil/x@v1.0.0")
	if code != 1 || !strings.Contains(out, "deny github.com/evil/x@v1.0.0\nrule:    1 (deny github.com/evil/*)\nreason:  malware, see SEC-123\ncontact: ask #platform-builds\n") {
		t.Errorf("check deny: %d\n%s", code, out)
	}
	code, out = run("policy", "check", "--policy", file, "git.corp.example.test/x")
	if code != 0 || !strings.Contains(out, "allow git.corp.example.test/x") || !strings.Contains(out, "add *.corp.example.test to GONOSUMDB") {
		t.Errorf("check private: %d\n%s", code, out)
	}
	code, out = run("policy", "lint", file)
	if code != 0 || !strings.Contains(out, "rule 1: deny github.com/evil/* (malware, see SEC-123)") {
		t.Errorf("lint: %d\n%s", code, out)
	}
	os.WriteFile(file, []byte("rules:\n  - deny: \"x.example.test\"\n    versions: \"<1.0\"\n"), 0o644)
	code, out = run("policy", "lint", file)
	if code != 1 || !strings.Contains(out, "policy.yaml:3: rules[1].versions") {
		t.Errorf("lint invalid: %d\n%s", code, out)
	}
	if code, _ := run("policy", "frob"); code != 2 {
		t.Errorf("unknown policy command: %d", code)
	}
}

// TestSIGTERMLosesNoAuditLine kills modgate with SIGTERM while clients
// keep it busy and counts audit lines against the answers clients got.
func TestSIGTERMLosesNoAuditLine(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	dir := t.TempDir()
	auditFile := filepath.Join(dir, "audit.jsonl")
	policyFile := filepath.Join(dir, "policy.yaml")
	os.WriteFile(policyFile, []byte("rules:\n  - deny: \"fixture.test/dep02\"\n"), 0o644)
	listen, admin := freeAddr(t), freeAddr(t)
	cmd, out := modgate(t, "run", "--listen", listen, "--admin", admin, "--upstream", p.URL+"/f/slow20", "--sumdb", "off",
		"--policy", policyFile, "--audit-log", auditFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitReady(t, admin, out)

	var answered atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 30 * time.Second}
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				mod := []string{"dep01", "dep02", "dep03"}[i%3]
				resp, err := client.Get("http://" + listen + "/fixture.test/" + mod + "/@v/list")
				if err != nil {
					return // modgate stopped accepting
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				answered.Add(1)
			}
		}()
	}
	for answered.Load() < 50 {
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("modgate exited with %v:\n%s", err, out)
	}
	close(stop)
	wg.Wait()
	data, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(string(data), "\n")
	if int64(lines) != answered.Load() {
		t.Errorf("%d audit lines for %d answered requests", lines, answered.Load())
	}
	t.Logf("%d requests answered, %d audit lines", answered.Load(), lines)
}

func TestSIGHUPReloadsPolicy(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(policyFile, []byte("rules:\n  - allow: \"*\"\n"), 0o644)
	listen, admin := freeAddr(t), freeAddr(t)
	cmd, out := modgate(t, "run", "--listen", listen, "--admin", admin, "--upstream", p.URL, "--sumdb", "off", "--policy", policyFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitReady(t, admin, out)
	status := func() int {
		resp, err := http.Get("http://" + listen + "/fixture.test/dep01/@v/list")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := status(); s != 200 {
		t.Fatalf("before: %d", s)
	}
	// Write in place (no rename) and signal at once: SIGHUP must not wait
	// for the file watcher.
	os.WriteFile(policyFile, []byte("rules:\n  - deny: \"fixture.test/dep01\"\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for status() != 403 {
		if time.Now().After(deadline) {
			t.Fatalf("policy not reloaded:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// An invalid policy keeps the one in force, is logged with its file,
	// line and key, and counts in the reload-failure metric.
	os.WriteFile(policyFile, []byte("rules:\n  - deny: \"fixture.test/dep01\"\n    versions: \"<1.0\"\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	failed := regexp.MustCompile(`(?m)^modgate_policy_reload_failures_total(\{[^}]*\})? [1-9]`)
	for !failed.MatchString(scrape(t, admin)) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload failure in /metrics:\n%s", scrape(t, admin))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := status(); s != 403 {
		t.Errorf("an invalid policy replaced the one in force: %d", s)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if !strings.Contains(out.String(), "policy reloaded") {
		t.Errorf("no reload log:\n%s", out)
	}
	if !strings.Contains(out.String(), "policy.yaml:3: rules[1].versions") {
		t.Errorf("the failed reload's log does not name file, line and key:\n%s", out)
	}
}

func scrape(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitReady(t *testing.T, admin string, out *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("modgate not ready:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCACommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out bytes.Buffer
	app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"ca", "path", "--ca-dir", dir}); code != 1 || !strings.Contains(out.String(), "modgate ca init") {
		t.Errorf("path before init: %d %q", code, out.String())
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"ca", "init", "--ca-dir", dir}); code != 0 || !strings.Contains(out.String(), filepath.Join(dir, "modgate-ca.pem")) {
		t.Errorf("init: %d %q", code, out.String())
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"ca", "init", "--ca-dir", dir}); code != 1 || !strings.Contains(out.String(), "already exists") {
		t.Errorf("second init: %d %q", code, out.String())
	}
	out.Reset()
	if code := app.Run(context.Background(), []string{"ca", "path", "--ca-dir", dir}); code != 0 || strings.TrimSpace(out.String()) != filepath.Join(dir, "modgate-ca.pem") {
		t.Errorf("path: %d %q", code, out.String())
	}
}

// TestRunPprof: --pprof adds Go's profiles to the admin listener, which
// keeps its own paths; without it they are not there.
func TestRunPprof(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	for _, pprofOn := range []bool{true, false} {
		listen, admin := freeAddr(t), freeAddr(t)
		args := []string{"run", "--listen", listen, "--admin", admin, "--upstream", p.URL, "--sumdb", "off"}
		if pprofOn {
			args = append(args, "--pprof")
		}
		cmd, out := modgate(t, args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitReady(t, admin, out)
		status := func(path string) int {
			resp, err := http.Get("http://" + admin + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		want := map[bool]int{true: 200, false: 404}[pprofOn]
		if got := status("/debug/pprof/goroutine?debug=1"); got != want {
			t.Errorf("--pprof %v: /debug/pprof/goroutine: %d, want %d", pprofOn, got, want)
		}
		if got := status("/metrics"); got != 200 {
			t.Errorf("--pprof %v: /metrics: %d", pprofOn, got)
		}
		if resp, err := http.Get("http://" + listen + "/fixture.test/dep01/@v/list"); err != nil || resp.StatusCode != 200 {
			t.Errorf("--pprof %v: module listener: %v %v", pprofOn, resp, err)
		} else {
			resp.Body.Close()
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("modgate exited with %v:\n%s", err, out)
		}
	}
}

func dialTCP(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }

func sleepBriefly() { time.Sleep(20 * time.Millisecond) }
