package wire

import (
	"regexp"
	"strconv"
	"strings"
)

// The specifics of a problem that tools act on (which rule denied, which
// private pattern to tell the go command about) are rendered into the
// answer's text here, and read back here by tools such as modgate explain,
// so that the wording lives in one place. The go command shows the body to
// the developer, so the specifics stay readable prose; TestDetails keeps
// rendering and reading in step.

// Denial is a refusal by policy.
type Denial struct {
	// Subject is "module@version", "module", or "request" when the
	// request names no module.
	Subject string
	// Rule is the number of the rule that matched, from 1; 0 when none
	// did and the policy's default decided.
	Rule int
	// RuleText is the rule as written ("deny example.test/lib versions
	// <v1.4.2"), or, without a rule, how the default applied ("default
	// deny"); may be empty.
	RuleText string
	// Reason is the rule's reason; may be empty.
	Reason string
}

// Message is the denial's message, the text after the code:
//
//	example.test/lib@v1.4.1 denied by policy rule 2 (deny example.test/lib versions <v1.4.2): CVE fixed in v1.4.2
func (d Denial) Message() string {
	var b strings.Builder
	b.WriteString(d.Subject)
	b.WriteString(" denied by policy ")
	if d.Rule > 0 {
		b.WriteString("rule " + strconv.Itoa(d.Rule) + " (" + d.RuleText + ")")
	} else {
		b.WriteString("(no rule matched")
		if d.RuleText != "" {
			b.WriteString(", " + d.RuleText)
		}
		b.WriteString(")")
	}
	if d.Reason != "" {
		b.WriteString(": " + d.Reason)
	}
	return b.String()
}

var denialRE = regexp.MustCompile(`^(\S+) denied by policy (?:rule (\d+) \((.*?)\)|\(no rule matched(?:, ([^)]*))?\))(?:: (.*))?$`)

// ParseDenial reads a denial's message back (a message cut short at its
// end still reads, with what is left of the reason).
func ParseDenial(msg string) (Denial, bool) {
	m := denialRE.FindStringSubmatch(msg)
	if m == nil {
		return Denial{}, false
	}
	d := Denial{Subject: m[1], RuleText: m[3] + m[4], Reason: m[5]}
	d.Rule, _ = strconv.Atoi(m[2])
	return d, true
}

// PatternNote names the private pattern a module path matched, in the
// message of a refusal that keeps the path from a place: "(pattern P)".
func PatternNote(pattern string) string { return "(pattern " + pattern + ")" }

// NoSumDBHint is the detail line of a private module's refused checksum
// database lookup: the pattern the go command should be told about.
func NoSumDBHint(pattern string) string {
	return "add " + pattern + " to GONOSUMDB (or GOPRIVATE) so that the go command does not ask"
}

// ParsePattern finds the private pattern an answer's lines name: the
// pattern of a NoSumDBHint line, else of a PatternNote. line is the line
// that named it.
func ParsePattern(lines ...string) (pattern, line string, ok bool) {
	for _, l := range lines {
		if rest, found := strings.CutPrefix(strings.TrimSpace(l), "add "); found {
			if p, _, found := strings.Cut(rest, " to GONOSUMDB"); found && p != "" && !strings.Contains(p, " ") {
				return p, l, true
			}
		}
	}
	for _, l := range lines {
		if _, rest, found := strings.Cut(l, "(pattern "); found {
			if p, _, found := strings.Cut(rest, ")"); found && p != "" && !strings.Contains(p, " ") {
				return p, l, true
			}
		}
	}
	return "", "", false
}
