package sidecar

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// noDNS is a resolver that asks no server: names resolve from the hosts
// file or not at all, so guard tests never reach the network.
var noDNS = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no DNS in tests")
}}

// machineAt is a machine whose interfaces have addrs.
func machineAt(addrs ...string) *upstream.Machine {
	return &upstream.Machine{Addrs: func() ([]net.Addr, error) {
		var out []net.Addr
		for _, a := range addrs {
			out = append(out, &net.IPNet{IP: net.ParseIP(a), Mask: net.CIDRMask(24, 32)})
		}
		return out, nil
	}}
}

func testGuard() *guard {
	return &guard{
		connectPorts: []int{443},
		allow:        []string{"*"},
		explicit:     map[string]bool{},
		resolve:      map[string]string{},
		own:          []string{"0.0.0.0:7070", "127.0.0.1:7071"},
		resolver:     noDNS,
		dial:         modtest.LoopbackDial, // whatever the guard under test lets through
		machine:      machineAt("203.0.113.7", "2001:db8::7"),
	}
}

// TestGuardRefusesInternalAddresses: every spelling of an address that is
// not on the public internet is refused before anything is dialled.
func TestGuardRefusesInternalAddresses(t *testing.T) {
	g := testGuard()
	for _, c := range []struct{ host, want string }{
		// IPv4-compatible and IPv4-embedded IPv6.
		{"[::a9fe:a9fe]", "an IPv4-compatible IPv6 address"},
		{"[::7f00:1]", "an IPv4-compatible IPv6 address"},
		{"[::ffff:169.254.169.254]", "an IPv4-mapped IPv6 address"},
		{"[::ffff:0:7f00:1]", "a reserved IPv6 address"}, // IPv4-translated
		// NAT64, 6to4 and Teredo that carry a forbidden IPv4 address.
		{"[64:ff9b::7f00:1]", "a NAT64 address of 127.0.0.1, a loopback address"},
		{"[64:ff9b::a9fe:a9fe]", "a NAT64 address of 169.254.169.254, a link-local address"},
		{"[64:ff9b::10.0.0.1]", "a NAT64 address of 10.0.0.1, a private address"},
		{"[64:ff9b:1:7f00:0:100::]", "a local-use NAT64 address of 127.0.0.1"}, // /48 form
		{"[64:ff9b:1:a:a00:1::]", "a local-use NAT64 address of 10.0.0.1"},     // /56 form
		{"[64:ff9b:1::a9fe:a9fe]", "a local-use NAT64 address of 169.254.169.254"},
		{"[2002:7f00:1::1]", "a 6to4 address of 127.0.0.1, a loopback address"},
		{"[2002:a9fe:a9fe::]", "a 6to4 address of 169.254.169.254"},
		{"[2002:c0a8:101::1]", "a 6to4 address of 192.168.1.1, a private address"},
		{"[2001:0:4136:e378:8000:63bf:80ff:fffe]", "a Teredo address of 127.0.0.1"}, // client 127.0.0.1
		{"[2001:0:a00:1::1]", "a Teredo address of 10.0.0.1"},                       // server 10.0.0.1
		// Other special IPv6.
		{"[fec0::1]", "a site-local address"},
		{"[ff02::1]", "a multicast address"},
		{"[ff05::2]", "a multicast address"},
		{"[100::1]", "a reserved IPv6 address"},
		{"[fe80::1%25eth0]", "a link-local address"},
		// IPv4.
		{"0.1.2.3", `a "this network" address`},
		{"0", "an unspecified address"},
		{"198.18.0.1", "a benchmarking address"},
		{"198.19.255.255", "a benchmarking address"},
		{"224.0.0.1", "a multicast address"},
		{"239.255.255.250", "a multicast address"},
		{"240.0.0.1", "a reserved address"},
		{"255.255.255.255", "the broadcast address"},
		{"0xffffffff", "the broadcast address"},
		{"0300.0250.1.1", "a private address"}, // 192.168.1.1 in octal
		{"0xA9.0xFE.0xA9.0xFE", "a link-local address"},
		{"127.1", "a loopback address"},
		{"localhost", "a loopback address"},
		// This machine's own addresses, public or not.
		{"203.0.113.7", "an address of this machine"},
		{"[2001:db8::7]", "an address of this machine"},
	} {
		addr := net.JoinHostPort(strings.Trim(c.host, "[]"), "443")
		if strings.Contains(c.host, "%25") {
			addr = c.host + ":443"
		}
		_, err := g.resolveTarget(context.Background(), addr)
		if _, ok := isRefusal(err); !ok || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a refusal with %q", addr, err, c.want)
		}
		// Dial refuses the same, and the test dialer would refuse the rest.
		if conn, err := g.Dial(context.Background(), "tcp", addr); err == nil {
			conn.Close()
			t.Errorf("%s: dialled", addr)
		} else if _, ok := isRefusal(err); !ok {
			t.Errorf("%s: Dial failed with %v, not a refusal", addr, err)
		}
	}
	// Public addresses, also inside NAT64, 6to4 and Teredo, pass.
	for _, host := range []string{"203.0.113.8", "192.0.2.1", "64:ff9b::cb00:7108", "2002:cb00:7108::1", "2606:4700::1111",
		"2001:0:cb00:7108:8000:63bf:34ff:8ef7", "11.0.0.1", "64:ff9b:1::cb00:7108", "0xcb.0.0x71.8"} {
		addr := net.JoinHostPort(host, "443")
		target, err := g.resolveTarget(context.Background(), addr)
		if err != nil {
			t.Errorf("%s: %v; want it allowed", addr, err)
			continue
		}
		// Dial dials target.String(): an IP literal and the port.
		if ap, err := netip.ParseAddrPort(target.String()); err != nil || ap != target || ap.Port() != 443 {
			t.Errorf("%s: target %s", addr, target)
		}
	}
	// A listener on every address is modgate at any of the machine's.
	for _, addr := range []string{"203.0.113.7:7070", "127.0.0.1:7071", "[::1]:7070"} {
		if _, err := g.resolveTarget(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "modgate itself") {
			t.Errorf("%s: %v; want modgate itself", addr, err)
		}
	}
}

// TestMachineAddressesRefresh: an address that comes up on an interface
// is refused once the list is read again, and the list is not read on
// every check.
func TestMachineAddressesRefresh(t *testing.T) {
	clock := modtest.NewClock()
	addrs := []string{"203.0.113.7"}
	reads := 0
	m := &upstream.Machine{
		Addrs: func() ([]net.Addr, error) {
			reads++
			var out []net.Addr
			for _, a := range addrs {
				out = append(out, &net.IPAddr{IP: net.ParseIP(a)})
			}
			return out, nil
		},
		Refresh: 10 * time.Second,
		Clock:   clock,
	}
	new := netip.MustParseAddr("198.51.100.9")
	if !m.Has(netip.MustParseAddr("203.0.113.7")) || m.Has(new) {
		t.Fatal("first reading")
	}
	addrs = append(addrs, "198.51.100.9")
	clock.Advance(9 * time.Second)
	if m.Has(new) || reads != 1 {
		t.Errorf("read again within the period: %d reads", reads)
	}
	clock.Advance(time.Second)
	if !m.Has(new) || reads != 2 {
		t.Errorf("the new address is not seen after the period: %d reads", reads)
	}
	if !m.Has(netip.MustParseAddr("::ffff:198.51.100.9")) {
		t.Errorf("the mapped form of a machine address is not the machine")
	}
}

// FuzzGuardAddress: whatever host a client names, an address the guard
// accepts is one it allows, and a literal Go or inet_aton reads as an
// address it forbids is refused.
func FuzzGuardAddress(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "0x7f.1", "2130706433", "017700000001", "::1", "::ffff:127.0.0.1", "::7f00:1",
		"64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "2001:0:4136:e378:8000:63bf:80ff:fffe", "fec0::1", "203.0.113.8",
		"fe80::1%eth0", "1.2.3.4.", "0x", "08.1.1.1", "localhost", "proxy.example.test", "[::1]", "0.0.0.0", "255.255.255.255"} {
		f.Add(s)
	}
	g := testGuard()
	f.Fuzz(func(t *testing.T, host string) {
		addr := net.JoinHostPort(host, "443")
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		target, err := g.resolveTarget(ctx, addr)
		forbidden := func(a netip.Addr) string {
			if why := refForbidden(a); why != "" {
				return why
			}
			if g.thisMachine().Has(a) {
				return "this machine"
			}
			return ""
		}
		if ip := net.ParseIP(host); ip != nil && err == nil {
			a, _ := netip.AddrFromSlice(ip)
			if why := forbidden(a.Unmap()); why != "" {
				t.Fatalf("%q (Go reads %s, %s) accepted as %s", host, ip, why, target)
			}
		}
		if a, ok := parseIP(strings.TrimSuffix(host, ".")); ok && err == nil {
			if why := forbidden(a); why != "" {
				t.Fatalf("%q (%s, %s) accepted as %s", host, a, why, target)
			}
		}
		if err != nil {
			return
		}
		ap, perr := netip.ParseAddrPort(target.String())
		if perr != nil || ap != target || ap.Port() != 443 {
			t.Fatalf("%q: target %s", host, target)
		}
		if why := forbidden(ap.Addr()); why != "" {
			t.Fatalf("%q accepted as %s, %s", host, target, why)
		}
		if ap.Addr().Zone() != "" {
			t.Fatalf("%q accepted with a zone: %s", host, target)
		}
	})
}

// refForbidden is the fuzz target's own statement of what may not be
// reached, kept apart from special so that a mistake there shows.
func refForbidden(a netip.Addr) string {
	in := func(a netip.Addr, list ...string) bool {
		for _, p := range list {
			if netip.MustParsePrefix(p).Contains(a) {
				return true
			}
		}
		return false
	}
	v4 := func(a netip.Addr) string {
		if in(a, "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
			"192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3") {
			return "a forbidden IPv4 address"
		}
		return ""
	}
	a = a.WithZone("")
	if a.Is4() {
		return v4(a)
	}
	b := a.As16()
	switch {
	case a.Is4In6():
		return "IPv4-mapped"
	case in(a, "64:ff9b::/96"):
		return v4(netip.AddrFrom4([4]byte(b[12:16])))
	case in(a, "64:ff9b:1::/48"):
		return "" // several readings; TestGuardRefusesInternalAddresses has them
	case !in(a, "2000::/3"):
		return "outside IPv6 global unicast"
	case in(a, "2002::/16"):
		return v4(netip.AddrFrom4([4]byte(b[2:6])))
	case in(a, "2001::/32"):
		if why := v4(netip.AddrFrom4([4]byte(b[4:8]))); why != "" {
			return why
		}
		return v4(netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}))
	}
	return ""
}

// TestGuardRefusesCloudMetadata: cloud metadata addresses are refused for
// a wildcard-allowed host, and also for a host that allow_hosts names
// explicitly (which may otherwise resolve to private addresses): a
// name's DNS answer must not lead modgate to the machine's credentials.
func TestGuardRefusesCloudMetadata(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		for _, c := range []struct{ addr, want string }{
			{"169.254.169.254", "a link-local address"},
			{"168.63.129.16", "Azure WireServer"},
			{"100.100.100.200", "Alibaba Cloud"},
			{"fd00:ec2::254", "AWS IPv6"},
			{"192.0.0.192", "IETF protocol assignment"},
		} {
			g := testGuard()
			// The host resolves to the address: a --resolve pin would be
			// the operator's own choice, so the test resolves through a
			// hosts-file-free resolver stub instead.
			g.resolver = stubResolver(t, "meta.example.test", c.addr)
			if explicit {
				g.allow = []string{"meta.example.test"}
				g.explicit = map[string]bool{"meta.example.test": true}
			}
			_, err := g.resolveTarget(context.Background(), "meta.example.test:443")
			if _, ok := isRefusal(err); !ok || !strings.Contains(err.Error(), c.want) {
				t.Errorf("explicit=%v %s: %v; want a refusal with %q", explicit, c.addr, err, c.want)
			}
		}
	}
	// An explicit host may still resolve to a private address.
	g := testGuard()
	g.resolver = stubResolver(t, "internal.example.test", "10.1.2.3")
	g.explicit = map[string]bool{"internal.example.test": true}
	if _, err := g.resolveTarget(context.Background(), "internal.example.test:443"); err != nil {
		t.Errorf("explicit private host: %v", err)
	}
}

// stubResolver is a resolver whose DNS server (an in-process stub) answers
// host with addr and nothing else.
func stubResolver(t *testing.T, host, addr string) *net.Resolver {
	t.Helper()
	ip := netip.MustParseAddr(addr)
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		c1, c2 := net.Pipe() // not a PacketConn: the resolver frames as over TCP
		go serveStubDNS(c2, host, ip)
		return c1, nil
	}}
}

// serveStubDNS answers DNS queries framed as over TCP on c: host's A or
// AAAA record (whichever ip is), an empty answer for anything else.
func serveStubDNS(c net.Conn, host string, ip netip.Addr) {
	defer c.Close()
	for {
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		msg := make([]byte, int(n[0])<<8|int(n[1]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(msg)
		if err != nil {
			return
		}
		q, err := p.Question()
		if err != nil {
			return
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionAvailable: true})
		b.EnableCompression()
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		if strings.EqualFold(strings.TrimSuffix(q.Name.String(), "."), host) {
			switch {
			case q.Type == dnsmessage.TypeA && ip.Is4():
				b.AResource(rh, dnsmessage.AResource{A: ip.As4()})
			case q.Type == dnsmessage.TypeAAAA && ip.Is6():
				b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: ip.As16()})
			}
		}
		out, err := b.Finish()
		if err != nil {
			return
		}
		if _, err := c.Write(append([]byte{byte(len(out) >> 8), byte(len(out))}, out...)); err != nil {
			return
		}
	}
}
