// Package explain reads what the go command printed and says, for each
// failure it recognises, the line it saw, the likely cause and the fix.
//
// It knows two kinds of failure. modgate's own answers carry a stable code
// on their first line (`modgate: denied: ...`, see sidecar/wire); those are
// recognised by that code alone, and the lines after it are read only for
// specifics such as what each upstream did (modgate.go). The go command's
// own errors (TLS, DNS, proxies, checksums) are recognised by the go
// command's words (gocmd.go).
//
// The work is split in three: parse the output into blocks (one failure and
// the lines the go command indents under it), explain each block (modgate's
// answer if it holds one, else the first go command rule that matches),
// then merge explanations that say the same thing.
package explain

import (
	"bufio"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Explanation is what explain says about one failure.
type Explanation struct {
	// Rule names what was recognised: the code of a modgate answer
	// ("denied", "circuit-open"), or a rule about the go command's own
	// words ("proxyconnect", "checksum-mismatch").
	Rule string
	// Title is a few words, e.g. "modgate is not running".
	Title string
	// Saw is the output it is about: the failure's first line and the
	// lines that decided the explanation.
	Saw []string
	// Cause and Fix are plain sentences; Cause may hold several lines (a
	// line per upstream).
	Cause, Fix string
	// More counts other failures that had the same explanation.
	More int
}

// Text explains every failure in go command output, merging failures that
// have the same explanation.
func Text(text string) []Explanation {
	var out []Explanation
	for _, b := range parseBlocks(text) {
		e := explainBlock(b)
		if e == nil {
			continue
		}
		merged := false
		for i := range out {
			if out[i].Rule == e.Rule && out[i].Cause == e.Cause && out[i].Fix == e.Fix {
				out[i].More++
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, *e)
		}
	}
	return out
}

// explainBlock explains one failure: by modgate's code when the failure
// quotes an answer of modgate's, else by the first go command rule that
// matches.
func explainBlock(b *block) *Explanation {
	e := explainAnswer(b)
	for _, rule := range goRules {
		if e != nil {
			break
		}
		e = rule(b)
	}
	if e == nil {
		return nil
	}
	if len(e.Saw) == 0 || e.Saw[0] != b.head {
		e.Saw = append([]string{b.head}, e.Saw...)
	}
	return e
}

// block is one failure as the go command prints it: a first line, then the
// lines it indents under it (a server's response, git's stderr, the
// hashes of a checksum mismatch) and its fixed follow-on paragraphs
// ("SECURITY ERROR ...").
type block struct {
	head string
	// body holds the continuation lines, trimmed.
	body []string
	// resp holds the lines of the server's response, trimmed, in order.
	resp []string
}

// all returns every line of the block.
func (b *block) all() []string { return append([]string{b.head}, b.body...) }

// has reports whether any line of the block contains s.
func (b *block) has(s string) bool {
	return b.line(s) != ""
}

// line returns the first line of the block that contains s, or "".
func (b *block) line(s string) string {
	for _, l := range b.all() {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

var (
	// blockStartRE matches a line that starts a new failure. Every other
	// non-blank line belongs to the failure above it, which also copes with
	// output pasted with its indentation lost.
	blockStartRE = regexp.MustCompile(`^(?:go: |verifying |# |\S+\.go:\d+|package |build |cannot find |go\.mod:|go\.sum:)`)
	// followOnRE matches the go command's fixed paragraphs that come after
	// a blank line but still belong to the failure above.
	followOnRE = regexp.MustCompile(`^(?:SECURITY ERROR|This download does NOT match|For more information, see 'go help)`)
)

// parseBlocks splits go command output into failures.
func parseBlocks(text string) []*block {
	var blocks []*block
	var cur *block
	inResp := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		raw := strings.TrimRight(sc.Text(), "\r \t")
		trimmed := strings.TrimSpace(raw)
		indented := raw != "" && (raw[0] == '\t' || raw[0] == ' ')
		switch {
		case trimmed == "":
			// A blank line ends the failure unless the go command's own
			// follow-on paragraph comes next; see followOnRE.
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur, inResp = nil, false
			continue
		case followOnRE.MatchString(trimmed) && cur == nil && len(blocks) > 0:
			cur = blocks[len(blocks)-1]
			blocks = blocks[:len(blocks)-1]
		case cur == nil || (!indented && blockStartRE.MatchString(trimmed)):
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur, inResp = &block{head: trimmed}, false
			continue
		}
		cur.body = append(cur.body, trimmed)
		if rest, ok := strings.CutPrefix(trimmed, "server response:"); ok {
			inResp = true
			if rest = strings.TrimSpace(rest); rest != "" {
				cur.resp = append(cur.resp, rest)
			}
			continue
		}
		if inResp {
			cur.resp = append(cur.resp, trimmed)
		}
	}
	if cur != nil {
		blocks = append(blocks, cur)
	}
	return blocks
}

var (
	// subjectRE finds module@version in "go: M@V: ..." and "verifying M@V: ...",
	// or the module in "go: module M: ..." (a version list).
	subjectRE = regexp.MustCompile(`^(?:go: |verifying )(?:module (\S+?):|(\S+?@[^\s:/]+))`)
	// urlRE finds the URL the go command fetched: `reading URL: ` or `Get "URL"`.
	urlRE = regexp.MustCompile(`(?:reading |Get ")(https?://[^\s"]+?)(?:": |: |"$)`)
	// statusRE finds the HTTP status after the URL: ": 404 Not Found".
	statusRE = regexp.MustCompile(`: (\d{3}) [A-Z][A-Za-z ]*$`)
)

// subject returns the module@version a failure is about, or "the module".
func (b *block) subject() string {
	if m := subjectRE.FindStringSubmatch(b.head); m != nil {
		return m[1] + m[2]
	}
	return "the module"
}

// fetched returns the URL the failing request went to, or nil.
func (b *block) fetched() *url.URL {
	for _, l := range b.all() {
		if m := urlRE.FindStringSubmatch(l); m != nil {
			if u, err := url.Parse(m[1]); err == nil {
				return u
			}
		}
	}
	return nil
}

// status returns the HTTP status the go command reported, or 0.
func (b *block) status() int {
	m := statusRE.FindStringSubmatch(b.head)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// origin returns "scheme://host" of the failing request, or "the proxy".
func (b *block) origin() string {
	if u := b.fetched(); u != nil {
		return u.Scheme + "://" + u.Host
	}
	return "the proxy"
}

// pathOf returns the module path of "path@version".
func pathOf(subject string) string {
	p, _, _ := strings.Cut(subject, "@")
	return p
}

// nonEmpty returns the non-empty strings of ss.
func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
