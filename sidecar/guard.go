package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/modgate/modgate/sidecar/upstream"
)

// refusal is a destination forward mode will not reach; its text goes in
// the 403's status line, which is all the go command and git print.
type refusal struct{ reason string }

func (r *refusal) Error() string { return r.reason }

// Unwrap tells the upstream's breaker and retries that the destination was
// refused, not unwell.
func (r *refusal) Unwrap() error { return upstream.ErrRefused }

func refuse(format string, args ...any) error {
	return &refusal{reason: fmt.Sprintf(format, args...)}
}

// guard decides where forward mode may connect. It is applied after name
// resolution, in the dialer, so that a name that resolves to a private
// address is refused however the client spelled it, for CONNECT, for
// absolute-form requests and for redirects alike.
type guard struct {
	// ports a CONNECT may reach; plain-HTTP requests may also use 80.
	connectPorts []int
	// allow are host patterns (path.Match, lower case): "*" allows any
	// public host. Hosts named without a wildcard are "explicit": only
	// those may resolve to loopback or private addresses.
	allow    []string
	explicit map[string]bool
	// resolve pins host:port to an address, as --resolve does.
	resolve map[string]string
	// own are modgate's listeners, never a destination.
	own      []string
	resolver *net.Resolver
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	// machine is this machine's addresses, refused like loopback. If nil,
	// upstream.ThisMachine().
	machine *upstream.Machine
}

func (g *guard) thisMachine() *upstream.Machine {
	if g.machine == nil {
		return upstream.ThisMachine()
	}
	return g.machine
}

// checkHost refuses a CONNECT or request target before anything is
// resolved: a port not allowed, a host not allowed.
func (g *guard) checkHost(host, port string, connect bool) error {
	p, err := strconv.Atoi(port)
	if err != nil {
		return refuse("invalid port %q", port)
	}
	if !slices.Contains(g.connectPorts, p) && (connect || p != 80) {
		return refuse("port %d is not in connect_ports %v", p, g.connectPorts)
	}
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range g.allow {
		if ok, _ := path.Match(pat, h); ok {
			return nil
		}
	}
	return refuse("host %s is not in allow_hosts", host)
}

// Dial connects to addr ("host:port") if every address it resolves to may
// be reached, and refuses with a *refusal otherwise. What it dials is the
// address it checked, spelled as an IP literal: nothing resolves the name
// a second time.
func (g *guard) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		// Its callers give a deadline (the origin's dial timeout); a
		// resolution or dial without one would wait for the kernel's.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, upstream.DefaultTimeouts().Dial)
		defer cancel()
	}
	target, err := g.resolveTarget(ctx, addr)
	if err != nil {
		return nil, err
	}
	return g.dial(ctx, network, target.String())
}

// resolveTarget returns the checked address to dial for addr.
func (g *guard) resolveTarget(ctx context.Context, addr string) (netip.AddrPort, error) {
	host, sport, err := net.SplitHostPort(addr)
	if err != nil {
		return netip.AddrPort{}, refuse("invalid address %q", addr)
	}
	port64, err := strconv.ParseUint(sport, 10, 16)
	if err != nil {
		return netip.AddrPort{}, refuse("invalid port in %q", addr)
	}
	port := uint16(port64)
	lhost := strings.ToLower(strings.TrimSuffix(host, "."))
	var one [1]netip.Addr // a literal or a pin: no slice to allocate
	var addrs []netip.Addr
	pinned, isPinned := "", false
	if len(g.resolve) > 0 {
		pinned, isPinned = g.resolve[net.JoinHostPort(lhost, sport)]
	}
	switch {
	case isPinned:
		ap, err := netip.ParseAddrPort(pinned)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("resolve %s=%s: %v", addr, pinned, err)
		}
		one[0], port = ap.Addr(), ap.Port()
		addrs = one[:]
	default:
		if ip, ok := parseIP(lhost); ok {
			one[0] = ip
			addrs = one[:]
			break
		}
		ips, err := g.resolver.LookupNetIP(ctx, "ip", lhost)
		if err != nil {
			return netip.AddrPort{}, err
		}
		for _, ip := range ips {
			// The resolver hands IPv4 answers back in mapped form; only a
			// literal spelled that way is refused for it.
			addrs = append(addrs, ip.Unmap())
		}
	}
	for _, a := range addrs {
		if g.isOwn(netip.AddrPortFrom(a.Unmap(), port)) {
			return netip.AddrPort{}, refuse("%s is modgate itself", addr)
		}
		if isPinned {
			continue
		}
		if g.explicit[lhost] {
			if why := upstream.MetadataAddr(a); why != "" {
				return netip.AddrPort{}, refuse("%s resolves to %s, %s", host, a, why)
			}
			continue
		}
		if why := special(a); why != "" {
			return netip.AddrPort{}, refuse("%s resolves to %s, %s", host, a, why)
		}
		if g.thisMachine().Has(a) {
			return netip.AddrPort{}, refuse("%s resolves to %s, an address of this machine", host, a)
		}
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), port), nil
}

// isOwn reports whether target is one of modgate's listeners: the same
// address and port, or the port of a listener on every address (0.0.0.0,
// ::) at any address of this machine.
func (g *guard) isOwn(target netip.AddrPort) bool {
	tip := target.Addr().Unmap()
	for _, own := range g.own {
		oh, op, err := net.SplitHostPort(own)
		if err != nil {
			continue
		}
		if p, err := strconv.ParseUint(op, 10, 16); err != nil || uint16(p) != target.Port() {
			continue
		}
		oip, err := netip.ParseAddr(oh)
		if err != nil || oip.Unmap() == tip {
			return true
		}
		if oip.IsUnspecified() && (tip.IsLoopback() || tip.IsUnspecified() || g.thisMachine().Has(tip)) {
			return true
		}
	}
	return false
}

// special says why an address is not on the public internet, or "":
// loopback, private, link-local, site-local, multicast, broadcast,
// reserved and the like, and IPv6 forms that carry such an IPv4 address
// (see upstream.SpecialAddr, which upstream redirects share).
func special(a netip.Addr) string {
	return upstream.SpecialAddr(a)
}

// parseIP parses an IP literal, including the old inet_aton spellings
// that some resolvers accept ("0x7f.1", "2130706433", "017700000001"), so
// that none of them slips past special as a host name.
func parseIP(host string) (netip.Addr, bool) {
	return upstream.ParseIPLiteral(host)
}

// isRefusal reports whether err is a guard's refusal.
func isRefusal(err error) (*refusal, bool) {
	var r *refusal
	ok := errors.As(err, &r)
	return r, ok
}
