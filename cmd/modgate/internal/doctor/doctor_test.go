package doctor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/upstream"
)

func TestHelpers(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		list     string
		missing  []string
	}{
		{[]string{"*.corp.example.test", "github.com/acme/*"}, "*.corp.example.test,github.com/acme", nil},
		{[]string{"*.corp.example.test", "github.com/acme/*"}, "github.com/*", []string{"*.corp.example.test"}},
		{[]string{"git.corp.example.test"}, "*.corp.example.test", nil},
		{[]string{"*.corp.example.test"}, "git.corp.example.test", []string{"*.corp.example.test"}},
		{[]string{"example.test/private,example.test/secret/*"}, "example.test/private", []string{"example.test/secret/*"}},
	} {
		if got := missingPatterns(tc.patterns, tc.list); !slices.Equal(got, tc.missing) {
			t.Errorf("missingPatterns(%q, %q) = %q, want %q", tc.patterns, tc.list, got, tc.missing)
		}
	}
	for in, want := range map[string]bool{"-mod=mod -insecure": true, "--insecure": true, "-insecure=true": true, "-modcacherw": false, "-tags=insecure": false} {
		if hasInsecureFlag(in) != want {
			t.Errorf("hasInsecureFlag(%q) = %v", in, !want)
		}
	}
	for _, tc := range []struct {
		rest string
		yaml bool
		want string
	}{
		{`"off" # why`, false, "off"},
		{`off && go build`, false, "off"},
		{`-mod=mod -insecure # no`, true, "-mod=mod -insecure"},
		{`'a b' c`, false, "a b"},
		{`http://127.0.0.1:7070;`, false, "http://127.0.0.1:7070"},
	} {
		if got := settingValue(tc.rest, tc.yaml); got != tc.want {
			t.Errorf("settingValue(%q, %v) = %q, want %q", tc.rest, tc.yaml, got, tc.want)
		}
	}
	for _, tc := range []struct {
		host, listen string
		want         bool
	}{
		{"127.0.0.1:7070", "127.0.0.1:7070", true},
		{"localhost:7070", "127.0.0.1:7070", true},
		{"127.0.0.1:7070", "0.0.0.0:7070", true},
		{"127.0.0.1:7071", "127.0.0.1:7070", false},
		{"mods.corp.example.test:7070", "127.0.0.1:7070", false},
	} {
		if got := sameListener(tc.host, tc.listen); got != tc.want {
			t.Errorf("sameListener(%q, %q) = %v", tc.host, tc.listen, got)
		}
	}
}

// TestRunConfigDoesNotLoad: a config that does not load is an error
// finding, and nothing is probed, since what would be probed is unknown.
func TestRunConfigDoesNotLoad(t *testing.T) {
	goenv := func(_ context.Context, names ...string) ([]string, error) {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = map[string]string{"GOPROXY": "http://127.0.0.1:7070", "GOSUMDB": "sum.example.test", "GOENV": "off"}[n]
		}
		return out, nil
	}
	loaded := false
	r := Run(context.Background(), Options{
		Getenv: func(string) string { return "" },
		GoEnv:  goenv,
		Load: func(goenv GoEnvFunc) (Modgate, error) {
			vals, err := goenv(context.Background(), "GOPROXY")
			loaded = err == nil && vals[0] == "http://127.0.0.1:7070"
			return Modgate{Listen: "127.0.0.1:7070", URL: "http://127.0.0.1:7070"}, errors.New("modgate.yaml:3: unknown key \"upstreamz\"")
		},
		Probe:   true,
		Timeout: time.Second,
		Module:  "example.test/m",
	})
	if !loaded {
		t.Error("Load was not given the go env values doctor read")
	}
	found := false
	for _, f := range r.Findings {
		found = found || (f.Severity == Error && f.Check == "config" && strings.Contains(f.What, "upstreamz"))
	}
	if !found || r.OK || len(r.Probes) != 0 {
		t.Errorf("config error found %v, ok %v, %d probes; want true, false, 0: %+v", found, r.OK, len(r.Probes), r)
	}
	if c := r.Counts(); !strings.HasPrefix(c, "1 error, ") {
		t.Errorf("Counts() = %q", c)
	}
}

// Credentials to an upstream over plain http, other than on loopback, are
// worth a warning.
func TestCredentialsOverPlainHTTP(t *testing.T) {
	r := Run(context.Background(), Options{
		Getenv: func(string) string { return "" },
		GoEnv:  func(context.Context, ...string) ([]string, error) { return nil, errors.New("no go") },
		Load: func(GoEnvFunc) (Modgate, error) {
			return Modgate{Listen: "127.0.0.1:7070", Upstreams: []Upstream{
				{Name: "plain", URL: "http://mods.corp.example.test", Auth: upstream.Auth{BearerFile: "/run/secrets/token"}},
				{Name: "userinfo", URL: "http://ci:pw-abcdef@athens.corp.example.test"},
				{Name: "tls", URL: "https://mods.corp.example.test", Auth: upstream.Auth{BearerFile: "/run/secrets/token"}},
				{Name: "local", URL: "http://127.0.0.1:3000", Auth: upstream.Auth{BearerFile: "/run/secrets/token"}},
				{Name: "open", URL: "http://proxy.example.test"},
			}}, nil
		},
	})
	var warned []string
	for _, f := range r.Findings {
		if f.Check == "credentials-plain-http" {
			warned = append(warned, f.What)
			if strings.Contains(f.What+f.Where, "abcdef") {
				t.Errorf("the finding shows the password: %+v", f)
			}
		}
	}
	if len(warned) != 2 || !strings.Contains(warned[0], "upstream plain ") || !strings.Contains(warned[1], "upstream userinfo ") {
		t.Errorf("warnings: %q; want plain and userinfo", warned)
	}
}
