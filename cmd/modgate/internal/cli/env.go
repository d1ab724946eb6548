package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/upstream"
)

const envUsage = `usage: modgate env [--shell sh|fish|powershell|cmd] [--no-direct] [--trace] [run's config flags]

Prints the go command's and git's settings for the modgate that ` + "`modgate run`" + ` would
start with the same config file, MODGATE_* variables and flags:

  eval "$(modgate env)"                                       bash, zsh
  modgate env --shell fish | source                           fish
  modgate env --shell powershell | Out-String | Invoke-Expression
  modgate env --shell cmd > modgate-env.cmd && call modgate-env.cmd

`

// env prints the client settings that match the config `run` would load.
func (a *App) env(_ context.Context, args []string) error {
	fs := a.newFlags("modgate env", envUsage)
	var f runFlags
	// Only the settings that change what clients are told.
	f.register(fs, "listen", "upstream", "sumdb", "policy", "ca-dir", "mitm-host")
	shell := fs.String("shell", "sh", "sh (bash, zsh), fish, powershell or cmd")
	noDirect := fs.Bool("no-direct", false, `leave ",direct" out of GOPROXY (refused when the upstream chain has direct)`)
	withTrace := fs.Bool("trace", false, "carry TRACEPARENT (the CI job's trace) in GOPROXY and the proxy URLs: the build's requests join that trace")
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "modgate env: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	syn, ok := shells[*shell]
	if !ok {
		fmt.Fprintf(a.Stderr, "modgate env: unknown shell %q: want sh, fish, powershell or cmd\n", *shell)
		return errUsage
	}
	l := loader{getenv: a.Getenv, goenv: a.GoEnv, goDefault: a.GoDefaultProxy}
	cfg, sc, err := l.load(fs, &f)
	if err != nil {
		return fmt.Errorf("config:\n%w", err)
	}
	var pol *policy.Policy
	if cfg.PolicyFile != "" {
		if pol, err = policy.Load(cfg.PolicyFile); err != nil {
			return fmt.Errorf("policy:\n%w", err)
		}
	}
	// The go command of a PowerShell or cmd user runs on Windows, where
	// it ignores SSL_CERT_FILE.
	goos := hostGOOS
	if *shell == "powershell" || *shell == "cmd" {
		goos = "windows"
	}
	trust := caTrust{goos: goos, bundle: func(dir string) (string, error) {
		file, _, err := writeBundle(a.Getenv, dir, "")
		return file, err
	}}
	lines, err := clientEnv(cfg, sc, pol, *noDirect, trust)
	if err != nil {
		return err
	}
	if *withTrace {
		if lines, err = traceEnv(lines, a.Getenv("TRACEPARENT")); err != nil {
			return err
		}
	}
	out, err := syn.render(lines)
	if err != nil {
		return err
	}
	_, err = fmt.Fprint(a.Stdout, out)
	return err
}

// envLine is one line of `modgate env`: a comment, or a variable to set.
type envLine struct {
	comment     string
	name, value string
}

func comment(format string, args ...any) envLine {
	return envLine{comment: fmt.Sprintf(format, args...)}
}

// clientEnv works out the client settings for a loaded config and policy
// (pol may be nil: no policy file).
// hostGOOS is the system modgate env writes settings for (tests pin it).
var hostGOOS = runtime.GOOS

// caTrust is how clients come to trust modgate's CA: on goos, through
// bundle (which writes the system's roots and the CA of a CA folder to a
// file and returns its path) where the go command reads SSL_CERT_FILE.
type caTrust struct {
	goos   string
	bundle func(caDir string) (string, error)
}

func clientEnv(cfg Config, sc sidecar.Config, pol *policy.Policy, noDirect bool, ct caTrust) ([]envLine, error) {
	// The same naming and validation as `run`, so that the names policy
	// routes use resolve to the same upstreams. Building a chain opens no
	// connection.
	chain, err := upstream.NewChain(sc.Upstreams, upstream.Options{})
	if err != nil {
		return nil, err
	}
	ups := chain.Upstreams()
	for _, name := range pol.Upstreams() {
		if !slices.ContainsFunc(ups, func(u *upstream.Upstream) bool { return u.Name == name }) {
			return nil, fmt.Errorf("policy routes name upstream %q, which is not configured", name)
		}
	}

	addr := clientAddr(cfg.Listen)
	self := "http://" + addr
	var trust *listenerTrust
	if sc.TLS.Enabled() {
		if trust, err = newListenerTrust(sc.TLS, addr, caDir(cfg.Forward.CADir)); err != nil {
			return nil, err
		}
		addr = trust.addr
		self = "https://" + addr
	}
	lines := []envLine{comment("modgate env: client settings for modgate on %s (%s)", addr, chainText(ups))}
	goproxy, err := goproxyEnv(self, ups, noDirect)
	if err != nil {
		return nil, err
	}
	lines = append(lines, goproxy...)
	lines = append(lines, privateEnv(pol, ups)...)
	if sc.SumDB != "" {
		lines = append(lines, comment("GOSUMDB: keep yours; it must name %s, the checksum database modgate serves at %s/sumdb/%s/", sc.SumDB, self, sc.SumDB))
	}
	lines = append(lines, clientsEnv(sc.Clients, trust, addr)...)
	lines = append(lines, proxyEnv(cfg, self)...)
	ca, err := caEnv(cfg, sc, trust, addr, ct)
	if err != nil {
		return nil, err
	}
	return append(lines, ca...), nil
}

// goproxyEnv is GOPROXY, modgate's URL self. A direct entry in modgate's
// chain ups answers 404 and relies on the go command going direct itself,
// so ",direct" is then required. Without one, ",direct" still lets a
// module no upstream has come from its origin, through forward mode (which
// is always on), unless the user asks for a closed setup with --no-direct.
func goproxyEnv(self string, ups []*upstream.Upstream, noDirect bool) ([]envLine, error) {
	chainHasDirect := slices.ContainsFunc(ups, func(u *upstream.Upstream) bool { return u.Kind == upstream.Direct })
	goproxy := self
	var why envLine
	switch {
	case chainHasDirect && noDirect:
		return nil, errors.New(`--no-direct: the upstream chain has direct, which answers 404 so that the go command fetches from the origin itself; without ",direct" those modules would fail. Remove direct from the upstreams, or drop --no-direct`)
	case chainHasDirect:
		goproxy += ",direct"
		why = comment(`GOPROXY: modgate, then direct: the chain has direct, so modgate answers 404 for what its upstreams lack and the go command fetches it from the origin, through modgate's forward mode`)
	case noDirect:
		why = comment(`GOPROXY: modgate only (--no-direct): a module that no upstream has fails rather than come from its origin`)
	default:
		goproxy += ",direct"
		why = comment(`GOPROXY: modgate, then direct: a module that no upstream has comes from its origin, through modgate's forward mode (--no-direct leaves direct out)`)
	}
	return []envLine{why, {name: "GOPROXY", value: goproxy}}, nil
}

// proxyEnv is the proxy variables: modgate's URL self for forward mode,
// and modgate's own address left out of it.
func proxyEnv(cfg Config, self string) []envLine {
	lines := []envLine{comment("HTTP_PROXY, HTTPS_PROXY: direct fetches, ?go-get=1 discovery and git go through modgate's forward mode; curl and git read the lower-case names")}
	if proxyAuth(cfg) {
		scheme, _, _ := strings.Cut(self, ":")
		lines = append(lines, comment("forward mode asks who you are: put <name>:<password>@ after %s:// in these four (your own name and password; never commit them)", scheme))
	}
	for _, name := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"} {
		lines = append(lines, envLine{name: name, value: self})
	}
	noProxy := []string{"127.0.0.1", "localhost", "::1"}
	why := "NO_PROXY: the go command reaches modgate itself without the proxy"
	if h := hostOf(clientAddr(cfg.Listen)); !slices.Contains(noProxy, h) {
		noProxy = append(noProxy, h)
		why += fmt.Sprintf(" (%s too: modgate's forward mode never dials a private or own address)", h)
	}
	lines = append(lines, comment("%s", why))
	for _, name := range []string{"NO_PROXY", "no_proxy"} {
		lines = append(lines, envLine{name: name, value: strings.Join(noProxy, ",")})
	}
	return lines
}

// caEnv is how clients come to trust modgate's CA, when it intercepts
// hosts or signed the HTTPS listener's certificate (trust, at addr): a
// bundle in SSL_CERT_FILE, or where the go command ignores that, the way
// to trust the CA once.
func caEnv(cfg Config, sc sidecar.Config, trust *listenerTrust, addr string, ct caTrust) ([]envLine, error) {
	var lines []envLine
	var caWhy []string
	if hosts := cfg.Forward.MITMHosts; len(hosts) > 0 {
		caWhy = append(caWhy, "intercepts "+strings.Join(hosts, ", "))
	}
	if trust != nil {
		switch {
		case trust.systemTrusted:
		case trust.modgateCA:
			caWhy = append(caWhy, "signed modgate's certificate for "+addr)
		default:
			lines = append(lines, comment("SSL_CERT_FILE: modgate's certificate (%s) is signed neither by a CA this system trusts nor by modgate's CA: add its CA to SSL_CERT_FILE", sc.TLS.CertFile))
		}
	}
	if len(caWhy) == 0 {
		return lines, nil
	}
	why := strings.Join(caWhy, " and ")
	if ignoresSSLCertFile(ct.goos) {
		// Absolute: the settings are used from other folders.
		ca, err := filepath.Abs(mitm.CertPath(caDir(cfg.Forward.CADir)))
		if err != nil {
			return nil, err
		}
		return append(lines,
			comment("modgate's CA (%s) %s. On %s the go command verifies through the system and ignores SSL_CERT_FILE:", ca, why, osName(ct.goos)),
			comment("trust the CA once with the commands that modgate ca trust prints (%s)", trustHint(ct.goos))), nil
	}
	// SSL_CERT_FILE replaces the go command's system roots: a file with
	// modgate's CA alone would break every host reached through a plain
	// tunnel. The bundle holds both.
	bundle, err := ct.bundle(caDir(cfg.Forward.CADir))
	if err != nil {
		return nil, err
	}
	return append(lines,
		comment("SSL_CERT_FILE, GIT_SSL_CAINFO: this system's roots and modgate's CA, which %s (modgate ca bundle; modgate env rewrites it)", why),
		envLine{name: "SSL_CERT_FILE", value: bundle},
		envLine{name: "GIT_SSL_CAINFO", value: bundle}), nil
}

func osName(goos string) string {
	if goos == "windows" {
		return "Windows"
	}
	return "macOS"
}

func trustHint(goos string) string {
	if goos == "windows" {
		return "certutil -user -addstore Root on the CA"
	}
	return "security add-trusted-cert into the login keychain"
}

// privateEnv returns GOPRIVATE, GONOSUMDB and GONOPROXY for the policy's
// private patterns.
//
// GOPRIVATE is the default of GONOPROXY, and a pattern in GONOPROXY makes
// the go command fetch from the origin instead of asking modgate. A private
// pattern that a private upstream serves must keep coming to modgate, so
// GONOPROXY is always printed: the patterns no private upstream serves (they
// go direct, through forward mode), or "none" when there are none, which is
// the go command's documented way to override GOPRIVATE's default.
func privateEnv(pol *policy.Policy, ups []*upstream.Upstream) []envLine {
	private := pol.PrivatePatterns()
	if len(private) == 0 {
		return []envLine{comment("GOPRIVATE, GONOSUMDB, GONOPROXY: the policy marks no module private; left as they are")}
	}
	list := strings.Join(private, ",")
	lines := []envLine{
		comment("GOPRIVATE, GONOSUMDB: the policy's private patterns, never looked up in a checksum database"),
		{name: "GOPRIVATE", value: list},
		{name: "GONOSUMDB", value: list},
		comment("GONOPROXY: the private patterns that no private upstream serves fetch from their origin (through forward mode); the others keep asking modgate"),
	}
	var direct []string
	for _, p := range private {
		servers := privateServers(pol, ups, p)
		if len(servers) == 0 {
			direct = append(direct, p)
			why := "no upstream is private"
			if route, ok := pol.Route(p); ok {
				why = fmt.Sprintf("the policy routes it to %s, not private", strings.Join(route, ", "))
			}
			lines = append(lines, comment("  %s: %s, so fetched from its origin", p, why))
			continue
		}
		lines = append(lines, comment("  %s: served by %s, stays with modgate", p, strings.Join(servers, ", ")))
	}
	nonproxy := strings.Join(direct, ",")
	if nonproxy == "" {
		nonproxy = "none"
		lines = append(lines, comment("  so none: a pattern that matches no module, overriding GOPRIVATE's default"))
	}
	return append(lines, envLine{name: "GONOPROXY", value: nonproxy})
}

// privateServers returns the upstreams that may serve modules matching the
// private pattern p: private proxies, within the policy's route for p if it
// has one. The pattern is asked for as a module path: a glob matches itself
// as it matches any path it covers.
func privateServers(pol *policy.Policy, ups []*upstream.Upstream, p string) []string {
	route, routed := pol.Route(p)
	var names []string
	for _, u := range ups {
		if u.Kind == upstream.Proxy && u.Private && (!routed || slices.Contains(route, u.Name)) {
			names = append(names, u.Name)
		}
	}
	return names
}

// clientAddr is the address a client on this machine dials for listen: a
// listener on every address is reached on 127.0.0.1.
func clientAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen // validated already
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func hostOf(hostport string) string {
	host, _, _ := net.SplitHostPort(hostport)
	return host
}

// chainText is the chain in GOPROXY syntax, by upstream name.
func chainText(ups []*upstream.Upstream) string {
	return "upstreams " + upstream.FormatChain(ups, func(u *upstream.Upstream) string { return u.Name })
}

// shellSyntax writes variables and comments in one shell's language.
type shellSyntax struct {
	comment string
	set     func(name, value string) (string, error)
}

// shells are the languages `modgate env --shell` speaks. Values are quoted
// so that the shell takes every character literally.
var shells = map[string]shellSyntax{
	// POSIX single quotes take everything literally; a quote is closed,
	// escaped and reopened. bash and zsh read it the same way.
	"sh": {comment: "# ", set: func(k, v string) (string, error) {
		return "export " + k + "='" + strings.ReplaceAll(v, "'", `'\''`) + "'", nil
	}},
	// fish's single quotes know two escapes: \' and \\.
	"fish": {comment: "# ", set: func(k, v string) (string, error) {
		v = strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v)
		return "set -gx " + k + " '" + v + "'", nil
	}},
	// PowerShell doubles a quote inside single quotes, and counts the
	// typographic single quotes as quotes too.
	"powershell": {comment: "# ", set: func(k, v string) (string, error) {
		var b strings.Builder
		for _, r := range v {
			b.WriteRune(r)
			if strings.ContainsRune("'\u2018\u2019\u201a\u201b", r) {
				b.WriteRune(r)
			}
		}
		return "$env:" + k + " = '" + b.String() + "'", nil
	}},
	// cmd.exe: `set K=v` takes the rest of the line. The output is meant
	// to run as a batch file, where % is doubled; outside double quotes
	// the characters that separate or redirect commands take a caret,
	// inside them they are already literal (and a caret would not be).
	"cmd": {comment: "REM ", set: func(k, v string) (string, error) {
		if strings.ContainsAny(v, "\r\n") {
			return "", fmt.Errorf("%s: cmd cannot set a value with a line break: %q", k, v)
		}
		var b strings.Builder
		quoted := false
		for _, r := range v {
			switch {
			case r == '"':
				quoted = !quoted
			case r == '%':
				b.WriteRune('%')
			case !quoted && strings.ContainsRune("^&|<>()", r):
				b.WriteRune('^')
			}
			b.WriteRune(r)
		}
		return "set " + k + "=" + b.String(), nil
	}},
}

// render writes lines in the shell's language.
func (s shellSyntax) render(lines []envLine) (string, error) {
	var b strings.Builder
	for _, l := range lines {
		if l.name == "" {
			// A name from the config must not end the comment and start a
			// command.
			c := strings.Map(func(r rune) rune {
				if r < ' ' || r == 0x7f {
					return ' '
				}
				return r
			}, l.comment)
			if s.comment == "REM " {
				// REM lines are still read by cmd; keep them free of
				// anything it could take for an operator or a variable.
				c = strings.Map(func(r rune) rune {
					if strings.ContainsRune("^&|<>%", r) {
						return ' '
					}
					return r
				}, c)
			}
			b.WriteString(strings.TrimRight(s.comment+c, " ") + "\n")
			continue
		}
		line, err := s.set(l.name, l.value)
		if err != nil {
			return "", err
		}
		b.WriteString(line + "\n")
	}
	return b.String(), nil
}
