package sidecar_test

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// TestUpstreamEchoedCredentialsStaySecret: an upstream that echoes the
// request's credentials in its error body ("denied: Bearer TOKEN") does
// not get them shown to the client, on the admin pages, in the audit log,
// the logs or the spans; nor a Bearer or Basic value it was not sent.
func TestUpstreamEchoedCredentialsStaySecret(t *testing.T) {
	const token = "tok-upstream-0123456789-SECRET"
	const password = "pw-upstream-Secret-987"
	const stranger = "unrelatedBearerValue12345"
	for _, c := range []struct {
		name  string
		auth  func(dir string, t *testing.T) upstream.Auth
		first string // the secret's form the upstream echoes first
	}{
		{"bearer", func(dir string, t *testing.T) upstream.Auth {
			f := filepath.Join(dir, "bearer")
			writeFile(t, f, token+"\n")
			return upstream.Auth{BearerFile: f}
		}, "Bearer " + token},
		{"basic", func(dir string, t *testing.T) upstream.Auth {
			f := filepath.Join(dir, "password")
			writeFile(t, f, password+"\n")
			return upstream.Auth{Username: "svc", PasswordFile: f}
		}, "password " + password},
	} {
		t.Run(c.name, func(t *testing.T) {
			echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusForbidden)
				auth := r.Header.Get("Authorization")
				_, cred, _ := strings.Cut(auth, " ")
				dec, _ := base64.StdEncoding.DecodeString(cred)
				_, pass, _ := strings.Cut(string(dec), ":")
				io.WriteString(w, "denied: "+auth+" "+c.first[:strings.Index(c.first, " ")]+" "+pass+" "+cred+" (also Bearer "+stranger+")\n")
			}))
			t.Cleanup(echo.Close)
			r := newTenantRig(t, "{}\n", func(r *tenantRig, cfg *sidecar.Config) {
				cfg.Upstreams = []upstream.Config{{Name: "echo", URL: echo.URL, Auth: c.auth(r.dir, t),
					Retry: upstream.RetrySettings{Attempts: 1}}}
			})
			var outputs []string
			for _, path := range []string{"/fixture.test/dep01/@v/v1.0.0.info", "/fixture.test/dep01/@v/list"} {
				status, _, body := r.get(t, r.client(), path, "")
				if status < 400 || !strings.Contains(body, "modgate: ") {
					t.Errorf("%s: %d %q; want modgate's error", path, status, body)
				}
				outputs = append(outputs, body)
			}
			if !strings.Contains(strings.Join(outputs, ""), "xxxxx") {
				t.Errorf("no redacted upstream detail in the answers: %q", outputs)
			}
			r.noSecrets(t, outputs, token, password, stranger, base64.StdEncoding.EncodeToString([]byte("svc:"+password)))
		})
	}
}

// TestPprofCmdlineHidesSecrets: with pprof on, /debug/pprof/cmdline shows
// the command line with an --upstream password, a --fleet-redis password
// and a shared store's key hidden.
func TestPprofCmdlineHidesSecrets(t *testing.T) {
	secrets := []string{"pw-up-S3CRET", "redis-S3CRET", "s3key-S3CRET"}
	g := sidecartest.Start(t, nil, sidecar.Config{Admin: "127.0.0.1:0", PProf: true, Upstreams: []upstream.Config{{URL: "off"}},
		CommandLine: []string{"modgate", "run", "--upstream", "https://ci:" + secrets[0] + "@mods.example.test",
			"--fleet-redis=redis://:" + secrets[1] + "@redis.example.test:6379/0",
			"--cache-shared", "s3://b?endpoint=http%3A%2F%2Fk%3A" + secrets[2] + "%40s3.example.test&region=r"}})
	resp, err := http.Get("http://" + g.AdminAddr + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "--upstream\x00https://ci:xxxxx@mods.example.test") {
		t.Errorf("cmdline: %d %q", resp.StatusCode, body)
	}
	for _, s := range secrets {
		if strings.Contains(string(body), s) {
			t.Errorf("/debug/pprof/cmdline shows a secret: %q", body)
		}
	}
}
