package sidecar

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/wire"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

func TestClassifyReverse(t *testing.T) {
	tests := []struct {
		path    string
		want    Request
		wantErr string // substring; "404" for ErrNotModuleRequest
	}{
		{path: "/fixture.test/a/@v/list", want: Request{Kind: wire.KindList, Module: "fixture.test/a"}},
		{path: "/fixture.test/a/@latest", want: Request{Kind: wire.KindLatest, Module: "fixture.test/a"}},
		{path: "/fixture.test/a/@v/v1.2.3.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/a/@v/v1.2.3.mod", want: Request{Kind: wire.KindMod, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/a/@v/v1.2.3.zip", want: Request{Kind: wire.KindZip, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/!upper!case/@v/v1.0.0.zip", want: Request{Kind: wire.KindZip, Module: "fixture.test/UpperCase", Version: "v1.0.0"}},
		{path: "/fixture.test/pre/@v/v1.1.0-rc.1.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/pre", Version: "v1.1.0-rc.1"}},
		{path: "/fixture.test/pre/@v/v1.1.0-!r!c.1.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/pre", Version: "v1.1.0-RC.1"}},
		{path: "/fixture.test/a/@v/v2.0.0+incompatible.mod", want: Request{Kind: wire.KindMod, Module: "fixture.test/a", Version: "v2.0.0+incompatible"}},
		{path: "/fixture.test/a/@v/v0.0.0-20260101000000-abcdefabcdef.zip", want: Request{Kind: wire.KindZip, Module: "fixture.test/a", Version: "v0.0.0-20260101000000-abcdefabcdef"}},
		// .info may ask for a query the proxy resolves.
		{path: "/fixture.test/a/@v/master.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "master", Query: true}},
		{path: "/fixture.test/a/@v/23179ee.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "23179ee", Query: true}},
		{path: "/fixture.test/a/@v/v1.0.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v1.0", Query: true}},
		// So may a canonical version that is not one of the path's
		// (cmd/go/internal/modfetch/proxy.go, (*proxyRepo).Stat): the
		// proxy answers v2.0.0+incompatible or a pseudo-version.
		{path: "/fixture.test/a/@v/v2.0.0.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v2.0.0", Query: true}},
		{path: "/fixture.test/a/v2/@v/v1.0.0.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a/v2", Version: "v1.0.0", Query: true}},
		{path: "/fixture.test/a/@v/v2.0.0+incompatible.info", want: Request{Kind: wire.KindInfo, Module: "fixture.test/a", Version: "v2.0.0+incompatible"}},
		{path: "/fixture.test/a/@v/v2.0.0.mod", want: Request{Kind: wire.KindMod, Module: "fixture.test/a", Version: "v2.0.0"}},
		// A checksum database's name may have a path.
		{path: "/sumdb/sum.fixture.test/sumdb/lookup/fixture.test/a@v1.0.0", want: Request{Kind: wire.KindSumDBLookup, SumDB: "sum.fixture.test/sumdb", Module: "fixture.test/a", Version: "v1.0.0", Path: "/lookup/fixture.test/a@v1.0.0"}},
		{path: "/sumdb/sum.fixture.test/sumdb/supported", want: Request{Kind: wire.KindSumDBSupported, SumDB: "sum.fixture.test/sumdb", Path: "/supported"}},
		{path: "/sumdb/sum.fixture.test/supported", want: Request{Kind: wire.KindSumDBSupported, SumDB: "sum.fixture.test", Path: "/supported"}},
		{path: "/sumdb/sum.fixture.test/latest", want: Request{Kind: wire.KindSumDBLatest, SumDB: "sum.fixture.test", Path: "/latest"}},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/!upper!case@v1.0.0", want: Request{Kind: wire.KindSumDBLookup, SumDB: "sum.fixture.test", Module: "fixture.test/UpperCase", Version: "v1.0.0", Path: "/lookup/fixture.test/!upper!case@v1.0.0"}},
		{path: "/sumdb/sum.fixture.test/tile/8/0/001", want: Request{Kind: wire.KindSumDBTile, SumDB: "sum.fixture.test", Path: "/tile/8/0/001"}},
		{path: "/sumdb/sum.fixture.test/tile/8/data/x001/234.p/5", want: Request{Kind: wire.KindSumDBTile, SumDB: "sum.fixture.test", Path: "/tile/8/data/x001/234.p/5"}},

		// Not the protocol at all: 404.
		{path: "/", wantErr: "404"},
		{path: "/favicon.ico", wantErr: "404"},
		{path: "/fixture.test/a/@v/", wantErr: "404"},
		{path: "/fixture.test/a/@v/v1.0.0.tar", wantErr: "404"},
		{path: "/fixture.test/a/@v/list/extra", wantErr: "404"},
		{path: "/sumdb/sum.fixture.test/other", wantErr: "404"},

		// The protocol's shape, but it does not decode: 400.
		{path: "/fixture.test/../etc/@v/list", wantErr: "invalid module path"},
		{path: "/fixture.test/a/../../@v/list", wantErr: "invalid module path"},
		{path: "/fixture.test/a\x00/@v/list", wantErr: "invalid module path"},
		{path: "/fixture.test/Upper/@v/list", wantErr: "no capital letters"},
		{path: "/fixture.test/!!x/@v/list", wantErr: "invalid module path"},
		{path: "/fixture.test/a!/@v/list", wantErr: "invalid module path"},
		{path: "/@latest", wantErr: "invalid module path"},
		{path: "/fixture.test/a/@v/v1.0.mod", wantErr: "not canonical (want v1.0.0)"},
		{path: "/fixture.test/a/@v/master.zip", wantErr: "not a semantic version"},
		{path: "/fixture.test/a/@v/..info", wantErr: "invalid version"},
		{path: "/fixture.test/a/@v/v1.0.0/../../x.zip", wantErr: "invalid version"},
		{path: "/fixture.test/a/@v/V1.0.0.mod", wantErr: "invalid version"},
		{path: "/fixture.test/a/@v/v1.0.0\x00.zip", wantErr: "invalid version"},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/a", wantErr: "want module@version"},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/a@v1", wantErr: "not canonical"},
		{path: "/sumdb/sum.fixture.test/lookup/../x@v1.0.0", wantErr: "invalid module path"},
		{path: "/sumdb/sum.fixture.test/tile/8/0/../../x", wantErr: "invalid checksum database tile"},
		{path: "/sumdb/SUM.example/supported", wantErr: "invalid checksum database name"},
		{path: "/sumdb/../supported", wantErr: "invalid checksum database name"},
		{path: "/sumdb/sum.fixture.test/../supported", wantErr: "invalid checksum database name"},
	}
	for _, tt := range tests {
		got, err := ClassifyReverse(tt.path)
		switch {
		case tt.wantErr == "404":
			if !errors.Is(err, ErrNotModuleRequest) {
				t.Errorf("ClassifyReverse(%q) = %+v, %v; want ErrNotModuleRequest", tt.path, got, err)
			}
		case tt.wantErr != "":
			if err == nil || errors.Is(err, ErrNotModuleRequest) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ClassifyReverse(%q) error = %v; want one containing %q", tt.path, err, tt.wantErr)
			}
		case err != nil:
			t.Errorf("ClassifyReverse(%q): %v", tt.path, err)
		default:
			if tt.want.Path == "" {
				tt.want.Path = tt.path
			}
			if got != tt.want {
				t.Errorf("ClassifyReverse(%q) = %+v; want %+v", tt.path, got, tt.want)
			}
		}
	}
}

// FuzzClassifyReverse checks that whatever is accepted is safe to forward:
// a valid module path and a canonical version (or, for .info, a query the
// proxy resolves) that escape back to the path the upstream is asked for.
func FuzzClassifyReverse(f *testing.F) {
	for _, s := range []string{
		"/fixture.test/a/@v/list", "/fixture.test/!a/@v/v1.0.0.zip", "/x.test/y/@latest",
		"/sumdb/sum.fixture.test/lookup/x.test/y@v1.0.0", "/sumdb/s.test/tile/8/0/x001/002.p/3",
		"/a/../b/@v/v1.0.0.info", "/%00/@v/list",
		"/fixture.test/a/@v/v2.0.0.info", "/fixture.test/a/v2/@v/v2.0.0.info", "/fixture.test/a/v2/@v/v1.0.0.info",
		"/gopkg.in/!yaml.v2/@v/v2.4.0.info", "/gopkg.in/yaml.v2/@v/v3.0.0.info", "/fixture.test/a/@v/v2.0.0+incompatible.info",
		"/fixture.test/a/@v/main.info",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, err := ClassifyReverse(p)
		if err != nil {
			return
		}
		for _, elem := range strings.Split(r.Path, "/") {
			if elem == ".." || elem == "." {
				t.Fatalf("%q: accepted path with a dot element: %+v", p, r)
			}
		}
		if r.Module != "" {
			if err := module.CheckPath(r.Module); err != nil {
				t.Fatalf("%q: accepted invalid module %q: %v", p, r.Module, err)
			}
		}
		canonical := semver.IsValid(r.Version) && module.CanonicalVersion(r.Version) == r.Version
		switch {
		case r.Version == "":
		case r.Query && r.Kind != wire.KindInfo:
			t.Fatalf("%q: a query (%q) for a %s request: only .info resolves one", p, r.Version, r.Kind)
		case r.Query:
			// A branch or commit the proxy resolves: it must escape back
			// to the one path element it came from.
			esc, err := module.EscapeVersion(r.Version)
			if err != nil || !strings.HasSuffix(r.Path, "/@v/"+esc+".info") {
				t.Fatalf("%q: query %q does not escape back to its path %q: %v", p, r.Version, r.Path, err)
			}
		case !canonical:
			t.Fatalf("%q: accepted non-canonical version %q", p, r.Version)
		}
		if r.Kind == wire.KindInfo && r.Query == exactVersion(r.Module, r.Version) {
			t.Fatalf("%q: query %v for %s@%s, want it exactly when that is not one of the module's versions", p, r.Query, r.Module, r.Version)
		}
		switch r.Kind {
		case wire.KindList, wire.KindLatest, wire.KindInfo, wire.KindMod, wire.KindZip:
			esc, err := module.EscapePath(r.Module)
			if err != nil || !strings.HasPrefix(r.Path, "/"+esc+"/@") {
				t.Fatalf("%q: path %q does not start with the escaped module %q", p, r.Path, esc)
			}
		}
	})
}

func TestClassifyForward(t *testing.T) {
	db, err := newSumDBAddress("sum.fixture.test/db", "https://mirror.fixture.test/sumdb")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host, path string
		want       Request
	}{
		// A proxy under a path: the module path starts at the first
		// element with a dot.
		{"proxy.fixture.test", "/artifactory/api/go/go-remote/fixture.test/a/@v/v1.0.0.zip",
			Request{Kind: wire.KindZip, Module: "fixture.test/a", Version: "v1.0.0", Path: "/fixture.test/a/@v/v1.0.0.zip", Prefix: "/artifactory/api/go/go-remote"}},
		{"proxy.fixture.test", "/api/v4/projects/7/packages/go/fixture.test/a/@v/list",
			Request{Kind: wire.KindList, Module: "fixture.test/a", Path: "/fixture.test/a/@v/list", Prefix: "/api/v4/projects/7/packages/go"}},
		{"proxy.fixture.test", "/repository/go-proxy/sumdb/sum.fixture.test/db/supported",
			Request{Kind: wire.KindSumDBSupported, SumDB: "sum.fixture.test/db", Path: "/supported", Prefix: "/repository/go-proxy"}},
		{"proxy.fixture.test", "/fixture.test/a/@latest", Request{Kind: wire.KindLatest, Module: "fixture.test/a", Path: "/fixture.test/a/@latest"}},
		// The checksum database at its direct URL.
		{"mirror.fixture.test", "/sumdb/lookup/fixture.test/a@v1.0.0",
			Request{Kind: wire.KindSumDBLookup, SumDB: "sum.fixture.test/db", Module: "fixture.test/a", Version: "v1.0.0", Path: "/lookup/fixture.test/a@v1.0.0"}},
		{"mirror.fixture.test", "/lookup/fixture.test/a@v1.0.0", Request{Kind: wire.KindOther, Path: "/lookup/fixture.test/a@v1.0.0"}},
		{"proxy.fixture.test", "/robots.txt", Request{Kind: wire.KindOther, Path: "/robots.txt"}},
		{"proxy.fixture.test", "/a/b", Request{Kind: wire.KindOther, Path: "/a/b"}},
	}
	for _, tt := range tests {
		got, err := classifyForward(tt.host, tt.path, "", db)
		if err != nil || got != tt.want {
			t.Errorf("classifyForward(%s, %s) = %+v, %v; want %+v", tt.host, tt.path, got, err, tt.want)
		}
	}
}

func TestNormalizedPatterns(t *testing.T) {
	got := normalizedPatterns([]string{"Proxy.Example.Test.", "*.Bücher.example.test", "git.corp.example.test", "*"})
	want := []string{"proxy.example.test", "*.xn--bcher-kva.example.test", "git.corp.example.test", "*"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("normalizedPatterns[%d] = %q; want %q", i, got[i], want[i])
		}
	}
	if !matchHost(got[:2], "www.xn--bcher-kva.example.test") {
		t.Errorf("a normalised host does not match its normalised pattern")
	}
}

// decodePath and unescapeVersion answer exactly as module.UnescapePath and
// module.UnescapeVersion (the same string, the same error), and decode a
// path or version that needs no decoding without allocating.
func TestUnescapeAsModule(t *testing.T) {
	for _, esc := range []string{
		"github.com/!azure/azure-sdk-for-go", "golang.org/x/mod", "example.test/Upper", "", "-lead/x", "a//b", "a/", "x/ä",
		"example.test/a!", "example.test/!!", "v1.2.3", "v1.2.3-pre.1+build", "v1.0.0-!r!c1", "V1.0.0", "a/b", "..", ".", "nul\x00",
		"con", "master", "v1.0.0~1", "-dash",
	} {
		sameAnswer(t, "path", esc, decodePath, func(s string) (string, error) {
			mod, err := module.UnescapePath(s)
			if err == nil {
				return mod, nil
			}
			if strings.ToLower(s) != s {
				return "", fmt.Errorf("invalid module path %q: an escaped path has no capital letters (write !x for X)", s)
			}
			return "", fmt.Errorf("invalid module path %q: %v", s, unwrapModuleError(err))
		})
		sameAnswer(t, "version", esc, unescapeVersion, module.UnescapeVersion)
	}
	path, version := "github.com/modgate/modgate", "v1.2.3"
	if n := testing.AllocsPerRun(100, func() {
		if _, err := decodePath(path); err != nil {
			t.Fatal(err)
		}
		if _, err := unescapeVersion(version); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("decoding a plain path and version: %v allocations, want 0", n)
	}
}

func sameAnswer(t *testing.T, what, esc string, got, want func(string) (string, error)) {
	t.Helper()
	g, gerr := got(esc)
	w, werr := want(esc)
	if g != w || fmt.Sprint(gerr) != fmt.Sprint(werr) {
		t.Errorf("%s %q: got %q, %v; x/mod says %q, %v", what, esc, g, gerr, w, werr)
	}
}

func FuzzUnescapeAsModule(f *testing.F) {
	for _, s := range []string{"github.com/!azure/x", "v1.0.0", "a//b", "x/ä", "V1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, esc string) {
		g, gerr := unescapeVersion(esc)
		w, werr := module.UnescapeVersion(esc)
		if g != w || fmt.Sprint(gerr) != fmt.Sprint(werr) {
			t.Errorf("version %q: got %q, %v; x/mod says %q, %v", esc, g, gerr, w, werr)
		}
		if p, err := decodePath(esc); err == nil {
			if m, merr := module.UnescapePath(esc); merr != nil || m != p {
				t.Errorf("path %q: got %q; x/mod says %q, %v", esc, p, m, merr)
			}
		} else if _, merr := module.UnescapePath(esc); merr == nil {
			t.Errorf("path %q: refused (%v); x/mod accepts it", esc, err)
		}
	})
}
