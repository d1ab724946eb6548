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
	for _, c := range Codes {
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
