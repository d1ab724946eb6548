package cli

import (
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
)

// After the README's go env -w GOPROXY=<modgate>,direct, the next modgate
// run takes its chain from that go env: it leaves itself out, says so, and
// serves.
func TestRunLeavesItselfOutOfGoEnvChain(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	listen := freeAddr(t)
	goenv := filepath.Join(t.TempDir(), "go.env")
	if err := os.WriteFile(goenv, []byte("GOPROXY=http://"+listen+","+p.URL+",direct\nGOSUMDB=off\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, out := modgate(t, "run", "--listen", listen, "--admin", "", "--cache-dir", "")
	var env []string
	for _, kv := range cmd.Env {
		if k, _, _ := strings.Cut(kv, "="); k != "GOPROXY" && k != "GOSUMDB" && k != "GOENV" && !strings.HasPrefix(k, "MODGATE_") || k == "MODGATE_TEST_MAIN" {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "GOENV="+goenv)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitListening(t, listen, out)
	resp, err := http.Get("http://" + listen + "/fixture.test/dep01/@v/list")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The log is read once the process is gone: it writes to out.
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if resp.StatusCode != 200 || string(body) != "v1.0.0\n" {
		t.Errorf("list: %s %q\n%s", resp.Status, body, out)
	}
	if !strings.Contains(out.String(), "names modgate's own listener (http://"+listen+"): left out of the upstream chain") {
		t.Errorf("no log line says modgate left itself out:\n%s", out)
	}
}

func loadWith(t *testing.T, env map[string]string, goproxy, builtin string, args ...string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	l := loader{
		getenv: func(k string) string { return env[k] },
		goenv: func(context.Context, ...string) ([]string, error) {
			return []string{goproxy, "off"}, nil
		},
	}
	if builtin != "" {
		l.goDefault = func(context.Context) (string, error) { return builtin, nil }
	}
	cfg, _, err := l.load(fs, &f)
	return cfg, err
}

func TestLoadLeavesItselfOutOfGoEnvChain(t *testing.T) {
	urls := func(cfg Config) []string {
		var out []string
		for _, u := range cfg.Upstreams {
			out = append(out, u.URL)
		}
		return out
	}
	cfg, err := loadWith(t, nil, "http://localhost:7070,https://a.example.test|direct", "")
	if err != nil || !reflect.DeepEqual(urls(cfg), []string{"https://a.example.test", "direct"}) || len(cfg.notes) != 1 {
		t.Errorf("upstreams %v, notes %v, err %v", urls(cfg), cfg.notes, err)
	}
	// Nothing left: the go command's own default.
	cfg, err = loadWith(t, nil, "http://127.0.0.1:7070", "https://proxy.example.test,direct")
	if err != nil || !reflect.DeepEqual(urls(cfg), []string{"https://proxy.example.test", "direct"}) {
		t.Errorf("upstreams %v, err %v", urls(cfg), err)
	}
	// Another port is another program.
	cfg, err = loadWith(t, nil, "http://127.0.0.1:7070", "", "--listen", "127.0.0.1:7170")
	if err != nil || !reflect.DeepEqual(urls(cfg), []string{"http://127.0.0.1:7070"}) {
		t.Errorf("upstreams %v, err %v", urls(cfg), err)
	}
	// A chain the user gave is theirs: sidecar.New refuses the loop.
	cfg, err = loadWith(t, nil, "https://a.example.test", "", "--upstream", "http://127.0.0.1:7070")
	if err != nil || !reflect.DeepEqual(urls(cfg), []string{"http://127.0.0.1:7070"}) {
		t.Errorf("upstreams %v, err %v", urls(cfg), err)
	}
}

// Without cache.dir, modgate caches in a per-user folder; "" turns the
// cache off, and a default folder that cannot be used means no cache, not
// a refusal to start.
func TestLoadDefaultCacheDir(t *testing.T) {
	xdg := t.TempDir()
	for _, tt := range []struct {
		name string
		env  map[string]string
		args []string
		want string
		warn bool
	}{
		{"XDG_CACHE_HOME", map[string]string{"XDG_CACHE_HOME": xdg}, nil, filepath.Join(xdg, "modgate"), false},
		{"HOME", map[string]string{"HOME": xdg}, nil, filepath.Join(xdg, ".cache", "modgate"), false},
		{"flag turns it off", map[string]string{"XDG_CACHE_HOME": xdg}, []string{"--cache-dir", ""}, "", false},
		{"flag", map[string]string{"XDG_CACHE_HOME": xdg}, []string{"--cache-dir", filepath.Join(xdg, "c")}, filepath.Join(xdg, "c"), false},
		{"no home", nil, nil, "", false},
		{"unusable", map[string]string{"XDG_CACHE_HOME": "/etc/hostname"}, nil, "", true},
	} {
		cfg, err := loadWith(t, tt.env, "https://a.example.test", "", tt.args...)
		if err != nil || cfg.Cache.Dir != tt.want || (len(cfg.notes) > 0) != tt.warn {
			t.Errorf("%s: cache.dir %q, notes %v, err %v; want %q", tt.name, cfg.Cache.Dir, cfg.notes, err, tt.want)
		}
	}
}

// A busy admin port is named as the admin listener, with the flag that
// moves it.
func TestRunNamesBusyListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd, out := modgate(t, "run", "--listen", freeAddr(t), "--admin", ln.Addr().String(), "--upstream", "off", "--sumdb", "off")
	if err := cmd.Run(); err == nil {
		t.Fatal("modgate run started with its admin port taken")
	}
	for _, want := range []string{"admin listener (admin, --admin, MODGATE_ADMIN) on " + ln.Addr().String(), "give another address with --admin"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// A misspelled upstream host is a warning at start-up, never a refusal.
func TestRunWarnsOfUnresolvableUpstream(t *testing.T) {
	var out syncBuffer
	app := &App{Stdout: io.Discard, Stderr: &out, Getenv: func(string) string { return "" },
		LookupHost: func(_ context.Context, host string) ([]string, error) {
			if host == "mods.exmaple.test" {
				return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
			}
			return []string{"127.0.0.1"}, nil
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	listen := freeAddr(t)
	go func() {
		done <- app.Run(ctx, []string{"run", "--listen", listen, "--admin", "", "--cache-dir", "", "--sumdb", "off", "--log-format", "text",
			"--upstream", "https://mods.example.test,https://mods.exmaple.test,direct"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "does not resolve") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "upstream mods.exmaple.test: host mods.exmaple.test does not resolve; check its URL (upstreams item 2)") ||
		strings.Contains(out.String(), "host mods.example.test does not") {
		t.Errorf("log:\n%s", out.String())
	}
}

// syncBuffer is a bytes.Buffer for a writer and a reader in two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
