package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/wire"
)

func TestParseFileErrors(t *testing.T) {
	for file, want := range map[string][]string{
		"bad-version.yaml": {
			`bad-version.yaml:7: rules[2].versions: invalid constraint "<1.4.2": version must start with v`,
		},
		"unknown-key.yaml": {
			`unknown-key.yaml:3: rules[1].reson: unknown key (want one of allow, deny, versions, kinds, hosts, identities, reason)`,
			`unknown-key.yaml:4: defualt: unknown key (want one of private, routes, rules, default, contact)`,
		},
		"allow-and-deny.yaml": {
			`allow-and-deny.yaml:4: rules[2].deny: rule has allow already; a rule has allow or deny, not both`,
			`allow-and-deny.yaml:5: rules[3]: needs allow or deny`,
		},
		"bad-pattern.yaml": {
			`bad-pattern.yaml:1: private[1]: invalid pattern "github.com/acme/[a-": syntax error in pattern`,
			`bad-pattern.yaml:4: rules[1].kinds[2]: unknown kind "tarball" (want one of list info mod zip latest sumdb-supported sumdb-lookup sumdb-tile sumdb-latest go-get vcs tunnel other)`,
		},
		"route-no-upstream.yaml": {
			`route-no-upstream.yaml:3: routes[1].upstreams: names no upstream`,
			`route-no-upstream.yaml:4: routes[2]: names no upstream (needs upstreams)`,
		},
	} {
		path := filepath.Join("../testdata/policy", file)
		p, err := Load(path)
		if err == nil {
			t.Errorf("Load(%s) = %v, want an error", file, p)
			continue
		}
		// Errors name the file as the caller gave it.
		for i := range want {
			want[i] = "../testdata/policy/" + want[i]
		}
		if got := err.Error(); got != strings.Join(want, "\n") {
			t.Errorf("Load(%s):\n%s\nwant:\n%s", file, got, strings.Join(want, "\n"))
		}
		var pe *Error
		if !errors.As(err, &pe) || pe.File != path || pe.Line == 0 || pe.Key == "" {
			t.Errorf("Load(%s): first error %#v lacks file, line or key", file, pe)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ name, yaml, want string }{
		{"empty", "", "policy.yaml: empty policy file (write {} for the default policy)"},
		{"comments only", "# nothing\n", "policy.yaml: empty policy file (write {} for the default policy)"},
		{"syntax", "rules:\n  - deny: [\n", "policy.yaml:2: did not find expected node content"},
		{"two documents", "{}\n---\n{}\n", "policy.yaml:2: a policy file holds one YAML document"},
		{"not a mapping", "- deny: x\n", "policy.yaml:1: must be a mapping, not a list"},
		{"repeated key", "default: allow\ndefault: deny\n", "policy.yaml:2: default: repeated key"},
		{"bad default", "default: maybe\n", `policy.yaml:1: default: must be allow or deny, not "maybe"`},
		{"default list", "default: [allow]\n", "policy.yaml:1: default: must be a string, not a list"},
		{"contact mapping", "contact: {a: b}\n", "policy.yaml:1: contact: must be a string, not a mapping"},
		{"rules not list", "rules: {deny: x}\n", "policy.yaml:1: rules: must be a list, not a mapping"},
		{"rule not mapping", "rules: [x]\n", `policy.yaml:1: rules[1]: must be a mapping, not "x"`},
		{"empty pattern", "rules:\n- deny: \"\"\n", "policy.yaml:2: rules[1].deny: empty pattern"},
		{"null pattern", "rules:\n- deny:\n", "policy.yaml:2: rules[1].deny: empty pattern"},
		{"space in pattern", "rules:\n- deny: \"a/*, b/*\"\n", `policy.yaml:2: rules[1].deny: pattern "a/*, b/*" contains a space (separate patterns with commas, no spaces)`},
		{"bad glob", "rules:\n- deny: \"a/[\"\n", `policy.yaml:2: rules[1].deny: invalid pattern "a/[": syntax error in pattern`},
		{"bad glob in list", "rules:\n- allow: \"a/*,b\\\\\"\n", `policy.yaml:2: rules[1].allow: invalid pattern "b\\": syntax error in pattern`},
		{"pattern list", "rules:\n- deny: [a, b]\n", "policy.yaml:2: rules[1].deny: must be a string, not a list"},
		{"empty versions", "rules:\n- deny: x\n  versions: \"\"\n", "policy.yaml:3: rules[1].versions: empty constraint"},
		{"empty kinds", "rules:\n- deny: x\n  kinds: []\n", "policy.yaml:3: rules[1].kinds: empty list (leave kinds out to match every kind)"},
		{"kinds mapping", "rules:\n- deny: x\n  kinds: {a: b}\n", "policy.yaml:3: rules[1].kinds: must be a list of strings, not a mapping"},
		{"bad host", "rules:\n- deny: x\n  hosts: [\"[\"]\n", `policy.yaml:3: rules[1].hosts[1]: invalid pattern "["`},
		{"empty identity", "rules:\n- deny: x\n  identities: [\"\"]\n", `policy.yaml:3: rules[1].identities[1]: invalid pattern ""`},
		{"private mapping", "private: {a: b}\n", "policy.yaml:1: private: must be a list of strings, not a mapping"},
		{"private empty item", "private: [\"\"]\n", "policy.yaml:1: private[1]: empty pattern"},
		{"private comma only", "private: [\",\"]\n", "policy.yaml:1: private[1]: empty pattern"},
		{"route without modules", "routes:\n- upstreams: [a]\n", "policy.yaml:2: routes[1]: needs modules"},
		{"route empty modules", "routes:\n- modules: []\n  upstreams: [a]\n", "policy.yaml:2: routes[1].modules: names no module pattern"},
		{"route bad upstream", "routes:\n- modules: [x]\n  upstreams: [\"a,b\"]\n", `policy.yaml:3: routes[1].upstreams[1]: invalid upstream name "a,b"`},
		{"route unknown key", "routes:\n- modules: [x]\n  upstream: [a]\n", "policy.yaml:3: routes[1].upstream: unknown key (want one of modules, upstreams, identities)\npolicy.yaml:2: routes[1]: names no upstream (needs upstreams)"},
		{"route empty identities", "routes:\n- modules: [x]\n  upstreams: [a]\n  identities: []\n", "policy.yaml:4: routes[1].identities: empty list (leave identities out to match any)"},
		{"route bad identity", "routes:\n- modules: [x]\n  upstreams: [a]\n  identities: [alice, \"team-[\"]\n", `policy.yaml:4: routes[1].identities[2]: invalid pattern "team-["`},
		{"rule empty identities", "rules:\n- deny: x\n  identities: []\n", "policy.yaml:3: rules[1].identities: empty list (leave identities out to match any)"},
		{"hosts item list", "rules:\n- deny: x\n  hosts: [[a]]\n", "policy.yaml:3: rules[1].hosts[1]: must be a string, not a list"},
		{"versions list", "rules:\n- deny: x\n  versions: [v1.0.0]\n", "policy.yaml:3: rules[1].versions: must be a string, not a list"},
		{"routes scalar", "routes: x\n", `policy.yaml:1: routes: must be a list, not "x"`},
		{"merge key", "rules:\n- &r {deny: x}\n- <<: *r\n", "policy.yaml:3: rules[2].<<: unknown key (want one of allow, deny, versions, kinds, hosts, identities, reason)\npolicy.yaml:3: rules[2]: needs allow or deny"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse("policy.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatalf("Parse = %+v, want error %q", p, c.want)
			}
			if got := err.Error(); got != c.want {
				t.Errorf("Parse error:\n%s\nwant:\n%s", got, c.want)
			}
		})
	}
}

func TestParseErrorCap(t *testing.T) {
	var b strings.Builder
	b.WriteString("rules:\n")
	for range 3 * maxErrors {
		b.WriteString("- reason: x\n")
	}
	_, err := Parse("policy.yaml", []byte(b.String()))
	if n := strings.Count(err.Error(), "\n") + 1; n != maxErrors {
		t.Errorf("%d errors reported, want %d", n, maxErrors)
	}
}

func TestParseForms(t *testing.T) {
	p, err := Parse("policy.yaml", []byte(`
base: &evil "github.com/evil/*"
`))
	if err == nil {
		t.Fatalf("unknown top-level key accepted: %+v", p)
	}

	// Aliases, single strings for lists, a GOPRIVATE string, {}.
	p, err = Parse("policy.yaml", []byte(`
private: "*.corp.example.test,github.com/acme/*"
routes:
  - modules: "*.corp.example.test"
    upstreams: internal
rules:
  - deny: &evil "github.com/evil/*"
    kinds: zip
  - allow: *evil
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.PrivatePatterns(); len(got) != 2 || got[1] != "github.com/acme/*" {
		t.Errorf("PrivatePatterns = %q", got)
	}
	if ups, ok := p.Route("git.corp.example.test/x"); !ok || len(ups) != 1 || ups[0] != "internal" {
		t.Errorf("Route = %q, %t", ups, ok)
	}
	if d := p.Decide(Request{Module: "github.com/evil/x", Kind: wire.KindZip}); d.Allow || d.Rule != 1 {
		t.Errorf("Decide(zip) = %+v", d)
	}
	if d := p.Decide(Request{Module: "github.com/evil/x", Kind: wire.KindInfo}); !d.Allow || d.Rule != 2 || d.RuleText != "allow github.com/evil/*" {
		t.Errorf("Decide(info) = %+v", d)
	}

	for _, src := range []string{"{}", "private:\nroutes:\nrules:\ncontact:\n"} {
		p, err = Parse("policy.yaml", []byte(src))
		if err != nil {
			t.Fatalf("%q: %v", src, err)
		}
		if d := p.Decide(Request{Module: "x"}); d != Default().Decide(Request{Module: "x"}) {
			t.Errorf("%q decides %+v", src, d)
		}
	}
}

func TestParseFullRules(t *testing.T) {
	p := loadFull(t)
	want := []string{
		"deny github.com/evil/*",
		"deny example.test/lib versions <v1.4.2",
		"deny example.test/range versions >=v1.0.0, <v1.2.0",
		"allow github.com/acme/*",
		"deny github.com/acme/*",
		"deny *",
		"allow *",
	}
	if len(p.rules) != len(want) {
		t.Fatalf("%d rules, want %d", len(p.rules), len(want))
	}
	for i, r := range p.rules {
		if r.text != want[i] {
			t.Errorf("rule %d text %q, want %q", i+1, r.text, want[i])
		}
	}
	if p.defaultAllow || p.defaultText != "default deny" {
		t.Errorf("default: %t %q", p.defaultAllow, p.defaultText)
	}
}

// fuzzRequests are requests decided for every policy FuzzParse accepts.
var fuzzRequests = []Request{
	{Module: "github.com/evil/x", Version: "v1.0.0", Kind: wire.KindZip},
	{Module: "example.test/lib", Version: "v1.4.1", Kind: wire.KindMod, Host: "proxy.example.test:443"},
	{Module: "example.test/lib", Kind: wire.KindList},
	{Module: "git.corp.example.test/x/y", Version: "v2.0.0+incompatible", Kind: wire.KindInfo, Identity: "ci-1"},
	{Module: "a", Version: "master", Kind: wire.KindInfo},
	{Module: "a/b/c", Kind: wire.KindVCS, Host: "A.untrusted.example.test"},
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/policy/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("rules:\n- deny: \"a/*,*.b/c\"\n  versions: \">=v1.0.0,<v2\"\n  hosts: [\"*.x\"]\n- allow: \"a\"\n  identities: [\"ci-*\"]\ndefault: deny\n"))
	f.Add([]byte("private: [a, b/*, \"*.c\"]\nroutes: [{modules: [a], upstreams: [u]}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.File != "fuzz.yaml" {
				t.Fatalf("error without position: %v", err)
			}
			return
		}
		p2, err := Parse("fuzz.yaml", data)
		if err != nil {
			t.Fatalf("second Parse failed: %v", err)
		}
		// Requests for the policy's own patterns, with the wildcards filled in.
		reqs := append([]Request(nil), fuzzRequests...)
		for _, r := range p.rules {
			for g := range strings.SplitSeq(r.pattern, ",") {
				m := strings.NewReplacer("*", "x", "?", "y").Replace(g)
				reqs = append(reqs, Request{Module: m, Version: "v1.2.3", Kind: wire.KindZip}, Request{Module: m + "/sub"})
			}
			if len(reqs) > 100 { // enough; keep executions fast
				break
			}
		}
		for _, r := range reqs {
			d := p.Decide(r)
			if d2 := p2.Decide(r); d != d2 {
				t.Fatalf("Decide(%+v) differs between two parses: %+v, %+v", r, d, d2)
			}
			if d2 := p.Decide(r); d != d2 {
				t.Fatalf("Decide(%+v) differs between two calls: %+v, %+v", r, d, d2)
			}
			if want := naiveDecide(p, r); d != want {
				t.Fatalf("Decide(%+v) = %+v, linear evaluation says %+v", r, d, want)
			}
			if msg := denyText(p, d, r.Module, r.Version); !validMessage(msg) {
				t.Fatalf("DenyMessage = %q", msg)
			}
		}
	})
}
