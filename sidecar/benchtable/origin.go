package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/mod/module"

	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
)

// zipPath is the artifact the streaming rows fetch; the origin makes its
// bytes up as it sends them.
const zipPath = "/fixture.test/big/@v/v1.0.0.zip"

// origin is the fake module proxy every row ends at: the .info, .mod and
// list answers of the module fixtures, prepared once, and a zip of any size
// that is never held in memory. It is cheaper than modtest.Proxy, which
// records every request: the origin's cost is the same in every column, so
// the cheaper it is, the more of the machine the proxies get.
type origin struct {
	files   map[string]originFile
	zipSize int64
	chunk   []byte
	served  atomic.Int64
}

type originFile struct {
	body        []byte
	contentType string
	length      string
}

// newOrigin serves the fixtures in dir. smallPaths lists their escaped
// paths, kinds taking turns (.info, .mod, list of one module, then the
// next).
func newOrigin(dir string, zipSize int64) (o *origin, smallPaths []string, err error) {
	fx, err := modtest.LoadFixtures(dir)
	if err != nil {
		return nil, nil, err
	}
	o = &origin{files: map[string]originFile{}, zipSize: zipSize, chunk: bytes.Repeat([]byte("modgate!"), 4<<10)}
	add := func(p string, body []byte, ct string) {
		o.files[p] = originFile{body: body, contentType: ct, length: strconv.Itoa(len(body))}
	}
	for _, m := range fx.Modules() {
		escPath, err := module.EscapePath(m.Path)
		if err != nil {
			return nil, nil, err
		}
		escVersion, err := module.EscapeVersion(m.Version)
		if err != nil {
			return nil, nil, err
		}
		base := "/" + escPath + "/@v/"
		add(base+escVersion+".info", m.Info, "application/json")
		add(base+escVersion+".mod", m.Mod, "text/plain; charset=utf-8")
		list := base + "list"
		if _, ok := o.files[list]; !ok {
			add(list, []byte(strings.Join(fx.Versions(m.Path), "\n")+"\n"), "text/plain; charset=utf-8")
		}
		smallPaths = append(smallPaths, base+escVersion+".info", base+escVersion+".mod", list)
	}
	if len(smallPaths) == 0 {
		return nil, nil, fmt.Errorf("no module fixtures in %s", dir)
	}
	return o, smallPaths, nil
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.served.Add(1)
	if r.URL.Path == zipPath {
		w.Header().Set("Content-Type", "application/zip")
		w.Header().Set("Content-Length", strconv.FormatInt(o.zipSize, 10))
		for left := o.zipSize; left > 0; left -= int64(len(o.chunk)) {
			if _, err := w.Write(o.chunk[:min(left, int64(len(o.chunk)))]); err != nil {
				return
			}
		}
		return
	}
	f, ok := o.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h["Content-Type"] = []string{f.contentType}
	h["Content-Length"] = []string{f.length}
	w.Write(f.body)
}

// originTLS makes the TLS settings of the origin's HTTPS listener and of
// the clients that trust it: a CA made in dir with modgate's own mitm
// package, and a certificate of that CA for 127.0.0.1.
func originTLS(dir string) (server, client *tls.Config, err error) {
	if err := mitm.Init(dir); err != nil {
		return nil, nil, err
	}
	ca, err := mitm.Load(dir)
	if err != nil {
		return nil, nil, err
	}
	leaf, err := ca.Leaf("127.0.0.1")
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	server = &tls.Config{Certificates: []tls.Certificate{*leaf}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12}
	return server, client, nil
}

// receiver is the OTLP/HTTP collector modgate exports to: it reads each
// export and answers with an empty (valid) protobuf response, counting what
// arrived so that the table can show that telemetry really left modgate.
type receiver struct {
	traces, metrics atomic.Int64 // export requests
	bytes           atomic.Int64
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := io.Copy(io.Discard, r.Body)
	rc.bytes.Add(n)
	switch r.URL.Path {
	case "/v1/traces":
		rc.traces.Add(1)
	case "/v1/metrics":
		rc.metrics.Add(1)
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
}

// fixtureDir finds testdata/mod above the working directory, the way
// modtest.FixtureDir does for tests.
func fixtureDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "testdata", "mod"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run from the repository or give -fixtures")
		}
		dir = parent
	}
}
