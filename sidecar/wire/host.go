package wire

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/net/idna"
)

// NormalizeHost is a host name as modgate compares it everywhere: lower
// case, no trailing dot, international names in their ASCII (punycode)
// form, IP literals in their canonical spelling without brackets. Every
// check of a request's host (allow lists, MITM hosts, private hosts, the
// checksum database, the SSRF guard, breakers, certificates) uses this one
// value, so that no spelling passes one check and fails another.
func NormalizeHost(host string) (string, error) {
	h := strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ".")
	if h == "" {
		return "", fmt.Errorf("empty host name")
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.WithZone("").String(), nil
	}
	a, err := idna.Lookup.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("invalid host name %q: %v", host, err)
	}
	return strings.ToLower(a), nil
}

// NormalizeHostPort normalises the host of "host:port"; a missing port is
// defaultPort.
func NormalizeHostPort(hostport, defaultPort string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(hostport)
	if err != nil {
		if defaultPort == "" || strings.Count(hostport, ":") > 1 && !strings.HasPrefix(hostport, "[") {
			return "", "", fmt.Errorf("invalid host:port %q", hostport)
		}
		host, port = hostport, defaultPort
	}
	if host, err = NormalizeHost(host); err != nil {
		return "", "", err
	}
	return host, port, nil
}

// IsLoopbackHost reports whether host (with or without a port) names this
// machine by a loopback address or "localhost", without a lookup.
func IsLoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// SameListener reports whether a connection to addr ("ip:port") reaches a
// listener on listen ("host:port", the host empty or unspecified for
// every address).
func SameListener(addr, listen string) bool {
	th, tp, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	lh, lp, err := net.SplitHostPort(listen)
	if err != nil || lp != tp {
		return false
	}
	tip, err := netip.ParseAddr(strings.Trim(th, "[]"))
	if err != nil {
		return false
	}
	tip = tip.Unmap()
	if lh == "" {
		return tip.IsLoopback() || tip.IsUnspecified()
	}
	lip, err := netip.ParseAddr(lh)
	if err != nil {
		return strings.EqualFold(lh, "localhost") && tip.IsLoopback()
	}
	lip = lip.Unmap()
	if lip.IsUnspecified() {
		return tip.IsLoopback() || tip.IsUnspecified()
	}
	return lip == tip
}
