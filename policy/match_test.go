package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/mod/module"
)

// perPart builds a matcher with one owner per comma-separated part, the
// way private patterns are filed.
func perPart(parts []string) *matcher {
	m := new(matcher)
	for i, p := range parts {
		m.add(i, p)
	}
	return m
}

// refFirst is the reference the index must agree with: the first part
// that module.MatchPrefixPatterns matches and accept approves.
func refFirst(parts []string, target string, accept func(int) bool) int {
	for i, p := range parts {
		if module.MatchPrefixPatterns(p, target) && (accept == nil || accept(i)) {
			return i
		}
	}
	return -1
}

// checkAgainstReference compares the index with MatchPrefixPatterns, both
// as first-match over the parts and as one comma list.
func checkAgainstReference(t testing.TB, globs, target string, mask uint64) {
	t.Helper()
	parts := strings.Split(globs, ",")
	accept := func(i int) bool { return mask == 0 || mask&(1<<(i%64)) != 0 }
	if got, want := perPart(parts).first(target, accept), refFirst(parts, target, accept); got != want {
		t.Fatalf("first match of %q in %q (mask %#x) = %d, want %d (MatchPrefixPatterns)", target, parts, mask, got, want)
	}
	whole := new(matcher)
	whole.add(0, globs)
	if got, want := whole.first(target, nil) == 0, module.MatchPrefixPatterns(globs, target); got != want {
		t.Fatalf("match(%q, %q) = %t, MatchPrefixPatterns = %t", globs, target, got, want)
	}
}

// mppCases are the cases of golang.org/x/mod's own TestMatchPrefixPatterns
// and the examples of "go help private".
var mppCases = []struct {
	globs, target string
	want          bool
}{
	{"", "rsc.io/quote", false},
	{"/", "rsc.io/quote", false},
	{"*/quote", "rsc.io/quote", true},
	{"*/quo", "rsc.io/quote", false},
	{"*/quo??", "rsc.io/quote", true},
	{"*/quo*", "rsc.io/quote", true},
	{"*quo*", "rsc.io/quote", false},
	{"rsc.io", "rsc.io/quote", true},
	{"*.io", "rsc.io/quote", true},
	{"rsc.io/", "rsc.io/quote", true},
	{"rsc", "rsc.io/quote", false},
	{"rsc*", "rsc.io/quote", true},
	{"rsc.io", "rsc.io/quote/v3", true},
	{"*/quote", "rsc.io/quote/v3", true},
	{"*/quote/", "rsc.io/quote/v3", true},
	{"*/quote/*", "rsc.io/quote/v3", true},
	{"*/quote/*/", "rsc.io/quote/v3", true},
	{"*/v3", "rsc.io/quote/v3", false},
	{"*/*/v3", "rsc.io/quote/v3", true},
	{"*/*/*", "rsc.io/quote/v3", true},
	{"*/*/*/", "rsc.io/quote/v3", true},
	{"*/*/*", "rsc.io/quote", false},
	{"*/*/*/", "rsc.io/quote", false},
	{"*/*/*,,", "rsc.io/quote", false},
	{"*/*/*,,*/quote", "rsc.io/quote", true},
	{",,*/quote", "rsc.io/quote", true},

	// go help private: GOPRIVATE=*.corp.example.com,rsc.io/private
	{"*.corp.example.com,rsc.io/private", "git.corp.example.com/xyzzy", true},
	{"*.corp.example.com,rsc.io/private", "rsc.io/private", true},
	{"*.corp.example.com,rsc.io/private", "rsc.io/private/quux", true},
	{"*.corp.example.com,rsc.io/private", "rsc.io/privatex", false},
	{"*.corp.example.com,rsc.io/private", "corp.example.com/x", false},
	{"*.corp.example.com,rsc.io/private", "git.corp.example.com", true},
	{"*.corp.example.com,rsc.io/private", "a.b.corp.example.com/x", true},
	{"*.corp.example.com,rsc.io/private", "rsc.io", false},
	// GONOPROXY=none is a pattern like any other: the module "none".
	{"none", "rsc.io/private", false},
	// Case matters.
	{"github.com/Acme/*", "github.com/acme/x", false},
	{"github.com/Acme/*", "github.com/Acme/x", true},
}

func TestMatchPrefixPatternsCases(t *testing.T) {
	for _, c := range mppCases {
		if got := module.MatchPrefixPatterns(c.globs, c.target); got != c.want {
			t.Fatalf("test table is wrong: MatchPrefixPatterns(%q, %q) = %t", c.globs, c.target, got)
		}
		m := new(matcher)
		m.add(0, c.globs)
		if got := m.first(c.target, nil) == 0; got != c.want {
			t.Errorf("match(%q, %q) = %t, want %t", c.globs, c.target, got, c.want)
		}
		checkAgainstReference(t, c.globs, c.target, 0)
	}
}

func TestIsPrivateGOPRIVATEExample(t *testing.T) {
	p, err := Parse("policy.yaml", []byte(`private: ["*.corp.example.com", "rsc.io/private"]`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, pattern string }{
		{"git.corp.example.com/xyzzy", "*.corp.example.com"},
		{"rsc.io/private", "rsc.io/private"},
		{"rsc.io/private/quux", "rsc.io/private"},
		{"rsc.io/privatex", ""},
		{"rsc.io/quote", ""},
	} {
		got, ok := p.IsPrivate(c.path)
		if got != c.pattern || ok != (c.pattern != "") {
			t.Errorf("IsPrivate(%q) = %q, %t; want %q", c.path, got, ok, c.pattern)
		}
	}
}

// TestMatcherFirstMatchOrder checks that the smallest owner wins whichever
// bucket it sits in.
func TestMatcherFirstMatchOrder(t *testing.T) {
	parts := []string{
		"example.test/a/b/c", // literal, 3 slashes
		"*.test/a",           // wildcard first element, dotted tail
		"example.test/*",     // lead "example.test"
		"example.test",       // literal, 0 slashes
		"*",                  // wildcard, no tail
		"ex[a]mple.test",     // slow list
	}
	m := perPart(parts)
	for _, c := range []struct {
		target string
		skip   []int // owners accept refuses
		want   int
	}{
		{"example.test/a/b/c/d", nil, 0},
		{"example.test/a/b", nil, 1},
		{"example.test/a/b", []int{1}, 2},
		{"example.test/a/b", []int{1, 2}, 3},
		{"example.test/a/b", []int{1, 2, 3}, 4},
		{"example.test/a/b", []int{1, 2, 3, 4}, 5},
		{"example.test/a/b", []int{1, 2, 3, 4, 5}, -1},
		{"other.test/z", nil, 4},
	} {
		accept := func(i int) bool {
			for _, s := range c.skip {
				if s == i {
					return false
				}
			}
			return true
		}
		if got := m.first(c.target, accept); got != c.want {
			t.Errorf("first(%q) skipping %v = %d, want %d", c.target, c.skip, got, c.want)
		}
		if want := refFirst(parts, c.target, accept); want != c.want {
			t.Errorf("reference disagrees with the table for %q: %d", c.target, want)
		}
	}
}

// Pieces for random patterns and paths: chosen to hit every bucket kind,
// the slash-count cut, trailing slashes, empty elements, bad patterns,
// escapes and classes.
var (
	globPieces = []string{"a", "b", "a.b", "x.a.b", ".b", "*", "?", "*.b", "*.a.b", "a*", "*a", "a?b", "?.b",
		"[ab]", "[^a]", "\\a", "\\*", "[", "[a-", "]", "-", "", "A", "é", "*é", "a.*", "**", "*?*", "x*.a.b"}
	pathPieces = []string{"a", "b", "a.b", "x.a.b", "y.x.a.b", ".b", "A", "", "é", "*", "ab", "xa.b", "a.bb"}
)

func randomGlobs(r *rand.Rand) string {
	parts := make([]string, 1+r.IntN(4))
	for i := range parts {
		elems := make([]string, 1+r.IntN(4))
		for j := range elems {
			elems[j] = globPieces[r.IntN(len(globPieces))]
			if r.IntN(4) == 0 {
				elems[j] += globPieces[r.IntN(len(globPieces))]
			}
		}
		parts[i] = strings.Join(elems, "/")
		if r.IntN(5) == 0 {
			parts[i] += "/"
		}
	}
	return strings.Join(parts, ",")
}

func randomPath(r *rand.Rand) string {
	elems := make([]string, 1+r.IntN(5))
	for i := range elems {
		elems[i] = pathPieces[r.IntN(len(pathPieces))]
	}
	return strings.Join(elems, "/")
}

// TestMatcherRandom runs the fuzz property on a fixed sample, so that plain
// "go test" covers it.
func TestMatcherRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		checkAgainstReference(t, randomGlobs(r), randomPath(r), r.Uint64()&0xff)
	}
}

// TestMatcherDeep covers globs and paths past maxCuts slashes.
func TestMatcherDeep(t *testing.T) {
	deep := strings.Repeat("a/", maxCuts+3) + "b"
	for _, g := range []string{
		strings.Repeat("a/", maxCuts) + "*",
		strings.Repeat("a/", maxCuts-1) + "a",
		strings.Repeat("a/", maxCuts-1) + "*",
		strings.Repeat("*/", maxCuts+3) + "b",
		strings.Repeat("a/", maxCuts+4),
		"a/a",
	} {
		for _, target := range []string{deep, "a/a", strings.Repeat("a/", maxCuts) + "a"} {
			checkAgainstReference(t, g, target, 0)
		}
	}
}

func FuzzMatch(f *testing.F) {
	for _, c := range mppCases {
		f.Add(c.globs, c.target, uint64(0))
	}
	f.Add("example.test/a/b/c,*.test/a,example.test/*,example.test,*,ex[a]mple.test", "example.test/a/b", uint64(0b110110))
	f.Add("a/[/]/b,a\\/b", "a/[/]/b", uint64(0))
	f.Fuzz(func(t *testing.T, globs, target string, mask uint64) {
		checkAgainstReference(t, globs, target, mask)
	})
}

// benchPrivate returns n private globs of the shapes real GOPRIVATE values
// have, and paths that hit the first, hit the last, and miss.
func benchPrivate(n int) (globs []string, paths map[string]string) {
	for i := range n {
		switch i % 4 {
		case 0:
			globs = append(globs, fmt.Sprintf("*.corp%d.example.test", i))
		case 1:
			globs = append(globs, fmt.Sprintf("github.com/acme%d/*", i))
		case 2:
			globs = append(globs, fmt.Sprintf("git.example.test/team%d", i))
		case 3:
			globs = append(globs, fmt.Sprintf("example.test/org%d/*/internal", i))
		}
	}
	return globs, map[string]string{
		"first": "git.corp0.example.test/tools/x",
		"last":  fmt.Sprintf("example.test/org%d/repo/internal/y", n-1),
		"miss":  "golang.org/x/text",
	}
}

func BenchmarkIsPrivate(b *testing.B) {
	globs, paths := benchPrivate(1000)
	p, err := Parse("bench.yaml", []byte("private: ["+quoteAll(globs)+"]"))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"first", "last", "miss"} {
		path := paths[name]
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.IsPrivate(path)
			}
		})
	}
	// The linear scan the index replaces, for comparison.
	b.Run("linear-MatchPrefixPatterns", func(b *testing.B) {
		all := strings.Join(globs, ",")
		b.ReportAllocs()
		for b.Loop() {
			module.MatchPrefixPatterns(all, paths["miss"])
		}
	})
}

func quoteAll(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
