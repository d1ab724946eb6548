package main

import (
	"path/filepath"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

// The streamed zip is a module zip the go command takes, and its h1:
// (made from the files' known hashes) is what dirhash.HashZip says.
func TestBigZipIsAModuleZip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.zip")
	z, err := writeBigZip(path, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if z.size < 1<<20 || z.size > 3<<20 {
		t.Errorf("size %d, want about 2 MiB", z.size)
	}
	got, err := dirhash.HashZip(path, dirhash.Hash1)
	if err != nil {
		t.Fatal(err)
	}
	if got != z.zipHash {
		t.Errorf("dirhash.HashZip = %s, writeBigZip said %s", got, z.zipHash)
	}
	if _, err := modzip.CheckZip(module.Version{Path: bigModule, Version: bigVersion}, path); err != nil {
		t.Errorf("not a valid module zip: %v", err)
	}
	if ratio := float64(z.uncompressed) / float64(z.size); ratio < 3 || ratio > 6 {
		t.Errorf("files deflate %.1f:1; Go source deflates about 4:1", ratio)
	}
	t.Logf("%d files, %d bytes, %d uncompressed (%.1f:1)", z.files, z.size, z.uncompressed, float64(z.uncompressed)/float64(z.size))
}

// testZip writes a module zip of about size bytes for a test's origin.
func testZip(t *testing.T, size int64) *bigZip {
	t.Helper()
	z, err := writeBigZip(filepath.Join(t.TempDir(), "big.zip"), size)
	if err != nil {
		t.Fatal(err)
	}
	return z
}
