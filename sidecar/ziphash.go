package sidecar

import (
	"archive/zip"
	"bufio"
	"compress/flate"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// hashZipFiles is dirhash.HashZip(path, dirhash.Hash1) of the opened zip
// z, with the files hashed on every core. A verified zip is received whole
// and hashed before its first byte is relayed, and inflating every file
// (a large module holds a GiB of source) is most of that wait.
//
// Hash1 is the SHA-256 of the lines "<hex SHA-256 of the file>  <name>\n",
// names sorted; HashZip opens each name through a map of the zip's files,
// so a name that appears twice is hashed twice as its last entry. Both
// are kept here: only the per-file SHA-256 run in parallel, and the lines
// are assembled in Hash1's order. A zip either fails here or hashes as
// HashZip does (ziphash_test.go compares them).
func hashZipFiles(z *zip.Reader) (string, error) {
	z.RegisterDecompressor(zip.Deflate, newInflater)
	names := make([]string, 0, len(z.File))
	byName := make(map[string]*zip.File, len(z.File))
	for _, f := range z.File {
		names = append(names, f.Name)
		byName[f.Name] = f
	}
	slices.Sort(names)
	for _, name := range names {
		if strings.Contains(name, "\n") {
			return "", errors.New("dirhash: filenames with newlines are not supported")
		}
	}
	// Each distinct name is hashed once; a duplicate's line repeats it.
	unique := slices.Compact(slices.Clone(names))
	sums := make([][sha256.Size]byte, len(unique))
	errs := make([]error, len(unique))
	var next atomic.Int64
	var failed atomic.Bool
	workers := min(runtime.GOMAXPROCS(0), len(unique))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			h := sha256.New()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= len(unique) {
					return
				}
				if err := hashZipFile(byName[unique[i]], h, buf); err != nil {
					errs[i] = err
					failed.Store(true)
					return
				}
				h.Sum(sums[i][:0])
			}
		}()
	}
	wg.Wait()
	if failed.Load() {
		for _, err := range errs {
			if err != nil {
				return "", err
			}
		}
	}
	h := sha256.New()
	line := make([]byte, 0, 256)
	u := 0
	for _, name := range names {
		for unique[u] != name {
			u++
		}
		line = hex.AppendEncode(line[:0], sums[u][:])
		line = append(append(append(line, "  "...), name...), '\n')
		h.Write(line)
	}
	return "h1:" + base64.StdEncoding.EncodeToString(h.Sum(nil)), nil
}

// hashZipFile reads f whole into h (reset first): archive/zip checks its
// CRC-32 and size as it reaches the end, as it does for dirhash.
func hashZipFile(f *zip.File, h hash.Hash, buf []byte) error {
	h.Reset()
	r, err := f.Open()
	if err != nil {
		return err
	}
	_, err = io.CopyBuffer(h, r, buf)
	r.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", f.Name, err)
	}
	return nil
}

// inflater is compress/flate's reader, as archive/zip's own Deflate
// decompressor uses it, over a pooled 32 KiB buffer: flate wraps a reader
// that is not an io.ByteReader in a new 4 KiB bufio.Reader, per file,
// and a large module has tens of thousands of them.
type inflater struct {
	br *bufio.Reader
	fr io.ReadCloser
}

var inflaters sync.Pool

func newInflater(r io.Reader) io.ReadCloser {
	in, ok := inflaters.Get().(*inflater)
	if ok {
		in.br.Reset(r)
		in.fr.(flate.Resetter).Reset(in.br, nil)
	} else {
		in = &inflater{br: bufio.NewReaderSize(r, 32<<10)}
		in.fr = flate.NewReader(in.br)
	}
	return &pooledInflater{in: in}
}

// pooledInflater gives its inflater back to the pool once, when closed.
type pooledInflater struct {
	mu sync.Mutex
	in *inflater
}

func (p *pooledInflater) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.in == nil {
		return 0, errors.New("read after close")
	}
	return p.in.fr.Read(b)
}

func (p *pooledInflater) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	if p.in != nil {
		err = p.in.fr.Close()
		p.in.br.Reset(nil)
		inflaters.Put(p.in)
		p.in = nil
	}
	return err
}
