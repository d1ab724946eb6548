package sidecar

import (
	"net/http/httptest"
	"testing"

	"github.com/modgate/modgate/policy"
)

func TestCheckAnswer(t *testing.T) {
	info := Request{Kind: KindInfo, Module: "fixture.test/a", Version: "v1.0.0"}
	query := Request{Kind: KindInfo, Module: "fixture.test/a", Version: "main", Query: true}
	mod := Request{Kind: KindMod, Module: "fixture.test/a", Version: "v1.0.0"}
	for _, tt := range []struct {
		req  Request
		body string
		ok   bool
	}{
		{info, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`, true},
		{info, `{"Version":"v1.0.1"}`, false},
		{info, `{"Version":"v1.0"}`, false},
		{info, `not json`, false},
		{query, `{"Version":"v0.0.0-20240102030405-0123456789ab"}`, true},
		{query, `{"Version":"main"}`, false},
		{mod, "module fixture.test/a\n\ngo 1.21\n", true},
		{mod, "module \"fixture.test/a\"\n", true},
		{mod, "module fixture.test/b\n", false},
		{mod, "go 1.21\n", false},
		{Request{Kind: KindLatest, Module: "fixture.test/a"}, `{"Version":"v1.2.3"}`, true},
		{Request{Kind: KindLatest, Module: "fixture.test/a"}, `{}`, false},
	} {
		err := checkAnswer(tt.req, []byte(tt.body))
		if (err == nil) != tt.ok {
			t.Errorf("checkAnswer(%s %s, %q) = %v; want ok=%v", tt.req.Kind, tt.req.Version, tt.body, err, tt.ok)
		}
	}
}

func TestPrivatePathIn(t *testing.T) {
	pol, err := policy.Parse("policy.yaml", []byte("private: [\"corp.example.test/Secret\", \"*.corp.example.test\", \"golang.org\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{
		"/lookup/corp.example.test/Secret@v1.0.0":                  "corp.example.test/Secret",
		"/alias/lookup/corp.example.test/!secret@v1":               "corp.example.test/Secret",
		"//lookup/corp.example.test/Secret/x":                      "corp.example.test/Secret",
		"/x/../lookup/corp.example.test/Secret@v1.0.0":             "corp.example.test/Secret",
		"/corp.example.test/Secret/@v/list/":                       "corp.example.test/Secret",
		"/corp.example.test/!secret/@v/V1.0.0.ZIP":                 "corp.example.test/Secret",
		"/prefix/git.corp.example.test/repo/info/refs":             "*.corp.example.test",
		"/?go-get=1&x=corp.example.test/Secret":                    "corp.example.test/Secret",
		"/corp.example.test/Public/@v/list":                        "",
		"/fixture.test/a/@v/list":                                  "",
		"/notcorp.example.test.evil/x":                             "",
		"/sumdb/sum.example.test/lookup/fixture.test/a":            "",
		"/golang.org/toolchain/@v/v0.0.1-go1.99.0.linux-amd64.zip": "",
		"/lookup/golang.org/toolchain@v0.0.1-go1.99.0.linux-amd64": "",
	} {
		r := httptest.NewRequest("GET", "http://host.example.test"+target, nil)
		if got := privatePathIn(pol, r); got != want {
			t.Errorf("privatePathIn(%s) = %q; want %q", target, got, want)
		}
	}
}
