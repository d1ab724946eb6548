package policy

import (
	"math"
	"path"
	"strings"

	"golang.org/x/mod/module"
)

// A matcher answers "which is the first of these pattern lists that matches
// this module path" with the meaning of module.MatchPrefixPatterns, without
// trying every glob. A policy with a thousand rules would otherwise spend
// tens of microseconds per request in path.Match.
//
// Every glob is filed under one key that any path it matches must have, and
// a lookup fetches only the buckets whose key the path has. The final word is
// always path.Match (or, for the common "A*B" shape, its equivalent) on the
// same prefix that MatchPrefixPatterns would use, so the index can only be
// too generous, never wrong. FuzzMatch checks that against
// module.MatchPrefixPatterns itself.
//
// The key of a glob with N slashes (it matches the first N+1 elements):
//   - no metacharacter at all: the glob itself, in literal, looked up with
//     each prefix of the path;
//   - otherwise its leading run of literal elements ("github.com/acme" for
//     "github.com/acme/*-go"), or nothing for a glob that starts with a
//     wildcard ("*.corp.example.test"), and under that the literal tail of
//     the first wildcard element from its first dot (".corp.example.test"),
//     looked up with each dotted suffix of the path's element;
//   - globs with "[" or "\" (rare, and awkward to take apart) and globs with
//     more slashes than cuts can hold go to a short list that is tried with
//     module.MatchPrefixPatterns itself.
//
// Owners (a rule, a route, a private pattern) are numbered in order and added
// in that order, so every bucket is sorted by owner; a lookup keeps the
// smallest owner found so far and stops scanning a bucket there.
type matcher struct {
	literal   map[string][]int // glob without metacharacters → owners
	litSlash  uint32           // bit s: some literal glob has s slashes
	groups    []*globGroup     // by slash count, ascending
	slow      []globEntry      // tried with module.MatchPrefixPatterns
	maxSlash  int              // largest slash count among literal globs and groups
	populated bool
}

// maxCuts bounds how many slashes an indexed glob may have; module paths
// deeper than that are rare and such globs go to the slow list.
const maxCuts = 16

type globEntry struct {
	owner int
	glob  string // one trailing slash trimmed, as MatchPrefixPatterns does
	star  int    // index of the glob's only metacharacter, a "*"; -1 if it has others
}

func newEntry(owner int, glob string) globEntry {
	e := globEntry{owner: owner, glob: glob, star: -1}
	if i := strings.IndexByte(glob, '*'); i >= 0 && !strings.ContainsAny(glob[i+1:], "*?") && !strings.ContainsAny(glob[:i], "?") {
		e.star = i
	}
	return e
}

// match is path.Match(e.glob, prefix), faster for the shape most globs
// have, A*B with A and B literal ("*.corp.example.test", "github.com/acme/*"):
// path.Match also checks the whole pattern's syntax at every offset it
// tries, which makes it several times slower than this.
func (e *globEntry) match(prefix string) bool {
	if e.star < 0 {
		ok, _ := path.Match(e.glob, prefix)
		return ok
	}
	a, b := e.glob[:e.star], e.glob[e.star+1:]
	return len(prefix) >= len(a)+len(b) &&
		strings.HasPrefix(prefix, a) && strings.HasSuffix(prefix, b) &&
		strings.IndexByte(prefix[len(a):len(prefix)-len(b)], '/') < 0 // "*" never crosses "/"
}

// globGroup holds the wildcard globs with one slash count.
type globGroup struct {
	slashes  int
	leadMask uint32                 // bit k: some glob has k leading literal elements (k ≥ 1)
	lead     map[string]*tailBucket // leading literal elements → globs
	wild     tailBucket             // globs whose first element has a wildcard
}

// tailBucket splits the globs that share a lead by the literal tail of their
// first wildcard element.
type tailBucket struct {
	tails map[string][]globEntry // ".corp.example.test" → globs
	rest  []globEntry            // no dotted literal tail ("*", "acme-*")
}

// add files the comma list of globs under owner. Owners must be added in
// ascending order.
func (m *matcher) add(owner int, globs string) {
	m.populated = true
	for part := range strings.SplitSeq(globs, ",") {
		g := strings.TrimSuffix(part, "/")
		if g == "" {
			continue
		}
		m.addGlob(owner, part, g)
	}
}

func (m *matcher) addGlob(owner int, orig, g string) {
	slashes := strings.Count(g, "/")
	if slashes >= maxCuts || strings.ContainsAny(g, `[\`) {
		// MatchPrefixPatterns trims one slash itself, so give it the original.
		m.slow = append(m.slow, globEntry{owner: owner, glob: orig, star: -1})
		return
	}
	m.maxSlash = max(m.maxSlash, slashes)
	if !strings.ContainsAny(g, "*?") {
		if m.literal == nil {
			m.literal = make(map[string][]int)
		}
		if ids := m.literal[g]; len(ids) == 0 || ids[len(ids)-1] != owner {
			m.literal[g] = append(ids, owner)
		}
		m.litSlash |= 1 << slashes
		return
	}

	var grp *globGroup
	for _, x := range m.groups {
		if x.slashes == slashes {
			grp = x
		}
	}
	if grp == nil {
		grp = &globGroup{slashes: slashes}
		i := 0
		for i < len(m.groups) && m.groups[i].slashes < slashes {
			i++
		}
		m.groups = append(m.groups[:i], append([]*globGroup{grp}, m.groups[i:]...)...)
	}

	// Without "[" and "\", "*" and "?" are the only metacharacters and no
	// metacharacter matches "/", so element i of the glob matches element i
	// of the path, and a literal element must equal it.
	k, start := 0, 0
	for {
		end := strings.IndexByte(g[start:], '/')
		if end < 0 {
			end = len(g)
		} else {
			end += start
		}
		if strings.ContainsAny(g[start:end], "*?") {
			b := &grp.wild
			if k > 0 {
				lead := g[:start-1]
				if grp.lead == nil {
					grp.lead = make(map[string]*tailBucket)
				}
				if b = grp.lead[lead]; b == nil {
					b = new(tailBucket)
					grp.lead[lead] = b
				}
				grp.leadMask |= 1 << k
			}
			b.add(newEntry(owner, g), g[start:end])
			return
		}
		k++
		start = end + 1
	}
}

func (b *tailBucket) add(e globEntry, elem string) {
	// Whatever follows the last wildcard is literal and ends every element
	// the glob matches; from its first dot on it is a suffix that starts at
	// a dot of the element, which is where lookups cut.
	tail := elem[strings.LastIndexAny(elem, "*?")+1:]
	dot := strings.IndexByte(tail, '.')
	if dot < 0 {
		b.rest = append(b.rest, e)
		return
	}
	if b.tails == nil {
		b.tails = make(map[string][]globEntry)
	}
	b.tails[tail[dot:]] = append(b.tails[tail[dot:]], e)
}

// first returns the smallest owner that has a glob matching target and that
// accept approves, or -1. accept lets a caller add conditions (versions,
// kinds, ...) while keeping first-match order across buckets.
func (m *matcher) first(target string, accept func(owner int) bool) int {
	if !m.populated {
		return -1
	}
	// ends[s] is where the prefix of target with s slashes ends, the way
	// MatchPrefixPatterns cuts it: just before slash s+1, or at the end of
	// target if it has exactly s slashes. Valid for s ≤ top.
	var ends [maxCuts]int
	top, n := -1, 0
	for i := 0; i < len(target) && n < maxCuts; i++ {
		if target[i] == '/' {
			ends[n] = i
			n++
		}
	}
	if n < maxCuts {
		ends[n] = len(target)
		top = n
	} else {
		top = maxCuts - 1
	}
	top = min(top, m.maxSlash)

	best := math.MaxInt
	if m.literal != nil {
		for s := 0; s <= top; s++ {
			if m.litSlash&(1<<s) == 0 {
				continue
			}
			for _, id := range m.literal[target[:ends[s]]] {
				if id >= best {
					break
				}
				if accept == nil || accept(id) {
					best = id
					break
				}
			}
		}
	}
	for _, g := range m.groups {
		s := g.slashes
		if s > top {
			break
		}
		prefix := target[:ends[s]]
		best = g.wild.scan(prefix, prefix[:ends[0]], best, accept)
		if g.leadMask == 0 {
			continue
		}
		for k := 1; k <= s; k++ {
			if g.leadMask&(1<<k) == 0 {
				continue
			}
			if b := g.lead[prefix[:ends[k-1]]]; b != nil {
				best = b.scan(prefix, prefix[ends[k-1]+1:ends[k]], best, accept)
			}
		}
	}
	for _, e := range m.slow {
		if e.owner >= best {
			break
		}
		if module.MatchPrefixPatterns(e.glob, target) && (accept == nil || accept(e.owner)) {
			best = e.owner
		}
	}
	if best == math.MaxInt {
		return -1
	}
	return best
}

// scan tries the globs of b that could match elem, the path's element at
// the position of their first wildcard, against prefix.
func (b *tailBucket) scan(prefix, elem string, best int, accept func(int) bool) int {
	best = scanList(b.rest, prefix, best, accept)
	if b.tails == nil {
		return best
	}
	for j := 0; j < len(elem); j++ {
		if elem[j] == '.' {
			if list := b.tails[elem[j:]]; list != nil {
				best = scanList(list, prefix, best, accept)
			}
		}
	}
	return best
}

func scanList(list []globEntry, prefix string, best int, accept func(int) bool) int {
	for i := range list {
		e := &list[i]
		if e.owner >= best {
			break
		}
		if e.match(prefix) && (accept == nil || accept(e.owner)) {
			return e.owner
		}
	}
	return best
}

// checkPatterns reports the first glob of a comma list that path.Match
// rejects, which MatchPrefixPatterns would silently never match.
func checkPatterns(globs string) (bad string, err error) {
	for part := range strings.SplitSeq(globs, ",") {
		// path.Match checks the whole pattern when the name is empty.
		if _, err := path.Match(strings.TrimSuffix(part, "/"), ""); err != nil {
			return part, err
		}
	}
	return "", nil
}
