package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"path"
	"regexp"
	"strings"

	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
)

// AdminHandler serves the admin listener: /healthz, /readyz, /metrics,
// /debug/upstreams, /debug/baseline, /debug/tracez, /debug/builds (the
// summaries of builds that carried their trace context, which modgate exec
// reads and registers), /debug/pprof/ (with Config.PProf), the status
// page at / and a page per build at /builds/{trace_id}.
//
// It answers only requests whose Host is an IP literal, localhost or one
// of Config.AdminHosts: a web page a developer visits could otherwise
// point a name of its own at 127.0.0.1 (DNS rebinding) and read the admin
// pages from the browser. Its pages load nothing from other hosts.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	if s.tel != nil {
		mux.Handle("GET /metrics", s.tel.MetricsHandler())
		mux.Handle("GET /debug/tracez", selfContained(s.tel.TracezHandler()))
		mux.Handle("GET /debug/baseline", s.tel.Baselines().Handler())
	}
	mux.HandleFunc("GET /debug/upstreams", func(w http.ResponseWriter, r *http.Request) {
		var list []upstream.Status
		for _, u := range s.chain.Upstreams() {
			if u.Kind == upstream.Proxy {
				list = append(list, u.Status())
			}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		on, why := s.Verification()
		enc.Encode(map[string]any{"upstreams": list, "fleet": s.fleetStatus(),
			"verification": map[string]any{"on": on, "detail": why, "checks": s.checks.snapshot()}})
	})
	mux.HandleFunc("GET /debug/builds", s.handleBuilds)
	mux.HandleFunc("GET /debug/builds/{trace_id}", s.handleBuild)
	mux.HandleFunc("POST /debug/builds/{trace_id}", s.handleRegisterBuild)
	mux.HandleFunc("GET /builds/{trace_id}", s.handleBuildPage)
	mux.Handle("GET /{$}", s.statusHandler()) // only "/": other unknown paths stay 404
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	if s.cfg.PProf {
		// Registered here rather than through the package's init, which
		// fills http.DefaultServeMux: modgate serves no default mux.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", s.cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	hosts := make([]string, len(s.cfg.AdminHosts))
	for i, h := range s.cfg.AdminHosts {
		hosts[i] = strings.ToLower(strings.TrimSuffix(h, "."))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !adminHostAllowed(r.Host, hosts) {
			w.Header().Set("Connection", "close")
			http.Error(w, fmt.Sprintf("modgate: the admin listener does not answer for host %q: it answers IP addresses, localhost and the names in admin_hosts", r.Host),
				http.StatusMisdirectedRequest)
			return
		}
		h := w.Header()
		// The pages are modgate's own: nothing from elsewhere, no frames.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		mux.ServeHTTP(w, r)
	})
}

// adminHostAllowed reports whether the admin listener answers a request
// for host (the Host header, with or without a port): an IP literal,
// localhost, or a name that matches one of patterns (lower case).
func adminHostAllowed(host string, patterns []string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return true
	}
	if host == "localhost" {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, host); ok {
			return true
		}
	}
	return false
}

var (
	// externalRef is a <link> or <script> that loads from another host
	// (zpages' page pulls fonts, styles and scripts from public CDNs).
	externalRef = regexp.MustCompile(`(?is)<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//[^>]*>|<script\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//[^>]*>\s*</script>`)
	headEnd     = []byte("</head>")
)

// tracezStyle stands in for the stylesheets the trace view loses.
const tracezStyle = `<style>
body { font: 13px/1.45 system-ui, sans-serif; margin: 16px 20px; color: #1f2328; }
h1 { font-size: 18px; }
table { border-collapse: collapse; margin-bottom: 16px; }
td, th { padding: 3px 8px; border-bottom: 1px solid #d8dee4; }
a { color: #0969da; text-decoration: none; }
</style>
`

// selfContained serves h's HTML page without what it would load from
// other hosts, with a style of its own instead.
func selfContained(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		body := externalRef.ReplaceAll(rec.body.Bytes(), nil)
		if i := bytes.Index(body, headEnd); i >= 0 {
			body = append(body[:i:i], append([]byte(tracezStyle), body[i:]...)...)
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.status)
		w.Write(body)
	})
}

// bufferedResponse keeps a handler's answer for selfContained to rewrite.
type bufferedResponse struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if !b.wroteHeader {
		b.status, b.wroteHeader = status, true
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wroteHeader = true
	return b.body.Write(p)
}

// cmdline is pprof.Cmdline over Config.CommandLine with its secrets
// hidden: an --upstream URL's password, a --fleet-redis password, a
// shared store's keys (the same redaction as the store's name).
func (s *Server) cmdline(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	args := make([]string, len(s.cfg.CommandLine))
	for i, a := range s.cfg.CommandLine {
		args[i] = store.Redact(a)
	}
	io.WriteString(w, strings.Join(args, "\x00"))
}
