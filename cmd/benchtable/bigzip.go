package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
)

// The streamed zip rows fetch a real module zip, so that modgate's checks
// (a well-formed module zip, its h1: hash against the checksum database)
// cost what they cost in use. It is shaped like a large module as the go
// command and module proxies make them (golang.org/x/mod/zip.Create): tens
// of thousands of Go source files, each deflated. Source text deflates
// about 4:1, so a 256 MiB zip holds about a GiB of files, all of which a
// verifier inflates and hashes. Binary test data (stored or barely
// compressible) would be cheaper to check, so source text is the honest
// case for a large module.

const (
	bigModule  = "fixture.test/big"
	bigVersion = "v1.0.0"
	bigGoMod   = "module fixture.test/big\n\ngo 1.22\n"
	// bigDistinct is how many different source files the zip is made of:
	// each is deflated once and written under many names (a verifier
	// still inflates and hashes every one), so that making the zip costs
	// the bench a fraction of a second.
	bigDistinct = 512
)

// bigZip is the streamed zip: where it is, its size, and the go.sum hashes
// of the module.
type bigZip struct {
	path         string
	size         int64
	zipHash      string // h1: of the zip's files
	modHash      string // h1: of its go.mod
	files        int
	uncompressed int64
}

type bigFile struct {
	text       []byte
	deflated   []byte
	crc        uint32
	sha256line string // hex SHA-256 of text
}

// writeBigZip writes a module zip of bigModule@bigVersion of about size
// bytes to path.
func writeBigZip(path string, size int64) (*bigZip, error) {
	rng := rand.New(rand.NewPCG(23, 0x6d6f6467617465))
	files := make([]bigFile, bigDistinct)
	for i := range files {
		text := goSource(rng)
		var buf bytes.Buffer
		fw, _ := flate.NewWriter(&buf, flate.DefaultCompression) // what zip.Writer.Create uses
		fw.Write(text)
		fw.Close()
		sum := sha256.Sum256(text)
		files[i] = bigFile{text: text, deflated: buf.Bytes(), crc: crc32.ChecksumIEEE(text), sha256line: fmt.Sprintf("%x", sum)}
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	zw := zip.NewWriter(bw)
	prefix := bigModule + "@" + bigVersion + "/"
	// The h1: hash (dirhash.Hash1): SHA-256 over the sorted lines
	// "<hex SHA-256 of the file>  <name>\n". The files' SHA-256 are known,
	// so the hash is made without reading a GiB again; a test compares it
	// with dirhash.HashZip.
	var lines []string
	add := func(name string, bf bigFile) error {
		w, err := zw.CreateRaw(&zip.FileHeader{
			Name: prefix + name, Method: zip.Deflate, CRC32: bf.crc,
			CompressedSize64: uint64(len(bf.deflated)), UncompressedSize64: uint64(len(bf.text)),
		})
		if err != nil {
			return err
		}
		if _, err := w.Write(bf.deflated); err != nil {
			return err
		}
		lines = append(lines, bf.sha256line+"  "+prefix+name+"\n")
		return nil
	}
	z := &bigZip{path: path}
	mod := bigFile{text: []byte(bigGoMod)}
	var mb bytes.Buffer
	fw, _ := flate.NewWriter(&mb, flate.DefaultCompression)
	fw.Write(mod.text)
	fw.Close()
	mod.deflated, mod.crc = mb.Bytes(), crc32.ChecksumIEEE(mod.text)
	mod.sha256line = fmt.Sprintf("%x", sha256.Sum256(mod.text))
	if err := add("go.mod", mod); err != nil {
		f.Close()
		return nil, err
	}
	// About 100 bytes of central directory per file come at the end.
	var written int64
	for i := 0; written+int64(len(lines))*100 < size; i++ {
		bf := files[i%len(files)]
		name := fmt.Sprintf("pkg%03d/sub%02d/file%04d.go", i/1000, (i/40)%25, i)
		if err := add(name, bf); err != nil {
			f.Close()
			return nil, err
		}
		written += int64(len(bf.deflated)) + 30 + int64(len(prefix)+len(name))
		z.uncompressed += int64(len(bf.text))
	}
	err = zw.Close()
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			z.size = fi.Size()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	z.files = len(lines)
	z.zipHash = hash1Lines(lines)
	z.modHash = hash1Lines([]string{mod.sha256line + "  go.mod\n"})
	return z, nil
}

// hash1Lines is dirhash.Hash1 from its lines, "<hex SHA-256>  <name>\n":
// sorted by name, as Hash1 sorts the files.
func hash1Lines(lines []string) string {
	name := func(l string) string { return l[64+2:] }
	sort.Slice(lines, func(i, j int) bool { return name(lines[i]) < name(lines[j]) })
	h := sha256.New()
	for _, l := range lines {
		h.Write([]byte(l))
	}
	return "h1:" + base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// words are the identifiers and comment words the generated source is
// made of.
var words = strings.Fields(`request response client server handler config module version path cache entry
upstream proxy policy decision rule audit breaker state count window ratio timeout retry budget header body
length offset buffer reader writer stream spool check verify hash record tree tile lookup signed key name
value index error status code reason result attempt span trace metric label kind mode host port addr conn
listener dial context cancel deadline clock now since until elapsed start stop close open read write copy
append delete insert update select filter match pattern prefix suffix split join trim parse format encode
decode marshal unmarshal token scanner lexer parser node tree walk visit leaf root parent child sibling depth`)

// goSource generates a plausible Go source file: a package clause,
// imports, types with commented fields, functions with loops, conditions
// and calls. Its text deflates at about the ratio real Go source does.
func goSource(rng *rand.Rand) []byte {
	w := func() string { return words[rng.IntN(len(words))] }
	title := func(s string) string { return strings.ToUpper(s[:1]) + s[1:] }
	ident := func() string { return w() + title(w()) }
	var b bytes.Buffer
	fmt.Fprintf(&b, "// Copyright 2026 The Fixture Authors. All rights reserved.\n// Use of this source code is governed by a BSD-style\n// license that can be found in the LICENSE file.\n\n")
	fmt.Fprintf(&b, "package %s\n\nimport (\n\t\"errors\"\n\t\"fmt\"\n\t\"strings\"\n)\n\n", w())
	target := 2048 + rng.IntN(24<<10)
	for b.Len() < target {
		switch rng.IntN(3) {
		case 0:
			t := title(ident())
			fmt.Fprintf(&b, "// %s is the %s of a %s %s.\ntype %s struct {\n", t, w(), w(), w(), t)
			for range 2 + rng.IntN(6) {
				fmt.Fprintf(&b, "\t%s %s // %s %s %s\n", title(ident()), []string{"string", "int", "[]byte", "error", "*" + title(w()), "map[string]int"}[rng.IntN(6)], w(), w(), w())
			}
			b.WriteString("}\n\n")
		default:
			fn, a, c := title(ident()), ident(), ident()
			fmt.Fprintf(&b, "// %s returns the %s of %s for %s.\nfunc %s(%s string, %s int) (int, error) {\n", fn, w(), a, c, fn, a, c)
			fmt.Fprintf(&b, "\tif %s == \"\" {\n\t\treturn 0, errors.New(\"%s: empty %s\")\n\t}\n", a, strings.ToLower(fn), w())
			for range 1 + rng.IntN(4) {
				v := ident()
				fmt.Fprintf(&b, "\t%s := %d\n\tfor i := 0; i < %s; i++ {\n\t\tif strings.HasPrefix(%s, %q) {\n\t\t\t%s += i * %d\n\t\t\tcontinue\n\t\t}\n\t\t%s--\n\t}\n",
					v, rng.IntN(1000), c, a, w(), v, rng.IntN(64), v)
				fmt.Fprintf(&b, "\tif %s > %s {\n\t\treturn %s, fmt.Errorf(\"%s %%d: %%s\", %s, %s)\n\t}\n", v, c, v, w(), v, a)
			}
			fmt.Fprintf(&b, "\treturn len(%s) + %s, nil\n}\n\n", a, c)
		}
	}
	return b.Bytes()
}
