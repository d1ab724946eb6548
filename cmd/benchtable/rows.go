package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// A row measures its columns and hands what it measured to the report.
// The rows of the load and streaming sections run against the rig's
// proxies; the fleet and hot-path rows start processes of their own.
type row struct {
	section section
	run     func(options, *report) error
}

// rows are the table's rows, in the order they run.
func (rg *rig) rows() []row {
	return []row{
		{sectionSmall, rg.smallRows},
		{sectionCached, rg.cachedRows},
		{sectionZip, rg.zipRow},
		{sectionForward, rg.forwardRows},
		{sectionTunnel, rg.tunnelRows},
		{sectionSetup, rg.setupRows},
		{sectionTunnelZip, rg.tunnelZipRow},
		{sectionTunnelZipTLS, rg.tunnelZipTLSRow},
		{sectionFleet, rg.fleetRows},
		{sectionHot, hotRow},
	}
}

// smallRows: small requests in reverse mode, at each client count, through
// the floor, nginx and every modgate column but cached.
func (rg *rig) smallRows(o options, out *report) error {
	for _, n := range o.clients {
		ts := []*target{rg.direct(rg.small(rg.originAddr)), column("floor", rg.floor, rg.small(rg.floor.addrs.HTTP)), column("nginx", rg.nginx, rg.small(rg.originAddr))}
		for _, name := range []string{"modgate", "sdk-off", "otlp", "always-on", "unverified"} {
			ts = append(ts, column(name, rg.gates[name], rg.small(rg.gates[name].addrs.HTTP)))
		}
		out.load(sectionSmall, fmt.Sprintf("Small/mode=reverse/clients=%d", n), n, measure(o.plan, "small requests, reverse, "+clientsText(n), compact(ts), n, 0, false))
	}
	return nil
}

// cachedRows: the same small requests from the cached column's cache,
// against nginx serving them from files.
func (rg *rig) cachedRows(o options, out *report) error {
	c := rg.gates["cached"]
	// Fill the cache first: the warm-up is too short for a miss per
	// artifact (each verified, written and synced) on a slow disk.
	if err := fill(c, rg.paths); err != nil {
		return err
	}
	for _, n := range o.cached {
		ts := []*target{rg.direct(rg.small(rg.originAddr)), column("floor", rg.floor, rg.small(rg.floor.addrs.HTTP)), column("nginx-file", rg.nginxFile, rg.small(rg.originAddr)), column("cached", c, rg.small(c.addrs.HTTP))}
		out.load(sectionCached, fmt.Sprintf("Small/mode=cached/clients=%d", n), n, measure(o.plan, "small requests from the cache, "+clientsText(n), compact(ts), n, 0, false))
	}
	return nil
}

// zipRow: the module zip in reverse mode, one client.
func (rg *rig) zipRow(o options, out *report) error {
	zip := func(host string) [][]byte { return requests([]string{zipPath}, host, false) }
	ts := []*target{rg.direct(zip(rg.originAddr)), column("floor", rg.floor, zip(rg.floor.addrs.HTTP)), column("nginx", rg.nginx, zip(rg.originAddr)), column("nginx-file", rg.nginxFile, zip(rg.originAddr))}
	// cached: the zip is verified once, in the warm-up, and kept;
	// unverified: sumdb off, the zip streams as it arrives.
	for _, name := range []string{"modgate", "cached", "unverified"} {
		ts = append(ts, column(name, rg.gates[name], zip(rg.gates[name].addrs.HTTP)))
	}
	out.bigZip = rg.big
	// A zip larger than modgate's verify-first limit is verified as it
	// is kept, after it is served: the cached column is measured once
	// it holds the zip, not while it hashes it.
	if err := keepZip(rg.gates["cached"]); err != nil {
		return err
	}
	out.stream(sectionZip, "Zip/mode=reverse", measure(o.zipPlan(), fmt.Sprintf("%d MiB zip, reverse", o.zipMiB), compact(ts), 1, 1, true))
	return nil
}

// forwardRows: small requests in absolute-form, as to a forward proxy.
func (rg *rig) forwardRows(o options, out *report) error {
	abs := requests(rg.paths, rg.originAddr, true)
	for _, n := range o.clients {
		ts := []*target{rg.direct(rg.small(rg.originAddr)), column("floor", rg.floor, abs), column("squid", rg.squid, abs), column("modgate", rg.gates["modgate"], abs)}
		out.load(sectionForward, fmt.Sprintf("Small/mode=forward/clients=%d", n), n, measure(o.plan, "small requests, forward absolute-form, "+clientsText(n), compact(ts), n, 0, false))
	}
	return nil
}

// tunnelRows: small requests through CONNECT tunnels opened once.
func (rg *rig) tunnelRows(o options, out *report) error {
	for _, n := range o.clients {
		out.load(sectionTunnel, fmt.Sprintf("Tunnel/clients=%d", n), n, measure(o.plan, "small requests through open tunnels, "+clientsText(n), rg.tunnel(rg.small(rg.originAddr), rg.originAddr, false, nil), n, 0, false))
	}
	return nil
}

// setupRows: a new tunnel for every request, at two client counts at
// most: every request is two new connections.
func (rg *rig) setupRows(o options, out *report) error {
	for _, n := range o.clients[:min(2, len(o.clients))] {
		out.load(sectionSetup, fmt.Sprintf("TunnelSetup/clients=%d", n), n, measure(o.plan, "a new tunnel per request, "+clientsText(n), rg.tunnel(requests(rg.infos(), rg.originAddr, false), rg.originAddr, true, nil), n, 0, false))
	}
	return nil
}

// tunnelZipRow: the module zip through a CONNECT tunnel.
func (rg *rig) tunnelZipRow(o options, out *report) error {
	out.stream(sectionTunnelZip, "Zip/mode=tunnel", measure(o.zipPlan(), fmt.Sprintf("%d MiB zip through a tunnel", o.zipMiB), rg.tunnel(requests([]string{zipPath}, rg.originAddr, false), rg.originAddr, false, nil), 1, 1, true))
	return nil
}

// tunnelZipTLSRow: the module zip over TLS through a CONNECT tunnel.
func (rg *rig) tunnelZipTLSRow(o options, out *report) error {
	out.stream(sectionTunnelZipTLS, "Zip/mode=tunnel-tls", measure(o.zipPlan(), fmt.Sprintf("%d MiB zip over TLS through a tunnel", o.zipMiB), rg.tunnel(requests([]string{zipPath}, rg.tlsAddr, false), rg.tlsAddr, false, rg.tlsClient), 1, 1, true))
	return nil
}

// fleetRows: the fleet's cold starts (fleet.go).
func (rg *rig) fleetRows(o options, out *report) error { return runFleet(o, rg.dir, out) }

// hotRow: the hot path, with Go's benchmark harness in a child process.
func hotRow(o options, out *report) error {
	fmt.Fprintln(os.Stderr, "bench: hot path, with Go's benchmark harness")
	hot, err := hotPathChild(o)
	if err != nil {
		return err
	}
	out.hot(hot)
	return nil
}

// column is the proxy c serving reqs at its listener, nil if c did not
// start.
func column(name string, c *child, reqs [][]byte) *target {
	if c == nil {
		return nil
	}
	return &target{name: name, addr: c.addrs.HTTP, reqs: reqs, child: c}
}

// direct is the column without a proxy: reqs straight to the origin.
func (rg *rig) direct(reqs [][]byte) *target {
	return &target{name: "direct", addr: rg.originAddr, reqs: reqs}
}

// small prepares the small artifacts' requests for host.
func (rg *rig) small(host string) [][]byte { return requests(rg.paths, host, false) }

// infos are the paths of the modules' .info files.
func (rg *rig) infos() []string {
	var infos []string // paths are .info, .mod and list of each module in turn
	for i := 0; i < len(rg.paths); i += 3 {
		infos = append(infos, rg.paths[i])
	}
	return infos
}

// tunnel is the columns of a tunnel row: reqs sent through a CONNECT
// tunnel to via (over TLS with tc, if set; a new tunnel per request if
// fresh) by the floor, Squid and modgate, and straight to via by direct.
func (rg *rig) tunnel(reqs [][]byte, via string, fresh bool, tc *tls.Config) []*target {
	ts := []*target{{name: "direct", addr: via, reqs: reqs, fresh: fresh, tls: tc}}
	for _, c := range []*child{rg.floor, rg.squid, rg.gates["modgate"]} {
		if c != nil {
			ts = append(ts, &target{name: c.name, addr: c.addrs.HTTP, via: via, reqs: reqs, fresh: fresh, tls: tc, child: c})
		}
	}
	return ts
}

// compact drops the columns whose process did not start.
func compact(ts []*target) []*target {
	out := ts[:0]
	for _, t := range ts {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

// requests prepares a GET of each path for host (the Host header). With
// absolute set the request line names the URL (absolute-form, as to a
// forward proxy). The headers are those the go command sends.
func requests(paths []string, host string, absolute bool) [][]byte {
	var rs [][]byte
	for _, p := range paths {
		uri := p
		if absolute {
			uri = "http://" + host + p
		}
		rs = append(rs, []byte("GET "+uri+" HTTP/1.1\r\nHost: "+host+"\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"))
	}
	return rs
}

// hotPathChild runs the hot-path benchmarks in a child process of their
// own, away from this process's heap.
func hotPathChild(o options) ([]hotResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-role", "hotpath", "-fixtures", o.fixtures, "-hotpath-n", strconv.Itoa(o.hotN))
	cmd.Stderr = os.Stderr
	setParentDeathSignal(cmd)
	data, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("hot path: %w", err)
	}
	var rs []hotResult
	return rs, json.Unmarshal(data, &rs)
}
