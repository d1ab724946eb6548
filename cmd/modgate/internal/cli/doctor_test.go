package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/modgate/modgate/cmd/modgate/internal/doctor"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/fleettest"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// fakeGoEnv answers `go env NAME...` from a `go env -json` fixture, with
// the values in over replacing the fixture's.
func fakeGoEnv(t *testing.T, file string, over map[string]string) func(context.Context, ...string) ([]string, error) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	for k, v := range over {
		env[k] = v
	}
	return func(_ context.Context, names ...string) ([]string, error) {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = env[n]
		}
		return out, nil
	}
}

// doctorResult is one run of modgate doctor --json.
type doctorResult struct {
	code   int
	report doctor.Report
	stderr string
}

// has reports whether the report holds a finding of check with severity
// sev, at a place containing where.
func (r doctorResult) has(sev doctor.Severity, check, where string) bool {
	for _, f := range r.report.Findings {
		if f.Severity == sev && f.Check == check && strings.Contains(f.Where, where) {
			return true
		}
	}
	return false
}

func (r doctorResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exit %d; stderr %q\n", r.code, r.stderr)
	for _, f := range r.report.Findings {
		fmt.Fprintf(&b, "  %-5s %-22s %-40s %s\n", f.Severity, f.Check, f.Where, f.What)
	}
	return b.String()
}

func runDoctor(t *testing.T, goenv func(context.Context, ...string) ([]string, error), env map[string]string, args ...string) doctorResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	app := &App{Stdout: &stdout, Stderr: &stderr, GoEnv: goenv, Getenv: func(k string) string { return env[k] }}
	code := app.Run(context.Background(), append([]string{"doctor", "--json"}, args...))
	var r doctorResult
	r.code, r.stderr = code, stderr.String()
	if err := json.Unmarshal(stdout.Bytes(), &r.report); err != nil {
		t.Fatalf("doctor --json printed no JSON (%v):\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	return r
}

func TestDoctorRiskyGoEnv(t *testing.T) {
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-risky.json", nil)
	env := map[string]string{
		"GOSUMDB":      "off", // overrides the go env file's sum.example.test
		"GONOSUMCHECK": "1",
		"HTTPS_PROXY":  "http://proxy.corp.example.test:3128",
		"http_proxy":   "http://proxy.corp.example.test:3128",
		"HTTP_PROXY":   "http://other.corp.example.test:3128",
	}
	r := runDoctor(t, goenv, env, "--no-probe", "--policy", "testdata/doctor/policy.yaml", "--upstream", "https://mods.corp.example.test")
	for _, want := range []struct {
		sev          doctor.Severity
		check, where string
	}{
		{doctor.Error, "gosumdb-off", "environment"},
		{doctor.Error, "goflags-insecure", "goenv.file"},
		{doctor.Warn, "goinsecure", ""},
		{doctor.Warn, "gonosumcheck", "environment"},
		{doctor.Error, "gonosumdb-leak", ""},
		{doctor.Warn, "goproxy-bypass", ""},
		{doctor.Warn, "proxy-var-case", "environment"},
		{doctor.Warn, "go-env-overridden", "goenv.file"},
	} {
		if !r.has(want.sev, want.check, want.where) {
			t.Errorf("no %s %s at %q", want.sev, want.check, want.where)
		}
	}
	if r.code != 1 || r.report.OK {
		t.Errorf("exit %d, ok %v; want 1, false", r.code, r.report.OK)
	}
	// The leak names exactly the missing pattern and the value to set.
	for _, f := range r.report.Findings {
		if f.Check == "gonosumdb-leak" && (!strings.Contains(f.What, "*.corp.example.test") || strings.Contains(f.What, ": github.com/acme/*") ||
			!strings.Contains(f.Fix, "GONOSUMDB=github.com/acme/*,*.corp.example.test")) {
			t.Errorf("leak finding: %+v", f)
		}
		if f.Check == "proxy-var-case" && !strings.Contains(f.What, "HTTPS_PROXY is set but https_proxy is not") && !strings.Contains(f.What, "differ") {
			t.Errorf("proxy finding: %+v", f)
		}
		if f.Check == "go-env-overridden" && !strings.Contains(f.What, "GOSUMDB") {
			t.Errorf("override finding: %+v", f)
		}
	}
	if len(r.report.Probes) != 0 {
		t.Errorf("--no-probe made probes: %+v", r.report.Probes)
	}
	if r.report.GoEnv["GOFLAGS"] != "-mod=mod -insecure" {
		t.Errorf("go_env: %v", r.report.GoEnv)
	}
	if t.Failed() {
		t.Log(r)
	}
}

func TestDoctorGoEnvFails(t *testing.T) {
	goenv := func(context.Context, ...string) ([]string, error) { return nil, errors.New("go: command not found") }
	r := runDoctor(t, goenv, map[string]string{}, "--no-probe", "--upstream", "https://mods.corp.example.test")
	if r.code != 1 || !r.has(doctor.Error, "go-env", "") {
		t.Errorf("want a go-env error and exit 1:\n%s", r)
	}
}

func TestDoctorUpstreamLoop(t *testing.T) {
	// An upstream the user configured that is modgate itself.
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	r := runDoctor(t, goenv, map[string]string{}, "--no-probe", "--upstream", "http://127.0.0.1:7070")
	if !r.has(doctor.Error, "upstream-loop", "") || r.code != 1 {
		t.Errorf("want an upstream-loop error:\n%s", r)
	}
}

// After go env -w GOPROXY=<modgate>,direct (README: Quick start), the
// chain modgate takes from the go env leaves modgate out: a running,
// healthy modgate is no error.
func TestDoctorGoEnvNamesRunningModgate(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	listen, admin := startDoctorGate(t, upstream.Config{Name: "fixtures", URL: p.URL})
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": "http://" + listen + "," + p.URL + ",direct"})
	r := runDoctor(t, goenv, map[string]string{"MODGATE_SUMDB": "sum.fixture.test"}, "--listen", listen, "--admin", admin, "--module", "fixture.test/dep01")
	if r.code != 0 || !r.report.OK || r.has(doctor.Error, "upstream-loop", "") {
		t.Errorf("want exit 0 and no upstream-loop:\n%s", r)
	}
}

// startDoctorGate serves a modgate with an admin listener until the test
// ends and returns both addresses.
func startDoctorGate(t *testing.T, ups ...upstream.Config) (listen, admin string) {
	t.Helper()
	g := sidecartest.Start(t, nil, sidecar.Config{Admin: "127.0.0.1:0", Upstreams: ups, SumDB: "sum.fixture.test"})
	return g.Addr, g.AdminAddr
}

func TestDoctorProbesHealthySetup(t *testing.T) {
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	listen, admin := startDoctorGate(t, upstream.Config{Name: "fixtures", URL: p.URL})
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": "http://" + listen})
	env := map[string]string{"MODGATE_UPSTREAM": p.URL, "MODGATE_SUMDB": "sum.fixture.test"}
	r := runDoctor(t, goenv, env, "--listen", listen, "--admin", admin, "--policy", "testdata/doctor/policy.yaml", "--module", "fixture.test/dep01")
	if r.code != 0 || !r.report.OK {
		t.Errorf("want exit 0:\n%s", r)
	}
	for _, want := range []string{"modgate", "upstream", "goproxy-no-fallback", "gonosumdb"} {
		if !r.has(doctor.Info, want, "") {
			t.Errorf("no info %s:\n%s", want, r)
		}
	}
	kinds := map[string]int{}
	for _, pr := range r.report.Probes {
		kinds[pr.Target+" "+pr.Kind] = pr.Status
		if pr.Millis <= 0 {
			t.Errorf("probe %+v has no timing", pr)
		}
	}
	want := map[string]int{"modgate readyz": 200, "modgate list": 200, "127.0.0.1:" + p.URL[strings.LastIndex(p.URL, ":")+1:] + " list": 200}
	for k, code := range want {
		if kinds[k] != code {
			t.Errorf("probe %s: status %d, want %d (probes %v)", k, kinds[k], code, kinds)
		}
	}
	if p.CountMatching("/fixture.test/dep01/@latest") == 0 || p.CountMatching("/sumdb/sum.fixture.test/supported") == 0 {
		t.Errorf("upstream saw %v", p.Requests())
	}
}

func TestDoctorModgateDown(t *testing.T) {
	dead := modtest.DeadURL(t)
	listen := strings.TrimPrefix(dead, "http://")
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": dead + ",direct"})
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	r := runDoctor(t, goenv, map[string]string{"MODGATE_UPSTREAM": p.URL + "/f/500"}, "--listen", listen, "--admin", "", "--module", "fixture.test/dep01")
	// GOPROXY goes through modgate, so modgate being down is an error.
	if !r.has(doctor.Error, "modgate-down", listen) || r.code != 1 {
		t.Errorf("want a modgate-down error:\n%s", r)
	}
	if !r.has(doctor.Warn, "upstream", p.URL) {
		t.Errorf("want a warning for the failing upstream:\n%s", r)
	}
}

// testCert makes a self-signed certificate for 127.0.0.1 valid until
// notAfter, and returns it for a server and as PEM for clients.
func testCert(t *testing.T, notAfter time.Time) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "mods.corp.example.test"},
		NotBefore:             time.Now().Add(-90 * 24 * time.Hour),
		NotAfter:              notAfter,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// tlsUpstream serves a module proxy over TLS with cert.
func tlsUpstream(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	p := modtest.NewProxy(t, fx)
	target := p.URL
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(target + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		buf := new(bytes.Buffer)
		buf.ReadFrom(resp.Body)
		w.Write(buf.Bytes())
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes with bad certificates fail on purpose
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestDoctorCertificates(t *testing.T) {
	soon, soonPEM := testCert(t, time.Now().Add(5*24*time.Hour))
	expired, expiredPEM := testCert(t, time.Now().Add(-24*time.Hour))
	fine, finePEM := testCert(t, time.Now().Add(200*24*time.Hour))
	soonURL, expiredURL, fineURL := tlsUpstream(t, soon), tlsUpstream(t, expired), tlsUpstream(t, fine)
	untrusted, _ := testCert(t, time.Now().Add(100*24*time.Hour)) // its CA is not in tls_ca_file
	untrustedURL := tlsUpstream(t, untrusted)

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, slices.Concat(soonPEM, expiredPEM, finePEM), 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "modgate.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`listen: %s
admin: ""
upstreams:
  - {name: soon, url: %s, fallthrough: error}
  - {name: expired, url: %s, fallthrough: error}
  - {name: fine, url: %s, fallthrough: error}
  - {name: untrusted, url: %s}
sumdb: {name: "off"}
tls_ca_file: %s
`, strings.TrimPrefix(modtest.DeadURL(t), "http://"), soonURL, expiredURL, fineURL, untrustedURL, caFile)), 0o644)
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	r := runDoctor(t, goenv, map[string]string{}, "--config", config, "--module", "fixture.test/dep01")
	for _, want := range []struct {
		sev          doctor.Severity
		check, where string
	}{
		{doctor.Warn, "cert-expiring", strings.TrimPrefix(soonURL, "https://")},
		{doctor.Error, "cert-expired", strings.TrimPrefix(expiredURL, "https://")},
		{doctor.Info, "cert", strings.TrimPrefix(fineURL, "https://")},
		{doctor.Error, "cert-untrusted", strings.TrimPrefix(untrustedURL, "https://")},
		{doctor.Warn, "upstream", expiredURL}, // its probes fail verification
		{doctor.Info, "upstream", ""},         // fine's probes pass
	} {
		if !r.has(want.sev, want.check, want.where) {
			t.Errorf("no %s %s at %q", want.sev, want.check, want.where)
		}
	}
	var sawNotAfter bool
	for _, p := range r.report.Probes {
		if p.Kind == "tls" && p.Target == "soon" && p.NotAfter != nil && time.Until(*p.NotAfter) < 6*24*time.Hour {
			sawNotAfter = true
		}
	}
	if !sawNotAfter {
		t.Errorf("no tls probe with not_after for soon: %+v", r.report.Probes)
	}
	if t.Failed() {
		t.Log(r)
	}
}

func TestDoctorScan(t *testing.T) {
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", nil)
	r := runDoctor(t, goenv, map[string]string{"MODGATE_UPSTREAM": "https://mods.corp.example.test"},
		"--no-probe", "--policy", "testdata/doctor/policy.yaml", "--scan", "testdata/doctor/repo")
	want := []struct {
		sev          doctor.Severity
		check, where string
	}{
		{doctor.Warn, "replace-abs-path", "go.mod:10"},
		{doctor.Error, "replace-url", "go.mod:13"},
		{doctor.Warn, "replace-abs-path", "tools/go.mod:5"},
		{doctor.Error, "ci-goflags-insecure", ".github/workflows/ci.yml:4"},
		{doctor.Error, "ci-gonosumdb-leak", ".github/workflows/ci.yml:5"},
		{doctor.Warn, "ci-goproxy-bypass", ".github/workflows/ci.yml:10"},
		{doctor.Error, "ci-gosumdb-off", ".gitlab-ci.yml:2"},
		{doctor.Warn, "ci-goinsecure", "Jenkinsfile:4"},
		{doctor.Warn, "ci-gonosumcheck", "Dockerfile:2"},
		{doctor.Warn, "ci-goproxy-bypass", "Dockerfile:3"},
		{doctor.Error, "ci-gonosumdb-all", "Makefile:2"},
		{doctor.Error, "ci-gosumdb-off", "scripts/build.sh:4"},
	}
	for _, w := range want {
		if !r.has(w.sev, w.check, w.where) {
			t.Errorf("no %s %s at %s", w.sev, w.check, w.where)
		}
	}
	// Nothing else from the repository: the GOPROXY set from a secret, the
	// loopback GOPROXY and the commented GOSUMDB=off are not findings.
	n := 0
	for _, f := range r.report.Findings {
		if strings.HasPrefix(f.Check, "ci-") || strings.HasPrefix(f.Check, "replace-") || f.Check == "gomod-invalid" {
			n++
		}
	}
	if n != len(want) {
		t.Errorf("%d repository findings, want %d", n, len(want))
	}
	if t.Failed() {
		t.Log(r)
	}
}

func TestDoctorHumanOutput(t *testing.T) {
	var stdout, stderr bytes.Buffer
	env := map[string]string{"GOSUMDB": "off"}
	app := &App{Stdout: &stdout, Stderr: &stderr, GoEnv: fakeGoEnv(t, "testdata/doctor/goenv-risky.json", nil), Getenv: func(k string) string { return env[k] }}
	code := app.Run(context.Background(), []string{"doctor", "--no-probe", "--upstream", "https://mods.corp.example.test"})
	out := stdout.String()
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	errs, warns, notes := strings.Index(out, "\nErrors\n"), strings.Index(out, "\nWarnings\n"), strings.Index(out, "\nNotes\n")
	if !strings.HasPrefix(out, "modgate doctor: 2 errors, ") || errs < 0 || warns < errs || notes < warns {
		t.Errorf("output not grouped by severity:\n%s", out)
	}
	for _, s := range []string{"GOSUMDB=off", "at:  environment", "fix: Turn it back on"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(stderr.String(), "probing") {
		t.Errorf("progress on a stderr that is not a terminal: %q", &stderr)
	}
}

// TestDoctorDeployConfig loads the build pod's ConfigMap
// (deploy/k8s/base/configmap.yaml) with modgate's own config and policy
// loaders, as the pod's modgate does, and runs doctor on the environment
// the pod's build container gets: the deploy module's tests cannot import
// this module's loaders, so the check lives here.
func TestDoctorDeployConfig(t *testing.T) {
	data, err := os.ReadFile("../../../../deploy/k8s/base/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(data, &cm); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"modgate.yaml", "policy.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(cm.Data[name]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GONOSUMDB": cm.Data["GONOSUMDB"]})
	env := map[string]string{"MODGATE_CONFIG": filepath.Join(dir, "modgate.yaml"), "MODGATE_POLICY": filepath.Join(dir, "policy.yaml")}
	// The image's ENTRYPOINT flags (deploy/docker/Dockerfile).
	r := runDoctor(t, goenv, env, "--no-probe", "--listen", "0.0.0.0:7070", "--admin", "0.0.0.0:7071")
	if r.code != 0 || r.report.Summary[doctor.Warn] != 0 || !r.has(doctor.Info, "gonosumdb", "") {
		t.Errorf("the pod's config and policy, with its GONOSUMDB, are not clean:\n%s", r)
	}
}

// TestDoctorFleet: doctor writes, reads back and deletes an object in the
// shared store and pings Redis; a Redis that is not there is a warning
// (modgate serves without it), with its password hidden.
func TestDoctorFleet(t *testing.T) {
	redis := fleettest.Redis(t)
	fx := modtest.MustLoadFixtures(t, modtest.FixtureDir(t))
	db := modtest.NewSumDB(t, "sum.fixture.test", fx)
	p := modtest.NewProxy(t, fx, modtest.WithSumDB(db))
	listen, admin := startDoctorGate(t, upstream.Config{Name: "fixtures", URL: p.URL})
	goenv := fakeGoEnv(t, "testdata/doctor/goenv-good.json", map[string]string{"GOPROXY": "http://" + listen})
	bucket := t.TempDir()
	secret := fleetSecretFile(t)
	for _, c := range []struct {
		redis string
		sev   doctor.Severity
		check string
	}{
		{redis.URL(), doctor.Info, "fleet"},
		{"redis://:s3cr3t@" + freeAddr(t) + "/0", doctor.Warn, "fleet-unreachable"},
	} {
		env := map[string]string{"MODGATE_UPSTREAM": p.URL, "MODGATE_SUMDB": "sum.fixture.test",
			"MODGATE_CACHE_DIR": t.TempDir(), "MODGATE_CACHE_SHARED": "file://" + bucket, "MODGATE_FLEET_REDIS": c.redis,
			"MODGATE_FLEET_SECRET_FILE": secret}
		r := runDoctor(t, goenv, env, "--listen", listen, "--admin", admin, "--policy", "testdata/doctor/policy.yaml", "--module", "fixture.test/dep01")
		if !r.has(doctor.Info, "fleet", "file://"+bucket) {
			t.Errorf("no info on the shared store:\n%s", r)
		}
		if !r.has(c.sev, c.check, "redis://") {
			t.Errorf("Redis at %s: want %s %s:\n%s", c.redis, c.sev, c.check, r)
		}
		if strings.Contains(fmt.Sprint(r.report), "s3cr3t") {
			t.Errorf("the Redis password is in the report:\n%s", r)
		}
		if entries, _ := os.ReadDir(filepath.Join(bucket, "modgate-doctor")); len(entries) != 0 {
			t.Errorf("doctor left %d objects in the store", len(entries))
		}
	}
}
