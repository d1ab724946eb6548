package policy

import "testing"

func TestConstraint(t *testing.T) {
	const pseudo = "v1.4.2-0.20240102150405-0123456789ab" // a pre-release of v1.4.2
	for _, c := range []struct {
		constraint string
		version    string
		want       bool
	}{
		{"<v1.4.2", "v1.4.1", true},
		{"<v1.4.2", "v1.4.2", false},
		{"<v1.4.2", "v1.5.0", false},
		{"<v1.4.2", "v1.4.2-rc.1", true},
		{"<v1.4.2", pseudo, true},
		{"<=v1.4.2", "v1.4.2", true},
		{">v1.4.2", "v1.4.2", false},
		{">v1.4.2", "v1.4.3", true},
		{">=v2.0.0", "v2.0.0", true},
		{">=v2.0.0", "v2.0.0+incompatible", true},
		{">=v2.0.0", "v2.1.0+incompatible", true},
		{">=v2.0.0", "v1.9.9", false},
		{"<v2.0.0", "v2.0.0+incompatible", false},
		{"v1.2.3", "v1.2.3", true},
		{"v1.2.3", "v1.2.4", false},
		{"=v1.2.3", "v1.2.3", true},
		{"==v1.2.3", "v1.2.3", true},
		{"v2.0.0", "v2.0.0+incompatible", true},
		{"v2.0.0+incompatible", "v2.0.0+incompatible", true},
		{"!=v1.0.0", "v1.0.0", false},
		{"!=v1.0.0", "v1.0.1", true},
		{">=v1.0.0,<v1.4.2", "v1.0.0", true},
		{">=v1.0.0,<v1.4.2", "v1.4.1", true},
		{">=v1.0.0,<v1.4.2", "v1.4.2", false},
		{">=v1.0.0,<v1.4.2", "v0.9.0", false},
		{">= v1.0.0 , < v1.4.2", "v1.2.0", true},
		{">=v1.0.0,<v1.4.2,!=v1.2.0", "v1.2.0", false},
		{"<v0.0.1", "v0.0.0-20200101000000-abcdefabcdef", true},
		{">v1.4.1", pseudo, true},
		{"v1.4", "v1.4.0", true},
	} {
		con, err := parseConstraint(c.constraint)
		if err != nil {
			t.Errorf("parseConstraint(%q): %v", c.constraint, err)
			continue
		}
		if got := con.allows(c.version); got != c.want {
			t.Errorf("%q allows %q = %t, want %t", c.constraint, c.version, got, c.want)
		}
	}
}

func TestConstraintErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "empty constraint"},
		{"  ", "empty constraint"},
		{"<1.4.2", `invalid constraint "<1.4.2": version must start with v`},
		{">=v1.0.0,<1.4.2", `invalid constraint "<1.4.2": version must start with v`},
		{">=v1.0.0,", `invalid constraint "": empty clause (a stray comma?)`},
		{"<", `invalid constraint "<": missing version`},
		{"<vx", `invalid constraint "<vx": not a semantic version`},
		{"~v1.2.3", `invalid constraint "~v1.2.3": version must start with v`},
		{"v1.2.3.4", `invalid constraint "v1.2.3.4": not a semantic version`},
	} {
		_, err := parseConstraint(c.in)
		if err == nil || err.Error() != c.want {
			t.Errorf("parseConstraint(%q) = %v, want %q", c.in, err, c.want)
		}
	}
}
