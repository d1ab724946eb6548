package sidecar

import (
	"archive/zip"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	modzip "golang.org/x/mod/zip"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/wire"
)

// Answers are checked before they are relayed or kept, by the go command's
// own download-time rules (cmd/go/internal/modfetch) and by no rule of
// modgate's own: what the go command accepts from a proxy, modgate relays
// and keeps; what it refuses at download time is not kept and served to
// every build. Whether an artifact is the one the checksum database
// records is not decided here.

// badAnswer is an upstream answer that the go command would refuse.
type badAnswer struct{ reason string }

func (e *badAnswer) Error() string { return e.reason }

// revInfo is the go command's RevInfo (cmd/go/internal/modfetch/repo.go)
// as it decodes an .info or @latest answer: a Time that is not RFC 3339,
// or an Origin of the wrong shape, fails the decoding there too.
type revInfo struct {
	Version string
	Time    time.Time
	Origin  *struct {
		VCS, URL, Subdir, Hash, TagPrefix, TagSum, Ref, RepoSum string
	} `json:",omitempty"`
}

// checkAnswer checks a whole small answer against the request, as the go
// command checks it when it downloads it:
//
//   - .info and @latest decode as the go command's RevInfo
//     (modfetch/proxy.go, (*proxyRepo).Stat and Latest: "invalid response
//     from proxy"), and name a valid canonical version: the go command
//     fails on any other once it uses the answer
//     (modload/modfile.go rawGoModData, modfetch/cache.go CachePath).
//   - An .info names the very version asked for only when that is a
//     canonical version that module.Check accepts for the module path
//     (proxy.go, (*proxyRepo).Stat: "proxy returned info for version %s
//     instead of requested version"). Anything else is a query the proxy
//     resolves: a branch, a commit, "v1.2", v2.0.0 of a path without /v2
//     (answered v2.0.0+incompatible, or a pseudo-version when that
//     version has a go.mod).
//   - A go.mod is taken as it is: the go command checks only its hash at
//     download time (modfetch/cache.go (*cachingRepo).GoMod, fetch.go
//     checkGoMod), and a module line naming another path (a renamed or
//     forked module) is an error only when a build requires the module
//     by the old path (modload/modfile.go, "module declares its path as").
func checkAnswer(req Request, body []byte) error {
	switch req.Kind {
	case wire.KindInfo, wire.KindLatest:
		var info revInfo
		if err := json.Unmarshal(body, &info); err != nil {
			return &badAnswer{fmt.Sprintf("invalid .info answer: %v", err)}
		}
		if !semver.IsValid(info.Version) || module.CanonicalVersion(info.Version) != info.Version {
			return &badAnswer{fmt.Sprintf("the answer names version %q, which is not a canonical version", info.Version)}
		}
		if req.Kind == wire.KindInfo && exactVersion(req.Module, req.Version) && info.Version != req.Version {
			return &badAnswer{fmt.Sprintf("asked for %s, the answer names %s", req.Version, info.Version)}
		}
	}
	return nil
}

// exactVersion reports whether a proxy must answer an .info request for
// version of path with exactly that version (modfetch/proxy.go,
// (*proxyRepo).Stat): a canonical version that module.Check accepts for
// the path. Any other version is a query, resolved by the proxy.
func exactVersion(path, version string) bool {
	return version != "" && version == module.CanonicalVersion(version) && module.Check(path, version) == nil
}

// zipSum checks a module zip at path as the go command checks one when it
// downloads it, and returns its hash (the h1: of go.sum):
//
//   - at most modzip.MaxZipFile bytes (modfetch/proxy.go,
//     (*proxyRepo).Zip: "downloaded zip file too large");
//   - a zip archive whose every file name starts with "<path>@<version>/"
//     (modfetch/fetch.go, downloadZip: "zip for %s has unexpected file");
//   - every file reads back whole (fetch.go hashZip, dirhash.HashZip: a
//     damaged entry fails its checksum).
//
// No more: the go command keeps a zip that is otherwise odd (file names
// modzip.CheckZip refuses, a case-insensitive collision) and refuses it
// only when it extracts it (go mod download, a build). The hash is the one
// a checksum database records: verifying against it needs no second read.
func zipSum(req Request, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Size() > modzip.MaxZipFile {
		return "", fmt.Errorf("downloaded zip file too large (%d bytes; limit is %d bytes)", fi.Size(), modzip.MaxZipFile)
	}
	z, err := zip.OpenReader(path)
	if err != nil {
		return "", err
	}
	defer z.Close()
	prefix := req.Module + "@" + req.Version + "/"
	for _, zf := range z.File {
		if !strings.HasPrefix(zf.Name, prefix) {
			return "", fmt.Errorf("zip for %s has unexpected file %s", prefix[:len(prefix)-1], zf.Name)
		}
	}
	return hashZipFiles(&z.Reader) // dirhash.HashZip(path, dirhash.Hash1), on every core
}

// checkZipFile checks a module zip at path as the go command checks one
// when it downloads it (see zipSum): a zip that fails is not kept.
func checkZipFile(req Request, path string) error {
	_, err := zipSum(req, path)
	return err
}

// checked reports whether answers of kind are read whole and checked.
func checked(k wire.Kind) bool {
	return k == wire.KindInfo || k == wire.KindMod || k == wire.KindLatest
}

// resolved decides policy again for an .info query, on the version its
// answer names: a query must not reach a version policy denies.
func (x *exchange) resolved(body []byte) error {
	if !x.req.Query {
		return nil
	}
	var info struct{ Version string }
	json.Unmarshal(body, &info) // checked already
	d := x.pol.Decide(policy.Request{Module: x.req.Module, Version: info.Version, Kind: wire.KindInfo, Host: x.destination(), Identity: x.identity})
	x.verdict.rule, x.verdict.ruleText = d.Rule, d.RuleText
	if !d.Allow {
		x.req.Version = info.Version
		return x.denial(d, info.Version)
	}
	x.out.note = fmt.Sprintf("query %s resolved to %s", x.req.Version, info.Version)
	return nil
}

// privatePathIn returns the private pattern that a module path anywhere in
// the request's path or query matches, escaped or not, or "". Forward mode
// refuses such a request to a host that is not private whatever shape its
// path has (an alias of the checksum database's lookup, "//lookup/",
// "/x/../lookup/", "/@v/list/", ".ZIP"): a private path is not to be seen
// there at all.
func privatePathIn(pol *policy.Policy, r *http.Request) string {
	texts := []string{r.URL.Path}
	if r.URL.RawPath != "" {
		texts = append(texts, r.URL.RawPath)
	}
	for _, vs := range r.URL.Query() {
		texts = append(texts, vs...)
	}
	for _, text := range texts {
		for _, t := range []string{text, unescapeCaps(text)} {
			for i := 0; i < len(t); i++ {
				if i > 0 && t[i-1] != '/' {
					continue
				}
				candidate := t[i:]
				if at := strings.IndexByte(candidate, '@'); at >= 0 {
					candidate = candidate[:at] // a lookup's module@version
				}
				if candidate == "" || candidate == toolchainModule || strings.HasPrefix(candidate, toolchainModule+"/") {
					continue // never private, as in reverse mode
				}
				if pattern, ok := pol.IsPrivate(candidate); ok {
					return pattern
				}
			}
		}
	}
	return ""
}

// unescapeCaps undoes the module path escaping ("!a" is "A") wherever it
// appears, for privatePathIn: a private path may come escaped.
func unescapeCaps(s string) string {
	if !strings.Contains(s, "!") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '!' && i+1 < len(s) && 'a' <= s[i+1] && s[i+1] <= 'z' {
			b.WriteByte(s[i+1] - 'a' + 'A')
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
