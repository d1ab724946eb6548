package modtest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// LoopbackDial connects to loopback addresses only, and refuses every
// other address before a packet leaves; it asks no DNS server, not even
// one on loopback (which would ask the network in turn). Tests that run
// servers under it (sidecar.Config.Dial) cannot reach the network, even
// when the code under test would let them.
func LoopbackDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return loopbackDialer.DialContext(ctx, network, addr)
}

var loopbackDialer = &net.Dialer{Timeout: 10 * time.Second, Control: func(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	switch {
	case err != nil || !ap.Addr().Unmap().IsLoopback():
		return errors.New("test dialer: only loopback may be dialled, not " + address)
	case ap.Port() == 53 || strings.HasPrefix(network, "udp"):
		return errors.New("test dialer: no DNS in tests, not even " + address)
	}
	return nil
}}
