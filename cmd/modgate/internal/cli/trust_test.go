package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/modgate/modgate/cmd/modgate/internal/doctor"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
)

// fakeSystemRoots makes the roots this test's "system" trusts the PEM
// certificates given, for as long as the test runs.
func fakeSystemRoots(t *testing.T, pemCerts ...[]byte) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ca-certificates.crt")
	if err := os.WriteFile(file, bytes.Join(pemCerts, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	oldFiles, oldDirs := systemCertFiles, systemCertDirs
	systemCertFiles, systemCertDirs = []string{file}, nil
	t.Cleanup(func() { systemCertFiles, systemCertDirs = oldFiles, oldDirs })
}

// With mitm_hosts, modgate env trusts modgate's CA through SSL_CERT_FILE,
// which replaces the go command's system roots: it must name a bundle of
// the system's roots and the CA, so that a host reached through a plain
// tunnel (not intercepted, its certificate signed by a system root) still
// works.
func TestEnvCABundleKeepsTunnelsWorking(t *testing.T) {
	if ignoresSSLCertFile(runtime.GOOS) {
		t.Skipf("the go command ignores SSL_CERT_FILE on %s", runtime.GOOS)
	}
	const origin = "origin.fixture.test"
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxyTLS(t, fx, modtest.WithTLSNames(origin))
	fakeSystemRoots(t, p.CAPEM())

	dir := t.TempDir()
	if err := mitm.Init(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	config := filepath.Join(dir, "modgate.yaml")
	os.WriteFile(config, []byte("listen: "+listen+"\nadmin: \"\"\nupstreams: \"off\"\nsumdb: {name: \"off\"}\ncache: {dir: \"\"}\n"+
		"resolve: {\""+origin+":443\": \""+strings.TrimPrefix(p.URL, "https://")+"\"}\n"+
		"forward:\n  allow_hosts: [\""+origin+"\"]\n  mitm_hosts: [mitm.fixture.test]\n  ca_dir: "+filepath.Join(dir, "ca")+"\n"), 0o644)

	code, out, errs := runEnv(t, "", nil, "--config", config)
	if code != 0 {
		t.Fatalf("modgate env: exit %d\n%s", code, errs)
	}
	vars := shVars(t, "bash", out)
	bundle := vars["SSL_CERT_FILE"]
	if bundle == "" || vars["GIT_SSL_CAINFO"] != bundle {
		t.Fatalf("modgate env set SSL_CERT_FILE %q, GIT_SSL_CAINFO %q:\n%s", bundle, vars["GIT_SSL_CAINFO"], out)
	}
	data, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(mitm.CertPath(filepath.Join(dir, "ca")))
	if !bytes.Contains(data, bytes.TrimSpace(caPEM)) || !bytes.Contains(data, bytes.TrimSpace(p.CAPEM())) {
		t.Fatalf("%s lacks modgate's CA or the system's root:\n%s", bundle, data)
	}

	cmd, log := modgate(t, "run", "--config", config)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitListening(t, listen, log)

	g := modtest.NewGo(t)
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "GIT_SSL_CAINFO"} {
		g.Setenv(k, vars[k])
	}
	// Straight to the origin through a tunnel, as a direct fetch goes.
	g.UseProxy("https://"+origin, nil)
	if _, stderr, err := g.Run("mod", "download", "-json", "fixture.test/dep01@v1.0.0"); err != nil {
		t.Fatalf("go mod download through a plain tunnel with modgate env's settings: %v\n%s\nmodgate:\n%s", err, stderr, log)
	}
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string, out *bytes.Buffer) {
	t.Helper()
	for range 1500 {
		if c, err := dialTCP(addr); err == nil {
			c.Close()
			return
		}
		sleepBriefly()
	}
	t.Fatalf("nothing listens on %s:\n%s", addr, out)
}

func TestCABundleAndTrust(t *testing.T) {
	root := []byte("-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n") // not a certificate: left out
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxyTLS(t, fx)
	fakeSystemRoots(t, p.CAPEM(), root, p.CAPEM())
	dir := filepath.Join(t.TempDir(), "ca")
	if err := mitm.Init(dir); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	app := &App{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"ca", "bundle", "--ca-dir", dir}); code != 0 {
		t.Fatalf("ca bundle: exit %d: %s", code, &errb)
	}
	file := strings.TrimSpace(out.String())
	data, _ := os.ReadFile(file)
	if n := bytes.Count(data, []byte("BEGIN CERTIFICATE")); n != 2 {
		t.Errorf("bundle %s has %d certificates, want 2 (the system's one root, once, and modgate's CA):\n%s", file, n, data)
	}
	for goos, want := range map[string]string{
		"darwin":  "security add-trusted-cert -r trustRoot -k ~/Library/Keychains/login.keychain-db " + mitm.CertPath(dir),
		"windows": `certutil -user -addstore Root "` + mitm.CertPath(dir) + `"`,
		"linux":   "update-ca-certificates",
	} {
		out.Reset()
		if code := app.Run(context.Background(), []string{"ca", "trust", "--ca-dir", dir, "--goos", goos}); code != 0 || !strings.Contains(out.String(), want) {
			t.Errorf("ca trust --goos %s: exit %d, want %q in:\n%s", goos, code, want, &out)
		}
	}
}

// On Windows (a PowerShell or cmd user) the go command ignores
// SSL_CERT_FILE: env says how to trust the CA instead of setting it.
func TestEnvWindowsTrust(t *testing.T) {
	dir := sampleDir(t)
	for _, shell := range []string{"powershell", "cmd"} {
		code, out, errs := runEnv(t, dir, nil, "--config", "modgate.yaml", "--shell", shell)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", shell, code, errs)
		}
		if strings.Contains(out, "SSL_CERT_FILE =") || strings.Contains(out, "set SSL_CERT_FILE") || !strings.Contains(out, "modgate ca trust") {
			t.Errorf("--shell %s:\n%s", shell, out)
		}
	}
}

// doctor warns of an SSL_CERT_FILE that holds modgate's CA alone (it
// replaces the system's roots) and, on Windows and macOS, of one that is
// set at all (the go command ignores it there).
func TestDoctorCertFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := mitm.Init(dir); err != nil {
		t.Fatal(err)
	}
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	env := map[string]string{"SSL_CERT_FILE": mitm.CertPath(dir)}
	r := runDoctor(t, goenv, env, "--no-probe", "--upstream", "https://mods.corp.example.test", "--goos", "linux")
	if !r.has(doctor.Warn, "ssl-cert-file-alone", "environment") {
		t.Errorf("linux, SSL_CERT_FILE with one CA: no ssl-cert-file-alone warning:\n%s", r)
	}
	r = runDoctor(t, goenv, env, "--no-probe", "--upstream", "https://mods.corp.example.test", "--goos", "windows")
	if !r.has(doctor.Warn, "ssl-cert-file-ignored", "environment") || r.has(doctor.Warn, "ssl-cert-file-alone", "") {
		t.Errorf("windows: want ssl-cert-file-ignored only:\n%s", r)
	}
	r = runDoctor(t, goenv, nil, "--no-probe", "--upstream", "https://mods.corp.example.test", "--goos", "windows", "--mitm-host", "proxy.example.test", "--ca-dir", dir)
	if !r.has(doctor.Info, "ca-trust", "system store") {
		t.Errorf("windows with mitm hosts: no ca-trust note:\n%s", r)
	}
}
