package upstream

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// This file classifies destination addresses: which ones are not on the
// public internet, so that neither forward mode nor an upstream's
// redirect can be used to reach modgate's own machine, its network or a
// cloud metadata service (SSRF). sidecar's forward-mode guard and the
// redirect check of New share it.

type prefixWhy struct {
	p   netip.Prefix
	why string
}

// within says why a is special: the reason of the first prefix of lists
// that holds it, or "" when none does.
func within(a netip.Addr, lists ...[]prefixWhy) string {
	for _, list := range lists {
		for _, s := range list {
			if s.p.Contains(a) {
				return s.why
			}
		}
	}
	return ""
}

func prefixes(list ...string) []prefixWhy {
	var out []prefixWhy
	for i := 0; i < len(list); i += 2 {
		out = append(out, prefixWhy{netip.MustParsePrefix(list[i]), list[i+1]})
	}
	return out
}

// metadata are the addresses of cloud metadata services (and the blocks
// they live in), which hand out the machine's cloud credentials: refused
// even for a host that allow_hosts or redirect_hosts names without a
// wildcard, since a name's DNS answer is not the operator's to vouch for.
// Only a --resolve pin, which is the operator's own, may lead there.
var metadata = prefixes(
	"169.254.0.0/16", "a link-local address",
	"168.63.129.16/32", "a cloud metadata address (Azure WireServer)",
	"100.100.100.200/32", "a cloud metadata address (Alibaba Cloud)",
	"192.0.0.0/24", "an IETF protocol assignment address (cloud metadata lives there)",
	"fd00:ec2::254/128", "a cloud metadata address (AWS IPv6)",
)

// MetadataAddr says why a is a cloud metadata address, or "": the
// address itself, its IPv4-mapped form, or the IPv4 address a NAT64,
// 6to4 or Teredo address carries.
func MetadataAddr(a netip.Addr) string {
	a = a.WithZone("").Unmap()
	for _, m := range metadata {
		if m.p.Contains(a) {
			return m.why
		}
	}
	if a.Is6() {
		b := a.As16()
		var cands [][4]byte
		switch {
		case nat64.Contains(a):
			cands = [][4]byte{v4(b[12:16])}
		case nat64Local.Contains(a):
			cands = [][4]byte{{b[6], b[7], b[9], b[10]}, {b[7], b[9], b[10], b[11]}, v4(b[9:13]), v4(b[12:16])}
		case sixToFour.Contains(a):
			cands = [][4]byte{v4(b[2:6])}
		case teredo.Contains(a):
			client := v4(b[12:16])
			for i := range client {
				client[i] ^= 0xff
			}
			cands = [][4]byte{v4(b[4:8]), client}
		}
		for _, c := range cands {
			if why := MetadataAddr(netip.AddrFrom4(c)); why != "" {
				return "an IPv6 address of " + netip.AddrFrom4(c).String() + ", " + why
			}
		}
	}
	return ""
}

// special4 are the IPv4 blocks that are not public unicast, first match.
var special4 = prefixes(
	"0.0.0.0/32", "an unspecified address",
	"0.0.0.0/8", `a "this network" address`,
	"127.0.0.0/8", "a loopback address",
	"10.0.0.0/8", "a private address",
	"172.16.0.0/12", "a private address",
	"192.168.0.0/16", "a private address",
	"169.254.0.0/16", "a link-local address",
	"100.64.0.0/10", "a carrier-grade NAT address",
	"198.18.0.0/15", "a benchmarking address",
	"224.0.0.0/4", "a multicast address",
	"255.255.255.255/32", "the broadcast address",
	"240.0.0.0/4", "a reserved address",
)

// special6 are the IPv6 blocks that are not public unicast and embed no
// IPv4 address worth looking at, first match.
var special6 = prefixes(
	"::/128", "an unspecified address",
	"::1/128", "a loopback address",
	"::/96", "an IPv4-compatible IPv6 address",
	"fc00::/7", "a private address",
	"fe80::/10", "a link-local address",
	"fec0::/10", "a site-local address",
	"ff00::/8", "a multicast address",
)

var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour  = netip.MustParsePrefix("2002::/16")
	teredo     = netip.MustParsePrefix("2001::/32")
	global6    = netip.MustParsePrefix("2000::/3")
)

// SpecialAddr says why a is not an address on the public internet, or ""
// when it is. IPv6 addresses that carry an IPv4 address (NAT64, 6to4,
// Teredo) are judged by it; IPv4-mapped and IPv4-compatible forms are
// refused outright, as is IPv6 outside the global unicast block.
func SpecialAddr(a netip.Addr) string {
	a = a.WithZone("")
	switch {
	case !a.IsValid():
		return "not an address"
	case a.Is4In6():
		return "an IPv4-mapped IPv6 address"
	case a.Is4():
		return within(a, metadata, special4)
	}
	if why := within(a, metadata, special6); why != "" {
		return why
	}
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return embedded("a NAT64 address", v4(b[12:16]))
	case nat64Local.Contains(a):
		// RFC 6052: where the IPv4 address sits depends on the prefix
		// length (/48, /56, /64, /96), which only the local translator
		// knows; any that is not public is enough. A reading in
		// 0.0.0.0/8 is the zero padding of another length (and no
		// translator could reach it anyway); with no other reading the
		// address leads nowhere public.
		var cands [][4]byte
		for _, c := range [][4]byte{{b[6], b[7], b[9], b[10]}, {b[7], b[9], b[10], b[11]}, v4(b[9:13]), v4(b[12:16])} {
			if c[0] != 0 {
				cands = append(cands, c)
			}
		}
		if len(cands) == 0 {
			return "a local-use NAT64 address of no public IPv4 address"
		}
		return embedded("a local-use NAT64 address", cands...)
	case sixToFour.Contains(a):
		return embedded("a 6to4 address", v4(b[2:6]))
	case teredo.Contains(a):
		client := v4(b[12:16])
		for i := range client {
			client[i] ^= 0xff
		}
		return embedded("a Teredo address", v4(b[4:8]), client)
	case !global6.Contains(a):
		return "a reserved IPv6 address"
	}
	return ""
}

func v4(b []byte) [4]byte { return [4]byte{b[0], b[1], b[2], b[3]} }

// embedded judges an IPv6 address by the IPv4 addresses it carries.
func embedded(kind string, addrs ...[4]byte) string {
	for _, b := range addrs {
		a := netip.AddrFrom4(b)
		if why := SpecialAddr(a); why != "" {
			return kind + " of " + a.String() + ", " + why
		}
	}
	return ""
}

// ParseIPLiteral parses host as an IP address: an IPv6 literal (with or
// without brackets and zone) or an IPv4 address in any spelling that
// inet_aton, and with it many resolvers and HTTP clients, accepts: one to
// four parts, each decimal, octal (leading 0) or hex (0x), the last part
// filling the bytes left ("127.1", "0x7f.1", "2130706433",
// "017700000001"). A name that only looks numeric (too many parts, a part
// out of range) is not an address.
func ParseIPLiteral(host string) (netip.Addr, bool) {
	h := strings.TrimSuffix(host, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.WithZone(""), true
	}
	parts := strings.Split(h, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		n, ok := atonPart(p)
		if !ok {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	// a, a.b (b: 24 bits), a.b.c (c: 16 bits), a.b.c.d
	var v uint64
	last := len(nums) - 1
	for i, n := range nums[:last] {
		if n > 255 {
			return netip.Addr{}, false
		}
		v |= n << (24 - 8*i)
	}
	if nums[last] >= 1<<(8*(4-last)) {
		return netip.Addr{}, false
	}
	v |= nums[last]
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// atonPart parses one part of an inet_aton address.
func atonPart(p string) (uint64, bool) {
	base, digits := 10, p
	switch {
	case len(p) > 2 && (p[:2] == "0x" || p[:2] == "0X"):
		base, digits = 16, p[2:]
	case len(p) > 1 && p[0] == '0':
		base, digits = 8, p[1:]
	}
	if digits == "" || strings.ContainsAny(digits, "+-_") {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, base, 32)
	return n, err == nil
}

// Machine is the set of this machine's own addresses, read from its
// network interfaces. The zero value reads net.InterfaceAddrs, at most
// once every 10 s. Safe for concurrent use.
type Machine struct {
	// Addrs lists the interface addresses. If nil, net.InterfaceAddrs.
	Addrs func() ([]net.Addr, error)
	// Refresh is how long a reading is kept. If zero, 10 s: an address
	// that comes up is refused within that, and a guard costs one
	// interface listing per period at most.
	Refresh time.Duration
	// Clock tells time. If nil, wire.SystemClock.
	Clock wire.Clock

	mu   sync.Mutex
	read time.Time
	set  map[netip.Addr]bool
}

// ThisMachine returns the machine modgate runs on: one Machine for the
// process, so that its reading of the interfaces is shared.
func ThisMachine() *Machine { return thisMachine }

var thisMachine = &Machine{}

// Has reports whether a is one of the machine's addresses.
func (m *Machine) Has(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	var clock wire.Clock = wire.SystemClock{}
	if m.Clock != nil {
		clock = m.Clock
	}
	refresh := m.Refresh
	if refresh <= 0 {
		refresh = 10 * time.Second
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := clock.Now(); m.set == nil || t.Sub(m.read) >= refresh || t.Before(m.read) {
		list := net.InterfaceAddrs
		if m.Addrs != nil {
			list = m.Addrs
		}
		set := map[netip.Addr]bool{}
		if addrs, err := list(); err == nil {
			for _, ad := range addrs {
				var ip net.IP
				switch v := ad.(type) {
				case *net.IPNet:
					ip = v.IP
				case *net.IPAddr:
					ip = v.IP
				}
				if x, ok := netip.AddrFromSlice(ip); ok {
					set[x.Unmap()] = true
				}
			}
		}
		m.set, m.read = set, t
	}
	return m.set[a]
}
