package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/mitm"
)

var envUpdate = flag.Bool("env.update", false, "rewrite testdata/env/*.golden from what modgate env prints")

// runEnv runs `modgate env` with args in a world whose environment is env
// and whose `go env` has no opinion, in dir (the config's relative paths
// are read from there).
func runEnv(t *testing.T, dir string, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if dir != "" {
		t.Chdir(dir)
	}
	var out, errb bytes.Buffer
	app := &App{
		Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
		GoEnv: func(context.Context, ...string) ([]string, error) {
			return nil, errors.New("go: not found") // then $GOPROXY, $GOSUMDB from env
		},
	}
	code = app.Run(context.Background(), append([]string{"env"}, args...))
	return code, out.String(), errb.String()
}

// writeFiles writes name → content into a new folder and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// shVars evaluates sh output in bash and returns the variables it set
// that were not set before.
func shVars(t *testing.T, shell, script string) map[string]string {
	t.Helper()
	path, err := exec.LookPath(shell)
	if err != nil {
		t.Skipf("%s is not installed", shell)
	}
	file := filepath.Join(t.TempDir(), "env.out")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if shell == "fish" {
		cmd = exec.Command(path, "--no-config", "-c", "source $argv[1]; env -0", file)
	} else {
		cmd = exec.Command(path, "-c", `eval "$(cat "$1")"; env -0`, shell, file)
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s\nscript:\n%s", shell, err, out, script)
	}
	vars := map[string]string{}
	for _, kv := range strings.Split(string(out), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// hard holds values that each shell must take literally.
var hard = []envLine{
	{name: "SPACES", value: "a b  c"},
	{name: "SINGLE", value: `it's 'quoted'`},
	{name: "DOUBLE", value: `say "hi"`},
	{name: "DOLLAR", value: `$HOME ${HOME} $(id) ` + "`id`"},
	{name: "BACKSLASH", value: `C:\Users\me\ca.pem \' \\`},
	{name: "GLOB", value: "*.corp.example.test,github.com/acme/*"},
	{name: "OPERATORS", value: `a&b|c<d>e^f(g)h;i #j %PATH% !x!`},
	{name: "MIXED", value: `a"b&c"d&e`},
	{name: "EMPTY", value: ""},
}

func TestEnvQuoting(t *testing.T) {
	want := map[string][]string{
		"sh": {
			`export SPACES='a b  c'`,
			`export SINGLE='it'\''s '\''quoted'\'''`,
			`export DOUBLE='say "hi"'`,
			"export DOLLAR='$HOME ${HOME} $(id) `id`'",
			`export BACKSLASH='C:\Users\me\ca.pem \'\'' \\'`,
			`export GLOB='*.corp.example.test,github.com/acme/*'`,
			`export OPERATORS='a&b|c<d>e^f(g)h;i #j %PATH% !x!'`,
			`export MIXED='a"b&c"d&e'`,
			`export EMPTY=''`,
		},
		"fish": {
			`set -gx SPACES 'a b  c'`,
			`set -gx SINGLE 'it\'s \'quoted\''`,
			`set -gx DOUBLE 'say "hi"'`,
			"set -gx DOLLAR '$HOME ${HOME} $(id) `id`'",
			`set -gx BACKSLASH 'C:\\Users\\me\\ca.pem \\\' \\\\'`,
			`set -gx GLOB '*.corp.example.test,github.com/acme/*'`,
			`set -gx OPERATORS 'a&b|c<d>e^f(g)h;i #j %PATH% !x!'`,
			`set -gx MIXED 'a"b&c"d&e'`,
			`set -gx EMPTY ''`,
		},
		"powershell": {
			`$env:SPACES = 'a b  c'`,
			`$env:SINGLE = 'it''s ''quoted'''`,
			`$env:DOUBLE = 'say "hi"'`,
			"$env:DOLLAR = '$HOME ${HOME} $(id) `id`'",
			`$env:BACKSLASH = 'C:\Users\me\ca.pem \'' \\'`,
			`$env:GLOB = '*.corp.example.test,github.com/acme/*'`,
			`$env:OPERATORS = 'a&b|c<d>e^f(g)h;i #j %PATH% !x!'`,
			`$env:MIXED = 'a"b&c"d&e'`,
			`$env:EMPTY = ''`,
		},
		"cmd": {
			`set SPACES=a b  c`,
			`set SINGLE=it's 'quoted'`,
			`set DOUBLE=say "hi"`,
			"set DOLLAR=$HOME ${HOME} $^(id^) `id`",
			`set BACKSLASH=C:\Users\me\ca.pem \' \\`,
			`set GLOB=*.corp.example.test,github.com/acme/*`,
			`set OPERATORS=a^&b^|c^<d^>e^^f^(g^)h;i #j %%PATH%% !x!`,
			// Inside the quotes & is literal already; a caret would stay.
			`set MIXED=a"b&c"d^&e`,
			`set EMPTY=`,
		},
	}
	for shell, lines := range want {
		got, err := shells[shell].render(hard)
		if err != nil {
			t.Fatalf("%s: %v", shell, err)
		}
		if w := strings.Join(lines, "\n") + "\n"; got != w {
			t.Errorf("%s:\n%s\nwant:\n%s", shell, got, w)
		}
	}
	if _, err := shells["cmd"].render([]envLine{{name: "NL", value: "a\nb"}}); err == nil {
		t.Errorf("cmd took a line break")
	}
	// A comment never lets a value from the config out of the comment.
	got, _ := shells["sh"].render([]envLine{comment("upstream x\nexport PWNED=1")})
	if strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "# ") {
		t.Errorf("comment with a line break: %q", got)
	}
	got, _ = shells["cmd"].render([]envLine{comment("%s", "a|b & c > d %PATH%")})
	if strings.ContainsAny(got, "|&>%") {
		t.Errorf("cmd comment keeps operators: %q", got)
	}
}

// TestEnvShellsEvaluate runs the output in real shells: every value
// arrives exactly, including a line break.
func TestEnvShellsEvaluate(t *testing.T) {
	lines := append(hard[:len(hard):len(hard)], envLine{name: "NEWLINE", value: "one\ntwo"}, comment("a comment with 'quotes' and $(id)"))
	for _, tc := range []struct{ shell, syntax string }{{"bash", "sh"}, {"zsh", "sh"}, {"fish", "fish"}} {
		t.Run(tc.shell, func(t *testing.T) {
			script, err := shells[tc.syntax].render(lines)
			if err != nil {
				t.Fatal(err)
			}
			vars := shVars(t, tc.shell, script)
			for _, l := range lines {
				if l.name == "" {
					continue
				}
				if got, ok := vars[l.name]; !ok || got != l.value {
					t.Errorf("%s: %s = %q (set %v); want %q", tc.shell, l.name, got, ok, l.value)
				}
			}
		})
	}
}

// The sample of the README: an internal proxy for corp modules, a public
// one for the rest, GitHub modules only from the public one, and a private
// GitHub organisation that therefore has to go direct.
const (
	sampleConfig = `listen: 0.0.0.0:7070
upstreams:
  - name: internal
    url: https://mods.corp.example.test
    private: true
    fallthrough: error
  - name: public
    url: https://proxy.example.test
  - url: direct
sumdb: {name: sum.example.test}
forward:
  mitm_hosts: [proxy.example.test]
  ca_dir: ca
policy_file: policy.yaml
`
	samplePolicy = `private: ["*.corp.example.test", "github.com/acme/*"]
routes:
  - modules: ["*.corp.example.test"]
    upstreams: [internal]
  - modules: ["github.com/*"]
    upstreams: [public]
rules:
  - deny: "github.com/evil/*"
    reason: "malware, see SEC-123"
  - allow: "*"
`
)

// sampleDir writes the sample config, policy and a CA into a folder.
func sampleDir(t *testing.T) string {
	t.Helper()
	dir := writeFiles(t, map[string]string{"modgate.yaml": sampleConfig, "policy.yaml": samplePolicy})
	if err := mitm.Init(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestEnvGolden(t *testing.T) {
	dir := sampleDir(t)
	for _, shell := range []string{"sh", "fish", "powershell", "cmd"} {
		code, out, errs := runEnv(t, dir, nil, "--config", "modgate.yaml", "--shell", shell)
		if code != 0 {
			t.Fatalf("%s: exit %d\n%s", shell, code, errs)
		}
		// The CA's path is the only part that depends on the machine.
		out = strings.ReplaceAll(out, dir, "$DIR")
		golden := filepath.Join(testdataPath, "env", "sample."+shell+".golden")
		if *envUpdate {
			if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test -run TestEnvGolden -env.update)", err)
		}
		if out != string(want) {
			t.Errorf("modgate env --shell %s printed:\n%s\nwant (%s):\n%s", shell, out, golden, want)
		}
	}
}

// testdataPath is this package's testdata, found before a test changes
// directory.
var testdataPath = func() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "testdata")
}()

// TestEnvEvaluatesInBash checks the whole sample output through bash: the
// environment a developer gets from eval "$(modgate env)".
func TestEnvEvaluatesInBash(t *testing.T) {
	dir := sampleDir(t)
	code, out, errs := runEnv(t, dir, nil, "--config", "modgate.yaml")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	vars := shVars(t, "bash", out)
	ca := filepath.Join(dir, "ca", BundleFile)
	for k, want := range map[string]string{
		"GOPROXY":        "http://127.0.0.1:7070,direct",
		"GOPRIVATE":      "*.corp.example.test,github.com/acme/*",
		"GONOSUMDB":      "*.corp.example.test,github.com/acme/*",
		"GONOPROXY":      "github.com/acme/*",
		"HTTP_PROXY":     "http://127.0.0.1:7070",
		"HTTPS_PROXY":    "http://127.0.0.1:7070",
		"http_proxy":     "http://127.0.0.1:7070",
		"https_proxy":    "http://127.0.0.1:7070",
		"NO_PROXY":       "127.0.0.1,localhost,::1",
		"no_proxy":       "127.0.0.1,localhost,::1",
		"SSL_CERT_FILE":  ca,
		"GIT_SSL_CAINFO": ca,
	} {
		if vars[k] != want {
			t.Errorf("%s = %q; want %q", k, vars[k], want)
		}
	}
}

// TestEnvPrivateAndProxy checks GOPROXY, GOPRIVATE, GONOSUMDB and
// GONOPROXY against configs and policies.
func TestEnvPrivateAndProxy(t *testing.T) {
	const internalPublic = `upstreams:
  - {name: internal, url: https://mods.corp.example.test, private: true}
  - {name: public, url: https://proxy.example.test}
`
	for _, tc := range []struct {
		name           string
		config, policy string
		env            map[string]string
		args           []string
		want           map[string]string // "" : must not be printed
	}{{
		name:   "no policy: nothing private, direct added",
		config: internalPublic,
		want:   map[string]string{"GOPROXY": "http://127.0.0.1:7070,direct", "GOPRIVATE": "", "GONOSUMDB": "", "GONOPROXY": ""},
	}, {
		name:   "--no-direct",
		config: internalPublic,
		args:   []string{"--no-direct"},
		want:   map[string]string{"GOPROXY": "http://127.0.0.1:7070"},
	}, {
		name:   "private upstream serves every private pattern: GONOPROXY=none",
		config: internalPublic,
		policy: `private: ["*.corp.example.test", "github.com/acme/*"]` + "\n",
		want: map[string]string{
			"GOPRIVATE": "*.corp.example.test,github.com/acme/*", "GONOSUMDB": "*.corp.example.test,github.com/acme/*",
			"GONOPROXY": "none",
		},
	}, {
		name:   "a route to a public upstream: that pattern goes direct",
		config: internalPublic,
		policy: "private: [\"*.corp.example.test\", \"github.com/acme/*\"]\nroutes:\n  - {modules: [\"github.com/*\"], upstreams: [public]}\n",
		want:   map[string]string{"GONOPROXY": "github.com/acme/*", "GONOSUMDB": "*.corp.example.test,github.com/acme/*"},
	}, {
		name:   "a route to the private upstream keeps the pattern with modgate",
		config: internalPublic,
		policy: "private: [\"git.corp.example.test\"]\nroutes:\n  - {modules: [\"*.corp.example.test\"], upstreams: [internal]}\n",
		want:   map[string]string{"GONOPROXY": "none", "GONOSUMDB": "git.corp.example.test"},
	}, {
		name:   "no private upstream: every private pattern goes direct",
		config: "upstreams:\n  - {name: public, url: https://proxy.example.test}\n  - {url: direct}\n",
		policy: `private: ["*.corp.example.test", "github.com/acme/*"]` + "\n",
		want:   map[string]string{"GONOPROXY": "*.corp.example.test,github.com/acme/*", "GOPROXY": "http://127.0.0.1:7070,direct"},
	}, {
		name:   "policy from MODGATE_POLICY, listen from --listen",
		config: internalPublic,
		env:    map[string]string{"MODGATE_POLICY": "other.yaml"},
		args:   []string{"--listen", "[::]:9090"},
		want:   map[string]string{"GONOPROXY": "none", "GONOSUMDB": "*.other.example.test", "GOPROXY": "http://127.0.0.1:9090,direct", "HTTPS_PROXY": "http://127.0.0.1:9090"},
	}, {
		name:   "a listener on another address is in NO_PROXY",
		config: "listen: 192.0.2.10:7070\n" + internalPublic,
		want:   map[string]string{"GOPROXY": "http://192.0.2.10:7070,direct", "NO_PROXY": "127.0.0.1,localhost,::1,192.0.2.10", "no_proxy": "127.0.0.1,localhost,::1,192.0.2.10"},
	}, {
		name:   "upstreams from $GOPROXY when go env fails",
		env:    map[string]string{"GOPROXY": "https://proxy.example.test", "GOSUMDB": "sum.example.test"},
		policy: `private: ["*.corp.example.test"]` + "\n",
		want:   map[string]string{"GONOPROXY": "*.corp.example.test", "SSL_CERT_FILE": ""},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"modgate.yaml": tc.config, "other.yaml": "private: [\"*.other.example.test\"]\n"}
			if tc.policy != "" {
				files["modgate.yaml"] += "policy_file: policy.yaml\n"
				files["policy.yaml"] = tc.policy
			}
			dir := writeFiles(t, files)
			code, out, errs := runEnv(t, dir, tc.env, append([]string{"--config", "modgate.yaml"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d\n%s", code, errs)
			}
			vars := shVars(t, "bash", out)
			for k, want := range tc.want {
				got, set := vars[k]
				if want == "" && set {
					t.Errorf("%s = %q; want it left alone", k, got)
				} else if want != "" && got != want {
					t.Errorf("%s = %q; want %q", k, got, want)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

func TestEnvErrors(t *testing.T) {
	withDirect := "upstreams:\n  - {name: public, url: https://proxy.example.test}\n  - {url: direct}\n"
	for _, tc := range []struct {
		name   string
		files  map[string]string
		args   []string
		code   int
		stderr string
	}{
		{"--no-direct with direct in the chain", map[string]string{"modgate.yaml": withDirect}, []string{"--no-direct"}, 1, "the upstream chain has direct"},
		{"unknown shell", map[string]string{"modgate.yaml": withDirect}, []string{"--shell", "tcsh"}, 2, `unknown shell "tcsh"`},
		{"extra argument", map[string]string{"modgate.yaml": withDirect}, []string{"GOPROXY"}, 2, `unexpected argument "GOPROXY"`},
		{"bad config", map[string]string{"modgate.yaml": "listen: nowhere\n" + withDirect}, nil, 1, "modgate.yaml:1: listen"},
		{"bad policy", map[string]string{"modgate.yaml": withDirect + "policy_file: policy.yaml\n", "policy.yaml": "private: [\"*.corp.example.test\"]\ncolour: red\n"}, nil, 1, "policy.yaml:2"},
		{"route to an unknown upstream", map[string]string{
			"modgate.yaml": withDirect + "policy_file: policy.yaml\n",
			"policy.yaml":  "routes:\n  - {modules: [\"*.corp.example.test\"], upstreams: [internal]}\n",
		}, nil, 1, `policy routes name upstream "internal"`},
		{"mitm hosts without a CA", map[string]string{"modgate.yaml": withDirect + "forward: {mitm_hosts: [proxy.example.test], ca_dir: nothing-here}\n"}, nil, 1, "forward.ca_dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, tc.files)
			code, out, errs := runEnv(t, dir, nil, append([]string{"--config", "modgate.yaml"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errs, tc.stderr) {
				t.Errorf("exit %d; want %d with %q\nstderr:\n%s", code, tc.code, tc.stderr, errs)
			}
			if out != "" {
				t.Errorf("printed settings on error:\n%s", out)
			}
		})
	}
}
