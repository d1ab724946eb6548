package upstream

import (
	"net/netip"
	"testing"
)

func TestRedirectAddrCheck(t *testing.T) {
	for _, c := range []struct {
		addr     string
		explicit bool
		want     string
	}{
		{"203.0.113.8", false, ""},
		{"10.0.0.1", false, "a private address"},
		{"10.0.0.1", true, ""}, // named in redirect_hosts: may be internal
		{"169.254.169.254", true, ""},
		{"127.0.0.1", true, "a loopback address"}, // never: modgate's own ports are there
		{"::1", true, "a loopback address"},
		{"::ffff:127.0.0.1", true, "a loopback address"},
		{"::ffff:10.0.0.1", true, "an IPv4-mapped IPv6 address"},
		{"0.0.0.0", true, "an unspecified address"},
		{"0.1.2.3", true, `a "this network" address`},
		{"64:ff9b::a9fe:a9fe", false, "a NAT64 address of 169.254.169.254, a link-local address"},
	} {
		got := RedirectAddrCheck("cdn.example.test", netip.MustParseAddr(c.addr), c.explicit)
		if got != c.want {
			t.Errorf("%s explicit=%v: %q; want %q", c.addr, c.explicit, got, c.want)
		}
	}
}
