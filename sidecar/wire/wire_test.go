package wire

import "testing"

func TestParseLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		code Code
		msg  string
		ok   bool
	}{
		{"modgate: denied: example.test/m@v1.0.0 denied by policy rule 1", Denied, "example.test/m@v1.0.0 denied by policy rule 1", true},
		{"\tserver response: modgate: circuit-open: x", CircuitOpen, "x", true},
		{"modgate: nonsense: x", "", "", false},
		{"modgate: denied", "", "", false},
		{"denied: x", "", "", false},
	} {
		code, msg, ok := ParseLine(tc.line)
		if code != tc.code || msg != tc.msg || ok != tc.ok {
			t.Errorf("ParseLine(%q) = %q, %q, %v; want %q, %q, %v", tc.line, code, msg, ok, tc.code, tc.msg, tc.ok)
		}
	}
	for _, c := range Codes() {
		if got, _, ok := ParseLine(FirstLine(c, "m")); !ok || got != c {
			t.Errorf("FirstLine(%s) does not parse back: %q", c, got)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"Example.TEST":        "example.test",
		"tls.example.test.":   "tls.example.test",
		"bücher.example.test": "xn--bcher-kva.example.test",
		"[::1]":               "::1",
		"127.0.0.1":           "127.0.0.1",
		"[fe80::1%eth0]":      "fe80::1",
	} {
		got, err := NormalizeHost(in)
		if err != nil || got != want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", ".", "a b.example.test"} {
		if got, err := NormalizeHost(bad); err == nil {
			t.Errorf("NormalizeHost(%q) = %q, want an error", bad, got)
		}
	}
}

func TestSameListener(t *testing.T) {
	for _, tc := range []struct {
		addr, listen string
		want         bool
	}{
		{"127.0.0.1:7070", "127.0.0.1:7070", true},
		{"127.0.0.1:7070", ":7070", true},
		{"127.0.0.1:7070", "0.0.0.0:7070", true},
		{"[::1]:7070", "[::]:7070", true},
		{"127.0.0.1:7070", "localhost:7070", true},
		{"127.0.0.1:7071", "127.0.0.1:7070", false},
		{"127.0.0.2:7070", "127.0.0.1:7070", false},
		{"192.0.2.1:7070", ":7070", false},
	} {
		if got := SameListener(tc.addr, tc.listen); got != tc.want {
			t.Errorf("SameListener(%q, %q) = %v, want %v", tc.addr, tc.listen, got, tc.want)
		}
	}
}

func TestFormatChain(t *testing.T) {
	got := FormatChain([]ChainEntry{{Name: "a"}, {Name: "b", OnError: true}, {Name: "c"}, {Name: "direct"}})
	if got != "a,b|c,direct" {
		t.Errorf("FormatChain = %q", got)
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{"localhost": true, "LOCALHOST.": true, "127.0.0.1:7070": true, "[::1]:1": true, "::ffff:127.0.0.1": true, "example.test": false, "10.0.0.1": false} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestEveryCodeHasAnErrorStatus(t *testing.T) {
	seen := map[Code]bool{}
	for _, c := range Codes() {
		if s := c.Status(); s < 400 || s > 599 {
			t.Errorf("%s.Status() = %d, want an error status", c, s)
		}
		if seen[c] {
			t.Errorf("%s listed twice", c)
		}
		seen[c] = true
	}
	if s := Code("no-such-code").Status(); s != 500 {
		t.Errorf("unknown code's status = %d, want 500", s)
	}
}

func TestDetails(t *testing.T) {
	for _, d := range []Denial{
		{Subject: "example.test/lib@v1.4.1", Rule: 2, RuleText: "deny example.test/lib versions <v1.4.2", Reason: "CVE fixed in v1.4.2"},
		{Subject: "github.com/evil/x@v1.0.0", Rule: 1, RuleText: "deny github.com/evil/*", Reason: "malware: see SEC-123"},
		{Subject: "example.test/x", RuleText: "default deny"},
		{Subject: "request"},
		{Subject: "example.test/x@v1.0.0", Rule: 12, RuleText: "deny example.test/*"},
	} {
		got, ok := ParseDenial(d.Message())
		if !ok || got != d {
			t.Errorf("ParseDenial(%q) = %+v, %v; want %+v", d.Message(), got, ok, d)
		}
	}
	if _, ok := ParseDenial("example.test/x not found"); ok {
		t.Error("ParseDenial read a message that is not a denial")
	}
	for _, lines := range [][]string{
		{"lookup refused: x is private " + PatternNote("*.corp.example.test") + " and ...", NoSumDBHint("*.corp.example.test")},
		{"x refused: x is private " + PatternNote("*.corp.example.test") + " and h is not a private host"},
	} {
		p, line, ok := ParsePattern(lines...)
		if !ok || p != "*.corp.example.test" || line == "" {
			t.Errorf("ParsePattern(%q) = %q, %q, %v", lines, p, line, ok)
		}
	}
	if _, _, ok := ParsePattern("nothing here"); ok {
		t.Error("ParsePattern found a pattern in a line without one")
	}
}

func TestKinds(t *testing.T) {
	seen := map[Kind]bool{}
	for _, k := range Kinds() {
		if seen[k] || !k.Known() || k.Normal() != k {
			t.Errorf("kind %q: repeated, or not known as itself", k)
		}
		seen[k] = true
	}
	if len(seen) != 13 {
		t.Errorf("%d kinds, want the 13 of the request classes", len(seen))
	}
	for _, k := range []Kind{"", "ZIP", "/x/@v/list"} {
		if k.Known() || k.Normal() != KindOther {
			t.Errorf("Kind(%q): known, or normal form %q", k, k.Normal())
		}
	}
	Kinds()[0] = "changed"
	if Kinds()[0] != KindList {
		t.Error("Kinds hands out the set itself")
	}
}
