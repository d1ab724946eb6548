package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/modgate/modgate/sidecar/wire"
)

// Error is one problem in a policy file. Parse returns every problem it
// finds (up to maxErrors) joined with errors.Join; errors.As finds the first.
//
// Indexes in Key are 1-based, like rule numbers in decisions, so that
// "rules[2]" in an error and "rule 2" in a 403 are the same rule.
type Error struct {
	File string // as given to Parse
	Line int    // 1-based; 0 if unknown
	Key  string // e.g. "rules[2].versions"; "" for YAML syntax errors
	Msg  string
}

// Error returns "file:line: key: message", the form editors and CI
// annotations recognise.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// maxErrors caps how many problems one Parse reports; past that they are
// usually one mistake repeated.
const maxErrors = 10

type parser struct {
	file string
	errs []error
}

func (ps *parser) errorf(n *yaml.Node, key, format string, args ...any) {
	if len(ps.errs) == maxErrors {
		return
	}
	line := 0
	if n != nil {
		line = n.Line
	}
	ps.errs = append(ps.errs, &Error{File: ps.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Parse parses a policy file. filename only labels errors
// ("policy.yaml:7: rules[2].versions: invalid constraint ...").
//
// Unknown keys are errors, as are a rule with both or neither of allow and
// deny, a pattern path.Match rejects, and a route without upstreams: a policy
// that does not say what its author meant must not start, nor replace a
// working one on reload. An empty file is an error too, so that a file caught
// half-written is not read as "allow everything".
func Parse(filename string, data []byte) (*Policy, error) {
	ps := &parser{file: filename}
	root, err := decodeYAML(data)
	if err != nil {
		return nil, ps.yamlError(err)
	}
	if root == nil {
		ps.errorf(nil, "", "empty policy file (write {} for the default policy)")
		return nil, errors.Join(ps.errs...)
	}
	p := ps.policy(root)
	if len(ps.errs) > 0 {
		return nil, errors.Join(ps.errs...)
	}
	return p, nil
}

// decodeYAML returns the top node of the only document in data, or nil if
// there is none.
func decodeYAML(data []byte) (root *yaml.Node, err error) {
	// A policy file arrives on reload from whoever can write the file; a
	// decoder bug must not take the process down with it.
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, fmt.Errorf("yaml: decoder failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("yaml: line %d: a policy file holds one YAML document", extra.Line)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	n := resolve(doc.Content[0])
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil // only comments, or "~"
	}
	return n, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError turns the YAML decoder's "yaml: line 3: ..." into our format.
func (ps *parser) yamlError(err error) error {
	msg := err.Error()
	e := &Error{File: ps.file, Msg: strings.TrimPrefix(msg, "yaml: ")}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = m[2]
	}
	return e
}

// resolve follows aliases ("*anchor") to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// fields walks a mapping, reporting keys that are not scalars, repeated
// keys and keys not in known, and calls f for the others.
func (ps *parser) fields(n *yaml.Node, key string, known []string, f func(k string, kn, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		ps.errorf(n, key, "must be a mapping, not %s", describe(n))
		return false
	}
	seen := make(map[string]bool)
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		sub := joinKey(key, kn.Value)
		switch {
		case kn.Kind != yaml.ScalarNode:
			ps.errorf(kn, key, "keys must be strings")
		case seen[kn.Value]:
			ps.errorf(kn, sub, "repeated key")
		case !contains(known, kn.Value):
			ps.errorf(kn, sub, "unknown key (want one of %s)", strings.Join(known, ", "))
		default:
			seen[kn.Value] = true
			f(kn.Value, kn, v)
		}
	}
	return true
}

func joinKey(parent, k string) string {
	if parent == "" {
		return k
	}
	return parent + "." + k
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "this"
}

// str returns a scalar's value; null counts as "".
func (ps *parser) str(n *yaml.Node, key string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		ps.errorf(n, key, "must be a string, not %s", describe(n))
		return "", false
	}
	if n.Tag == "!!null" {
		return "", true
	}
	return n.Value, true
}

// list returns the items of a list of strings, with the node of each for
// errors; ok is false if it reported an error. A single string stands for a
// list of one, since "kinds: zip" can only mean one thing; null for none.
func (ps *parser) list(n *yaml.Node, key string) (items []string, nodes []*yaml.Node, ok bool) {
	if n.Kind == yaml.ScalarNode {
		s, _ := ps.str(n, key)
		if s == "" {
			return nil, nil, true
		}
		return []string{s}, []*yaml.Node{n}, true
	}
	if n.Kind != yaml.SequenceNode {
		ps.errorf(n, key, "must be a list of strings, not %s", describe(n))
		return nil, nil, false
	}
	ok = true
	for i, c := range n.Content {
		c = resolve(c)
		s, okItem := ps.str(c, fmt.Sprintf("%s[%d]", key, i+1))
		if !okItem {
			ok = false
			continue
		}
		items = append(items, s)
		nodes = append(nodes, c)
	}
	return items, nodes, ok
}

// isNull reports whether n is YAML's null ("key:" with no value), which
// stands for an empty list or mapping.
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func (ps *parser) policy(root *yaml.Node) *Policy {
	p := Default()
	ps.fields(root, "", []string{"private", "routes", "rules", "default", "contact"}, func(k string, kn, v *yaml.Node) {
		switch k {
		case "private":
			ps.private(p, v)
		case "routes":
			ps.routes(p, v)
		case "rules":
			ps.rules(p, v)
		case "default":
			s, ok := ps.str(v, k)
			if !ok {
				return
			}
			switch s {
			case "allow", "deny":
				p.defaultAllow = s == "allow"
				p.defaultText = "default " + s
			default:
				ps.errorf(v, k, "must be allow or deny, not %q", s)
			}
		case "contact":
			s, _ := ps.str(v, k)
			p.contact = strings.TrimSpace(s)
		}
	})
	return p
}

func (ps *parser) private(p *Policy, v *yaml.Node) {
	items, nodes, _ := ps.list(v, "private")
	for i, s := range items {
		key := fmt.Sprintf("private[%d]", i+1)
		if !ps.patterns(nodes[i], key, s) {
			continue
		}
		// Each item may itself be a GOPRIVATE-style comma list, pasted
		// from go env; IsPrivate reports the single glob that matched.
		for g := range strings.SplitSeq(s, ",") {
			if strings.TrimSuffix(g, "/") != "" {
				p.privateIx.add(len(p.private), g)
				p.private = append(p.private, g)
			}
		}
	}
}

// patterns checks a comma list of module path globs.
func (ps *parser) patterns(n *yaml.Node, key, s string) bool {
	if strings.Trim(s, ",/") == "" {
		ps.errorf(n, key, "empty pattern")
		return false
	}
	if i := strings.IndexFunc(s, unicode.IsSpace); i >= 0 {
		// MatchPrefixPatterns would keep the space, and no module path has one.
		ps.errorf(n, key, "pattern %q contains a space (separate patterns with commas, no spaces)", s)
		return false
	}
	if bad, err := checkPatterns(s); err != nil {
		ps.errorf(n, key, "invalid pattern %q: %v", bad, err)
		return false
	}
	return true
}

// entries calls f for each item of the list under name ("routes",
// "rules"), with the item's key ("rules[2]"). Null is an empty list.
func (ps *parser) entries(v *yaml.Node, name string, f func(n *yaml.Node, key string)) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.SequenceNode {
		ps.errorf(v, name, "must be a list, not %s", describe(v))
		return
	}
	for i, n := range v.Content {
		f(resolve(n), fmt.Sprintf("%s[%d]", name, i+1))
	}
}

// listItems reads the list of strings under key and checks each item with
// check, which reports its own error and says whether the item is good; an
// empty list is the error empty. listed is false if the value is not a
// list of strings at all; ok is false if anything was wrong.
func (ps *parser) listItems(v *yaml.Node, key, empty string, check func(n *yaml.Node, key, s string) bool) (listed, ok bool) {
	items, nodes, listed := ps.list(v, key)
	if !listed {
		return false, false
	}
	ok = true
	if len(items) == 0 {
		ps.errorf(v, key, "%s", empty)
		ok = false
	}
	for j, s := range items {
		ok = check(nodes[j], fmt.Sprintf("%s[%d]", key, j+1), s) && ok
	}
	return true, ok
}

func (ps *parser) routes(p *Policy, v *yaml.Node) {
	ps.entries(v, "routes", func(rn *yaml.Node, key string) {
		r, ok := ps.route(rn, key)
		if !ok {
			return
		}
		if r.identities != nil {
			p.routeIdentities = true
		}
		p.routeIx.add(len(p.routes), r.modules)
		p.routes = append(p.routes, r)
	})
}

// route reads one entry of routes; ok is false if it reported an error.
func (ps *parser) route(rn *yaml.Node, key string) (r route, ok bool) {
	haveModules, haveUpstreams, ok := false, false, true
	if !ps.fields(rn, key, []string{"modules", "upstreams", "identities"}, func(k string, kn, v *yaml.Node) {
		sub := key + "." + k
		var okItems bool
		switch k {
		case "identities":
			r.identities, _, okItems = ps.identities(v, sub)
		case "modules":
			var modules []string
			haveModules, okItems = ps.listItems(v, sub, "names no module pattern", func(n *yaml.Node, key, s string) bool {
				modules = append(modules, s)
				return ps.patterns(n, key, s)
			})
			r.modules = strings.Join(modules, ",")
		case "upstreams":
			haveUpstreams, okItems = ps.listItems(v, sub, "names no upstream", func(n *yaml.Node, key, s string) bool {
				r.upstreams = append(r.upstreams, s)
				if s == "" || strings.ContainsFunc(s, unicode.IsSpace) || strings.ContainsAny(s, ",|") {
					ps.errorf(n, key, "invalid upstream name %q", s)
					return false
				}
				return true
			})
		}
		ok = okItems && ok
	}) {
		return r, false
	}
	if !haveModules {
		ps.errorf(rn, key, "needs modules")
		ok = false
	}
	if !haveUpstreams {
		ps.errorf(rn, key, "names no upstream (needs upstreams)")
		ok = false
	}
	// Clipped, so that a caller appending to Route's answer cannot write
	// into the next route's names.
	r.upstreams = r.upstreams[:len(r.upstreams):len(r.upstreams)]
	return r, ok
}

// identities reads the identity patterns (path.Match globs) of a rule or
// a route.
func (ps *parser) identities(v *yaml.Node, key string) (ids []string, listed, ok bool) {
	listed, ok = ps.listItems(v, key, "empty list (leave identities out to match any)", func(n *yaml.Node, key, s string) bool {
		if _, err := matchHostLike(s, ""); s == "" || err != nil {
			ps.errorf(n, key, "invalid pattern %q", s)
			return false
		}
		ids = append(ids, s)
		return true
	})
	return ids, listed, ok
}

func (ps *parser) rules(p *Policy, v *yaml.Node) {
	ps.entries(v, "rules", func(rn *yaml.Node, key string) {
		r, ok := ps.rule(p, rn, key)
		if !ok {
			return
		}
		p.ruleIx.add(len(p.rules), r.pattern)
		p.rules = append(p.rules, r)
	})
}

// rule reads one entry of rules; ok is false if it reported an error.
func (ps *parser) rule(p *Policy, rn *yaml.Node, key string) (r rule, ok bool) {
	ok = true
	var action string
	known := []string{"allow", "deny", "versions", "kinds", "hosts", "identities", "reason"}
	if !ps.fields(rn, key, known, func(k string, kn, v *yaml.Node) {
		sub := key + "." + k
		okField := true
		switch k {
		case "allow", "deny":
			if action != "" {
				ps.errorf(kn, sub, "rule has %s already; a rule has allow or deny, not both", action)
				ok = false
				return
			}
			action = k
			s, okStr := ps.str(v, sub)
			r.allow = k == "allow"
			r.pattern = s
			okField = okStr && ps.patterns(v, sub, s)
		case "versions":
			r.versions, okField = ps.versions(v, sub)
		case "kinds":
			r.kinds, okField = ps.kinds(v, sub)
			p.hasKinds = true
		case "identities":
			r.identities, _, okField = ps.identities(v, sub)
		case "hosts":
			r.hosts, okField = ps.hosts(v, sub)
		case "reason":
			s, _ := ps.str(v, sub)
			r.reason = strings.TrimSpace(s)
		}
		ok = okField && ok
	}) {
		return r, false
	}
	if action == "" {
		ps.errorf(rn, key, "needs allow or deny")
		return r, false
	}
	r.text = action + " " + r.pattern
	if r.versions != nil {
		r.text += " versions " + r.versions.text
	}
	return r, ok
}

// versions reads a rule's version constraint.
func (ps *parser) versions(v *yaml.Node, key string) (*constraint, bool) {
	s, ok := ps.str(v, key)
	if !ok {
		return nil, false
	}
	c, err := parseConstraint(s)
	if err != nil {
		ps.errorf(v, key, "%v", err)
		return nil, false
	}
	return c, true
}

// kinds reads a rule's request kinds.
func (ps *parser) kinds(v *yaml.Node, key string) (kinds kindSet, ok bool) {
	_, ok = ps.listItems(v, key, "empty list (leave kinds out to match every kind)", func(n *yaml.Node, key, s string) bool {
		b := kindBit(wire.Kind(s))
		if b == 0 {
			ps.errorf(n, key, "unknown kind %q (want one of %s)", s, strings.Join(kindNames(), " "))
			return false
		}
		kinds |= b
		return true
	})
	return kinds, ok
}

// hosts reads a rule's host patterns, in lower case: host names are
// case-insensitive, and Decide lowers the request's.
func (ps *parser) hosts(v *yaml.Node, key string) (hosts []string, ok bool) {
	_, ok = ps.listItems(v, key, "empty list (leave hosts out to match any)", func(n *yaml.Node, key, s string) bool {
		s = strings.ToLower(s)
		if _, err := matchHostLike(s, ""); s == "" || err != nil {
			ps.errorf(n, key, "invalid pattern %q", s)
			return false
		}
		hosts = append(hosts, s)
		return true
	})
	return hosts, ok
}

// kindNames returns the names of the request kinds, for an error message.
func kindNames() []string {
	var names []string
	for _, k := range wire.Kinds() {
		names = append(names, string(k))
	}
	return names
}
