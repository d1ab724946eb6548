package policy

import (
	"path"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/semver"

	"github.com/modgate/modgate/sidecar/wire"
)

// Decide returns the decision of the first rule that matches r, or the
// default's if none does. A rule matches when its pattern matches r.Module
// and each condition it has holds: versions (never for a request without a
// valid semantic version), kinds, hosts and identities (never for a request
// that leaves the field empty).
//
// Host patterns are path.Match globs on the lower-cased host: "*" matches
// any run of characters, dots included, so "*.example.test" matches every
// name under example.test but not example.test itself. A pattern without a
// port also matches the host with any port.
//
// Decide does not scan the rules one by one (see BenchmarkDecide) and
// allocates nothing, unless it has to lower-case a host for a hosts rule.
func (p *Policy) Decide(r Request) Decision {
	if p == nil {
		return Decision{Allow: true, RuleText: "default allow"}
	}
	var st reqState
	id := p.ruleIx.first(r.Module, func(i int) bool {
		return p.rules[i].applies(&r, &st)
	})
	if id < 0 {
		return Decision{Allow: p.defaultAllow, RuleText: p.defaultText}
	}
	ru := &p.rules[id]
	return Decision{Allow: ru.allow, Rule: id + 1, RuleText: ru.text, Reason: ru.reason}
}

// reqState caches what Decide works out about a request at most once, and
// only if some candidate rule needs it.
type reqState struct {
	version  int8 // 0 not checked, 1 valid semantic version, -1 not
	hostDone bool
	host     string // lower case
	hostname string // host without ":port", or ""
}

func (ru *rule) applies(r *Request, st *reqState) bool {
	if ru.kinds != 0 && ru.kinds&kindBit(r.Kind) == 0 {
		return false
	}
	if ru.versions != nil {
		if st.version == 0 {
			st.version = -1
			if semver.IsValid(r.Version) {
				st.version = 1
			}
		}
		if st.version < 0 || !ru.versions.allows(r.Version) {
			return false
		}
	}
	if ru.hosts != nil {
		if r.Host == "" {
			return false
		}
		if !st.hostDone {
			st.hostDone = true
			st.host = strings.ToLower(r.Host) // no allocation when already lower case
			st.hostname = stripPort(st.host)
		}
		ok := false
		for _, pat := range ru.hosts {
			if m, _ := matchHostLike(pat, st.host); m {
				ok = true
				break
			}
			if st.hostname != "" {
				if m, _ := matchHostLike(pat, st.hostname); m {
					ok = true
					break
				}
			}
		}
		if !ok {
			return false
		}
	}
	return matchIdentity(ru.identities, r.Identity)
}

// AnonymousIdentity is the identity of a request let in without
// credentials (clients.anonymous). It is no identity for a glob: only a
// pattern that names it exactly matches it, so that identities: ["*"]
// still never applies to a request that said nobody's name.
const AnonymousIdentity = "anonymous"

// matchIdentity reports whether identity matches one of patterns; nil
// patterns match any identity, others never the empty one, and the
// anonymous one only by name.
func matchIdentity(patterns []string, identity string) bool {
	if patterns == nil {
		return true
	}
	if identity == "" {
		return false
	}
	if identity == AnonymousIdentity {
		return slices.Contains(patterns, AnonymousIdentity)
	}
	for _, pat := range patterns {
		if m, _ := matchHostLike(pat, identity); m {
			return true
		}
	}
	return false
}

// matchHostLike matches the hosts and identities of rules; one function so
// that Parse validates patterns with the same code that uses them.
func matchHostLike(pattern, s string) (bool, error) {
	return path.Match(pattern, s)
}

// stripPort returns host without its ":port", or "" if it has none.
func stripPort(host string) string {
	if strings.HasPrefix(host, "[") {
		if i := strings.LastIndex(host, "]:"); i > 0 {
			return host[1:i]
		}
		return ""
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		return host[:i]
	}
	return ""
}

// IsPrivate returns the first private glob that matches modulePath. The data
// plane keeps such modules away from upstreams and hosts not marked private
// and from checksum databases.
func (p *Policy) IsPrivate(modulePath string) (pattern string, ok bool) {
	if p == nil {
		return "", false
	}
	i := p.privateIx.first(modulePath, nil)
	if i < 0 {
		return "", false
	}
	return p.private[i], true
}

// Route returns the upstream names of the first route whose modules match
// modulePath; ok is false when no route matches and every upstream may serve
// it. The caller must not modify the slice.
//
// A route that names identities applies only to them; Route is RouteFor
// with no identity, so such routes never apply.
func (p *Policy) Route(modulePath string) (upstreams []string, ok bool) {
	return p.RouteFor(modulePath, "")
}

// RouteFor is Route for a request made by identity: the first route whose
// modules match modulePath and whose identities (if it names any) match
// identity.
func (p *Policy) RouteFor(modulePath, identity string) (upstreams []string, ok bool) {
	if p == nil {
		return nil, false
	}
	var accept func(int) bool
	if p.routeIdentities {
		accept = func(i int) bool { return p.routes[i].appliesTo(identity) }
	}
	i := p.routeIx.first(modulePath, accept)
	if i < 0 {
		return nil, false
	}
	return p.routes[i].upstreams, true
}

// FilterVersions returns versions without those the policy would refuse to
// serve, so that a list answer, and the go command's choice of @latest
// from it, only offer what can be downloaded. A version stays if requests
// of kinds info, mod and zip for req.Module at that version, with req's host
// and identity, are all allowed; req.Kind and req.Version are ignored.
//
// When nothing is removed the result is versions itself, so the common case
// allocates nothing; otherwise it is a new slice.
func (p *Policy) FilterVersions(req Request, versions []string) []string {
	if p == nil || (len(p.rules) == 0 && p.defaultAllow) {
		return versions
	}
	for i, v := range versions {
		if !p.downloadable(req, v) {
			out := make([]string, i, len(versions)-1)
			copy(out, versions[:i])
			for _, w := range versions[i+1:] {
				if p.downloadable(req, w) {
					out = append(out, w)
				}
			}
			return out
		}
	}
	return versions
}

func (p *Policy) downloadable(req Request, v string) bool {
	req.Version = v
	if !p.hasKinds {
		req.Kind = wire.KindZip // no rule looks at the kind
		return p.Decide(req).Allow
	}
	for _, k := range [...]wire.Kind{wire.KindInfo, wire.KindMod, wire.KindZip} {
		req.Kind = k
		if !p.Decide(req).Allow {
			return false
		}
	}
	return true
}

// Limits of a response body that the go command shows in full under
// "server response:" (cmd/go/internal/web: 8 lines, 8*81 bytes, where it
// counts each line break as two bytes and stops at the first blank line).
const (
	maxMessageLines  = 8
	maxMessageBytes  = 648
	maxContactBytes  = 160
	truncationMarker = "..."
)

// DenyMessage returns the lines of an answer refused by decision d: the
// message after modgate's code (wire.Denial's), then the policy's contact
// if it has one:
//
//	github.com/evil/x@v1.0.0 denied by policy rule 2 (deny github.com/evil/*): malware, see SEC-123
//	ask #platform-builds
//
// No line is blank or has control characters; once the code is put before
// the first and the lines are joined, they are at most 8 lines and 648
// bytes, which is what the go command prints, so long parts are cut and
// end in "...". version may be empty; so may module, for requests that
// name none (a tunnel).
func (p *Policy) DenyMessage(d Decision, module, version string) []string {
	subject := "request"
	if module != "" {
		subject = module
		if version != "" {
			subject += "@" + version
		}
	}
	first := oneLine(wire.Denial{Subject: subject, Rule: d.Rule, RuleText: d.RuleText, Reason: d.Reason}.Message())
	contact := truncate(oneLine(p.Contact()), maxContactBytes)

	// The code before the first line, the separators, the trailing newline.
	budget := maxMessageBytes - len(codePrefixRoom) - 1
	if contact != "" {
		budget -= len(contact) + 1
	}
	first = truncate(first, budget)
	if contact == "" {
		return []string{first}
	}
	return []string{first, contact}
}

// codePrefixRoom is the room the answer's code takes before the first
// line.
var codePrefixRoom = wire.FirstLine(wire.Denied, "")

// oneLine makes s safe to show on one terminal line: valid UTF-8, control
// characters and line breaks turned into spaces (the go command drops a body
// with control characters), runs of spaces collapsed, ends trimmed.
func oneLine(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsGraphic(r) || r == '\u00a0' {
			clean = false
			break
		}
	}
	if clean && !strings.Contains(s, "  ") && strings.TrimSpace(s) == s {
		return s
	}
	var b strings.Builder
	space := false
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n < len(truncationMarker) {
		return ""
	}
	cut := n - len(truncationMarker)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.TrimRight(s[:cut], " ") + truncationMarker
}
