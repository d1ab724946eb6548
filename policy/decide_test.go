package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/module"

	"github.com/modgate/modgate/sidecar/wire"
)

// naiveDecide is Decide without the index: every rule in order, its pattern
// matched by module.MatchPrefixPatterns itself.
func naiveDecide(p *Policy, r Request) Decision {
	for i := range p.rules {
		ru := &p.rules[i]
		var st reqState
		if module.MatchPrefixPatterns(ru.pattern, r.Module) && ru.applies(&r, &st) {
			return Decision{Allow: ru.allow, Rule: i + 1, RuleText: ru.text, Reason: ru.reason}
		}
	}
	return Decision{Allow: p.defaultAllow, RuleText: p.defaultText}
}

// validMessage checks the limits of what the go command prints of a body.
func validMessage(msg string) bool {
	body := msg + "\n"
	if len(body) > maxMessageBytes || strings.Count(body, "\n") > maxMessageLines {
		return false
	}
	if !utf8.ValidString(msg) || !strings.HasPrefix(msg, "modgate: ") {
		return false
	}
	for _, line := range strings.Split(msg, "\n") {
		if strings.TrimSpace(line) == "" {
			return false
		}
	}
	for _, r := range msg {
		if r != '\n' && !unicode.IsGraphic(r) {
			return false
		}
	}
	return true
}

func TestDecideFull(t *testing.T) {
	p := loadFull(t)
	for _, c := range []struct {
		req   Request
		allow bool
		rule  int
	}{
		{Request{Module: "github.com/evil/x", Version: "v1.0.0", Kind: wire.KindZip}, false, 1},
		{Request{Module: "github.com/evil/x/sub", Kind: wire.KindList}, false, 1},
		{Request{Module: "github.com/evil", Kind: wire.KindList}, true, 7}, // one element short of the glob
		{Request{Module: "github.com/Evil/x", Kind: wire.KindList}, true, 7},
		{Request{Module: "example.test/lib", Version: "v1.4.1", Kind: wire.KindZip}, false, 2},
		{Request{Module: "example.test/lib", Version: "v1.4.2", Kind: wire.KindZip}, true, 7},
		{Request{Module: "example.test/lib", Version: "v1.4.2-0.20240102150405-0123456789ab", Kind: wire.KindZip}, false, 2},
		{Request{Module: "example.test/lib", Kind: wire.KindList}, true, 7},                    // no version: rule 2 cannot match
		{Request{Module: "example.test/lib", Version: "master", Kind: wire.KindInfo}, true, 7}, // not semver: neither
		{Request{Module: "example.test/lib/v2", Version: "v2.0.0", Kind: wire.KindZip}, true, 7},
		{Request{Module: "example.test/range", Version: "v1.1.0", Kind: wire.KindMod}, false, 3},
		{Request{Module: "example.test/range", Version: "v1.2.0", Kind: wire.KindMod}, true, 7},
		{Request{Module: "example.test/range", Version: "v0.9.0", Kind: wire.KindMod}, true, 7},
		{Request{Module: "github.com/acme/x", Kind: wire.KindZip, Identity: "ci-7"}, true, 4},
		{Request{Module: "github.com/acme/x", Kind: wire.KindZip, Identity: "spiffe://corp.example.test/ns/build/sa"}, true, 4},
		{Request{Module: "github.com/acme/x", Kind: wire.KindZip, Identity: "dev-1"}, false, 5},
		{Request{Module: "github.com/acme/x", Kind: wire.KindZip}, false, 5},
		{Request{Module: "a.example.test/x", Kind: wire.KindVCS, Host: "git.untrusted.example.test"}, false, 6},
		{Request{Module: "a.example.test/x", Kind: wire.KindVCS, Host: "git.Untrusted.example.test:443"}, false, 6},
		{Request{Module: "a.example.test/x", Kind: wire.KindGoGet, Host: "a.b.untrusted.example.test"}, false, 6},
		{Request{Module: "a.example.test/x", Kind: wire.KindVCS, Host: "untrusted.example.test"}, true, 7},
		{Request{Module: "a.example.test/x", Kind: wire.KindZip, Host: "git.untrusted.example.test"}, true, 7},
		{Request{Module: "a.example.test/x", Kind: wire.KindVCS}, true, 7},
		{Request{Module: "a.example.test/x", Kind: wire.KindTunnel, Host: "git.untrusted.example.test"}, true, 7},
	} {
		d := p.Decide(c.req)
		if d.Allow != c.allow || d.Rule != c.rule {
			t.Errorf("Decide(%+v) = %+v, want allow=%t rule %d", c.req, d, c.allow, c.rule)
		}
		if d.Rule > 0 && (d.RuleText != p.rules[d.Rule-1].text || d.Reason != p.rules[d.Rule-1].reason) {
			t.Errorf("Decide(%+v) = %+v: text or reason not the rule's", c.req, d)
		}
		if want := naiveDecide(p, c.req); d != want {
			t.Errorf("Decide(%+v) = %+v, linear evaluation says %+v", c.req, d, want)
		}
	}
}

func TestDecideDefault(t *testing.T) {
	p, err := Parse("policy.yaml", []byte("rules: [{deny: \"github.com/evil/*\"}]\ndefault: deny\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide(Request{Module: "example.test/x"})
	if want := (Decision{Allow: false, Rule: 0, RuleText: "default deny"}); d != want {
		t.Errorf("Decide = %+v, want %+v", d, want)
	}
}

func TestHostPorts(t *testing.T) {
	p, err := Parse("policy.yaml", []byte(`
rules:
  - deny: "*"
    hosts: ["only.example.test:8443"]
  - deny: "*"
    hosts: ["*.example.test", "::1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	for host, rule := range map[string]int{
		"only.example.test:8443": 1,
		"only.example.test:443":  2, // the port-less pattern of rule 2 still matches
		"a.example.test":         2,
		"a.example.test:443":     2,
		"[::1]:443":              2,
		"example.test:443":       0,
		"[::2]:443":              0,
	} {
		if d := p.Decide(Request{Module: "m", Host: host}); d.Rule != rule {
			t.Errorf("host %q: rule %d, want %d", host, d.Rule, rule)
		}
	}
}

func TestRoute(t *testing.T) {
	p := loadFull(t)
	for mod, want := range map[string][]string{
		"git.corp.example.test/x":      {"internal"},
		"github.com/acme/x/y":          {"internal"},
		"example.test/mirrored/a":      {"internal", "public"},
		"example.test/mirrored":        nil,
		"github.com/other/x":           nil,
		"corp.example.test/not-a-host": nil,
	} {
		got, ok := p.Route(mod)
		if ok != (want != nil) || !slices.Equal(got, want) {
			t.Errorf("Route(%q) = %q, %t; want %q", mod, got, ok, want)
		}
	}
	// A caller's append must not reach the policy's next route.
	got, _ := p.Route("github.com/acme/x")
	_ = append(got, "x")
	if again, _ := p.Route("example.test/mirrored/a"); again[0] != "internal" {
		t.Errorf("append to Route's answer changed the policy: %q", again)
	}
}

// TestRouteForIdentities: a route that names identities applies only to
// them; the next matching route (or none) serves everyone else.
func TestRouteForIdentities(t *testing.T) {
	p, err := Parse("policy.yaml", []byte(`
routes:
  - modules: ["*.corp.example.test"]
    upstreams: [tenant-a]
    identities: [alice, "team-a-*"]
  - modules: ["*.corp.example.test"]
    upstreams: [internal]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		identity string
		want     []string
	}{
		{"alice", []string{"tenant-a"}},
		{"team-a-ci", []string{"tenant-a"}},
		{"bob", []string{"internal"}},
		{"", []string{"internal"}},
	} {
		got, ok := p.RouteFor("git.corp.example.test/a/x", c.identity)
		if !ok || !slices.Equal(got, c.want) {
			t.Errorf("RouteFor(%q) = %q, %t; want %q", c.identity, got, ok, c.want)
		}
	}
	if got, _ := p.Route("git.corp.example.test/a/x"); !slices.Equal(got, []string{"internal"}) {
		t.Errorf("Route (no identity) = %q, want the route for everyone", got)
	}
	if _, ok := p.RouteFor("example.test/other", "alice"); ok {
		t.Error("RouteFor of a module no route names: routed")
	}
	if d := p.Describe(); !slices.Contains(d, "route 1: *.corp.example.test -> tenant-a (for identities alice, team-a-*)") {
		t.Errorf("Describe = %q", d)
	}
}

func TestIsPrivateFull(t *testing.T) {
	p := loadFull(t)
	for mod, want := range map[string]string{
		"git.corp.example.test/x":   "*.corp.example.test",
		"github.com/acme/x/y":       "github.com/acme/*",
		"example.test/private":      "example.test/private",
		"example.test/private/sub":  "example.test/private",
		"example.test/privatex":     "",
		"example.test/secret/s":     "example.test/secret/*",
		"example.test/secret":       "",
		"github.com/acmex/y":        "",
		"GIT.corp.example.test/x":   "*.corp.example.test",
		"git.corp.example.test.x/y": "",
	} {
		got, ok := p.IsPrivate(mod)
		if got != want || ok != (want != "") {
			t.Errorf("IsPrivate(%q) = %q, %t; want %q", mod, got, ok, want)
		}
	}
}

func TestFilterVersions(t *testing.T) {
	p := loadFull(t)
	versions := []string{"v1.0.0", "v1.4.1", "v1.4.2", "v1.5.0", "v1.4.2-0.20240102150405-0123456789ab"}
	req := Request{Module: "example.test/lib", Kind: wire.KindList}
	got := p.FilterVersions(req, versions)
	if want := []string{"v1.4.2", "v1.5.0"}; !slices.Equal(got, want) {
		t.Errorf("FilterVersions = %q, want %q", got, want)
	}
	if versions[0] != "v1.0.0" {
		t.Error("FilterVersions changed its argument")
	}

	// Nothing denied: the same slice back.
	other := []string{"v0.1.0", "v0.2.0"}
	if got := p.FilterVersions(Request{Module: "example.test/other", Kind: wire.KindList}, other); &got[0] != &other[0] {
		t.Errorf("FilterVersions copied an unchanged list: %q", got)
	}
	// A whole module denied: nothing left.
	if got := p.FilterVersions(Request{Module: "github.com/evil/x", Kind: wire.KindLatest}, other); len(got) != 0 {
		t.Errorf("FilterVersions(evil) = %q", got)
	}

	// A rule that only refuses zips still removes the version from lists.
	p2, err := Parse("policy.yaml", []byte(`
rules:
  - deny: example.test/lib
    versions: "v1.0.0"
    kinds: [zip]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p2.FilterVersions(req, []string{"v1.0.0", "v1.1.0"}), []string{"v1.1.0"}; !slices.Equal(got, want) {
		t.Errorf("FilterVersions with kinds = %q, want %q", got, want)
	}
}

func TestDenyMessage(t *testing.T) {
	p := loadFull(t)
	d := p.Decide(Request{Module: "github.com/evil/x", Version: "v1.0.0", Kind: wire.KindZip})
	want := "modgate: denied: github.com/evil/x@v1.0.0 denied by policy rule 1 (deny github.com/evil/*): malware, see SEC-123\nask #platform-builds"
	if got := denyText(p, d, "github.com/evil/x", "v1.0.0"); got != want {
		t.Errorf("DenyMessage =\n%s\nwant\n%s", got, want)
	}

	d = p.Decide(Request{Module: "example.test/lib", Version: "v1.4.1", Kind: wire.KindZip})
	want = "modgate: denied: example.test/lib@v1.4.1 denied by policy rule 2 (deny example.test/lib versions <v1.4.2): CVE fixed in v1.4.2\nask #platform-builds"
	if got := denyText(p, d, "example.test/lib", "v1.4.1"); got != want {
		t.Errorf("DenyMessage =\n%s\nwant\n%s", got, want)
	}

	noContact, _ := Parse("policy.yaml", []byte("default: deny"))
	d = noContact.Decide(Request{Module: "example.test/x", Kind: wire.KindList})
	want = "modgate: denied: example.test/x denied by policy (no rule matched, default deny)"
	if got := denyText(noContact, d, "example.test/x", ""); got != want {
		t.Errorf("DenyMessage =\n%s\nwant\n%s", got, want)
	}
	if got := denyText(Default(), Decision{}, "", ""); got != "modgate: denied: request denied by policy (no rule matched)" {
		t.Errorf("DenyMessage(zero) = %q", got)
	}

	// Hostile and huge parts stay within what the go command shows.
	long := strings.Repeat("é", 400)
	huge := &Policy{contact: "line one\n\nline\x00three " + long}
	for _, d := range []Decision{
		{Rule: 3, RuleText: "deny " + long, Reason: "a\nb\r\nc\td\x1b[31m " + long},
		{Rule: 1, RuleText: "deny x", Reason: "\xff\xfe bad utf-8"},
		{Rule: 1, RuleText: "deny x", Reason: "  \n  "},
	} {
		msg := denyText(huge, d, "example.test/"+long, "v1.0.0")
		if !validMessage(msg) {
			t.Errorf("DenyMessage = %q (%d bytes): breaks the limits", msg, len(msg))
		}
		if lines := strings.Split(msg, "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], "line one line three") {
			t.Errorf("DenyMessage lines = %q", lines)
		}
	}
	if got := oneLine("  a \t b\n"); got != "a b" {
		t.Errorf("oneLine = %q", got)
	}
	if got := truncate("abcdef", 5); got != "ab..." {
		t.Errorf("truncate = %q", got)
	}
}

// randomPolicy builds a policy text from random rules over a small alphabet
// of module paths, versions, kinds, hosts and identities.
func randomPolicy(r *rand.Rand) string {
	pick := func(list ...string) string { return list[r.IntN(len(list))] }
	var b strings.Builder
	b.WriteString("rules:\n")
	for range 1 + r.IntN(12) {
		fmt.Fprintf(&b, "- %s: %q\n", pick("allow", "deny"), randomGlobsValid(r))
		if r.IntN(3) == 0 {
			fmt.Fprintf(&b, "  versions: %q\n", pick("<v1.4.2", ">=v1.0.0,<v2.0.0", "v1.0.0", "!=v1.0.0", ">=v2.0.0"))
		}
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "  kinds: [%s, %s]\n", pick(kindNames()...), pick(kindNames()...))
		}
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "  hosts: [%q]\n", pick("*.a.b", "h.a.b", "*"))
		}
		if r.IntN(4) == 0 {
			fmt.Fprintf(&b, "  identities: [%q]\n", pick("ci-*", "dev"))
		}
	}
	fmt.Fprintf(&b, "default: %s\n", pick("allow", "deny"))
	return b.String()
}

// randomGlobsValid draws random globs until path.Match accepts them all.
func randomGlobsValid(r *rand.Rand) string {
	for {
		g := randomGlobs(r)
		if _, err := checkPatterns(g); err == nil && strings.Trim(g, ",/") != "" {
			return g
		}
	}
}

func TestDecideRandomPolicies(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		src := randomPolicy(r)
		p, err := Parse("random.yaml", []byte(src))
		if err != nil {
			t.Fatalf("%v\n%s", err, src)
		}
		for range 50 {
			req := Request{
				Module:   randomPath(r),
				Version:  []string{"", "v1.0.0", "v1.4.1", "v2.0.0+incompatible", "bad"}[r.IntN(5)],
				Kind:     wire.Kinds()[r.IntN(len(wire.Kinds()))],
				Host:     []string{"", "h.a.b", "x.a.b:443", "other"}[r.IntN(4)],
				Identity: []string{"", "ci-1", "dev"}[r.IntN(3)],
			}
			if got, want := p.Decide(req), naiveDecide(p, req); got != want {
				t.Fatalf("Decide(%+v) = %+v, linear says %+v\npolicy:\n%s", req, got, want, src)
			}
		}
	}
}

func TestDecideAllocs(t *testing.T) {
	p := loadFull(t)
	for _, req := range []Request{
		{Module: "github.com/acme/x", Version: "v1.0.0", Kind: wire.KindZip, Identity: "ci-1"},             // identities
		{Module: "example.test/range", Version: "v1.1.0", Kind: wire.KindZip},                              // versions
		{Module: "a.example.test/x", Kind: wire.KindVCS, Host: "git.untrusted.example.test:443"},           // kinds, hosts
		{Module: "a.example.test/x", Version: "v1.0.0", Kind: wire.KindZip, Host: "proxy.example.test"},    // through to rule 7
		{Module: "git.corp.example.test/x", Version: "v1.0.0", Kind: wire.KindZip, Identity: "dev-laptop"}, // rule 7 after failed identities
	} {
		if n := testing.AllocsPerRun(100, func() { p.Decide(req) }); n != 0 {
			t.Errorf("Decide(%+v) allocates %v times", req, n)
		}
	}
}

// benchPolicy is a policy of n rules (shaped like real ones: module globs,
// hosts wildcards, pinned bad versions, kinds) and n private patterns.
func benchPolicy(tb testing.TB, n int) *Policy {
	var b strings.Builder
	globs, _ := benchPrivate(n)
	b.WriteString("private: [" + quoteAll(globs) + "]\nrules:\n")
	for i := range n - 1 {
		switch i % 5 {
		case 0:
			fmt.Fprintf(&b, "- deny: \"github.com/evil%d/*\"\n  reason: \"SEC-%d\"\n", i, i)
		case 1:
			fmt.Fprintf(&b, "- deny: \"example.test/lib%d\"\n  versions: \"<v1.4.2\"\n", i)
		case 2:
			fmt.Fprintf(&b, "- deny: \"*.bad%d.example.test\"\n", i)
		case 3:
			fmt.Fprintf(&b, "- allow: \"github.com/org%d/*\"\n  identities: [\"ci-*\"]\n", i)
		case 4:
			fmt.Fprintf(&b, "- deny: \"example.test/tools%d/*\"\n  kinds: [zip]\n", i)
		}
	}
	b.WriteString("- allow: \"golang.org/x/*\"\ndefault: deny\n")
	p, err := Parse("bench.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy(b, 1000)
	for _, c := range []struct {
		name string
		req  Request
		rule int
	}{
		{"first-rule", Request{Module: "github.com/evil0/x", Version: "v1.0.0", Kind: wire.KindZip}, 1},
		{"versioned", Request{Module: "example.test/lib996", Version: "v1.4.1", Kind: wire.KindZip}, 997},
		{"last-rule", Request{Module: "golang.org/x/text", Version: "v0.3.0", Kind: wire.KindZip, Host: "proxy.example.test"}, 1000},
		{"default", Request{Module: "git.example.test/nobody/x/y", Version: "v0.3.0", Kind: wire.KindZip, Identity: "dev"}, 0},
	} {
		if d := p.Decide(c.req); d.Rule != c.rule {
			b.Fatalf("%s: rule %d, want %d", c.name, d.Rule, c.rule)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.Decide(c.req)
			}
		})
	}
	// What the data plane does per request: private check, route, decision.
	b.Run("request", func(b *testing.B) {
		req := Request{Module: "golang.org/x/text", Version: "v0.3.0", Kind: wire.KindZip}
		b.ReportAllocs()
		for b.Loop() {
			p.IsPrivate(req.Module)
			p.Route(req.Module)
			p.Decide(req)
		}
	})
}

func BenchmarkFilterVersions(b *testing.B) {
	p := benchPolicy(b, 1000)
	versions := make([]string, 100)
	for i := range versions {
		versions[i] = fmt.Sprintf("v1.%d.0", i)
	}
	req := Request{Module: "example.test/lib996", Kind: wire.KindList}
	b.ReportAllocs()
	for b.Loop() {
		p.FilterVersions(req, versions)
	}
}

func BenchmarkParse(b *testing.B) {
	var src strings.Builder
	globs, _ := benchPrivate(1000)
	src.WriteString("private: [" + quoteAll(globs) + "]\nrules:\n")
	for i := range 1000 {
		fmt.Fprintf(&src, "- deny: \"github.com/evil%d/*\"\n  versions: \"<v1.4.2\"\n", i)
	}
	data := []byte(src.String())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("bench.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// denyText is DenyMessage's lines as the answer's body has them: the code
// before the first, one per line.
func denyText(p *Policy, d Decision, module, version string) string {
	return "modgate: denied: " + strings.Join(p.DenyMessage(d, module, version), "\n")
}
