package modtest

import (
	"archive/zip"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

func TestLoadFixtures(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	mods := fx.Modules()
	if len(mods) < 24 {
		t.Fatalf("got %d fixture modules, want at least 24", len(mods))
	}
	if !slices.IsSortedFunc(mods, func(a, b Module) int {
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		return semver.Compare(a.Version, b.Version)
	}) {
		t.Errorf("Modules() is not sorted")
	}
	for i := 1; i <= 20; i++ {
		path := "fixture.test/dep" + twoDigits(i)
		if _, ok := fx.Lookup(path, "v1.0.0"); !ok {
			t.Errorf("missing %s@v1.0.0", path)
		}
	}

	for _, tc := range []struct {
		path     string
		versions []string
		latest   string
	}{
		{"fixture.test/app", []string{"v1.0.0"}, "v1.0.0"},
		{"fixture.test/dep05", []string{"v1.0.0", "v1.1.0"}, "v1.1.0"},
		{"fixture.test/pre", []string{"v1.0.0", "v1.1.0-rc.1"}, "v1.0.0"},
		{"fixture.test/UpperCase", []string{"v1.0.0"}, "v1.0.0"},
		{"fixture.test/major/v2", []string{"v2.0.0"}, "v2.0.0"},
		{"fixture.test/pseudo", []string{}, "v0.0.0-20240102030405-0123456789ab"},
		{"fixture.test/nosuch", nil, ""},
	} {
		if got := fx.Versions(tc.path); !slices.Equal(got, tc.versions) {
			t.Errorf("Versions(%s) = %q, want %q", tc.path, got, tc.versions)
		}
		m, ok := fx.Latest(tc.path)
		if m.Version != tc.latest || ok != (tc.latest != "") {
			t.Errorf("Latest(%s) = %s, %v, want %s", tc.path, m.Version, ok, tc.latest)
		}
	}

	for _, tc := range []struct{ path, vers, info string }{
		{"fixture.test/app", "v1.0.0", `{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}`},
		{"fixture.test/pre", "v1.1.0-rc.1", `{"Version":"v1.1.0-rc.1","Time":"2024-02-01T00:00:00Z"}`},
		{"fixture.test/pseudo", "v0.0.0-20240102030405-0123456789ab",
			`{"Version":"v0.0.0-20240102030405-0123456789ab","Time":"2024-01-02T03:04:05Z"}`},
	} {
		m, ok := fx.Lookup(tc.path, tc.vers)
		if !ok || string(m.Info) != tc.info {
			t.Errorf("Lookup(%s, %s).Info = %s, %v; want %s", tc.path, tc.vers, m.Info, ok, tc.info)
		}
	}

	app, _ := fx.Lookup("fixture.test/app", "v1.0.0")
	for i := 1; i <= 20; i++ {
		if !bytes.Contains(app.Mod, []byte("fixture.test/dep"+twoDigits(i)+" v1.")) {
			t.Errorf("app's go.mod does not require dep%s", twoDigits(i))
		}
	}
}

func twoDigits(i int) string { return string([]byte{byte('0' + i/10), byte('0' + i%10)}) }

// TestFixtureZips checks every zip the way the go command does, and that
// GoSumLines agrees with dirhash.HashZip on the zip file.
func TestFixtureZips(t *testing.T) {
	t.Parallel()
	fx := testFixtures(t)
	dir := t.TempDir()
	for _, m := range fx.Modules() {
		name := filepath.Join(dir, strings.ReplaceAll(m.String(), "/", "_")+".zip")
		if err := os.WriteFile(name, m.Zip, 0o666); err != nil {
			t.Fatal(err)
		}
		mv := module.Version{Path: m.Path, Version: m.Version}
		if _, err := modzip.CheckZip(mv, name); err != nil {
			t.Errorf("%s: %v", m, err)
		}
		zh, err := dirhash.HashZip(name, dirhash.Hash1)
		if err != nil {
			t.Fatal(err)
		}
		mh, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(m.Mod)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := m.Path + " " + m.Version + " " + zh + "\n" + m.Path + " " + m.Version + "/go.mod " + mh + "\n"
		got, err := fx.GoSumLines(m.Path, m.Version)
		if err != nil || string(got) != want {
			t.Errorf("GoSumLines(%s) = %q, %v; want %q", m, got, err, want)
		}

		// The zip's go.mod is the .mod section (no fixture has its own),
		// except for +incompatible versions.
		z, err := zip.NewReader(bytes.NewReader(m.Zip), int64(len(m.Zip)))
		if err != nil {
			t.Fatal(err)
		}
		var gomod []byte
		for _, f := range z.File {
			if !strings.HasPrefix(f.Name, m.String()+"/") {
				t.Errorf("%s: zip file %s lacks the module prefix", m, f.Name)
			}
			if f.Name == m.String()+"/go.mod" {
				rc, _ := f.Open()
				gomod, _ = io.ReadAll(rc)
				rc.Close()
			}
		}
		if strings.HasSuffix(m.Version, "+incompatible") {
			// A +incompatible version has no go.mod; its .mod is synthesized.
			if gomod != nil || string(m.Mod) != "module "+m.Path+"\n" {
				t.Errorf("%s: zip go.mod = %q, .mod = %q; want none and the synthesized module line", m, gomod, m.Mod)
			}
		} else if !bytes.Equal(gomod, m.Mod) {
			t.Errorf("%s: zip go.mod = %q, want the .mod section %q", m, gomod, m.Mod)
		}
	}
}

func TestGoSumLinesNotFound(t *testing.T) {
	t.Parallel()
	var fx Fixtures
	_, err := fx.GoSumLines("fixture.test/nosuch", "v1.0.0")
	if !errors.Is(err, fs.ErrNotExist) || !os.IsNotExist(err) {
		t.Errorf("GoSumLines of an unknown module: %v, want a not-exist error", err)
	}
}

func TestParseFixture(t *testing.T) {
	t.Parallel()
	const body = "-- .mod --\nmodule fixture.test/a_b\n-- a.go --\npackage a\n"
	for _, tc := range []struct {
		name, data, path, vers string
	}{
		{"fixture.test_a_b_v1.0.0.txtar", "module fixture.test/a_b@v1.0.0\n\n" + body, "fixture.test/a_b", "v1.0.0"},
		{"fixture.test_a_b_v1.0.0.txtar", "fixture.test/a_b v1.0.0\n" + body, "fixture.test/a_b", "v1.0.0"},
		{"fixture.test_a_b_v1.0.0.txtar", "\nfixture.test/a_b@v1.0.0\n" + body, "fixture.test/a_b", "v1.0.0"},
		// No header: the file name decides, and "_" means "/".
		{"fixture.test_a_b_v1.0.0.txtar", body, "fixture.test/a/b", "v1.0.0"},
		{"fixture.test_a_b_v1.0.0.txtar", "Some prose about this module.\n" + body, "fixture.test/a/b", "v1.0.0"},
		// cmd/go's case-encoded file names.
		{"fixture.test_!upper_v1.0.0-!r!c.txtar", body, "fixture.test/Upper", "v1.0.0-RC"},
		{"fixture.test_!upper_v1.0.0.txtar", "module fixture.test/Upper@v1.0.0\n" + body, "fixture.test/Upper", "v1.0.0"},
	} {
		m, err := ParseFixture(tc.name, []byte(tc.data))
		if err != nil || m.Path != tc.path || m.Version != tc.vers {
			t.Errorf("ParseFixture(%s, %q) = %s, %v; want %s@%s", tc.name, tc.data, m, err, tc.path, tc.vers)
		}
	}
}

func TestParseFixtureErrors(t *testing.T) {
	t.Parallel()
	const mod = "-- .mod --\nmodule fixture.test/a\n"
	for _, tc := range []struct {
		name, data, want string
	}{
		{"fixture.test_b_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n" + mod, "file name"},
		{"fixture.test_a_v1.0.1.txtar", "module fixture.test/a@v1.0.0\n" + mod, "file name"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a\n" + mod, "first comment line"},
		{"fixture.test_a_v1.0.txtar", "module fixture.test/a@v1.0\n" + mod, "first comment line"},
		{"fixture.test_a_v1.0.txtar", mod, "not a canonical"},
		{"nodot_a_v1.0.0.txtar", mod, "file name"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n-- a.go --\npackage a\n", "missing -- .mod --"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n" + mod + "-- .sum --\n", "unknown section"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n" + mod + "-- .info --\n{\"Version\":\"v1.0.1\"}\n", ".info has Version"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n" + mod + "-- .info --\nnot json\n", "not JSON"},
		{"fixture.test_a_v2.0.0.txtar", "module fixture.test/a@v2.0.0\n" + mod, "first comment line"},
		{"fixture.test_a_v1.0.0.txtar", "module fixture.test/a@v1.0.0\n" + mod + "-- A.go --\n-- a.go --\n", "case-insensitive"},
	} {
		_, err := ParseFixture(tc.name, []byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("ParseFixture(%s, %q) = %v, want an error naming the file and containing %q", tc.name, tc.data, err, tc.want)
		}
	}
}

func TestLoadFixturesErrors(t *testing.T) {
	t.Parallel()
	if _, err := LoadFixtures(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no *.txtar") {
		t.Errorf("LoadFixtures(empty dir) = %v, want an error", err)
	}

	dir := t.TempDir()
	const mod = "-- .mod --\nmodule fixture.test/a/b\n"
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	write("fixture.test_a_b_v1.0.0.txtar", mod)
	write("fixture.test_a!_b_v1.0.0.txtar", "garbage\n"+mod) // comment is prose; name fails to decode
	if _, err := LoadFixtures(dir); err == nil {
		t.Errorf("LoadFixtures with a bad file name succeeded")
	}
	os.Remove(filepath.Join(dir, "fixture.test_a!_b_v1.0.0.txtar"))
	write("fixture.test_a_b_v1.0.0-x.txtar", "module fixture.test/a/b@v1.0.0\n"+mod)
	if _, err := LoadFixtures(dir); err == nil || !strings.Contains(err.Error(), "file name") {
		t.Errorf("LoadFixtures with disagreeing name and header = %v, want an error", err)
	}
}

func TestNewModuleAndAdd(t *testing.T) {
	t.Parallel()
	var fx Fixtures
	m, err := NewModule("example.test/gen", "v0.1.0", File{Name: "gen.go", Data: []byte("package gen\n")})
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Mod) != "module example.test/gen\n" {
		t.Errorf("generated go.mod = %q", m.Mod)
	}
	if err := fx.Add(m); err != nil {
		t.Fatal(err)
	}
	// A deliberately broken module: Add fills Info and Mod, keeps Zip as is.
	if err := fx.Add(Module{Path: "example.test/broken", Version: "v1.0.0", Zip: []byte("not a zip")}); err != nil {
		t.Fatal(err)
	}
	b, ok := fx.Lookup("example.test/broken", "v1.0.0")
	if !ok || string(b.Mod) != "module example.test/broken\n" || !bytes.Contains(b.Info, []byte(FixtureTime)) {
		t.Errorf("Lookup(broken) = %+v, %v", b, ok)
	}
	if _, err := fx.GoSumLines("example.test/broken", "v1.0.0"); err == nil {
		t.Errorf("GoSumLines of a module with a bad zip succeeded")
	}
	if got := fx.Versions("example.test/gen"); !slices.Equal(got, []string{"v0.1.0"}) {
		t.Errorf("Versions(gen) = %q", got)
	}
	for _, bad := range []Module{
		{Path: "nodot/x", Version: "v1.0.0"},
		{Path: "example.test/x", Version: "v1"},
		{Path: "example.test/x", Version: "v2.0.0"},
	} {
		if err := fx.Add(bad); err == nil {
			t.Errorf("Add(%s) succeeded", bad)
		}
	}
	if _, err := NewModule("example.test/x", "v1.0.0", File{Name: "../x.go"}); err == nil {
		t.Errorf("NewModule with a file outside the module succeeded")
	}
	if len(fx.Modules()) != 2 {
		t.Errorf("Modules() = %v", fx.Modules())
	}
}
