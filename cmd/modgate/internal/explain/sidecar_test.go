package explain

import (
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// sidecarCase provokes one answer of modgate's: it starts real sidecars
// (sidecar.New and Serve on loopback) in front of modtest's fake proxy and
// faults, runs the real go command through them, and returns what the go
// command printed. explain must recognise the answer by its code and say
// the specifics in want; the prose modgate writes after the code is free
// to change.
type sidecarCase struct {
	name string
	code wire.Code
	// want are a few specifics the explanation must hold: a rule number,
	// an upstream's name, the setting to change.
	want []string
	run  func(t *testing.T, w *world) string
}

// notProvoked are the codes that no sidecarCase provokes, and why.
var notProvoked = map[wire.Code]string{
	wire.MethodNotAllowed: "the go command sends only GET to a module proxy",
	wire.Misdirected:      "the go command never sends a request for one host inside a tunnel to another",
	wire.UnknownSumDB: "for a checksum database modgate does not serve, the go command reads the 404 of /sumdb/<name>/supported " +
		"as \"go to the database directly\" and never prints modgate's answer",
	wire.Busy:     "needs a second request to join a fetch at the moment the first one fails: a race, not a test",
	wire.Internal: "needs the cache to fail a read between its index and its file",
}

// sidecarCases are modgate's answers as the go command shows them.
var sidecarCases = []sidecarCase{
	{
		name: "denied by a rule, with the policy's contact",
		code: wire.Denied,
		want: []string{"rule 1", "CVE-2099-0001", "ask #platform-builds", "modgate policy check fixture.test/dep05@v1.0.0"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}}, Policy: w.withPolicy(`rules:
  - deny: "fixture.test/dep05"
    versions: "<v1.1.0"
    reason: "CVE-2099-0001, fixed in v1.1.0"
  - allow: "*"
contact: "ask #platform-builds"
`)})
			return w.run(false, "mod", "download", "fixture.test/dep05@v1.0.0")
		},
	},
	{
		name: "checksum lookup of a private module",
		code: wire.PrivateLookup,
		want: []string{"GONOSUMDB=*.corp.example.test"},
		run: func(t *testing.T, w *world) string {
			w.addModule("git.corp.example.test/team/lib", "v1.0.0")
			p := w.proxy()
			w.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "internal", URL: p.URL, Private: true}},
				Policy: w.withPolicy("private: [\"*.corp.example.test\"]\n")})
			return w.run(false, "mod", "download", "git.corp.example.test/team/lib@v1.0.0")
		},
	},
	{
		name: "private module to a host that is not private, in forward mode",
		code: wire.PrivateHost,
		want: []string{"proxy.example.test", "forward.private_hosts", "GOPRIVATE=*.corp.example.test"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Policy: w.withPolicy("private: [\"*.corp.example.test\"]\n")}, "http")
			return w.run(false, "mod", "download", "git.corp.example.test/team/lib@v1.0.0")
		},
	},
	{
		name: "no upstream has it",
		code: wire.NotFound,
		want: []string{"internal does not have it (410)", "public does not have it (404)"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "internal", URL: p.URL + "/f/410"}, upstream.Config{Name: "public", URL: p.URL + "/f/404"})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "no upstream may be asked for a private module",
		code: wire.NotFound,
		want: []string{"no upstream may be asked", "public was not asked", "private: true"},
		run: func(t *testing.T, w *world) string {
			w.addModule("git.corp.example.test/team/lib", "v1.0.0")
			p := w.proxy()
			w.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}},
				Policy: w.withPolicy("private: [\"*.corp.example.test\"]\n")})
			return w.run(false, "mod", "download", "git.corp.example.test/team/lib@v1.0.0")
		},
	},
	{
		name: "the chain ends in direct",
		code: wire.Direct,
		want: []string{"GOPROXY=http://127.0.0.1:7070,direct"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "public", URL: p.URL}, upstream.Config{URL: "direct"})
			return w.run(false, "mod", "download", "fixture.test/nosuchmodule@v1.0.0")
		},
	},
	{
		name: "the chain is off",
		code: wire.Off,
		want: []string{"fixture.test/dep01@v1.0.0", "before off"},
		run: func(t *testing.T, w *world) string {
			w.gate(upstream.Config{URL: "off"})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the upstream's circuit is open",
		code: wire.CircuitOpen,
		want: []string{"public was not asked: its circuit breaker is open", "(in 30s)"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "public", URL: p.URL + "/f/500", Retry: upstream.RetrySettings{Attempts: 1},
				Breaker: upstream.BreakerSettings{ConsecutiveFailures: 1, OpenFor: 30 * time.Second}})
			w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the upstream hangs",
		code: wire.Timeout,
		want: []string{"public accepted the request but sent no answer", "timeouts.header"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "public", URL: p.URL + "/f/hang", Retry: upstream.RetrySettings{Attempts: 1},
				Timeouts: upstream.Timeouts{Header: time.Second}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "every upstream fails, joined by |",
		code: wire.UpstreamFailed,
		want: []string{"internal failed with a server error (500)", "public failed with a server error (503)"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "internal", URL: p.URL + "/f/500", Fallthrough: upstream.OnError, Retry: upstream.RetrySettings{Attempts: 1}},
				upstream.Config{Name: "public", URL: p.URL + "/f/503", Retry: upstream.RetrySettings{Attempts: 1}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the chain stops at a failure after ,",
		code: wire.UpstreamFailed,
		want: []string{"internal failed with a server error (500)", "The chain stopped there", `join them with "|"`},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "internal", URL: p.URL + "/f/500", Retry: upstream.RetrySettings{Attempts: 1}},
				upstream.Config{Name: "public", URL: p.URL})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the upstream refuses connections",
		code: wire.UpstreamFailed,
		want: []string{"internal refused the connection", "reachable from where modgate runs"},
		run: func(t *testing.T, w *world) string {
			w.gate(upstream.Config{Name: "internal", URL: modtest.DeadURL(t), Retry: upstream.RetrySettings{Attempts: 1}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the upstream rate-limits",
		code: wire.UpstreamFailed,
		want: []string{"public is rate-limiting modgate", "Retry-After"},
		run: func(t *testing.T, w *world) string {
			p := w.proxy()
			w.gate(upstream.Config{Name: "public", URL: p.URL + "/f/429", Retry: upstream.RetrySettings{Attempts: 1}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "the upstream breaks off a version list",
		code: wire.UpstreamCut,
		want: []string{"send fixture.test/dep01 and stopped before the end", "public: "},
		run: func(t *testing.T, w *world) string {
			w.gate(upstream.Config{Name: "public", URL: cuttingUpstream(t), Retry: upstream.RetrySettings{Attempts: 1}})
			return w.run(false, "mod", "download", "fixture.test/dep01@latest")
		},
	},
	{
		name: "two modgates in a loop",
		code: wire.Loop,
		want: []string{"Via", "--upstream"},
		run: func(t *testing.T, w *world) string {
			lnA, lnB := listen(t), listen(t)
			a := startGate(t, lnA, sidecar.Config{Upstreams: []upstream.Config{{Name: "mirror", URL: "http://" + lnB.Addr().String()}}})
			startGate(t, lnB, sidecar.Config{Upstreams: []upstream.Config{{Name: "edge", URL: a}}})
			w.g.UseProxy(a, w.db)
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode refuses a host outside allow_hosts (CONNECT)",
		code: wire.Refused,
		want: []string{"HTTPS_PROXY", "forward.allow_hosts", "proxy.example.test"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{AllowHosts: []string{"mods.corp.example.test"}}}, "https")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode refuses a host outside allow_hosts (plain HTTP)",
		code: wire.Refused,
		want: []string{"HTTP_PROXY", "forward.allow_hosts", "proxy.example.test"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{AllowHosts: []string{"mods.corp.example.test"}}}, "http")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode refuses a port outside connect_ports (CONNECT)",
		code: wire.Refused,
		want: []string{"forward.connect_ports"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{ConnectPorts: []int{8443}}}, "https")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode cannot reach the host (CONNECT)",
		code: wire.UpstreamFailed,
		want: []string{"modgate could not reach proxy.example.test", "connection refused"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Resolve: map[string]string{"proxy.example.test:443": strings.TrimPrefix(modtest.DeadURL(t), "http://")}}, "https")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode's circuit for the host is open (CONNECT)",
		code: wire.CircuitOpen,
		want: []string{"modgate's circuit for proxy.example.test is open"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{
				Resolve: map[string]string{"proxy.example.test:443": strings.TrimPrefix(modtest.DeadURL(t), "http://")},
				Forward: sidecar.ForwardConfig{Breaker: upstream.BreakerSettings{ConsecutiveFailures: 1, OpenFor: 30 * time.Second}},
			}, "https")
			w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode wants a user (plain HTTP)",
		code: wire.AuthRequired,
		want: []string{"forward.auth_file", "HTTP_PROXY=http://user:password@"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{Users: map[string]string{"builder": "s3cret"}}}, "http")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode wants a user (CONNECT)",
		code: wire.AuthRequired,
		want: []string{"forward.auth_file", "HTTP_PROXY=http://user:password@"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{Users: map[string]string{"builder": "s3cret"}}}, "https")
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "forward mode after too many wrong passwords",
		code: wire.TooManyLogins,
		want: []string{"Fix the user and password", "audit log"},
		run: func(t *testing.T, w *world) string {
			w.forward(sidecar.Config{Forward: sidecar.ForwardConfig{Users: map[string]string{"builder": "s3cret"}}}, "https")
			url := w.g.Getenv("HTTPS_PROXY")
			w.g.Setenv("HTTPS_PROXY", strings.Replace(url, "http://", "http://builder:wrong@", 1))
			for range 10 {
				w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
			}
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "an upstream answers for another version",
		code: wire.BadUpstream,
		want: []string{"not what the module proxy protocol allows"},
		run: func(t *testing.T, w *world) string {
			liar := serveLoopback(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, `{"Version":"v9.9.9"}`)
			})})
			w.gate(upstream.Config{Name: "liar", URL: liar})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "an upstream serves a go.mod the checksum database does not vouch for",
		code: wire.ChecksumMismatch,
		want: []string{"checksum database", "tampered:", "fallthrough: error"},
		run: func(t *testing.T, w *world) string {
			tampered := modtest.NewProxy(t, w.fx) // serves no database: the chain's next one does
			w.stable(tampered.URL)
			w.gateConfig(sidecar.Config{SumDBKey: w.db.VerifierKey, Upstreams: []upstream.Config{
				{Name: "tampered", URL: tampered.URL + "/f/tamper"}, {Name: "public", URL: w.proxy().URL}}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "offline, and the cache lacks the module",
		code: wire.Offline,
		want: []string{"offline: true", "cache.dir"},
		run: func(t *testing.T, w *world) string {
			w.gateConfig(sidecar.Config{Offline: true, Cache: sidecar.CacheConfig{Dir: t.TempDir()}, Upstreams: []upstream.Config{{URL: "off"}}})
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "GOPROXY names modgate with a path",
		code: wire.BadRequest,
		want: []string{"before asking any upstream", "drop /mods from GOPROXY"},
		run: func(t *testing.T, w *world) string {
			url := startGate(t, nil, sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}})
			w.g.UseProxy(url+"/mods", w.db)
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
	{
		name: "GOPROXY names modgate's checksum database path",
		code: wire.NotModuleRequest,
		want: []string{"drop /sumdb from GOPROXY"},
		run: func(t *testing.T, w *world) string {
			url := startGate(t, nil, sidecar.Config{Upstreams: []upstream.Config{{URL: "off"}}})
			w.g.UseProxy(url+"/sumdb", w.db)
			return w.run(false, "mod", "download", "fixture.test/dep01@v1.0.0")
		},
	},
}

// TestSidecarAnswers runs each sidecarCase and explains what the go
// command printed. A code or an explanation that changes on either side
// fails here, in every test run.
func TestSidecarAnswers(t *testing.T) {
	provoked := map[wire.Code]bool{}
	for _, tc := range sidecarCases {
		provoked[tc.code] = true
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := tc.run(t, newWorld(t))
			if !strings.Contains(out, wire.FirstLine(tc.code, "")) {
				t.Fatalf("the go command printed no answer with code %s:\n%s", tc.code, out)
			}
			found := Text(out)
			if got := rules(found); len(got) != 1 || got[0] != string(tc.code) {
				t.Fatalf("rules = %q, want [%s]; the go command printed:\n%s", got, tc.code, out)
			}
			var shown strings.Builder
			Write(&shown, found)
			t.Logf("explain says:\n%s", &shown)
			// The fields, not the wrapped text: a specific may fall across
			// a line break.
			e := found[0]
			text := strings.Join(append([]string{e.Title, e.Cause, e.Fix}, e.Saw...), "\n")
			for _, s := range tc.want {
				if !strings.Contains(text, s) {
					t.Errorf("explanation lacks %q:\n%s\nthe go command printed:\n%s", s, text, out)
				}
			}
		})
	}
	for _, code := range wire.Codes() {
		why, skipped := notProvoked[code]
		switch {
		case provoked[code] && skipped:
			t.Errorf("code %s is provoked, but notProvoked says %q", code, why)
		case !provoked[code] && !skipped:
			t.Errorf("no sidecarCase provokes code %s, and notProvoked does not say why", code)
		}
	}
}

// TestSidecarSeveralAnswers: one go command run that meets two of
// modgate's answers, among modules that download fine, gets one
// explanation for each.
func TestSidecarSeveralAnswers(t *testing.T) {
	w := newWorld(t)
	p := w.proxy()
	w.gateConfig(sidecar.Config{Upstreams: []upstream.Config{{Name: "public", URL: p.URL}}, Policy: w.withPolicy(`rules:
  - deny: "fixture.test/dep05"
    reason: "CVE-2099-0001"
`)})
	out := w.run(false, "mod", "download", "fixture.test/dep05@v1.0.0", "fixture.test/nosuch@v1.2.3", "fixture.test/dep13@v1.0.0")
	got := rules(Text(out))
	slices.Sort(got)
	if want := []string{string(wire.Denied), string(wire.NotFound)}; !slices.Equal(got, want) {
		t.Errorf("rules = %q, want %q; the go command printed:\n%s", got, want, out)
	}
}

// forward starts a modgate with cfg and makes the go command fetch from
// a module proxy at scheme://proxy.example.test through it, as its
// HTTP_PROXY or HTTPS_PROXY (forward mode).
func (e *world) forward(cfg sidecar.Config, scheme string) {
	cfg.Upstreams = []upstream.Config{{URL: "off"}}
	url := startGate(e.t, nil, cfg)
	e.g.UseProxy(scheme+"://proxy.example.test", e.db)
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY"} {
		e.g.Setenv(k, url)
	}
}

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// cuttingUpstream is a module proxy that promises a version list longer
// than the one it sends, then ends the connection (net/http closes a
// response shorter than its Content-Length). The promise is longer than
// the chain reads ahead, so the cut comes after the chain chose it.
func cuttingUpstream(t *testing.T) string {
	return serveLoopback(t, &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/@v/list") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(upstream.PrefetchLimit+100))
		io.WriteString(w, "v1.0.0\n")
	})})
}
