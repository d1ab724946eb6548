package modtest

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/txtar"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

// FixtureTime is the time reported in the generated .info of every fixture
// whose version is not a pseudo-version (a pseudo-version reports the time it
// encodes). It is fixed so that responses are byte-for-byte reproducible.
const FixtureTime = "2024-01-01T00:00:00Z"

// A Module is one version of a module as a module proxy serves it.
// The byte slices are shared with the [Fixtures] that hold the module:
// treat them as read-only.
type Module struct {
	Path    string // module path, e.g. "fixture.test/dep01"
	Version string // canonical version, e.g. "v1.0.0"
	Info    []byte // body of /@v/<version>.info (JSON)
	Mod     []byte // body of /@v/<version>.mod
	Zip     []byte // body of /@v/<version>.zip
	// Queries are the other names that /@v/<query>.info resolves to this
	// version: branch names, commit hashes and their prefixes, as a real
	// proxy resolves them. Only .info answers a query; .mod and .zip are
	// fetched by canonical version.
	Queries []string
}

// String returns "path@version".
func (m Module) String() string { return m.Path + "@" + m.Version }

// Fixtures is a set of modules. The zero value is an empty set ready to use.
// A Fixtures is safe for concurrent use, so tests may [Fixtures.Add] modules
// while a [Proxy] serves them.
type Fixtures struct {
	mu   sync.RWMutex
	mods map[module.Version]Module
}

// LoadFixtures reads every *.txtar file in dir and builds one module version
// from each, in the format of cmd/go's testdata/mod:
//
//	module fixture.test/dep01@v1.0.0
//
//	-- .mod --
//	module fixture.test/dep01
//	-- .info --
//	{"Version":"v1.0.0","Time":"2024-01-01T00:00:00Z"}
//	-- dep01.go --
//	package dep01
//
// The first line of the comment names the module and version ("module
// path@version", "path@version" or "path version"). Without it, the file name
// is used: the module path with "/" replaced by "_" (optionally case-encoded
// with "!"), "_", then the version. When both are present they must agree.
//
// A comment line "query: q1 q2 ..." lists queries that resolve to this
// version ([Module.Queries]): the proxy answers /@v/<q>.info with this
// version's info, as a real proxy answers a branch name, a commit hash or a
// hash prefix, or as it resolves v2.0.0 of a path without /v2. A query may
// not be a version of the module (v2.0.0 of a path without /v2 is none),
// and two versions of one module may not share a query.
//
// The .mod section is required and is served for /@v/<version>.mod. The .info
// section is optional; without it the info is {"Version":..., "Time":...} with
// [FixtureTime]. The other sections are the module's files; the module zip
// gets the .mod section as its go.mod unless the archive has its own go.mod
// or the version is +incompatible (such a module has no go.mod: the .mod
// section is then the "module path" line a proxy synthesizes, as in cmd/go's
// testdata/mod).
func LoadFixtures(dir string) (*Fixtures, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.txtar"))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("modtest: no *.txtar fixtures in %s", dir)
	}
	fx := &Fixtures{}
	from := make(map[module.Version]string)
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("modtest: %w", err)
		}
		m, err := ParseFixture(filepath.Base(name), data)
		if err != nil {
			return nil, err
		}
		key := module.Version{Path: m.Path, Version: m.Version}
		if prev, ok := from[key]; ok {
			return nil, fmt.Errorf("modtest: %s: %s is already defined by %s", filepath.Base(name), m, prev)
		}
		from[key] = filepath.Base(name)
		if err := fx.Add(m); err != nil {
			return nil, err
		}
	}
	return fx, nil
}

// MustLoadFixtures is [LoadFixtures] that fails the test on error.
func MustLoadFixtures(t testing.TB, dir string) *Fixtures {
	t.Helper()
	fx, err := LoadFixtures(dir)
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

// FixtureDir returns the repository's shared fixture directory, testdata/mod
// at the root of the module that contains the test's working directory.
// It fails the test if there is no such directory.
func FixtureDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			fdir := filepath.Join(dir, "testdata", "mod")
			if _, err := os.Stat(fdir); err != nil {
				t.Fatalf("modtest: no fixture directory: %v", err)
			}
			return fdir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("modtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// ParseFixture builds a module from one txtar archive in the format that
// [LoadFixtures] reads. name is the archive's file name, used when the
// archive's comment does not name the module and to check that it agrees.
func ParseFixture(name string, data []byte) (Module, error) {
	fail := func(format string, args ...any) (Module, error) {
		return Module{}, fmt.Errorf("modtest: %s: %s", name, fmt.Sprintf(format, args...))
	}
	ar := txtar.Parse(data)

	path, vers, hasHeader, err := parseHeader(ar.Comment)
	if err != nil {
		return fail("%v", err)
	}
	queries := parseQueries(ar.Comment)
	base := strings.TrimSuffix(filepath.Base(name), ".txtar")
	if hasHeader {
		if !fileNameMatches(base, path, vers) {
			return fail("comment says %s@%s but the file name does not; name the file %s.txtar",
				path, vers, strings.ReplaceAll(path, "/", "_")+"_"+vers)
		}
	} else {
		path, vers, err = parseFileName(base)
		if err != nil {
			return fail("%v (put \"module path@version\" on the first line of the comment)", err)
		}
	}

	var mod, info []byte
	var haveMod, haveInfo, haveGoMod bool
	var files []File
	for _, f := range ar.Files {
		switch {
		case f.Name == ".mod":
			mod, haveMod = f.Data, true
		case f.Name == ".info":
			info, haveInfo = f.Data, true
		case strings.HasPrefix(f.Name, "."):
			return fail("unknown section %q (want .mod, .info or a file of the module)", f.Name)
		default:
			if f.Name == "go.mod" {
				haveGoMod = true
			}
			files = append(files, File{Name: f.Name, Data: f.Data})
		}
	}
	if !haveMod {
		return fail("missing -- .mod -- section")
	}
	if !haveGoMod && !strings.HasSuffix(vers, "+incompatible") {
		files = append(files, File{Name: "go.mod", Data: mod})
	}
	if haveInfo {
		var v struct{ Version string }
		if err := json.Unmarshal(info, &v); err != nil {
			return fail(".info is not JSON: %v", err)
		}
		if v.Version != vers {
			return fail(".info has Version %q, want %q", v.Version, vers)
		}
		info = bytes.TrimSpace(info)
	}
	m, err := buildModule(path, vers, mod, info, files)
	if err != nil {
		return fail("%v", err)
	}
	m.Queries = queries
	if err := checkQueries(m); err != nil {
		return fail("%v", err)
	}
	return m, nil
}

// parseQueries returns the fields of every "query:" line of a txtar comment.
func parseQueries(comment []byte) []string {
	var qs []string
	for l := range strings.SplitSeq(string(comment), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "query:"); ok {
			qs = append(qs, strings.Fields(rest)...)
		}
	}
	return qs
}

// checkQueries checks that m's queries are names a version query can be:
// never a version of m's path (that would shadow a real version), and safe
// to put in a proxy path. A canonical version that module.Check refuses
// for the path (v2.0.0 of a path without /v2) is a query: a proxy resolves
// it, as the go command's direct mode does, to v2.0.0+incompatible or to
// a pseudo-version, and the go command lets it (its proxy.go, Stat).
func checkQueries(m Module) error {
	for _, q := range m.Queries {
		foreign := q == module.CanonicalVersion(q) && module.Check(m.Path, q) != nil
		if q == "latest" || q == "upgrade" || q == "patch" || semver.IsValid(q) && !foreign {
			return fmt.Errorf("query %q is a version or a version query, not a revision", q)
		}
		if _, err := module.EscapeVersion(q); err != nil {
			return fmt.Errorf("query %q: %v", q, err)
		}
	}
	return nil
}

// A File is one file of a module built by [NewModule].
type File struct {
	Name string // slash-separated path relative to the module root
	Data []byte
}

// NewModule builds a module in memory for tests that generate modules in
// code. The go.mod served for /@v/<version>.mod is the go.mod among files, or
// "module <path>" if there is none (and then it is added to the zip too,
// unless the version is +incompatible).
// The info is generated as described at [LoadFixtures].
func NewModule(path, version string, files ...File) (Module, error) {
	var mod []byte
	for _, f := range files {
		if f.Name == "go.mod" {
			mod = f.Data
		}
	}
	if mod == nil {
		mod = []byte("module " + path + "\n")
		if !strings.HasSuffix(version, "+incompatible") {
			files = append(slices.Clip(files), File{Name: "go.mod", Data: mod})
		}
	}
	m, err := buildModule(path, version, mod, nil, files)
	if err != nil {
		return Module{}, fmt.Errorf("modtest: %v", err)
	}
	return m, nil
}

// buildModule validates path and version, generates info when it is nil,
// and zips files.
func buildModule(path, vers string, mod, info []byte, files []File) (Module, error) {
	if err := checkModuleVersion(path, vers); err != nil {
		return Module{}, err
	}
	if info == nil {
		info = defaultInfo(vers)
	}
	zfiles := make([]modzip.File, len(files))
	for i, f := range files {
		zfiles[i] = zipFile{f}
	}
	var buf bytes.Buffer
	if err := modzip.Create(&buf, module.Version{Path: path, Version: vers}, zfiles); err != nil {
		return Module{}, err
	}
	return Module{Path: path, Version: vers, Info: info, Mod: mod, Zip: buf.Bytes()}, nil
}

func checkModuleVersion(path, vers string) error {
	if err := module.CheckPath(path); err != nil {
		return err
	}
	if !semver.IsValid(vers) || module.CanonicalVersion(vers) != vers {
		return fmt.Errorf("%s@%s: version is not a canonical semantic version", path, vers)
	}
	return module.Check(path, vers)
}

func defaultInfo(vers string) []byte {
	t, err := module.PseudoVersionTime(vers)
	if err != nil {
		t, _ = time.Parse(time.RFC3339, FixtureTime)
	}
	data, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{vers, t.UTC()})
	return data
}

// parseHeader reads "module path@version", "path@version" or "path version"
// from the first non-blank line of a txtar comment. A first line that starts
// with "module " must parse; any other line that does not parse is prose and
// reports ok == false.
func parseHeader(comment []byte) (path, vers string, ok bool, err error) {
	var line string
	for l := range strings.SplitSeq(string(comment), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			line = l
			break
		}
	}
	rest, explicit := strings.CutPrefix(line, "module ")
	rest = strings.TrimSpace(rest)
	if p, v, found := strings.Cut(rest, "@"); found {
		path, vers = p, v
	} else if f := strings.Fields(rest); len(f) == 2 {
		path, vers = f[0], f[1]
	}
	if path == "" || checkModuleVersion(path, vers) != nil {
		if explicit {
			if path == "" {
				return "", "", false, fmt.Errorf("first comment line %q: want \"module path@version\"", line)
			}
			return "", "", false, fmt.Errorf("first comment line %q: %v", line, checkModuleVersion(path, vers))
		}
		return "", "", false, nil
	}
	return path, vers, true, nil
}

// parseFileName splits a fixture file name (without .txtar) into a module
// path and version. Versions never contain "_", so the last "_" separates
// them; a path that itself contains "_" needs the comment header instead.
func parseFileName(base string) (path, vers string, err error) {
	i := strings.LastIndex(base, "_")
	if i < 0 {
		return "", "", fmt.Errorf("file name %q is not <path>_<version>", base)
	}
	path, vers = strings.ReplaceAll(base[:i], "_", "/"), base[i+1:]
	if strings.Contains(path, "!") {
		if path, err = module.UnescapePath(path); err != nil {
			return "", "", err
		}
		if vers, err = module.UnescapeVersion(vers); err != nil {
			return "", "", err
		}
	}
	if err := checkModuleVersion(path, vers); err != nil {
		return "", "", fmt.Errorf("file name %q: %v", base, err)
	}
	return path, vers, nil
}

// fileNameMatches reports whether base names path@vers, plainly or
// case-encoded as cmd/go's testdata/mod does.
func fileNameMatches(base, path, vers string) bool {
	if base == strings.ReplaceAll(path, "/", "_")+"_"+vers {
		return true
	}
	ep, err1 := module.EscapePath(path)
	ev, err2 := module.EscapeVersion(vers)
	return err1 == nil && err2 == nil && base == strings.ReplaceAll(ep, "/", "_")+"_"+ev
}

// zipFile adapts a File to golang.org/x/mod/zip.File.
type zipFile struct{ f File }

func (z zipFile) Path() string                 { return z.f.Name }
func (z zipFile) Lstat() (os.FileInfo, error)  { return zipFileInfo(z), nil }
func (z zipFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(z.f.Data)), nil }

type zipFileInfo struct{ f File }

func (i zipFileInfo) Name() string       { return filepath.Base(i.f.Name) }
func (i zipFileInfo) Size() int64        { return int64(len(i.f.Data)) }
func (i zipFileInfo) Mode() os.FileMode  { return 0o644 }
func (i zipFileInfo) ModTime() time.Time { return time.Time{} }
func (i zipFileInfo) IsDir() bool        { return false }
func (i zipFileInfo) Sys() any           { return nil }

// Add adds m to the set, replacing any module with the same path and version.
// Empty Info and Mod are filled in as [NewModule] would; Zip is served as
// given, so a test can add a deliberately broken module. Add fails if the
// path or version is invalid, or if another version of the module already
// answers one of m's queries.
func (fx *Fixtures) Add(m Module) error {
	if err := checkModuleVersion(m.Path, m.Version); err != nil {
		return fmt.Errorf("modtest: add: %v", err)
	}
	if err := checkQueries(m); err != nil {
		return fmt.Errorf("modtest: add %s: %v", m, err)
	}
	if m.Info == nil {
		m.Info = defaultInfo(m.Version)
	}
	if m.Mod == nil {
		m.Mod = []byte("module " + m.Path + "\n")
	}
	fx.mu.Lock()
	defer fx.mu.Unlock()
	for k, other := range fx.mods {
		if k.Path == m.Path && k.Version != m.Version {
			for _, q := range m.Queries {
				if slices.Contains(other.Queries, q) {
					return fmt.Errorf("modtest: add %s: query %q already resolves to %s", m, q, other.Version)
				}
			}
		}
	}
	if fx.mods == nil {
		fx.mods = make(map[module.Version]Module)
	}
	fx.mods[module.Version{Path: m.Path, Version: m.Version}] = m
	return nil
}

// Resolve returns the module that /@v/<query>.info names: the version
// query itself, or else the version that lists query among its
// [Module.Queries].
func (fx *Fixtures) Resolve(path, query string) (Module, bool) {
	if m, ok := fx.Lookup(path, query); ok {
		return m, true
	}
	fx.mu.RLock()
	defer fx.mu.RUnlock()
	for k, m := range fx.mods {
		if k.Path == path && slices.Contains(m.Queries, query) {
			return m, true
		}
	}
	return Module{}, false
}

// Modules returns every module version, sorted by path and then by semantic
// version.
func (fx *Fixtures) Modules() []Module {
	fx.mu.RLock()
	defer fx.mu.RUnlock()
	list := make([]Module, 0, len(fx.mods))
	for _, m := range fx.mods {
		list = append(list, m)
	}
	slices.SortFunc(list, func(a, b Module) int {
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		return semver.Compare(a.Version, b.Version)
	})
	return list
}

// Lookup returns the module with exactly this path and version.
func (fx *Fixtures) Lookup(path, version string) (Module, bool) {
	fx.mu.RLock()
	defer fx.mu.RUnlock()
	m, ok := fx.mods[module.Version{Path: path, Version: version}]
	return m, ok
}

// allVersions returns every version of path, semver sorted.
func (fx *Fixtures) allVersions(path string) []string {
	fx.mu.RLock()
	defer fx.mu.RUnlock()
	var list []string
	for k := range fx.mods {
		if k.Path == path {
			list = append(list, k.Version)
		}
	}
	semver.Sort(list)
	return list
}

// Versions returns the versions of path as /@v/list reports them: semver
// sorted, without pseudo-versions. It returns nil for an unknown path.
func (fx *Fixtures) Versions(path string) []string {
	return slices.DeleteFunc(fx.allVersions(path), module.IsPseudoVersion)
}

// Latest returns the version that @latest reports: the highest release,
// else the highest pre-release, else (if the module has only
// pseudo-versions) the highest pseudo-version.
func (fx *Fixtures) Latest(path string) (Module, bool) {
	all := fx.allVersions(path)
	if len(all) == 0 {
		return Module{}, false
	}
	best := all[len(all)-1]
	rank := func(v string) int {
		switch {
		case module.IsPseudoVersion(v):
			return 0
		case semver.Prerelease(v) != "":
			return 1
		}
		return 2
	}
	for _, v := range all {
		if rank(v) > rank(best) || rank(v) == rank(best) && semver.Compare(v, best) > 0 {
			best = v
		}
	}
	return fx.Lookup(path, best)
}

// GoSumLines returns the two go.sum lines for path@version, exactly as the go
// command computes them:
//
//	path version h1:<dirhash.Hash1 of the zip's files>
//	path version/go.mod h1:<dirhash.Hash1 of the .mod file>
//
// Its signature matches the gosum function of sumdb.NewTestServer. An unknown
// module is an error that satisfies errors.Is(err, fs.ErrNotExist) and
// os.IsNotExist, which a checksum database reports as 404.
func (fx *Fixtures) GoSumLines(path, version string) ([]byte, error) {
	m, ok := fx.Lookup(path, version)
	if !ok {
		return nil, &fs.PathError{Op: "gosum", Path: path + "@" + version, Err: fs.ErrNotExist}
	}
	zh, err := hashZip(m.Zip)
	if err != nil {
		return nil, fmt.Errorf("modtest: %s: %v", m, err)
	}
	mh, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(m.Mod)), nil
	})
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "%s %s %s\n%s %s/go.mod %s\n", path, version, zh, path, version, mh), nil
}

// hashZip is dirhash.HashZip(file, dirhash.Hash1) for a zip held in memory.
func hashZip(data []byte) (string, error) {
	z, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return "", err
	}
	var names []string
	files := make(map[string]*zip.File)
	for _, f := range z.File {
		names = append(names, f.Name)
		files[f.Name] = f
	}
	return dirhash.Hash1(names, func(name string) (io.ReadCloser, error) {
		f := files[name]
		if f == nil {
			return nil, errors.New("file not in zip: " + name)
		}
		return f.Open()
	})
}
