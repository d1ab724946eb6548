package policy

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// A constraint is a rule's "versions": clauses joined by commas, all of
// which must hold ("AND"), e.g. ">=v1.0.0,<v1.4.2".
//
// Versions compare as semver.Compare compares them: a pseudo-version is a
// pre-release of the version it is based on, and build metadata such as
// "+incompatible" is ignored, so v2.0.0+incompatible satisfies ">=v2.0.0" and
// equals "v2.0.0". That is what a rule author means: a module without a go.mod
// file only ever has the +incompatible form of its v2 versions.
type constraint struct {
	text    string
	clauses []clause
}

type clause struct {
	op  string // "=", "!=", "<", "<=", ">", ">="
	ver string
}

// parseConstraint parses a "versions" value. Its errors quote the clause at
// fault, which the caller prefixes with the file, line and key.
func parseConstraint(s string) (*constraint, error) {
	c := &constraint{text: strings.TrimSpace(s)}
	if c.text == "" {
		return nil, errors.New("empty constraint")
	}
	for raw := range strings.SplitSeq(c.text, ",") {
		cl, err := parseClause(strings.TrimSpace(raw))
		if err != nil {
			return nil, fmt.Errorf("invalid constraint %q: %w", strings.TrimSpace(raw), err)
		}
		c.clauses = append(c.clauses, cl)
	}
	return c, nil
}

func parseClause(s string) (clause, error) {
	if s == "" {
		return clause{}, errors.New("empty clause (a stray comma?)")
	}
	op := "="
	for _, o := range []string{"<=", ">=", "!=", "==", "<", ">", "="} {
		if strings.HasPrefix(s, o) {
			op, s = o, strings.TrimSpace(s[len(o):])
			break
		}
	}
	if op == "==" {
		op = "="
	}
	switch {
	case s == "":
		return clause{}, errors.New("missing version")
	case s[0] != 'v':
		return clause{}, errors.New("version must start with v")
	case !semver.IsValid(s):
		return clause{}, errors.New("not a semantic version")
	}
	return clause{op, s}, nil
}

// allows reports whether version v satisfies every clause. v must be a valid
// semantic version: semver.Compare sorts invalid versions below all valid
// ones, which would make "<v1.4.2" match "master".
func (c *constraint) allows(v string) bool {
	for _, cl := range c.clauses {
		cmp := semver.Compare(v, cl.ver)
		var ok bool
		switch cl.op {
		case "=":
			ok = cmp == 0
		case "!=":
			ok = cmp != 0
		case "<":
			ok = cmp < 0
		case "<=":
			ok = cmp <= 0
		case ">":
			ok = cmp > 0
		case ">=":
			ok = cmp >= 0
		}
		if !ok {
			return false
		}
	}
	return true
}
