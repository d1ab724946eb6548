package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/modgate/modgate/cmd/modgate/internal/doctor"
	"github.com/modgate/modgate/sidecar/mitm"
)

// clientsDir makes a CA, a certificate from `modgate ca issue` and an
// htpasswd file with alice in a new folder, and returns it.
func clientsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var out bytes.Buffer
	app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
	ca := filepath.Join(dir, "ca")
	if code := app.Run(context.Background(), []string{"ca", "init", "--ca-dir", ca}); code != 0 {
		t.Fatalf("ca init: %s", &out)
	}
	if code := app.Run(context.Background(), []string{"ca", "issue", "--ca-dir", ca, "--host", "modgate.corp.example.test", "--host", "127.0.0.1", "--out", filepath.Join(dir, "certs")}); code != 0 {
		t.Fatalf("ca issue: %s", &out)
	}
	h, _ := bcrypt.GenerateFromPassword([]byte("alice-Pw-7Qx2v"), bcrypt.MinCost)
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte("alice:"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

const clientsConfig = `listen: 0.0.0.0:7443
upstreams: [{name: public, url: https://proxy.example.test}]
forward: {ca_dir: ca}
tls: {cert_file: certs/modgate.corp.example.test.crt, key_file: certs/modgate.corp.example.test.key}
clients: {htpasswd_file: htpasswd}
`

func TestCAIssue(t *testing.T) {
	dir := clientsDir(t)
	crt, key := filepath.Join(dir, "certs", "modgate.corp.example.test.crt"), filepath.Join(dir, "certs", "modgate.corp.example.test.key")
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v; want mode 0600", st.Mode(), err)
	}
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	ca, err := mitm.Load(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	for _, host := range []string{"modgate.corp.example.test", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	var out bytes.Buffer
	app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"ca", "issue", "--ca-dir", filepath.Join(dir, "ca")}); code != 2 || !strings.Contains(out.String(), "--host") {
		t.Errorf("issue without --host: %d %q", code, &out)
	}
}

func TestClientsConfigErrors(t *testing.T) {
	dir := clientsDir(t)
	t.Chdir(dir)
	os.WriteFile("bad-htpasswd", []byte("# users\nalice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"), 0o600)
	os.WriteFile("bad-tokens", []byte("ci tok-1 extra\n"), 0o600)
	_, err := load(t, `upstreams: [{url: off}]
tls:
  cert_file: certs/modgate.corp.example.test.crt
  key_file: ca/modgate-ca.pem
clients:
  htpasswd_file: `+filepath.Join(dir, "bad-htpasswd")+`
  tokens_file: `+filepath.Join(dir, "bad-tokens")+`
  anonymous: maybe
`, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`modgate.yaml:8: clients.anonymous: invalid value "maybe", want true or false`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	_, err = load(t, `upstreams: [{url: off}]
tls:
  cert_file: certs/modgate.corp.example.test.crt
  key_file: ca/modgate-ca.pem
clients:
  htpasswd_file: `+filepath.Join(dir, "bad-htpasswd")+`
  tokens_file: `+filepath.Join(dir, "bad-tokens")+`
  client_ca_file: ca/modgate-ca.pem
`, nil)
	for _, want := range []string{
		`modgate.yaml:3: tls.cert_file: tls: found a certificate rather than a key in the PEM for the private key`,
		`modgate.yaml:6: clients.htpasswd_file: ` + filepath.Join(dir, "bad-htpasswd") + `: line 2: user alice: not a bcrypt hash: create it with htpasswd -B`,
		`modgate.yaml:7: clients.tokens_file: ` + filepath.Join(dir, "bad-tokens") + `: line 1: want "name token"`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if err != nil && (strings.Contains(err.Error(), "W6ph5") || strings.Contains(err.Error(), "tok-1")) {
		t.Errorf("a secret in a config error:\n%v", err)
	}
	_, err = load(t, "upstreams: [{url: off}]\nclients:\n  client_ca_file: ca/modgate-ca.pem\n", nil)
	if err == nil || !strings.Contains(err.Error(), "modgate.yaml:3: clients.client_ca_file: client certificates need HTTPS on the listener") {
		t.Errorf("client certificates without tls: %v", err)
	}
	_, sc, err := loadSidecar(t, clientsConfig, nil)
	if err != nil || !sc.TLS.Enabled() || sc.Clients.HtpasswdFile != "htpasswd" {
		t.Errorf("good config: %v, %+v %+v", err, sc.TLS, sc.Clients)
	}
}

// TestEnvForClients: an HTTPS listener that asks who is asking gets an
// https GOPROXY, GOAUTH=netrc with a netrc line to add (a placeholder for
// the password) and SSL_CERT_FILE for the self-issued certificate.
func TestEnvForClients(t *testing.T) {
	dir := clientsDir(t)
	if err := os.WriteFile(filepath.Join(dir, "modgate.yaml"), []byte(clientsConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runEnv(t, dir, nil, "--config", "modgate.yaml")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, errs)
	}
	for _, want := range []string{
		"export GOPROXY='https://127.0.0.1:7443,direct'",
		"export GOAUTH='netrc'",
		"#   machine 127.0.0.1:7443 login <name> password <password>",
		"export HTTPS_PROXY='https://127.0.0.1:7443'",
		"put <name>:<password>@ after https://",
		"export SSL_CERT_FILE='" + filepath.Join(dir, "ca", BundleFile) + "'",
		"# SSL_CERT_FILE, GIT_SSL_CAINFO: this system's roots and modgate's CA, which signed modgate's certificate for 127.0.0.1:7443",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("modgate env lacks %q:\n%s", want, out)
		}
	}
	vars := shVars(t, "bash", out)
	if vars["GOAUTH"] != "netrc" || vars["GOPROXY"] != "https://127.0.0.1:7443,direct" {
		t.Errorf("bash: GOAUTH %q, GOPROXY %q", vars["GOAUTH"], vars["GOPROXY"])
	}
}

// TestDoctorClients: doctor checks the https GOPROXY, the trust of
// modgate's certificate, GOAUTH and the netrc line, and never shows the
// netrc's password.
func TestDoctorClients(t *testing.T) {
	dir := clientsDir(t)
	if err := os.WriteFile(filepath.Join(dir, "modgate.yaml"), []byte(clientsConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	netrc := filepath.Join(dir, "netrc")
	os.WriteFile(netrc, []byte("machine other.example.test login x password y\nmachine 127.0.0.1:7443\n  login alice\n  password alice-Pw-7Qx2v\n"), 0o600)
	goenv := func(vals map[string]string) func(context.Context, ...string) ([]string, error) {
		return func(_ context.Context, names ...string) ([]string, error) {
			if vals == nil {
				return nil, errors.New("no go")
			}
			out := make([]string, len(names))
			for i, n := range names {
				out[i] = vals[n]
			}
			return out, nil
		}
	}
	good := runDoctor(t, goenv(map[string]string{"GOPROXY": "https://127.0.0.1:7443,direct", "GOAUTH": "netrc", "GOENV": "off"}),
		map[string]string{"NETRC": netrc, "SSL_CERT_FILE": filepath.Join(dir, "ca", mitm.CertFile)}, "--config", "modgate.yaml", "--no-probe")
	for _, want := range []struct {
		sev   doctor.Severity
		check string
	}{{doctor.Info, "netrc"}, {doctor.Info, "listener-trust"}, {doctor.Info, "goproxy"}} {
		if !good.has(want.sev, want.check, "") {
			t.Errorf("good set-up: no %s %s:\n%v", want.sev, want.check, good)
		}
	}
	if !good.report.OK {
		t.Errorf("good set-up is not OK:\n%v", good)
	}
	bad := runDoctor(t, goenv(map[string]string{"GOPROXY": "http://127.0.0.1:7443", "GOAUTH": "off", "GOENV": "off"}),
		map[string]string{"NETRC": netrc}, "--config", "modgate.yaml", "--no-probe")
	for _, check := range []string{"goproxy-not-https", "listener-trust", "goauth"} {
		if !bad.has(doctor.Error, check, "") {
			t.Errorf("bad set-up: no error %s:\n%v", check, bad)
		}
	}
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login alice password alice-Pw-7Qx2v\n"), 0o644)
	noLine := runDoctor(t, goenv(map[string]string{"GOPROXY": "https://127.0.0.1:7443,direct", "GOENV": "off"}),
		map[string]string{"NETRC": netrc}, "--config", "modgate.yaml", "--no-probe")
	if !noLine.has(doctor.Error, "netrc", netrc) {
		t.Errorf("netrc without modgate's machine (host:port): no error:\n%v", noLine)
	}
	for _, r := range []doctorResult{good, bad, noLine} {
		if s := r.String() + r.stderr; strings.Contains(s, "alice-Pw-7Qx2v") {
			t.Errorf("the password appears in doctor's report:\n%s", s)
		}
		for _, f := range r.report.Findings {
			if strings.Contains(f.What+f.Fix+f.Where, "alice-Pw-7Qx2v") {
				t.Errorf("the password appears in %s", f.Check)
			}
		}
	}
}

// TestPolicyCheckIdentity: `modgate policy check --identity` decides and
// routes as modgate would for that client.
func TestPolicyCheckIdentity(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	os.WriteFile(file, []byte(`routes:
  - modules: ["*.corp.example.test"]
    identities: ["team-a-*"]
    upstreams: [internal-a]
rules:
  - allow: "git.corp.example.test/team-a/*"
    identities: [alice, "team-a-*"]
  - deny: "git.corp.example.test/team-a/*"
    reason: "team A's modules"
`), 0o644)
	run := func(args ...string) (int, string) {
		var out bytes.Buffer
		app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
		return app.Run(context.Background(), args), out.String()
	}
	if code, out := run("policy", "check", "--policy", file, "--identity", "team-a-ci", "git.corp.example.test/team-a/x@v1.0.0"); code != 0 || !strings.Contains(out, "rule:    1 (allow git.corp.example.test/team-a/*)") || !strings.Contains(out, "route:   internal-a") {
		t.Errorf("team-a-ci: %d\n%s", code, out)
	}
	if code, out := run("policy", "check", "--policy", file, "--identity", "bob", "git.corp.example.test/team-a/x@v1.0.0"); code != 1 || !strings.Contains(out, "rule:    2 (deny git.corp.example.test/team-a/*)") || strings.Contains(out, "route:") {
		t.Errorf("bob: %d\n%s", code, out)
	}
	if code, out := run("policy", "lint", file); code != 0 || !strings.Contains(out, "rule 1: allow git.corp.example.test/team-a/* for identities alice, team-a-*") {
		t.Errorf("lint: %d\n%s", code, out)
	}
}
