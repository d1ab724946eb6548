package sidecar

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
)

func TestClassifyReverse(t *testing.T) {
	tests := []struct {
		path    string
		want    Request
		wantErr string // substring; "404" for ErrNotModuleRequest
	}{
		{path: "/fixture.test/a/@v/list", want: Request{Kind: KindList, Module: "fixture.test/a"}},
		{path: "/fixture.test/a/@latest", want: Request{Kind: KindLatest, Module: "fixture.test/a"}},
		{path: "/fixture.test/a/@v/v1.2.3.info", want: Request{Kind: KindInfo, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/a/@v/v1.2.3.mod", want: Request{Kind: KindMod, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/a/@v/v1.2.3.zip", want: Request{Kind: KindZip, Module: "fixture.test/a", Version: "v1.2.3"}},
		{path: "/fixture.test/!upper!case/@v/v1.0.0.zip", want: Request{Kind: KindZip, Module: "fixture.test/UpperCase", Version: "v1.0.0"}},
		{path: "/fixture.test/pre/@v/v1.1.0-rc.1.info", want: Request{Kind: KindInfo, Module: "fixture.test/pre", Version: "v1.1.0-rc.1"}},
		{path: "/fixture.test/pre/@v/v1.1.0-!r!c.1.info", want: Request{Kind: KindInfo, Module: "fixture.test/pre", Version: "v1.1.0-RC.1"}},
		{path: "/fixture.test/a/@v/v2.0.0+incompatible.mod", want: Request{Kind: KindMod, Module: "fixture.test/a", Version: "v2.0.0+incompatible"}},
		{path: "/fixture.test/a/@v/v0.0.0-20260101000000-abcdefabcdef.zip", want: Request{Kind: KindZip, Module: "fixture.test/a", Version: "v0.0.0-20260101000000-abcdefabcdef"}},
		{path: "/sumdb/sum.fixture.test/supported", want: Request{Kind: KindSumDBSupported, SumDB: "sum.fixture.test", Path: "/supported"}},
		{path: "/sumdb/sum.fixture.test/latest", want: Request{Kind: KindSumDBLatest, SumDB: "sum.fixture.test", Path: "/latest"}},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/!upper!case@v1.0.0", want: Request{Kind: KindSumDBLookup, SumDB: "sum.fixture.test", Module: "fixture.test/UpperCase", Version: "v1.0.0", Path: "/lookup/fixture.test/!upper!case@v1.0.0"}},
		{path: "/sumdb/sum.fixture.test/tile/8/0/001", want: Request{Kind: KindSumDBTile, SumDB: "sum.fixture.test", Path: "/tile/8/0/001"}},
		{path: "/sumdb/sum.fixture.test/tile/8/data/x001/234.p/5", want: Request{Kind: KindSumDBTile, SumDB: "sum.fixture.test", Path: "/tile/8/data/x001/234.p/5"}},

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
		{path: "/fixture.test/a/@v/v1.0.info", wantErr: "not canonical (want v1.0.0)"},
		{path: "/fixture.test/a/@v/master.info", wantErr: "not a semantic version"},
		{path: "/fixture.test/a/@v/v1.0.0/../../x.zip", wantErr: "invalid version"},
		{path: "/fixture.test/a/@v/V1.0.0.mod", wantErr: "invalid version"},
		{path: "/fixture.test/a/@v/v1.0.0\x00.zip", wantErr: "invalid version"},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/a", wantErr: "want module@version"},
		{path: "/sumdb/sum.fixture.test/lookup/fixture.test/a@v1", wantErr: "not canonical"},
		{path: "/sumdb/sum.fixture.test/lookup/../x@v1.0.0", wantErr: "invalid module path"},
		{path: "/sumdb/sum.fixture.test/tile/8/0/../../x", wantErr: "invalid checksum database tile"},
		{path: "/sumdb/SUM.example/supported", wantErr: "invalid checksum database name"},
		{path: "/sumdb/../supported", wantErr: "invalid checksum database name"},
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
// a valid module path and canonical version that escape back to the path
// the upstream is asked for.
func FuzzClassifyReverse(f *testing.F) {
	for _, s := range []string{
		"/fixture.test/a/@v/list", "/fixture.test/!a/@v/v1.0.0.zip", "/x.test/y/@latest",
		"/sumdb/sum.fixture.test/lookup/x.test/y@v1.0.0", "/sumdb/s.test/tile/8/0/x001/002.p/3",
		"/a/../b/@v/v1.0.0.info", "/%00/@v/list",
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
		if r.Version != "" && (!semver.IsValid(r.Version) || module.CanonicalVersion(r.Version) != r.Version) {
			t.Fatalf("%q: accepted non-canonical version %q", p, r.Version)
		}
		switch r.Kind {
		case KindList, KindLatest, KindInfo, KindMod, KindZip:
			esc, err := module.EscapePath(r.Module)
			if err != nil || !strings.HasPrefix(r.Path, "/"+esc+"/@") {
				t.Fatalf("%q: path %q does not start with the escaped module %q", p, r.Path, esc)
			}
		}
	})
}
