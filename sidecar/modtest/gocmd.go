package modtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultGoTimeout bounds each [Go.Run] when [Go.Timeout] is zero.
const DefaultGoTimeout = 2 * time.Minute

// A Go runs the real go command in a hermetic environment:
//
//   - a fresh GOPATH, GOMODCACHE and HOME, and an empty working directory
//     ([Go.Dir]) with no go.mod until the test writes one;
//   - GOPROXY=off and GOSUMDB=off until the test sets them (see
//     [Go.UseProxy]), so nothing reaches the network by accident;
//   - GOTOOLCHAIN=local, GOENV=off, GOFLAGS=-modcacherw, GOWORK=off, and
//     GONOSUMDB, GONOSUMCHECK, GOPRIVATE, GONOPROXY and GOINSECURE empty;
//   - GOCACHE shared with the real environment, so builds stay fast;
//   - from the real environment only PATH and TMPDIR (plus SYSTEMROOT on
//     Windows): every proxy variable (HTTP_PROXY, HTTPS_PROXY, NO_PROXY,
//     ALL_PROXY, in either case) and everything else is left out.
//
// A Go is not safe for concurrent use; its Run may be called repeatedly.
type Go struct {
	// Timeout bounds each Run. Zero means DefaultGoTimeout, shortened to
	// fit before the test's deadline.
	Timeout time.Duration

	t    testing.TB
	bin  string
	dir  string
	root string
	env  map[string]string
}

var (
	goBin   = sync.OnceValues(func() (string, error) { return exec.LookPath("go") })
	goCache = sync.OnceValues(func() (string, error) {
		bin, err := goBin()
		if err != nil {
			return "", err
		}
		cmd := exec.Command(bin, "env", "GOCACHE")
		// Never let a GOTOOLCHAIN setting fetch a toolchain from the network.
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("go env GOCACHE: %v", err)
		}
		dir := strings.TrimSpace(string(out))
		if dir == "" || dir == "off" {
			return "", errors.New("go env GOCACHE: no build cache")
		}
		return dir, nil
	})
)

// NewGo returns a runner for the go command found on PATH, with the
// environment described at [Go]. Its directories are removed when the test
// ends.
func NewGo(t testing.TB) *Go {
	t.Helper()
	bin, err := goBin()
	if err != nil {
		t.Fatalf("modtest: no go command: %v", err)
	}
	root := t.TempDir()
	// A toolchain the go command downloads lands in the module cache
	// read-only whatever GOFLAGS says (the switch happens before flags are
	// read); give the write bits back so that the directory can be removed.
	t.Cleanup(func() { makeWritable(root) })
	g := &Go{t: t, bin: bin, root: root, dir: filepath.Join(root, "work"), env: make(map[string]string)}
	for _, d := range []string{"work", "gopath", "modcache", "home"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o777); err != nil {
			t.Fatal(err)
		}
	}
	cache, err := goCache()
	if err != nil {
		t.Logf("modtest: %v; using a private GOCACHE", err)
		cache = filepath.Join(root, "gocache")
	}
	home := filepath.Join(root, "home")
	// Telemetry off: in its default local mode the go command leaves a
	// child process writing counters under $HOME after it exits, which
	// races with the removal of the test's directory.
	telemetry := filepath.Join(home, ".config", "go", "telemetry")
	if err := os.MkdirAll(telemetry, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(telemetry, "mode"), []byte("off"), 0o666); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"GOPATH":       filepath.Join(root, "gopath"),
		"GOMODCACHE":   filepath.Join(root, "modcache"),
		"GOCACHE":      cache,
		"HOME":         home,
		"GOTOOLCHAIN":  "local",
		"GOENV":        "off",
		"GOFLAGS":      "-modcacherw",
		"GOWORK":       "off",
		"GOPROXY":      "off",
		"GOSUMDB":      "off",
		"GONOSUMDB":    "",
		"GONOSUMCHECK": "",
		"GOPRIVATE":    "",
		"GONOPROXY":    "",
		"GOINSECURE":   "",
	} {
		g.env[k] = v
	}
	inherit := []string{"PATH", "TMPDIR"}
	if runtime.GOOS == "windows" {
		inherit = append(inherit, "SYSTEMROOT", "ComSpec")
		g.env["USERPROFILE"] = home
	}
	for _, k := range inherit {
		if v, ok := os.LookupEnv(k); ok {
			g.env[k] = v
		}
	}
	return g
}

// Dir returns the working directory of the go command.
func (g *Go) Dir() string { return g.dir }

// Setenv sets an environment variable for later runs. An empty value is
// set, not removed: use [Go.Unsetenv] for that.
func (g *Go) Setenv(key, value string) { g.env[key] = value }

// Unsetenv removes an environment variable for later runs.
func (g *Go) Unsetenv(key string) { delete(g.env, key) }

// Getenv returns the value of an environment variable for later runs.
func (g *Go) Getenv(key string) string { return g.env[key] }

// Environ returns the environment of later runs as sorted "key=value"
// strings.
func (g *Go) Environ() []string {
	env := make([]string, 0, len(g.env))
	for k, v := range g.env {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return env
}

// UseProxy sets GOPROXY to url and GOSUMDB to db's verifier key, so that the
// go command reaches the database through the proxy (see [WithSumDB]).
// With a nil db, GOSUMDB is off.
func (g *Go) UseProxy(url string, db *SumDB) {
	g.Setenv("GOPROXY", url)
	if db == nil {
		g.Setenv("GOSUMDB", "off")
		return
	}
	g.Setenv("GOSUMDB", db.VerifierKey)
}

// TrustPEM adds the PEM certificates to the trust store of later runs
// (SSL_CERT_FILE for the go command, GIT_SSL_CAINFO for git), for example
// [Proxy.CAPEM] of a proxy from [NewProxyTLS].
func (g *Go) TrustPEM(pemCerts []byte) {
	g.t.Helper()
	name := filepath.Join(g.root, "trust.pem")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o666)
	if err == nil {
		_, err = f.Write(append(bytes.TrimSpace(pemCerts), '\n'))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		g.t.Fatalf("modtest: %v", err)
	}
	g.Setenv("SSL_CERT_FILE", name)
	g.Setenv("GIT_SSL_CAINFO", name)
}

// WriteFile writes content to name, a slash-separated path relative to
// [Go.Dir], creating directories as needed. It fails the test on error.
func (g *Go) WriteFile(name, content string) {
	g.t.Helper()
	full := filepath.Join(g.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(full), 0o777); err != nil {
		g.t.Fatalf("modtest: %v", err)
	}
	if err := os.WriteFile(full, []byte(content), 0o666); err != nil {
		g.t.Fatalf("modtest: %v", err)
	}
}

// Run runs "go args..." in [Go.Dir] and returns what it printed. err is
// non-nil if the command failed or timed out (see [Go.Timeout]); stderr
// holds the go command's explanation either way.
func (g *Go) Run(args ...string) (stdout, stderr string, err error) {
	g.t.Helper()
	timeout := g.Timeout
	if timeout <= 0 {
		timeout = DefaultGoTimeout
		if dt, ok := g.t.(interface{ Deadline() (time.Time, bool) }); ok {
			if d, ok := dt.Deadline(); ok {
				// Leave the test time to report what went wrong.
				timeout = min(timeout, time.Until(d)*9/10)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	var outBuf, errBuf bytes.Buffer
	cmd := exec.CommandContext(ctx, g.bin, args...)
	cmd.Dir = g.dir
	cmd.Env = g.Environ()
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("go %s: timed out after %v: %w", strings.Join(args, " "), timeout, err)
	} else if err != nil {
		err = fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	stdout, stderr = outBuf.String(), errBuf.String()
	g.t.Logf("go %s (%.2fs, err=%v)\n%s", strings.Join(args, " "), time.Since(start).Seconds(), err, indent(stderr))
	return stdout, stderr, err
}

// MustRun is [Go.Run] that fails the test, showing stderr, if the command
// fails.
func (g *Go) MustRun(args ...string) (stdout, stderr string) {
	g.t.Helper()
	stdout, stderr, err := g.Run(args...)
	if err != nil {
		g.t.Fatalf("%v\n%s", err, indent(stderr))
	}
	return stdout, stderr
}

// makeWritable adds the owner's write bit to every directory under root,
// ignoring errors: the removal that follows reports what is left.
func makeWritable(root string) {
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if info, err := d.Info(); err == nil && info.Mode()&0o200 == 0 {
				os.Chmod(path, info.Mode()|0o200)
			}
		}
		return nil
	})
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "\t" + strings.ReplaceAll(s, "\n", "\n\t")
}

// DeadURL returns the URL "http://127.0.0.1:port" of a port that was just
// listened on and closed: an upstream that refuses connections.
func DeadURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("modtest: listen: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("modtest: %v", err)
	}
	return "http://" + addr
}
