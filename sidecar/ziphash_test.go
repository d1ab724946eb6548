package sidecar

import (
	"archive/zip"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/dirhash"

	"github.com/modgate/modgate/sidecar/modtest"
)

// hashZipFiles hashes a zip exactly as dirhash.HashZip does, in parallel:
// the same h1: for every zip that HashZip hashes, and an error for every
// one it refuses.
func TestHashZipFilesIsHashZip(t *testing.T) {
	dir := t.TempDir()
	type entry struct {
		name   string
		body   string
		method uint16
	}
	build := func(name string, entries []entry) string {
		t.Helper()
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, e := range entries {
			w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: e.method})
			if err != nil {
				t.Fatal(err)
			}
			w.Write([]byte(e.body))
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p := "fixture.test/m@v1.0.0/"
	var many []entry
	for i := range 300 {
		m := zip.Deflate
		if i%3 == 0 {
			m = zip.Store
		}
		many = append(many, entry{fmt.Sprintf("%sz/f%03d.go", p, 299-i), strings.Repeat(fmt.Sprintf("line %d\n", i), i), m})
	}
	zips := map[string]string{
		"empty":      build("empty.zip", nil),
		"one":        build("one.zip", []entry{{p + "go.mod", "module fixture.test/m\n", zip.Deflate}}),
		"many":       build("many.zip", many),
		"duplicate":  build("dup.zip", []entry{{p + "a.go", "package a // first\n", zip.Deflate}, {p + "b.go", "package b\n", zip.Store}, {p + "a.go", "package a // second\n", zip.Deflate}}),
		"empty file": build("emptyfile.zip", []entry{{p + "LICENSE", "", zip.Deflate}, {p + "go.mod", "module fixture.test/m\n", zip.Store}}),
		"newline":    build("newline.zip", []entry{{p + "a\nb.go", "package a\n", zip.Deflate}}),
	}
	// A damaged file: its CRC-32 no longer matches (a stored entry, so
	// the flipped byte is in the file's content).
	good, err := os.ReadFile(zips["one"])
	if err != nil {
		t.Fatal(err)
	}
	stored := build("stored.zip", []entry{{p + "go.mod", "module fixture.test/m\n", zip.Store}})
	data, _ := os.ReadFile(stored)
	i := bytes.Index(data, []byte("module fixture"))
	data[i] ^= 0x20
	zips["damaged"] = filepath.Join(dir, "damaged.zip")
	os.WriteFile(zips["damaged"], data, 0o644)
	zips["truncated"] = filepath.Join(dir, "truncated.zip")
	os.WriteFile(zips["truncated"], good[:len(good)-10], 0o644)
	// The fixtures' module zips, as a proxy serves them.
	fx, err := modtest.LoadFixtures(modtest.FixtureDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range fx.Modules() {
		path := filepath.Join(dir, strings.ReplaceAll(m.Path, "/", "_")+"@"+m.Version+".zip")
		if err := os.WriteFile(path, m.Zip, 0o644); err != nil {
			t.Fatal(err)
		}
		zips[m.Path+"@"+m.Version] = path
	}

	hashed := 0
	for name, path := range zips {
		want, werr := dirhash.HashZip(path, dirhash.Hash1)
		got, gerr := func() (string, error) {
			z, err := zip.OpenReader(path)
			if err != nil {
				return "", err
			}
			defer z.Close()
			return hashZipFiles(&z.Reader)
		}()
		if got != want || (gerr == nil) != (werr == nil) {
			t.Errorf("%s: hashZipFiles = %q, %v; dirhash.HashZip = %q, %v", name, got, gerr, want, werr)
		}
		if werr == nil {
			hashed++
		}
	}
	if hashed < 10 {
		t.Errorf("only %d zips hashed: the comparison covers too little", hashed)
	}
	for _, name := range []string{"damaged", "truncated", "newline"} {
		if _, err := dirhash.HashZip(zips[name], dirhash.Hash1); err == nil {
			t.Errorf("%s: dirhash.HashZip took it; the test wants a zip it refuses", name)
		}
	}
}
