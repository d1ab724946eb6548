package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// rig is what the rows run against: a folder for the run, the origin with
// the module zip (over HTTP, and over HTTPS for the TLS tunnel row), the
// OTLP receiver, modgate's config file and the proxies' processes. close
// stops and removes everything the rig started, whatever step failed.
type rig struct {
	dir        string
	big        *bigZip  // the zip rows' module zip
	org        *origin  // serves the fixtures, their checksum database and big
	paths      []string // .info, .mod and list of each module in turn
	originAddr string
	tlsAddr    string      // the origin over HTTPS
	tlsClient  *tls.Config // trusts tlsAddr's certificate
	recv       *receiver   // the OTLP receiver
	recvAddr   string
	configFile string // the config every modgate column shares

	// The columns of the load and streaming rows; the fleet and hot-path
	// rows start processes of their own. A peer that did not start is nil,
	// and peerNotes say why.
	floor, nginx, nginxFile, squid *child
	gates                          map[string]*child // the modgate columns by name
	peerNotes                      []string

	children []*child // stopped first, in the order they started
	closers  []func() // then these, last first
}

func newRig() *rig { return &rig{gates: map[string]*child{}} }

// close stops the children, then closes the servers and removes the folder.
func (rg *rig) close() {
	for _, c := range rg.children {
		c.stop()
	}
	for i := len(rg.closers) - 1; i >= 0; i-- {
		rg.closers[i]()
	}
}

// startOrigin makes the run's folder and module zip and starts the origin
// (over HTTP and HTTPS) and the OTLP receiver.
func (rg *rig) startOrigin(o options) error {
	dir, err := os.MkdirTemp("", "modgate-bench-")
	if err != nil {
		return err
	}
	rg.dir = dir
	rg.closers = append(rg.closers, func() { os.RemoveAll(dir) })
	fmt.Fprintf(os.Stderr, "bench: writing a %d MiB module zip\n", o.zipMiB)
	if rg.big, err = writeBigZip(filepath.Join(dir, "big.zip"), int64(o.zipMiB)<<20); err != nil {
		return err
	}
	if rg.org, rg.paths, err = newOrigin(o.fixtures, rg.big); err != nil {
		return err
	}
	if rg.originAddr, err = rg.serve(rg.org); err != nil {
		return err
	}
	rg.recv = &receiver{}
	if rg.recvAddr, err = rg.serve(rg.recv); err != nil {
		return err
	}
	// The TLS tunnel row's origin: the same origin over HTTPS, with a
	// certificate of a CA made for this run.
	serverTLS, tlsClient, err := originTLS(filepath.Join(dir, "ca"))
	if err != nil {
		return err
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	tlsSrv := &http.Server{Handler: rg.org, TLSConfig: serverTLS}
	go tlsSrv.ServeTLS(tlsLn, "", "")
	rg.closers = append(rg.closers, func() { tlsSrv.Close() })
	rg.tlsAddr, rg.tlsClient = tlsLn.Addr().String(), tlsClient
	return nil
}

// serve serves h on a loopback port until close, and returns its address.
func (rg *rig) serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	rg.closers = append(rg.closers, func() { srv.Close() })
	return ln.Addr().String(), nil
}

func (rg *rig) originURL() string { return "http://" + rg.originAddr }

// writeConfig writes the bench policy and the config file every modgate
// column shares, which lets forward mode reach both of the origin's ports.
func (rg *rig) writeConfig() error {
	policyDir := filepath.Join(rg.dir, "policy") // apart from the audit logs: the policy watcher sees its whole folder
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		return err
	}
	policyFile, err := writePolicy(policyDir)
	if err != nil {
		return err
	}
	_, originPort, _ := net.SplitHostPort(rg.originAddr)
	_, tlsPort, _ := net.SplitHostPort(rg.tlsAddr)
	rg.configFile = filepath.Join(rg.dir, "modgate.yaml")
	return os.WriteFile(rg.configFile, []byte(fmt.Sprintf(modgateConfig, rg.originURL(), policyFile, originPort+", "+tlsPort)), 0o644)
}

// startProxies starts the columns of the load and streaming rows: the
// floor, every modgate column, and the peers (nginx, Squid). The peers are
// optional: without them their columns stay empty and the table says why.
func (rg *rig) startProxies(o options) error {
	var err error
	if rg.floor, err = startChild("floor", "floor", "-origin", rg.originURL()); err != nil {
		return err
	}
	rg.children = append(rg.children, rg.floor)
	for _, mc := range modgateColumns {
		c, err := startModgate(o.modgate, rg.dir, rg.configFile, "http://"+rg.recvAddr, rg.org.key, mc)
		if err != nil {
			return err
		}
		rg.children = append(rg.children, c)
		rg.gates[mc.name] = c
	}
	www := filepath.Join(rg.dir, "www")
	if err := rg.org.writeFiles(www); err != nil {
		return err
	}
	if rg.nginx, rg.nginxFile, err = startNginx(rg.dir, rg.originAddr, www); err != nil {
		rg.peerNotes = append(rg.peerNotes, err.Error())
	} else {
		rg.children = append(rg.children, rg.nginx)
	}
	if rg.squid, err = startSquid(rg.dir); err != nil {
		rg.peerNotes = append(rg.peerNotes, err.Error())
	} else {
		rg.children = append(rg.children, rg.squid)
	}
	return nil
}
