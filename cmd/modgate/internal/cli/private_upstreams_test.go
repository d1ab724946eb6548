package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/modtest"
)

// credentialProxy is a module proxy behind a credential check: it answers
// 401 unless the request's Authorization is the one it wants now.
type credentialProxy struct {
	*httptest.Server
	want     atomic.Value // string
	ok, bad  atomic.Int64
	mu       sync.Mutex
	lastSeen string
}

func newCredentialProxy(t *testing.T, upstream string, want string) *credentialProxy {
	target, _ := url.Parse(upstream)
	rp := httputil.NewSingleHostReverseProxy(target)
	c := &credentialProxy{}
	c.want.Store(want)
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.lastSeen = r.Header.Get("Authorization")
		c.mu.Unlock()
		if r.Header.Get("Authorization") != c.want.Load().(string) {
			c.bad.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer realm="mods"`)
			http.Error(w, "credentials required", http.StatusUnauthorized)
			return
		}
		c.ok.Add(1)
		r.Header.Del("Authorization")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(c.Close)
	return c
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestPrivateUpstreams runs modgate with four upstreams that each want
// their own credentials (basic with a password file, a bearer token file,
// a netrc file, a GOAUTH-style command), routed by module, and drives the
// real go command through it. A token file rotated while modgate runs is
// picked up; a token that the command's upstream stops accepting makes
// modgate run the command again once and retry. No secret appears in the
// go command's output, modgate's log, its audit log, its admin pages or
// `modgate doctor`, which says which upstreams have credentials and which
// refuse them.
func TestPrivateUpstreams(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the auth command is a shell script")
	}
	run := "r" + randomHex(t)
	secrets := map[string]string{
		"password": "pw-" + run, "token": "tok-" + run, "token2": "tok2-" + run, "netrc": "nrc-" + run,
		"cmd1": "cmd1-" + run, "cmd2": "cmd2-" + run,
	}
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	basicUp := newCredentialProxy(t, p.URL, basicAuth("builder", secrets["password"]))
	bearerUp := newCredentialProxy(t, p.URL, "Bearer "+secrets["token"])
	netrcUp := newCredentialProxy(t, p.URL, basicAuth("nbuilder", secrets["netrc"]))
	cmdUp := newCredentialProxy(t, p.URL, "Bearer "+secrets["cmd1"])

	dir := t.TempDir()
	passFile, tokenFile, netrcFile := filepath.Join(dir, "password"), filepath.Join(dir, "token"), filepath.Join(dir, "netrc")
	writeFile(t, passFile, secrets["password"]+"\n")
	writeFile(t, tokenFile, secrets["token"]+"\n")
	netrcHost := strings.TrimPrefix(netrcUp.URL, "http://")
	writeFile(t, netrcFile, fmt.Sprintf("machine other.example.test login x password y\nmachine %s login nbuilder password %s\n", netrcHost, secrets["netrc"]))
	// The command hands out cmd1 on its first run, cmd2 after that, and
	// says so on its standard error.
	counter := filepath.Join(dir, "runs")
	script := filepath.Join(dir, "corp-go-auth")
	writeFile(t, script, fmt.Sprintf(`#!/bin/sh
n=$(( $(cat %[1]s 2>/dev/null || echo 0) + 1 ))
echo $n > %[1]s
tok=%[2]s
[ $n -gt 1 ] && tok=%[3]s
echo "corp-go-auth: issued $tok for $1" >&2
printf '%%s\n\nAuthorization: Bearer %%s\n\n' "%[4]s" "$tok"
`, counter, secrets["cmd1"], secrets["cmd2"], cmdUp.URL))
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() string {
		b, _ := os.ReadFile(counter)
		return strings.TrimSpace(string(b))
	}

	listen, admin := freeAddr(t), freeAddr(t)
	auditFile := filepath.Join(dir, "audit.jsonl")
	policyFile := filepath.Join(dir, "policy.yaml")
	writeFile(t, policyFile, `routes:
  - {modules: ["fixture.test/dep01"], upstreams: [basic]}
  - {modules: ["fixture.test/dep02"], upstreams: [bearer]}
  - {modules: ["fixture.test/dep03"], upstreams: [netrc]}
  - {modules: ["fixture.test/dep04", "fixture.test/dep05"], upstreams: [command]}
`)
	cfgFile := filepath.Join(dir, "modgate.yaml")
	writeFile(t, cfgFile, fmt.Sprintf(`listen: %s
admin: %s
sumdb: {name: "off"}
audit_log: %s
policy_file: %s
log: {level: debug, format: json}
upstreams:
  - name: basic
    url: %s
    retry: {attempts: 1}
    auth:
      basic: {username: builder, password_file: %s}
  - name: bearer
    url: %s
    retry: {attempts: 1}
    auth: {bearer_file: %s}
  - name: netrc
    url: %s
    retry: {attempts: 1}
    auth: {netrc: true}
  - name: command
    url: %s
    retry: {attempts: 1}
    auth:
      command: "%s --realm corp"
`, listen, admin, auditFile, policyFile, basicUp.URL, passFile, bearerUp.URL, tokenFile, netrcUp.URL, cmdUp.URL, script))

	cmd, out := modgate(t, "run", "--config", cfgFile)
	cmd.Env = append(cmd.Env, "NETRC="+netrcFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitReady(t, admin, out)

	var shown []string // everything the run showed, checked for secrets at the end
	download := func(mods ...string) {
		t.Helper()
		g := modtest.NewGo(t)
		g.UseProxy("http://"+listen, nil)
		stdout, stderr, err := g.Run(append([]string{"mod", "download", "-json"}, mods...)...)
		shown = append(shown, "go mod download "+strings.Join(mods, " ")+":\n"+stdout+stderr)
		if err != nil {
			t.Errorf("go mod download %s: %v\n%s%s\nmodgate:\n%s", mods, err, stdout, stderr, out)
		}
	}
	download("fixture.test/dep01@v1.0.0", "fixture.test/dep02@v1.0.0", "fixture.test/dep03@v1.0.0", "fixture.test/dep04@v1.0.0")
	if runs() != "1" {
		t.Errorf("the auth command ran %s times; want once", runs())
	}

	// Kubernetes rotates the token file; the upstream takes only the new one.
	tmp := tokenFile + ".new"
	writeFile(t, tmp, secrets["token2"]+"\n")
	later := time.Now().Add(time.Minute)
	os.Chtimes(tmp, later, later)
	if err := os.Rename(tmp, tokenFile); err != nil {
		t.Fatal(err)
	}
	bearerUp.want.Store("Bearer " + secrets["token2"])
	// The command's upstream stops taking cmd1: one 401, one more run of
	// the command, and the retry succeeds.
	cmdUp.want.Store("Bearer " + secrets["cmd2"])
	badBefore := cmdUp.bad.Load()
	download("fixture.test/dep02@v1.0.0", "fixture.test/dep05@v1.1.0")
	if runs() != "2" || cmdUp.bad.Load() != badBefore+1 {
		t.Errorf("after the token changed: the command ran %s times (want 2) and the upstream refused %d requests (want 1)", runs(), cmdUp.bad.Load()-badBefore)
	}
	for name, up := range map[string]*credentialProxy{"basic": basicUp, "bearer": bearerUp, "netrc": netrcUp, "command": cmdUp} {
		if up.ok.Load() == 0 {
			t.Errorf("upstream %s served nothing", name)
		}
	}
	if n := bearerUp.bad.Load(); n != 0 {
		t.Errorf("the bearer upstream refused %d requests: the rotated file was not read", n)
	}

	// Every admin page, and every span of the trace view.
	get := func(u string) string {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	pages := []string{"/", "/debug/upstreams", "/debug/baseline", "/debug/tracez", "/metrics", "/readyz"}
	for _, m := range regexp.MustCompile(`href="tracez(\?[^"]+)"`).FindAllStringSubmatch(get("http://"+admin+"/debug/tracez"), -1) {
		pages = append(pages, "/debug/tracez"+strings.ReplaceAll(m[1], "&amp;", "&"))
	}
	for _, pg := range pages {
		shown = append(shown, "admin page "+pg+":\n"+get("http://"+admin+pg))
	}
	if ups := get("http://" + admin + "/debug/upstreams"); !regexp.MustCompile(`"auth":\s*"command"`).MatchString(ups) || !regexp.MustCompile(`"auth":\s*"netrc"`).MatchString(ups) {
		t.Errorf("/debug/upstreams does not say which credentials each upstream has:\n%s", ups)
	}

	// modgate doctor says which upstreams have credentials, and which
	// refuse them (the bearer upstream now wants a token nobody has).
	bearerUp.want.Store("Bearer nobody-has-this")
	env := map[string]string{"NETRC": netrcFile}
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": "http://" + listen})
	r := runDoctor(t, goenv, env, "--config", cfgFile, "--module", "fixture.test/dep01")
	var text bytes.Buffer
	app := &App{Stdout: &text, Stderr: &text, GoEnv: goenv, Getenv: func(k string) string { return env[k] }}
	app.Run(context.Background(), []string{"doctor", "--config", cfgFile, "--module", "fixture.test/dep01"})
	shown = append(shown, "doctor:\n"+text.String(), "doctor --json:\n"+r.String())
	for _, want := range []string{"upstream basic (" + basicUp.URL + ", credentials: basic)", "credentials: netrc", "credentials: command", "upstream bearer (" + bearerUp.URL + "): credentials refused (bearer"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("doctor does not say %q:\n%s", want, &text)
		}
	}
	if !r.has("error", "upstream-credentials", bearerUp.URL) {
		t.Errorf("doctor --json has no upstream-credentials error for the refused upstream:\n%s", r)
	}

	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("modgate exited with %v", err)
	}
	logs := out.String()
	if !strings.Contains(logs, "corp-go-auth: issued xxxxx for") {
		t.Errorf("the auth command's standard error is not in the log, redacted:\n%s", logs)
	}
	shown = append(shown, "modgate's log:\n"+logs)
	audit, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	shown = append(shown, "audit log:\n"+string(audit))

	// The run ends with a config error that quotes nothing secret either.
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, fmt.Sprintf("sumdb: {name: \"off\"}\nupstreams:\n  - url: %s\n    auth: {bearer_file: %s, netrc: true}\n", bearerUp.URL, tokenFile))
	var stderr bytes.Buffer
	app = &App{Stdout: &stderr, Stderr: &stderr, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"run", "--config", bad}); code == 0 || !strings.Contains(stderr.String(), "upstreams[1].auth") {
		t.Errorf("two kinds of credentials: exit %d:\n%s", code, &stderr)
	}
	shown = append(shown, "config error:\n"+stderr.String())

	for _, text := range shown {
		for name, s := range secrets {
			for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte("builder:" + s)), base64.StdEncoding.EncodeToString([]byte("nbuilder:" + s))} {
				if strings.Contains(text, form) {
					t.Errorf("the %s secret shows in %s", name, text)
				}
			}
		}
	}
}

// An auth command that fails is a doctor error that names the upstream
// and shows nothing the command printed.
func TestDoctorSaysCredentialsCannotBeHad(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("the auth command is a shell script")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "corp-go-auth")
	writeFile(t, script, "#!/bin/sh\necho 'Authorization: Bearer leaked-abcdef' \necho 'cannot reach the vault' >&2\nexit 2\n")
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	up := newCredentialProxy(t, modtest.DeadURL(t), "Bearer x")
	cfgFile := filepath.Join(dir, "modgate.yaml")
	writeFile(t, cfgFile, fmt.Sprintf("listen: %s\nadmin: \"\"\nsumdb: {name: \"off\"}\nupstreams:\n  - name: vaulted\n    url: %s\n    auth: {command: %s}\n", freeAddr(t), up.URL, script))
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	r := runDoctor(t, goenv, nil, "--config", cfgFile)
	if !r.has("error", "upstream-credentials", "upstreams[].auth") || !strings.Contains(r.String(), "upstream vaulted ("+up.URL+"): its credentials (command) cannot be had: auth command "+script+": exit status 2") {
		t.Errorf("doctor does not say the credentials cannot be had:\n%s", r)
	}
	if strings.Contains(r.String(), "abcdef") || up.ok.Load()+up.bad.Load() != 0 {
		t.Errorf("the command's output shows, or a request was sent without credentials:\n%s", r)
	}
}
