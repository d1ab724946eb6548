package sidecar

import (
	"archive/zip"
	"bytes"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/wire"
)

// TestCheckAnswer pins the go command's download-time rules
// (cmd/go/internal/modfetch/proxy.go, (*proxyRepo).Stat and Latest):
// nothing it accepts is refused, nothing it refuses is accepted.
func TestCheckAnswer(t *testing.T) {
	info := Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v1.0.0"}
	query := Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "main", Query: true}
	// Canonical, but not a version of a path without /v2: a query.
	v2 := Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v2.0.0", Query: true}
	incompat := Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v2.0.0+incompatible"}
	major := Request{Kind: wire.KindInfo, Module: "fixture.test/a/v2", Version: "v1.0.0", Query: true}
	mod := Request{Kind: wire.KindMod, Module: "fixture.test/a", Version: "v1.0.0"}
	latest := Request{Kind: wire.KindLatest, Module: "fixture.test/a"}
	for _, tt := range []struct {
		req  Request
		body string
		ok   bool
	}{
		{info, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`, true},
		{info, `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z","Origin":{"VCS":"git","Hash":"23179ee2d0f1c8a7b5e4d3c2b1a0f9e8d7c6b5a4"}}`, true},
		{info, `{"Version":"v1.0.0","Extra":[1,2]}`, true},
		{info, `{"Version":"v1.0.1"}`, false},
		{info, `{"Version":"v1.0"}`, false},
		{info, `not json`, false},
		{info, `{"Version":"v1.0.0","Time":"yesterday"}`, false},
		{info, `{"Version":"v1.0.0","Origin":{"Hash":7}}`, false},
		{query, `{"Version":"v0.0.0-20240102030405-0123456789ab"}`, true},
		{query, `{"Version":"main"}`, false},
		{query, `{"Version":""}`, false},
		{v2, `{"Version":"v2.0.0+incompatible","Time":"2024-01-01T00:00:00Z"}`, true},
		{v2, `{"Version":"v1.0.1-0.20240401000000-0123456789ab"}`, true},
		{incompat, `{"Version":"v2.0.0+incompatible"}`, true},
		{incompat, `{"Version":"v2.0.0"}`, false},
		{major, `{"Version":"v2.0.0"}`, true},
		{mod, "module fixture.test/a\n\ngo 1.21\n", true},
		{mod, "module fixture.test/b\n", true}, // renamed or forked: an error only in a build
		{mod, "go 1.21\n", true},
		{mod, "not a go.mod at all", true},
		{latest, `{"Version":"v1.2.3"}`, true},
		{latest, `{"Version":"v1.2.3","Time":"2024-01-01T00:00:00Z"}`, true},
		{latest, `{}`, false},
		{latest, `{"Version":"v1.2.3","Time":7}`, false},
	} {
		err := checkAnswer(tt.req, []byte(tt.body))
		if (err == nil) != tt.ok {
			t.Errorf("checkAnswer(%s %s@%s, %q) = %v; want ok=%v", tt.req.Kind, tt.req.Module, tt.req.Version, tt.body, err, tt.ok)
		}
	}
}

// TestCheckZipFile: a zip is refused only where the go command's
// downloadZip refuses it (cmd/go/internal/modfetch/fetch.go).
func TestCheckZipFile(t *testing.T) {
	req := Request{Kind: wire.KindZip, Module: "fixture.test/a", Version: "v1.0.0"}
	type file struct{ name, body string }
	write := func(files ...file) string {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, f := range files {
			w, err := zw.CreateHeader(&zip.FileHeader{Name: f.name, Method: zip.Store})
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(w, f.body)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "a.zip")
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := write(file{"fixture.test/a@v1.0.0/go.mod", "module fixture.test/a\n"}, file{"fixture.test/a@v1.0.0/a.go", "package a\n"})
	corrupt, _ := os.ReadFile(good)
	corrupt = bytes.Replace(corrupt, []byte("package a"), []byte("package b"), 1) // its CRC fails
	corruptPath := filepath.Join(t.TempDir(), "corrupt.zip")
	os.WriteFile(corruptPath, corrupt, 0o644)
	notZip := filepath.Join(t.TempDir(), "not.zip")
	os.WriteFile(notZip, []byte("this is not a zip"), 0o644)
	for _, tt := range []struct {
		name string
		path string
		ok   bool
	}{
		{"a module zip", good, true},
		// modzip.CheckZip refuses these; the go command downloads them.
		{"names that collide but for case", write(file{"fixture.test/a@v1.0.0/A.go", "package a\n"}, file{"fixture.test/a@v1.0.0/a.go", "package a\n"}), true},
		{"go.mod of another module, in a subdirectory", write(file{"fixture.test/a@v1.0.0/sub/go.mod", "module other\n"}), true},
		{"a name with a colon", write(file{"fixture.test/a@v1.0.0/a:b.go", "package a\n"}), true},
		{"an empty zip", write(), true},
		// downloadZip refuses these.
		{"not a zip", notZip, false},
		{"a file of another version", write(file{"fixture.test/a@v1.0.1/a.go", "package a\n"}), false},
		{"a file outside the module", write(file{"fixture.test/a@v1.0.0/a.go", "package a\n"}, file{"evil.go", "package evil\n"}), false},
		{"a damaged entry", corruptPath, false},
	} {
		if err := checkZipFile(req, tt.path); (err == nil) != tt.ok {
			t.Errorf("%s: checkZipFile = %v; want ok=%v", tt.name, err, tt.ok)
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
