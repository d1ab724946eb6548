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
	"strings"
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
	os.Exit(m.Run())
}

// modgate starts this binary as modgate with args.
func modgate(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MODGATE_TEST_MAIN=1")
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

	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("modgate not ready:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}

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
		sawShutdown = sawShutdown || rec["msg"] == "shutting down"
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
	if want := "modgate.yaml:4: upstreams[0].retries: unknown key \"retries\""; !strings.Contains(out.String(), want) {
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
