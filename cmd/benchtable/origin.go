package main

import (
	"crypto/rand"
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
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/note"

	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/modtest"
)

// zipPath is the artifact the streaming rows fetch: a real module zip
// (bigzip.go), read from a file.
const zipPath = "/" + bigModule + "/@v/" + bigVersion + ".zip"

// sumDBName is the checksum database the origin serves at
// /sumdb/<name>/, as a module proxy does: modgate finds it through its
// upstream chain.
const sumDBName = "sum.fixture.test"

// origin is the fake module proxy every row ends at: the .info, .mod and
// list answers of the module fixtures, prepared once, the big module's
// zip from a file, and a real signed checksum database of all of them. It
// is cheaper than modtest.Proxy, which records every request: the
// origin's cost is the same in every column, so the cheaper it is, the
// more of the machine the proxies get.
type origin struct {
	files  map[string]originFile
	zip    *bigZip
	sumdb  http.Handler
	key    string // the database's verifier key, GOSUMDB's name+key
	served atomic.Int64
}

type originFile struct {
	body        []byte
	contentType string
	length      string
}

// newOrigin serves the fixtures in dir, the big module with zip, and a
// checksum database of both. smallPaths lists the fixtures' escaped
// paths, kinds taking turns (.info, .mod, list of one module, then the
// next).
func newOrigin(dir string, zip *bigZip) (o *origin, smallPaths []string, err error) {
	fx, err := modtest.LoadFixtures(dir)
	if err != nil {
		return nil, nil, err
	}
	o = &origin{files: map[string]originFile{}, zip: zip}
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
	if zip != nil {
		big := "/" + bigModule + "/@v/"
		add(big+bigVersion+".info", []byte(`{"Version":"`+bigVersion+`","Time":"2026-01-02T03:04:05Z"}`), "application/json")
		add(big+bigVersion+".mod", []byte(bigGoMod), "text/plain; charset=utf-8")
		add(big+"list", []byte(bigVersion+"\n"), "text/plain; charset=utf-8")
	}
	return o, smallPaths, o.serveSumDB(fx, zip)
}

// serveSumDB makes the origin's checksum database: a signed log of the
// fixtures' go.sum lines and the big module's, records added on first
// lookup.
func (o *origin) serveSumDB(fx *modtest.Fixtures, zip *bigZip) error {
	skey, vkey, err := note.GenerateKey(rand.Reader, sumDBName)
	if err != nil {
		return err
	}
	gosum := func(path, version string) ([]byte, error) {
		if zip != nil && path == bigModule && version == bigVersion {
			return fmt.Appendf(nil, "%s %s %s\n%s %s/go.mod %s\n", path, version, zip.zipHash, path, version, zip.modHash), nil
		}
		return fx.GoSumLines(path, version)
	}
	o.key = vkey
	o.sumdb = http.StripPrefix("/sumdb/"+sumDBName, sumdb.NewServer(sumdb.NewTestServer(skey, gosum)))
	return nil
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.served.Add(1)
	switch p := r.URL.Path; {
	case p == zipPath && o.zip != nil:
		f, err := os.Open(o.zip.path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/zip")
		w.Header().Set("Content-Length", strconv.FormatInt(o.zip.size, 10))
		io.Copy(w, f) // sendfile: the origin costs every column little
		return
	case p == "/sumdb/"+sumDBName+"/supported":
		return
	case strings.HasPrefix(p, "/sumdb/"+sumDBName+"/"):
		o.sumdb.ServeHTTP(w, r)
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

// writeFiles writes every answer the origin serves from memory under
// root, at its URL path, and links the big zip there too: nginx-file
// serves them, the same bytes modgate's cache serves.
func (o *origin) writeFiles(root string) error {
	for p, f := range o.files {
		name := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(name, f.body, 0o644); err != nil {
			return err
		}
	}
	if o.zip == nil {
		return nil
	}
	name := filepath.Join(root, filepath.FromSlash(zipPath))
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return os.Link(o.zip.path, name)
}
