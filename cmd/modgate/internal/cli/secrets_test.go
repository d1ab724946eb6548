package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modgate/modgate/sidecar/modtest"
)

// TestUpstreamPasswordNeverShown runs modgate with upstreams whose URLs
// carry a password, sends it requests that succeed and requests that fail,
// then looks for the password in everything modgate showed: every admin
// page (with every span of the trace view), the answers, each log line,
// each audit line, `modgate doctor` in both forms, and config errors.
func TestUpstreamPasswordNeverShown(t *testing.T) {
	secret := "s3cret-" + randomHex(t)
	basic := base64.StdEncoding.EncodeToString([]byte("ci:" + secret))
	leaks := func(what, text string) {
		t.Helper()
		for _, s := range []string{secret, basic, url.QueryEscape(secret)} {
			if strings.Contains(text, s) {
				t.Errorf("%s shows the password:\n%s", what, text)
				return
			}
		}
	}

	// An upstream that wants the password (so modgate must still send it),
	// and fails for fixture.test/dep03.
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	target, _ := url.Parse(p.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	var authorized, refused atomic.Int64
	locked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user, pass, ok := r.BasicAuth(); !ok || user != "ci" || pass != secret {
			refused.Add(1)
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		authorized.Add(1)
		if strings.Contains(r.URL.Path, "/dep03/") {
			http.Error(w, "broken for dep03", http.StatusInternalServerError)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer locked.Close()
	dead := modtest.DeadURL(t)
	withPass := func(raw string) string {
		u, _ := url.Parse(raw)
		u.User = url.UserPassword("ci", secret)
		return u.String()
	}

	dir := t.TempDir()
	listen, admin := freeAddr(t), freeAddr(t)
	auditFile := filepath.Join(dir, "audit.jsonl")
	cfgFile := filepath.Join(dir, "modgate.yaml")
	writeFile(t, cfgFile, fmt.Sprintf(`listen: %s
admin: %s
sumdb: {name: "off"}
audit_log: %s
log: {level: debug, format: json}
upstreams:
  - name: gone
    url: %s
    fallthrough: error
    retry: {attempts: 1}
  - name: locked
    url: %s
    retry: {attempts: 1}
`, listen, admin, auditFile, withPass(dead), withPass(locked.URL)))

	cmd, out := modgate(t, "run", "--config", cfgFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitReady(t, admin, out)

	get := func(u string) (int, string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		path string
		want int
	}{
		{"/fixture.test/dep01/@v/list", 200},
		{"/fixture.test/dep01/@v/v1.0.0.info", 200},
		{"/fixture.test/nosuch/@v/list", 502}, // gone failed, locked: not found
		{"/fixture.test/dep03/@v/list", 502},
		{"/fixture.test/dep03/@latest", 502},
	} {
		status, body := get("http://" + listen + c.path)
		if status != c.want {
			t.Errorf("%s: %d %q; want %d", c.path, status, body, c.want)
		}
		leaks("the answer to "+c.path, body)
	}
	if authorized.Load() == 0 || refused.Load() != 0 {
		t.Errorf("the upstream saw %d requests with the password and %d without: modgate must still send it", authorized.Load(), refused.Load())
	}

	// Every admin page, and every page of the trace view it links to.
	pages := []string{"/", "/debug/upstreams", "/debug/baseline", "/debug/tracez", "/metrics", "/readyz", "/healthz"}
	_, tracez := get("http://" + admin + "/debug/tracez")
	for _, m := range regexp.MustCompile(`href="tracez(\?[^"]+)"`).FindAllStringSubmatch(tracez, -1) {
		pages = append(pages, "/debug/tracez"+strings.ReplaceAll(m[1], "&amp;", "&"))
	}
	if len(pages) < 10 {
		t.Errorf("the trace view links to no spans:\n%s", tracez)
	}
	sawClientSpan := false
	for _, pg := range pages {
		status, body := get("http://" + admin + pg)
		if status != 200 && pg != "/readyz" {
			t.Errorf("%s: %d", pg, status)
		}
		leaks("admin page "+pg, body)
		sawClientSpan = sawClientSpan || strings.Contains(body, "url.full")
	}
	if !sawClientSpan {
		t.Errorf("no page of the trace view shows a client span's url.full: the test looks at nothing")
	}

	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("modgate exited with %v", err)
	}
	logs := out.String()
	if !strings.Contains(logs, `"msg":"modgate serving"`) || !strings.Contains(logs, "ci:xxxxx@") {
		t.Errorf("no start-up line naming the upstreams (redacted):\n%s", logs)
	}
	for _, line := range strings.Split(logs, "\n") {
		leaks("log line", line)
	}
	audit, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(audit), "\n"); n < 5 {
		t.Errorf("%d audit lines for 5 requests", n)
	}
	for _, line := range strings.Split(string(audit), "\n") {
		leaks("audit line", line)
	}

	// modgate doctor, as JSON and for people, probing the same upstreams,
	// with a GOPROXY and a proxy variable that carry the password too.
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": withPass(locked.URL) + ",direct"})
	env := map[string]string{"HTTPS_PROXY": withPass("http://proxy.example.test:3128"), "https_proxy": withPass("http://other.example.test:3128")}
	r := runDoctor(t, goenv, env, "--config", cfgFile, "--module", "fixture.test/dep01")
	if len(r.report.Probes) == 0 {
		t.Errorf("doctor probed nothing:\n%s", r)
	}
	var doctorJSON bytes.Buffer
	app := &App{Stdout: &doctorJSON, Stderr: &doctorJSON, GoEnv: goenv, Getenv: func(k string) string { return env[k] }}
	app.Run(context.Background(), []string{"doctor", "--json", "--config", cfgFile, "--module", "fixture.test/dep01"})
	leaks("doctor --json", doctorJSON.String())
	var doctorText bytes.Buffer
	app = &App{Stdout: &doctorText, Stderr: &doctorText, GoEnv: goenv, Getenv: func(k string) string { return env[k] }}
	app.Run(context.Background(), []string{"doctor", "--config", cfgFile, "--module", "fixture.test/dep01"})
	leaks("doctor", doctorText.String())
	if !strings.Contains(doctorText.String(), "locked") {
		t.Errorf("doctor did not report the upstream:\n%s", &doctorText)
	}

	// modgate env describes the chain.
	var envOut bytes.Buffer
	app = &App{Stdout: &envOut, Stderr: &envOut, GoEnv: goenv, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"env", "--config", cfgFile}); code != 0 {
		t.Errorf("modgate env: exit %d:\n%s", code, &envOut)
	}
	leaks("modgate env", envOut.String())

	// Config errors quote the value they refuse, never its password.
	for i, bad := range []string{
		"ftp://ci:" + secret + "@mods.example.test",
		"http://ci:" + secret + "@mods.example.test/%zz",
		"http://ci:" + secret + "@/no/host",
		"https://" + secret + "@mods.example.test:99999",
	} {
		file := filepath.Join(dir, fmt.Sprintf("bad%d.yaml", i))
		writeFile(t, file, fmt.Sprintf("sumdb: {name: \"off\"}\nupstreams:\n  - url: %q\n", bad))
		var stderr bytes.Buffer
		app := &App{Stdout: &stderr, Stderr: &stderr, Getenv: func(string) string { return "" }}
		if code := app.Run(context.Background(), []string{"run", "--config", file}); code == 0 {
			t.Errorf("%s: accepted", bad)
		}
		if !strings.Contains(stderr.String(), "upstreams[1].url") {
			t.Errorf("%s: the error does not name the key:\n%s", bad, &stderr)
		}
		leaks("config error", stderr.String())
	}
}

func randomHex(t *testing.T) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLogsHideCredentials: whatever the data plane logs, a URL's password
// does not reach the log.
func TestLogsHideCredentials(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var buf bytes.Buffer
		log := newLogger(&buf, LogConfig{Level: "debug", Format: format})
		log = log.With("base", "https://ci:pw1@a.example.test")
		log.Info("fetch https://ci:pw2@b.example.test/x failed", "err", fmt.Errorf("get %q: refused", "http://tok3@c.example.test"),
			"url", &url.URL{Scheme: "https", User: url.UserPassword("ci", "pw4"), Host: "d.example.test"},
			slog.Group("g", "u", "http://ci:pw5@e.example.test"), "n", 3,
			"stderr", "sent Authorization: Bearer tok6-abcdef", "err2", fmt.Errorf("upstream said: Bearer tok7-abcdef is expired"))
		for _, s := range []string{"pw1", "pw2", "tok3", "pw4", "pw5", "tok6", "tok7"} {
			if strings.Contains(buf.String(), s) {
				t.Errorf("%s log shows %s:\n%s", format, s, &buf)
			}
		}
		if !strings.Contains(buf.String(), "ci:xxxxx@b.example.test") || !strings.Contains(buf.String(), "3") {
			t.Errorf("%s log lost its text:\n%s", format, &buf)
		}
	}
}
