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
		// Cloud metadata services: never, even for a host named in
		// redirect_hosts (its DNS answer is not the operator's to vouch for).
		{"169.254.169.254", true, "a link-local address"},
		{"168.63.129.16", true, "a cloud metadata address (Azure WireServer)"},
		{"168.63.129.16", false, "a cloud metadata address (Azure WireServer)"},
		{"100.100.100.200", true, "a cloud metadata address (Alibaba Cloud)"},
		{"fd00:ec2::254", true, "a cloud metadata address (AWS IPv6)"},
		{"fd00:ec2::254", false, "a cloud metadata address (AWS IPv6)"},
		{"192.0.0.192", true, "an IETF protocol assignment address (cloud metadata lives there)"},
		{"192.0.0.8", false, "an IETF protocol assignment address (cloud metadata lives there)"},
		{"64:ff9b::a9fe:a9fe", true, "an IPv6 address of 169.254.169.254, a link-local address"},
		{"fd00:ec2::253", true, ""},               // a private address, named explicitly
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
