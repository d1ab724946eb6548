// Package policy decides which module requests modgate lets through, which
// module paths are private, and which upstreams may serve them; it also
// writes the audit log and reloads the policy file when it changes.
//
// It knows nothing of HTTP: the data plane classifies a request into a
// Request and asks a *Policy. Deciding is cheap (an index, not a scan over
// the rules), so it can run on every request.
//
// Patterns mean exactly what module.MatchPrefixPatterns means: a comma list
// of globs, where a glob with N slashes matches the first N+1 elements of a
// module path, "*" never crosses "/", and case matters.
//
// Of modgate it imports only sidecar/wire, the shared vocabulary (request
// kinds, decisions, the clock).
package policy

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/modgate/modgate/sidecar/wire"
)

// kindSet is a set of request kinds as bits, so that a rule's "kinds" costs
// one AND.
type kindSet uint16

// kindBits numbers the request kinds wire defines, one bit each.
var kindBits = func() map[wire.Kind]kindSet {
	m := map[wire.Kind]kindSet{}
	for i, k := range wire.Kinds() {
		m[k] = 1 << i
	}
	return m
}()

// kindBit returns the bit of a kind, or 0 for an unknown or empty kind,
// which no "kinds" list contains.
func kindBit(kind wire.Kind) kindSet { return kindBits[kind] }

// Request is what the data plane knows about a request when it asks for a
// decision. Empty fields are unknown: a rule that constrains a field never
// matches a request that leaves it empty.
type Request struct {
	Module   string // module path, decoded (not case-encoded), e.g. "github.com/acme/x"
	Version  string // canonical version, or "" (list, latest, go-get, ...)
	Kind     wire.Kind
	Host     string // destination host, with or without ":port"
	Identity string // client identity, e.g. a certificate subject or token name
}

// Decision is the outcome of Policy.Decide: plain data, so that the
// data plane can put it in a response, a span and an audit line.
type Decision struct {
	Allow    bool
	Rule     int    // 1-based index of the matching rule; 0 means the default
	RuleText string // e.g. "deny github.com/evil/*", or "default allow"
	Reason   string // the rule's reason; "" for the default
}

// Word returns wire.DecisionAllow or wire.DecisionDeny, the value of the
// audit log's and the telemetry's decision field.
func (d Decision) Word() wire.Decision {
	if d.Allow {
		return wire.DecisionAllow
	}
	return wire.DecisionDeny
}

// String returns the decision's word: "allow" or "deny".
func (d Decision) String() string { return string(d.Word()) }

// Policy is a parsed policy file. It is immutable, so one *Policy can serve
// any number of goroutines; a reload builds a new one (see Store).
//
// A nil *Policy behaves as Default.
type Policy struct {
	private   []string // globs, in file order
	privateIx matcher

	routes  []route
	routeIx matcher

	rules  []rule
	ruleIx matcher

	defaultAllow bool
	defaultText  string
	contact      string
	hasKinds     bool // some rule lists kinds; FilterVersions then checks each artifact kind

	routeIdentities bool // some route names identities
}

type route struct {
	modules    string   // the comma list, as matched
	upstreams  []string // clipped, so that a caller's append cannot reach the next route
	identities []string // path.Match patterns; nil: any identity
}

// appliesTo reports whether the route is for identity: it names no
// identities, or one of its patterns matches (never the empty identity).
func (r *route) appliesTo(identity string) bool {
	return matchIdentity(r.identities, identity)
}

type rule struct {
	allow      bool
	pattern    string      // MatchPrefixPatterns comma list
	versions   *constraint // nil: any version, including none
	kinds      kindSet     // 0: any kind
	hosts      []string    // path.Match patterns, lower case; nil: any host
	identities []string    // path.Match patterns; nil: any identity
	reason     string
	text       string // "deny github.com/evil/* versions <v1.4.2"
}

// Default returns the policy modgate runs with when it is given no policy
// file: allow everything, nothing private, no routes.
func Default() *Policy {
	return &Policy{defaultAllow: true, defaultText: "default allow"}
}

// Load reads and parses the policy file at path. Errors name the file.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Contact returns the policy's contact line ("ask #platform-builds"), or ""
// if it has none. DenyMessage prints it under the reason.
func (p *Policy) Contact() string {
	if p == nil {
		return ""
	}
	return p.contact
}

// PrivatePatterns returns the private globs in file order, for a caller
// that prints a GOPRIVATE value (strings.Join(..., ",")) or a GONOSUMDB hint.
// The slice is a copy.
func (p *Policy) PrivatePatterns() []string {
	if p == nil {
		return nil
	}
	return slices.Clone(p.private)
}

// Upstreams returns each upstream name that a route mentions, once, in order
// of first mention, so that the config loader can check that they exist.
func (p *Policy) Upstreams() []string {
	if p == nil {
		return nil
	}
	var names []string
	for _, r := range p.routes {
		for _, u := range r.upstreams {
			if !slices.Contains(names, u) {
				names = append(names, u)
			}
		}
	}
	return names
}

// Describe returns the policy in words, one line per entry in the order it
// applies, for `modgate policy lint`.
func (p *Policy) Describe() []string {
	if p == nil {
		p = Default()
	}
	var lines []string
	for _, g := range p.private {
		lines = append(lines, fmt.Sprintf("private %s: only private upstreams, never a checksum database", g))
	}
	for i, r := range p.routes {
		line := fmt.Sprintf("route %d: %s -> %s", i+1, r.modules, strings.Join(r.upstreams, ", "))
		if r.identities != nil {
			line += " (for identities " + strings.Join(r.identities, ", ") + ")"
		}
		lines = append(lines, line)
	}
	for i, r := range p.rules {
		line := fmt.Sprintf("rule %d: %s", i+1, r.text)
		if r.identities != nil {
			line += " for identities " + strings.Join(r.identities, ", ")
		}
		if r.reason != "" {
			line += " (" + r.reason + ")"
		}
		lines = append(lines, line)
	}
	lines = append(lines, p.defaultText)
	if p.contact != "" {
		lines = append(lines, "contact: "+p.contact)
	}
	return lines
}
