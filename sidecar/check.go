package sidecar

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	modzip "golang.org/x/mod/zip"

	"github.com/modgate/modgate/policy"
)

// Answers are checked before they are relayed or kept: what the go command
// would reject must not sit in a cache and be served to every build.

// badAnswer is an upstream answer that is not what the protocol allows.
type badAnswer struct{ reason string }

func (e *badAnswer) Error() string { return e.reason }

// checkAnswer checks a whole small answer against the request: .info and
// @latest are JSON naming a canonical version (the very one asked for, when
// a canonical version was), a go.mod names the module asked for.
func checkAnswer(req Request, body []byte) error {
	switch req.Kind {
	case KindInfo, KindLatest:
		var info struct{ Version string }
		if err := json.Unmarshal(body, &info); err != nil {
			return &badAnswer{fmt.Sprintf("the .info answer is not JSON: %v", err)}
		}
		if !semver.IsValid(info.Version) || module.CanonicalVersion(info.Version) != info.Version {
			return &badAnswer{fmt.Sprintf("the answer names version %q, which is not a canonical version", info.Version)}
		}
		if req.Kind == KindInfo && !req.Query && info.Version != req.Version {
			return &badAnswer{fmt.Sprintf("asked for %s, the answer names %s", req.Version, info.Version)}
		}
	case KindMod:
		if got := modfile.ModulePath(body); got != req.Module {
			if got == "" {
				return &badAnswer{"the go.mod has no module line"}
			}
			return &badAnswer{fmt.Sprintf("the go.mod names module %s, not %s", got, req.Module)}
		}
	}
	return nil
}

// checkZipFile checks a zip in the file at path as a module zip.
func checkZipFile(req Request, path string) error {
	if _, err := modzip.CheckZip(module.Version{Path: req.Module, Version: req.Version}, path); err != nil {
		return &badAnswer{"the zip is not a module zip of " + req.Module + "@" + req.Version + ": " + err.Error()}
	}
	return nil
}

// checked reports whether answers of kind are read whole and checked.
func checked(k Kind) bool { return k == KindInfo || k == KindMod || k == KindLatest }

// resolved decides policy again for an .info query, on the version its
// answer names: a query must not reach a version policy denies.
func (x *exchange) resolved(body []byte) error {
	if !x.req.Query {
		return nil
	}
	var info struct{ Version string }
	json.Unmarshal(body, &info) // checked already
	d := x.pol.Decide(policy.Request{Module: x.req.Module, Version: info.Version, Kind: string(KindInfo), Host: x.destination(), Identity: x.identity})
	x.rule, x.ruleText = d.Rule, d.RuleText
	if !d.Allow {
		x.req.Version = info.Version
		return x.denial(d, info.Version)
	}
	x.reason = fmt.Sprintf("query %s resolved to %s", x.req.Version, info.Version)
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
