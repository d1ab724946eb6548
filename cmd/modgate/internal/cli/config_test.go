package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/upstream"
)

// load runs the config loader with a config file body (if any), an
// environment and flags, and a fake `go env`.
func load(t *testing.T, file string, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	cfg, _, err := loadSidecar(t, file, env, args...)
	return cfg, err
}

// loadSidecar is load that also returns the sidecar's config.
func loadSidecar(t *testing.T, file string, env map[string]string, args ...string) (Config, sidecar.Config, error) {
	t.Helper()
	if file != "" {
		path := filepath.Join(t.TempDir(), "modgate.yaml")
		if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var f runFlags
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	l := loader{
		getenv: func(k string) string { return env[k] },
		goenv: func(ctx context.Context, names ...string) ([]string, error) {
			if env["GOENV_FAILS"] != "" {
				return nil, errors.New("go: not found")
			}
			if len(names) == 1 && names[0] == "GOROOT" {
				return []string{env["GOROOT"]}, nil
			}
			gosumdb := "sum.example.test+c2fb575e+Afe723Se3XAmzMwlQQdca+228IRzAnWgglDVJp1SWDKQ"
			if v, ok := env["GOENV_GOSUMDB"]; ok {
				gosumdb = v
			}
			return []string{"https://proxy.example.test,direct", gosumdb}, nil
		},
	}
	return l.load(fs, &f)
}

func TestLoadDefaultsFromGoEnv(t *testing.T) {
	cfg, err := load(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7070" || cfg.Admin != "127.0.0.1:7071" {
		t.Errorf("listen %q admin %q", cfg.Listen, cfg.Admin)
	}
	want := []UpstreamConfig{{URL: "https://proxy.example.test", Fallthrough: "notfound"}, {URL: "direct", Fallthrough: "notfound"}}
	if !reflect.DeepEqual(cfg.Upstreams, want) {
		t.Errorf("upstreams %+v; want %+v", cfg.Upstreams, want)
	}
	if cfg.SumDB.Name != "sum.example.test" {
		t.Errorf("sumdb %q", cfg.SumDB.Name)
	}
}

// TestSumDBNamesAsTheGoCommandDoes: a checksum database's name may have a
// path, and GOSUMDB may give a URL after the key (where direct lookups go).
func TestSumDBNamesAsTheGoCommandDoes(t *testing.T) {
	for _, tt := range []struct {
		args           []string
		env            map[string]string
		file           string
		wantName, wURL string
	}{
		{args: []string{"--sumdb", "localhost.localdev/sumdb"}, wantName: "localhost.localdev/sumdb"},
		{args: []string{"--sumdb", "sum.example.test/sumdb+e7a029e3+Aan6B3sFSc/owHsZ0PqrlF6lkWulBDQTSw3GK6o4bOyM https://mirror.example.test/sumdb"}, wantName: "sum.example.test/sumdb", wURL: "https://mirror.example.test/sumdb"},
		{env: map[string]string{"GOENV_FAILS": "1", "GOPROXY": "off", "GOSUMDB": exampleKey + " https://mirror.example.test/db"}, wantName: "sum.example.test", wURL: "https://mirror.example.test/db"},
		{file: "sumdb: {name: sum.example.test/db, url: \"https://mirror.example.test/db\"}\n", wantName: "sum.example.test/db", wURL: "https://mirror.example.test/db"},
	} {
		_, sc, err := loadSidecar(t, tt.file, tt.env, tt.args...)
		if err != nil {
			t.Errorf("%v %v: %v", tt.args, tt.env, err)
			continue
		}
		if sc.SumDB != tt.wantName || sc.SumDBURL != tt.wURL {
			t.Errorf("%v %v %q: sumdb %q at %q; want %q at %q", tt.args, tt.env, tt.file, sc.SumDB, sc.SumDBURL, tt.wantName, tt.wURL)
		}
	}
}

func TestLoadFallsBackToEnvironment(t *testing.T) {
	cfg, err := load(t, "", map[string]string{"GOENV_FAILS": "1", "GOPROXY": "https://env.example.test|off", "GOSUMDB": "off"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 2 || cfg.Upstreams[0].Fallthrough != "error" || cfg.Upstreams[1].URL != "off" {
		t.Errorf("upstreams %+v", cfg.Upstreams)
	}
	if cfg.SumDB.Name != "off" {
		t.Errorf("sumdb %q", cfg.SumDB.Name)
	}
	_, err = load(t, "", map[string]string{"GOENV_FAILS": "1"})
	if err == nil || !strings.Contains(err.Error(), "no upstream: `go env GOPROXY` failed (go: not found) and $GOPROXY is empty") {
		t.Errorf("error = %v", err)
	}
}

func TestLoadPrecedence(t *testing.T) {
	file := `
listen: 127.0.0.1:1001
admin: 127.0.0.1:1002
upstreams:
  - name: internal
    url: https://mods.corp.example.test
    private: true
    fallthrough: error
    timeouts: {dial: 1s, header: 2m}
    breaker: {consecutive_failures: 3, failure_ratio: 0.25, min_requests: 8, window: 1m, open_for: 10s, half_open_probes: 2}
    retry: {attempts: 4, base: 50ms, cap: 1s, budget_ratio: 0.1}
    redirect_hosts: ["cdn.example.test"]
  - url: direct
sumdb: {name: sum.fixture.test}
`
	cfg, err := load(t, file, map[string]string{"MODGATE_LISTEN": "127.0.0.1:2001", "MODGATE_ADMIN": "127.0.0.1:2002"}, "--listen", "127.0.0.1:3001")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:3001" {
		t.Errorf("listen %q: the flag should win", cfg.Listen)
	}
	if cfg.Admin != "127.0.0.1:2002" {
		t.Errorf("admin %q: the environment should beat the file", cfg.Admin)
	}
	u := cfg.Upstreams[0]
	if u.Name != "internal" || !u.Private || u.Fallthrough != "error" || u.Timeouts.Dial != time.Second || u.Timeouts.Header != 2*time.Minute {
		t.Errorf("upstream %+v", u)
	}
	wantBreaker := BreakerConfig{ConsecutiveFailures: 3, FailureRatio: 0.25, MinRequests: 8, Window: time.Minute, OpenFor: 10 * time.Second, HalfOpenProbes: 2}
	wantRetry := RetryConfig{Attempts: 4, Base: 50 * time.Millisecond, Cap: time.Second, BudgetRatio: 0.1}
	if u.Breaker != wantBreaker || u.Retry != wantRetry || len(u.RedirectHosts) != 1 {
		t.Errorf("breaker %+v retry %+v redirects %v", u.Breaker, u.Retry, u.RedirectHosts)
	}
	if cfg.SumDB.Name != "sum.fixture.test" {
		t.Errorf("sumdb %q: the file should beat go env", cfg.SumDB.Name)
	}

	cfg, err = load(t, file, map[string]string{"MODGATE_UPSTREAM": "https://a.example.test|https://b.example.test"}, "--resolve", "a.example.test:443=127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Upstreams) != 2 || cfg.Upstreams[0].URL != "https://a.example.test" || cfg.Upstreams[0].Fallthrough != "error" {
		t.Errorf("MODGATE_UPSTREAM did not replace the file's chain: %+v", cfg.Upstreams)
	}
	if cfg.Resolve["a.example.test:443"] != "127.0.0.1:9" {
		t.Errorf("resolve %v", cfg.Resolve)
	}
}

func TestLoadErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct {
		name, file string
		env        map[string]string
		args       []string
		want       string
	}{
		{name: "unknown top-level key", file: "listen: 127.0.0.1:1\nlisen: x\n", want: "modgate.yaml:2: lisen: unknown key \"lisen\""},
		{name: "unknown nested key", file: "upstreams:\n  - url: https://a.example.test\n    brekr: 1\n", want: "modgate.yaml:3: upstreams[1].brekr: unknown key \"brekr\""},
		{name: "bad duration", file: "upstreams:\n  - url: https://a.example.test\n    timeouts:\n      dial: soon\n", want: "modgate.yaml:4: upstreams[1].timeouts.dial: invalid value \"soon\", want a duration like 10s"},
		{name: "bad bool", file: "upstreams:\n  - url: https://a.example.test\n    private: maybe\n", want: "modgate.yaml:3: upstreams[1].private: invalid value \"maybe\", want true or false"},
		{name: "bad fallthrough", file: "upstreams:\n  - url: https://a.example.test\n    fallthrough: sometimes\n", want: "modgate.yaml:3: upstreams[1].fallthrough: \"sometimes\": want notfound"},
		{name: "bad url", file: "upstreams:\n  - url: https://a.example.test\n  - url: ftp://b.example.test\n", want: "modgate.yaml:3: upstreams[2].url: \"ftp://b.example.test\": want an http, https or file URL"},
		{name: "missing url", file: "upstreams:\n  - name: a\n", want: "modgate.yaml:2: upstreams[1].url: missing"},
		{name: "bad listen from env", env: map[string]string{"MODGATE_LISTEN": "7070"}, want: "MODGATE_LISTEN: listen: \"7070\" is not host:port"},
		{name: "bad listen from flag", args: []string{"--listen", "nowhere"}, want: "--listen: listen: \"nowhere\" is not host:port"},
		{name: "bad upstream flag", args: []string{"--upstream", "bogus"}, want: "--upstream: upstreams: upstream list: unknown keyword \"bogus\""},
		{name: "bad ratio", file: "upstreams:\n  - url: https://a.example.test\n    breaker:\n      failure_ratio: 2\n", want: "modgate.yaml:4: upstreams[1].breaker.failure_ratio: 2: want a share between 0 and 1"},
		{name: "bad attempts", file: "upstreams:\n  - url: https://a.example.test\n    retry: {attempts: many}\n", want: "modgate.yaml:3: upstreams[1].retry.attempts: invalid value \"many\", want a number"},
		{name: "negative window", file: "upstreams:\n  - url: https://a.example.test\n    breaker: {window: -1s}\n", want: "modgate.yaml:3: upstreams[1].breaker.window: must not be negative"},
		{name: "bad log level", file: "log:\n  level: loud\n", want: "modgate.yaml:2: log.level: \"loud\": want debug"},
		{name: "bad sumdb", file: "sumdb: {name: \"https://sum.example.test\"}\n", want: "modgate.yaml:1: sumdb.name:"},
		{name: "offline without a cache", file: "offline: true\n", want: "modgate.yaml:1: offline: offline serves only from the cache: set cache.dir"},
		{name: "offline not a bool", env: map[string]string{"MODGATE_OFFLINE": "maybe"}, want: "MODGATE_OFFLINE: offline: \"maybe\": want true or false"},
		{name: "bad sumdb path", file: "sumdb:\n  name: sum.example.test/../x\n", want: "modgate.yaml:2: sumdb.name:"},
		{name: "bad sumdb url", file: "sumdb:\n  name: sum.example.test\n  url: ftp://sum.example.test\n", want: "modgate.yaml:3: sumdb.url: \"ftp://sum.example.test\": want https://host[/path]"},
		{name: "missing CA file", file: "tls_ca_file: /does/not/exist.pem\n", want: "modgate.yaml:1: tls_ca_file: open /does/not/exist.pem"},
		{name: "not yaml", file: "listen: [\n", want: "modgate.yaml:1: did not find expected node content"},
		// yaml itself names the line where the enclosing block starts.
		{name: "misindented list item", file: "listen: 127.0.0.1:1\nupstreams:\n  - url: https://a.example.test\n   name: a\n", want: "modgate.yaml:4: did not find expected '-' indicator: \"   name: a\""},
		{name: "misindented key", file: "listen: 127.0.0.1:1\nlog:\n  level: info\n format: text\n", want: "modgate.yaml:4: did not find expected key"},
		{name: "tab", file: "listen: 127.0.0.1:1\n\tadmin: 127.0.0.1:2\n", want: "modgate.yaml:2: found a tab character"},
		{name: "upstreams as a map", file: "upstreams: {url: https://a.example.test}\n", want: "want a list of upstreams (\"- url: https://...\" lines) or a GOPROXY-style string"},
		{name: "bad upstreams string", file: "listen: 127.0.0.1:1\nupstreams: \"https://a.example.test,bogus\"\n", want: "modgate.yaml:2: upstreams: upstream list: unknown keyword \"bogus\""},
		{name: "list item counted from 1", file: "upstreams:\n  - url: https://a.example.test\n  - url: https://b.example.test\n    retry: {attempts: 11}\n", want: "modgate.yaml:4: upstreams[2].retry.attempts: 11: want 1 to 10"},
		{name: "cache dir not a folder", file: "cache:\n  dir: /etc/hostname/cache\n", want: "modgate.yaml:2: cache.dir: /etc/hostname is not a folder"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.file, tt.env, tt.args...)
			if err == nil {
				t.Fatalf("no error; want %q", tt.want)
			}
			msg := err.Error()
			if i := strings.Index(msg, "modgate.yaml"); i > 0 {
				msg = msg[i:] // drop the temporary directory
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error = %q; want %q", msg, tt.want)
			}
		})
	}
}

func TestValidateBuildsSidecarConfig(t *testing.T) {
	cfg := defaultConfig()
	cfg.Upstreams = []UpstreamConfig{{Name: "a", URL: "https://a.example.test", Fallthrough: "error", Private: true, Timeouts: TimeoutsConfig{Idle: time.Second}}}
	cfg.SumDB.Name = "sum.example.test"
	sc, err := cfg.validate(origins{})
	if err != nil {
		t.Fatal(err)
	}
	want := upstream.Config{Name: "a", URL: "https://a.example.test", Private: true, Fallthrough: upstream.OnError, Timeouts: upstream.Timeouts{Idle: time.Second}}
	if !reflect.DeepEqual(sc.Upstreams[0], want) || sc.SumDB != "sum.example.test" || sc.Listen != "127.0.0.1:7070" {
		t.Errorf("sidecar config %+v", sc)
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add("listen: 127.0.0.1:1\nupstreams:\n  - url: https://a.example.test\n    timeouts: {dial: 1s}\n")
	f.Add("upstreams: [{url: direct}]\nresolve: {\"a:443\": \"127.0.0.1:1\"}\n")
	f.Add("log: {level: debug}\nbogus: 1\n")
	f.Fuzz(func(t *testing.T, data string) {
		cfg := defaultConfig()
		o := origins{}
		if err := parseFile("f.yaml", []byte(data), &cfg, o); err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		cfg.validate(o) // must not panic
	})
}

func TestLoadClientTimeouts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "modgate.yaml")
	os.WriteFile(path, []byte("client_timeouts:\n  header: 5s\n  idle: 2m\n"), 0o644)
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	fs.Parse([]string{"--config", path, "--upstream", "off", "--sumdb", "off"})
	_, sc, err := loader{getenv: func(string) string { return "" }}.load(fs, &f)
	if err != nil {
		t.Fatal(err)
	}
	if sc.ClientHeader != 5*time.Second || sc.ClientIdle != 2*time.Minute {
		t.Errorf("client header %v, idle %v; want 5s, 2m", sc.ClientHeader, sc.ClientIdle)
	}
	for _, c := range []struct{ file, want string }{
		{"client_timeouts:\n  idle: -1s\n", "modgate.yaml:2: client_timeouts.idle: must not be negative"},
		{"client_timeouts:\n  header: soon\n", "modgate.yaml:2: client_timeouts.header: invalid value \"soon\""},
		{"client_timeouts:\n  body: 1s\n", "modgate.yaml:2: client_timeouts.body"},
	} {
		if _, err := load(t, c.file, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
}

func TestLoadForward(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	os.WriteFile(users, []byte("# proxy users\nalice:s3cret\n"), 0o600)
	if err := mitm.Init(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	file := `
forward:
  connect_ports: [443, 8443]
  allow_hosts: ["*.example.test"]
  mitm_hosts: [proxy.example.test]
  ca_dir: ` + filepath.Join(dir, "ca") + `
  private_hosts: ["*.corp.example.test"]
  auth_file: ` + users + `
  tunnel_idle: 1m
  max_tunnels: 7
`
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	path := filepath.Join(dir, "modgate.yaml")
	os.WriteFile(path, []byte(file), 0o644)
	fs.Parse([]string{"--config", path, "--upstream", "off", "--sumdb", "off"})
	_, sc, err := loader{getenv: func(string) string { return "" }}.load(fs, &f)
	if err != nil {
		t.Fatal(err)
	}
	fw := sc.Forward
	if fw.CA == nil || fw.Users["alice"] != "s3cret" || fw.TunnelIdle != time.Minute || fw.MaxTunnels != 7 || len(fw.ConnectPorts) != 2 || fw.MITMHosts[0] != "proxy.example.test" {
		t.Errorf("forward %+v", fw)
	}

	for _, c := range []struct{ file, want string }{
		{"forward:\n  connect_ports: [0]\n", "modgate.yaml:2: forward.connect_ports[1]: 0 is not a port"},
		{"forward:\n  allow_hosts: [\"https://x.example.test\"]\n", "forward.allow_hosts[1]: \"https://x.example.test\" is not a host pattern"},
		{"forward:\n  mitm_hosts: [x.example.test]\n  ca_dir: /nonexistent\n", "modgate.yaml:3: forward.ca_dir: no CA in /nonexistent: run `modgate ca init"},
		{"forward:\n  auth_file: " + path + "\n", "forward.auth_file: " + path + ":2: want user:password"},
	} {
		if _, err := load(t, c.file, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
}

func TestLoadCache(t *testing.T) {
	cfg, err := load(t, "cache:\n  dir: /var/cache/modgate\n  max_bytes: 10GiB\n  list_ttl: 30s\n  stale_if_error: 12h\n  private_dir: /var/cache/modgate-private\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cache.MaxBytes != 10<<30 || cfg.Cache.ListTTL != 30*time.Second || cfg.Cache.StaleIfError != 12*time.Hour {
		t.Errorf("cache %+v", cfg.Cache)
	}
	for _, c := range []struct{ file, want string }{
		{"cache:\n  max_bytes: lots\n", "modgate.yaml:2: cache.max_bytes: invalid size \"lots\""},
		{"cache:\n  dir: /x\n  private_dir: /x\n", "cache.private_dir: must not be the shared cache directory"},
		{"cache:\n  dir: /x\n  shared: \"mods.example.test/bucket\"\n", "modgate.yaml:3: cache.shared: not a bucket URL"},
		{"cache:\n  dir: /x\n  shared: \"ftp://bucket\"\n", "modgate.yaml:3: cache.shared: open ftp://bucket"},
		{"cache:\n  shared: \"file:///srv/modules\"\n", "modgate.yaml:2: cache.shared: needs cache.dir"},
		{"cache:\n  dir: /x\n  shared_private: \"file:///srv/private\"\n", "modgate.yaml:3: cache.shared_private: needs cache.private_dir"},
		{"cache:\n  dir: /x\n  private_dir: /y\n  shared: \"file:///srv/m\"\n  shared_private: \"file:///srv/m\"\n", "modgate.yaml:5: cache.shared_private: must not be the store of public modules"},
		{"cache:\n  dir: /x\n  shared: \"azblob://c?sas_token=s3cr3t&x=1\"\n  shared_timeout: -1s\n", "cache.shared_timeout: must not be negative"},
		{"fleet:\n  redis: \"http://redis.example.test\"\n", "modgate.yaml:2: fleet.redis: redis URL"},
		{"fleet:\n  redis: \"redis://:s3cr3t@redis.example.test:6379/0\"\n  wait: -1s\n", "modgate.yaml:3: fleet.wait: must not be negative"},
	} {
		if _, err := load(t, c.file, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v; want %q", c.file, err, c.want)
		}
	}
}

// The shared store comes from the file, MODGATE_CACHE_SHARED or
// --cache-shared, and is opened (not reached) at load.
func TestLoadSharedStore(t *testing.T) {
	dir, storeDir := t.TempDir(), t.TempDir()
	for _, c := range []struct {
		file string
		env  map[string]string
		args []string
	}{
		{file: "cache:\n  dir: " + dir + "\n  shared: file://" + storeDir + "\n"},
		{file: "cache:\n  dir: " + dir + "\n", env: map[string]string{"MODGATE_CACHE_SHARED": "file://" + storeDir}},
		{file: "cache:\n  dir: " + dir + "\n", args: []string{"--cache-shared", "file://" + storeDir}},
	} {
		_, sc, err := loadSidecar(t, c.file, c.env, c.args...)
		if err != nil {
			t.Fatalf("%q %v %v: %v", c.file, c.env, c.args, err)
		}
		if sc.Cache.Shared == nil || sc.Cache.Shared.Name() != "file://"+storeDir {
			t.Errorf("%q %v %v: shared store %v", c.file, c.env, c.args, sc.Cache.Shared)
		}
	}
}

func TestLoadMaxTracesPerSecond(t *testing.T) {
	cfg, err := load(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Telemetry.MaxTracesPerSecond; got != 100 {
		t.Errorf("default max_traces_per_second = %v, want 100", got)
	}
	for _, c := range []struct {
		file string
		env  map[string]string
		args []string
		want float64
	}{
		{file: "telemetry:\n  max_traces_per_second: 2.5\n", want: 2.5},
		{file: "telemetry: {max_traces_per_second: 0}\n", want: 0},
		{file: "telemetry: {max_traces_per_second: 5}\n", env: map[string]string{"MODGATE_MAX_TRACES_PER_SECOND": "7"}, want: 7},
		{env: map[string]string{"MODGATE_MAX_TRACES_PER_SECOND": "7"}, args: []string{"--max-traces-per-second", "9"}, want: 9},
	} {
		cfg, err := load(t, c.file, c.env, c.args...)
		if err != nil {
			t.Errorf("%q %v %v: %v", c.file, c.env, c.args, err)
			continue
		}
		if got := cfg.Telemetry.MaxTracesPerSecond; got != c.want {
			t.Errorf("%q %v %v: max_traces_per_second = %v, want %v", c.file, c.env, c.args, got, c.want)
		}
	}
	for _, c := range []struct {
		file string
		env  map[string]string
		want string
	}{
		{file: "telemetry:\n  max_traces_per_second: lots\n", want: "modgate.yaml:2: telemetry.max_traces_per_second: invalid value \"lots\", want a number"},
		{file: "telemetry:\n  max_traces_per_second: -1\n", want: "modgate.yaml:2: telemetry.max_traces_per_second: -1: want a number of traces a second"},
		{file: "telemetry:\n  max_trace_rate: 1\n", want: "modgate.yaml:2: telemetry.max_trace_rate: unknown key"},
		{env: map[string]string{"MODGATE_MAX_TRACES_PER_SECOND": "fast"}, want: "MODGATE_MAX_TRACES_PER_SECOND: telemetry.max_traces_per_second: invalid value \"fast\""},
	} {
		if _, err := load(t, c.file, c.env); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %v: %v; want %q", c.file, c.env, err, c.want)
		}
	}
}

// upstreams may be written in GOPROXY syntax, as --upstream and
// MODGATE_UPSTREAM take it.
func TestLoadUpstreamsString(t *testing.T) {
	cfg, err := load(t, "upstreams: \"https://a.example.test,direct\"\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []UpstreamConfig{{URL: "https://a.example.test", Fallthrough: "notfound"}, {URL: "direct", Fallthrough: "notfound"}}
	if !reflect.DeepEqual(cfg.Upstreams, want) {
		t.Errorf("upstreams %+v; want %+v", cfg.Upstreams, want)
	}
}
