package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/modgate/modgate/sidecar/wire"
)

// serveReverse answers an origin-form request: modgate is the client's
// GOPROXY and walks its own chain of upstreams.
func (s *Server) serveReverse(w http.ResponseWriter, r *http.Request) {
	x := s.newExchange(w, r, wire.ModeReverse)
	x.end(s.reverse(x))
}

// reverse authenticates and classifies an origin-form request and picks its source: the
// chain for the module proxy protocol, the checksum database's route for
// /sumdb/.
func (s *Server) reverse(x *exchange) error {
	r := x.r
	identity, err := s.clients.authenticate(r, false)
	x.setIdentity(identity, err)
	if err != nil {
		return err
	}
	if r.URL.Path == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		s.serveHome(x.w, r)
		return nil
	}
	req, err := s.classify(r, "")
	if errors.Is(err, ErrNotModuleRequest) {
		return invalidAs(wire.NotModuleRequest, fmt.Sprintf("%q is not a module proxy path (want /<module>/@v/list, /@v/<version>.info|.mod|.zip, /@latest or /sumdb/...)", r.URL.Path))
	}
	if err != nil {
		return invalid(err.Error())
	}
	x.req = req
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		p := invalidAs(wire.MethodNotAllowed, fmt.Sprintf("method %s not allowed: a module proxy answers GET and HEAD", r.Method))
		p.header = http.Header{"Allow": {"GET, HEAD"}}
		return p
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		p := invalid("a module proxy request has no body")
		p.header = http.Header{"Connection": {"close"}}
		return p
	}
	if req.Kind.IsSumDB() {
		return s.pipeline(x, sumDBSource{s})
	}
	return s.pipeline(x, chainSource{s})
}

// serveHome answers the module listener's / (someone opened the GOPROXY
// URL in a browser): what this is, how to use it, where to look.
func (s *Server) serveHome(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	version := s.cfg.Version
	if version == "" {
		version = "(devel)"
	}
	fmt.Fprintf(&b, "modgate %s: a Go module proxy (GOPROXY) and HTTPS proxy for the go command.\n\n", version)
	scheme := "http"
	if s.tlsCfg != nil {
		scheme = "https"
	}
	fmt.Fprintf(&b, "Use it:  eval \"$(modgate env)\"   (or GOPROXY=%s://%s,direct)\n", scheme, r.Host)
	if admin, _ := s.adminAddr.Load().(string); admin != "" {
		fmt.Fprintf(&b, "Status:  http://%s/   (upstreams, breakers, recent requests; /metrics)\n", hostForClient(admin))
	} else {
		b.WriteString("Status:  no admin listener (--admin)\n")
	}
	b.WriteString("Help:    modgate help; README.md in the modgate repository\n")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", fmt.Sprint(b.Len()))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		io.WriteString(w, b.String())
	}
}

// hostForClient is the address to dial for a listener's: one listening
// on every address is reached on loopback.
func hostForClient(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
