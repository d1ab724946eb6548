package sidecar

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb/tlog"
	modzip "golang.org/x/mod/zip"

	"github.com/modgate/modgate/sidecar/wire"
)

// maxBody is the most an answer of kind k may carry: the go command's own
// limits for zips and go.mod files (cmd/go's codehost.MaxZipFile and
// MaxGoMod); for the rest, a generous multiple of the largest real answers
// (an .info is a few hundred bytes, a list of thousands of versions a few
// hundred KiB, a data tile tens of KiB); no bound (-1) for what forward
// mode passes on (git packs are as large as their repositories).
func maxBody(k wire.Kind) int64 {
	switch k {
	case wire.KindZip:
		return modzip.MaxZipFile
	case wire.KindMod:
		return modzip.MaxGoMod
	case wire.KindList:
		return listLimit
	case wire.KindInfo, wire.KindLatest:
		return 256 << 10
	case wire.KindSumDBSupported, wire.KindSumDBLookup, wire.KindSumDBTile, wire.KindSumDBLatest:
		return 1 << 20
	}
	return -1
}

// Request is a classified module request.
type Request struct {
	Kind wire.Kind
	// Module and Version are decoded ("github.com/Azure/x", not
	// "github.com/!azure/x"). Version is empty for list and latest.
	Module, Version string
	// SumDB is the checksum database's name for the sumdb kinds.
	SumDB string
	// Path is the escaped protocol path: "/<module>/@v/..." for proxy
	// kinds (without the prefix of a proxy under a path), the part after
	// /sumdb/<name> for sumdb kinds.
	Path string
	// Prefix is what comes before Path in forward mode when the origin
	// serves its proxy under a path ("/artifactory/api/go/go-remote").
	Prefix string
	// Query is set for an .info request whose Version is not a canonical
	// version of the module but a query the proxy resolves (a branch, a
	// tag, a commit hash or its prefix, v2.0.0 of a path without /v2):
	// the answer names the version (exactVersion).
	Query bool
}

// sumDBEndpoints are the last elements of checksum database paths; a
// database's name (which may have a path of its own) is what comes before.
var sumDBEndpoints = []string{"/lookup/", "/tile/", "/supported", "/latest"}

// splitSumDB splits what follows /sumdb/ into the database's name and the
// endpoint's path ("/lookup/..."); ok is false when no endpoint is there.
func splitSumDB(rest string) (name, sub string, ok bool) {
	best := -1
	for _, e := range sumDBEndpoints {
		i := strings.Index(rest, e)
		if i < 0 || (!strings.HasSuffix(e, "/") && i+len(e) != len(rest)) {
			continue
		}
		if best < 0 || i < best {
			best = i
		}
	}
	if best <= 0 {
		return "", "", false
	}
	return rest[:best], rest[best:], true
}

// ErrNotModuleRequest is returned for a path that is not part of the GOPROXY
// protocol at all (reverse mode answers 404), as opposed to a malformed one.
var ErrNotModuleRequest = errors.New("not a module proxy request")

// ClassifyReverse classifies the path of an origin-form request to modgate
// as a GOPROXY. A path that has the protocol's shape but does not decode
// (bad escapes, "..", NUL, capitals in an escaped path, a non-canonical
// version) is an error that names what is wrong; the caller answers 400.
func ClassifyReverse(p string) (Request, error) {
	if !strings.HasPrefix(p, "/") {
		return Request{}, ErrNotModuleRequest
	}
	if rest, ok := strings.CutPrefix(p, "/sumdb/"); ok {
		name, sub, ok := splitSumDB(rest)
		if !ok {
			return Request{}, ErrNotModuleRequest
		}
		r, err := classifySumDB(sub)
		if err != nil {
			return r, err
		}
		if err := checkSumDBName(name); err != nil {
			return Request{}, err
		}
		r.SumDB = name
		return r, nil
	}
	return classifyProxy(p)
}

func classifyProxy(p string) (Request, error) {
	r := Request{Path: p}
	escMod, rest, ok := strings.Cut(p[1:], "/@v/")
	switch {
	case ok:
		switch {
		case rest == "list":
			r.Kind = wire.KindList
		case strings.HasSuffix(rest, ".info"):
			r.Kind = wire.KindInfo
		case strings.HasSuffix(rest, ".mod"):
			r.Kind = wire.KindMod
		case strings.HasSuffix(rest, ".zip"):
			r.Kind = wire.KindZip
		default:
			return r, ErrNotModuleRequest
		}
		if r.Kind != wire.KindList {
			escVer := rest[:strings.LastIndexByte(rest, '.')]
			v, err := decodeVersion(escVer)
			if err != nil && r.Kind == wire.KindInfo {
				// .info may ask for a query (a branch, a commit hash) that
				// the proxy resolves; it must still be a valid path element.
				v, err = decodeQuery(escVer)
				r.Query = err == nil
			}
			if err != nil {
				return r, err
			}
			r.Version = v
		}
	case strings.HasSuffix(p, "/@latest"):
		r.Kind = wire.KindLatest
		escMod = strings.TrimSuffix(p[1:], "/@latest")
	default:
		return r, ErrNotModuleRequest
	}
	mod, err := decodePath(escMod)
	if err != nil {
		return r, err
	}
	r.Module = mod
	if r.Kind == wire.KindInfo && !r.Query && !matchesPathMajor(mod, r.Version) {
		// A canonical version that is not one of this path's (v2.0.0 of
		// a path without /v2) is resolved by the proxy, as a query.
		r.Query = true
	}
	return r, nil
}

// decodePath decodes and checks an escaped module path.
func decodePath(esc string) (string, error) {
	if plainEscaped(esc) && module.CheckPath(esc) == nil {
		return esc, nil // what module.UnescapePath returns, without its copy
	}
	mod, err := module.UnescapePath(esc)
	if err == nil {
		return mod, nil
	}
	if strings.ToLower(esc) != esc {
		return "", fmt.Errorf("invalid module path %q: an escaped path has no capital letters (write !x for X)", esc)
	}
	return "", fmt.Errorf("invalid module path %q: %v", esc, unwrapModuleError(err))
}

// matchesPathMajor is exactVersion(mod, v) for a module path that passed
// module.CheckPath and a canonical version (decodePath and decodeVersion
// made sure of both): of module.Check, only the major version's match with
// the path is left to check, and CheckPath, the costliest part of
// classifying an .info request, is not run a second time.
func matchesPathMajor(mod, v string) bool {
	_, pathMajor, _ := module.SplitPathVersion(mod)
	return module.MatchPathMajor(v, pathMajor)
}

// decodeVersion decodes an escaped version and insists on a canonical
// semantic version: proxies serve only those, and it keeps odd strings
// (branch names, "..", NUL) away from upstreams and caches.
func decodeVersion(esc string) (string, error) {
	v, err := unescapeVersion(esc)
	if err != nil {
		return "", fmt.Errorf("invalid version %q: %v", esc, unwrapModuleError(err))
	}
	// CanonicalVersion of anything but a semantic version is "".
	if v == "" || module.CanonicalVersion(v) != v {
		if c := module.CanonicalVersion(v); c != "" {
			return "", fmt.Errorf("version %q is not canonical (want %s)", v, c)
		}
		return "", fmt.Errorf("version %q is not a semantic version like v1.2.3", v)
	}
	return v, nil
}

// decodeQuery decodes the escaped query of an .info request: any string
// the go command may send as a revision (module.EscapeVersion's domain: one
// path element, no "!" unescaped), which the proxy resolves to a version.
func decodeQuery(esc string) (string, error) {
	v, err := unescapeVersion(esc)
	if err != nil {
		return "", fmt.Errorf("invalid version %q: %v", esc, unwrapModuleError(err))
	}
	return v, nil
}

// unescapeVersion is module.UnescapeVersion, without its copy of a version
// that needs no decoding. (UnescapeVersion checks a version as one file
// name: CheckFilePath of a string without "/" makes the same check.)
func unescapeVersion(esc string) (string, error) {
	if plainEscaped(esc) && !strings.Contains(esc, "/") && module.CheckFilePath(esc) == nil {
		return esc, nil
	}
	return module.UnescapeVersion(esc)
}

// plainEscaped reports whether module.UnescapePath and UnescapeVersion
// would decode esc to itself: ASCII, no "!", no capital letter. They
// build a copy byte by byte even then, the largest allocation of a
// classified request.
func plainEscaped(esc string) bool {
	for i := 0; i < len(esc); i++ {
		if c := esc[i]; c >= utf8.RuneSelf || c == '!' || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

func classifySumDB(sub string) (Request, error) {
	r := Request{Path: sub}
	switch {
	case sub == "/supported":
		r.Kind = wire.KindSumDBSupported
	case sub == "/latest":
		r.Kind = wire.KindSumDBLatest
	case strings.HasPrefix(sub, "/lookup/"):
		r.Kind = wire.KindSumDBLookup
		escMod, escVer, ok := strings.Cut(sub[len("/lookup/"):], "@")
		if !ok {
			return r, fmt.Errorf("invalid checksum database lookup %q: want module@version", sub)
		}
		mod, err := decodePath(escMod)
		if err != nil {
			return r, err
		}
		v, err := decodeVersion(escVer)
		if err != nil {
			return r, err
		}
		r.Module, r.Version = mod, v
	case strings.HasPrefix(sub, "/tile/"):
		r.Kind = wire.KindSumDBTile
		if _, err := tlog.ParseTilePath(sub[1:]); err != nil {
			return r, fmt.Errorf("invalid checksum database tile %q", sub)
		}
	default:
		return r, ErrNotModuleRequest
	}
	return r, nil
}

// checkSumDBName accepts a checksum database's name as the go command
// does: a host name, optionally followed by a path ("sum.example.test" or
// "sum.example.test/sumdb"). Without a URL of its own the name becomes the
// address of a direct connection, so every element must be plain.
func checkSumDBName(name string) error {
	host, path, _ := strings.Cut(name, "/")
	bad := name == "" || len(name) > 253 || strings.Trim(host, "abcdefghijklmnopqrstuvwxyz0123456789.-") != "" ||
		strings.HasPrefix(host, ".") || strings.Contains(host, "..") || host == ""
	if path != "" {
		for _, elem := range strings.Split(path, "/") {
			if elem == "" || elem == "." || elem == ".." || strings.Trim(elem, "abcdefghijklmnopqrstuvwxyz0123456789._-~") != "" {
				bad = true
			}
		}
	}
	if bad {
		return fmt.Errorf("invalid checksum database name %q", name)
	}
	return nil
}

// unwrapModuleError drops the path that module's errors repeat.
func unwrapModuleError(err error) error {
	var ie *module.InvalidPathError
	if errors.As(err, &ie) {
		return ie.Err
	}
	return err
}

// sumDBAddress is where a checksum database answers directly: its name,
// and the host and path its direct URL has (https://<name> unless GOSUMDB
// gives a URL).
type sumDBAddress struct {
	name, host, path string
}

// newSumDBAddress returns the address of the database name, at rawURL if
// not empty. host is normalised.
func newSumDBAddress(name, rawURL string) (sumDBAddress, error) {
	if name == "" {
		return sumDBAddress{}, nil
	}
	if rawURL == "" {
		rawURL = "https://" + name
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return sumDBAddress{}, fmt.Errorf("checksum database %s: URL %q: want https://host[/path]", name, rawURL)
	}
	host, err := wire.NormalizeHost(u.Hostname())
	if err != nil {
		return sumDBAddress{}, fmt.Errorf("checksum database %s: %v", name, err)
	}
	return sumDBAddress{name: name, host: host, path: strings.TrimSuffix(u.Path, "/")}, nil
}

// classifyForward classifies a request to an origin host (normalised) in
// forward mode: ?go-get=1 discovery, git smart HTTP, the checksum
// database's endpoints (the host and path of its direct address), or the
// GOPROXY protocol, under whatever path prefix the proxy has (the module
// path starts at the first element with a dot), or other. Paths with a
// module protocol's shape that do not decode are errors, as in reverse
// mode.
func classifyForward(host, p, rawQuery string, db sumDBAddress) (Request, error) {
	query, _ := url.ParseQuery(rawQuery)
	switch {
	case query.Get("go-get") == "1":
		mod := strings.TrimSuffix(host+p, "/")
		if err := module.CheckImportPath(mod); err != nil {
			return Request{}, fmt.Errorf("invalid import path %q in go-get request: %v", mod, unwrapModuleError(err))
		}
		return Request{Kind: wire.KindGoGet, Module: mod, Path: p}, nil
	case strings.HasSuffix(p, "/info/refs") && strings.HasPrefix(query.Get("service"), "git-"),
		strings.HasSuffix(p, "/git-upload-pack"), strings.HasSuffix(p, "/git-receive-pack"):
		repo := p[:strings.LastIndex(p, "/")]
		repo = strings.TrimSuffix(strings.TrimSuffix(repo, "/info"), ".git")
		r := Request{Kind: wire.KindVCS, Path: p}
		if mod := host + repo; module.CheckImportPath(mod) == nil {
			r.Module = mod // a repository is named like the module it holds
		}
		return r, nil
	case db.name != "" && host == db.host && strings.HasPrefix(p, db.path+"/"):
		r, err := classifySumDB(p[len(db.path):])
		if errors.Is(err, ErrNotModuleRequest) {
			return Request{Kind: wire.KindOther, Path: p}, nil
		}
		r.SumDB = db.name
		return r, err
	}
	prefix, rest := splitProxyPrefix(p)
	r, err := ClassifyReverse(rest)
	if errors.Is(err, ErrNotModuleRequest) {
		return Request{Kind: wire.KindOther, Path: p}, nil
	}
	r.Prefix = prefix
	return r, err
}

// splitProxyPrefix splits the path of a request to a proxy that may serve
// under a path of its own: a module path's first element has a dot, so the
// protocol path starts at the first element that does (or at the "sumdb"
// element just before it). Without such an element nothing is split off.
func splitProxyPrefix(p string) (prefix, rest string) {
	i := 0
	for i < len(p) {
		j := strings.IndexByte(p[i+1:], '/')
		end := len(p)
		if j >= 0 {
			end = i + 1 + j
		}
		elem := p[i+1 : end]
		if strings.Contains(elem, ".") {
			if k := strings.LastIndex(p[:i], "/"); i > 0 && p[k+1:i] == "sumdb" {
				i = k
			}
			return p[:i], p[i:]
		}
		if end == len(p) {
			break
		}
		i = end
	}
	return "", p
}

// describeRequest names what req asks for, as answers and logs say it:
// "example.test/m@v1.0.0 (.zip)".
func describeRequest(req Request) string {
	switch req.Kind {
	case wire.KindList:
		return req.Module + " (version list)"
	case wire.KindLatest:
		return req.Module + "@latest"
	case wire.KindInfo, wire.KindMod, wire.KindZip:
		return fmt.Sprintf("%s@%s (.%s)", req.Module, req.Version, req.Kind)
	case wire.KindSumDBLookup:
		return fmt.Sprintf("checksum database %s lookup of %s@%s", req.SumDB, req.Module, req.Version)
	case wire.KindSumDBSupported, wire.KindSumDBLatest, wire.KindSumDBTile:
		return fmt.Sprintf("checksum database %s %s", req.SumDB, strings.TrimPrefix(req.Path, "/"))
	}
	return string(req.Kind)
}
