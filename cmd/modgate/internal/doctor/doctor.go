// Package doctor is `modgate doctor`: it looks for the settings that make
// Go module traffic bypass modgate, skip checksum verification or leak
// private module paths, in the go env, the process environment, modgate's
// own config and policy, and (with a scan) a repository's go.mod files and
// CI files. It also probes modgate and each upstream, with timings, and
// each https upstream's certificate. The command line's flags and the
// config loader stay in cli, which hands Run what they found.
package doctor

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"

	"github.com/modgate/modgate/cmd/modgate/internal/wrap"
	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/sidecar/wire"
)

// Severity says how much a finding matters.
type Severity string

// The severities, most severe first.
const (
	Error Severity = "error"
	Warn  Severity = "warn"
	Info  Severity = "info"
)

// certWarnBefore is how close to expiry an upstream certificate is worth a
// warning: two weeks leaves time to renew it.
const certWarnBefore = 14 * 24 * time.Hour

// Finding is one thing doctor found.
type Finding struct {
	// Severity is error, warn or info.
	Severity Severity `json:"severity"`
	// Check names the check, e.g. "gosumdb-off"; it is stable, for scripts.
	Check string `json:"check"`
	// What says what was found.
	What string `json:"what"`
	// Where is where it was found: "environment", "go env file PATH",
	// "FILE:LINE", a URL.
	Where string `json:"where,omitempty"`
	// Fix says what to do about it.
	Fix string `json:"fix,omitempty"`
}

// Probe is one request doctor made, with its timing.
type Probe struct {
	// Target is "modgate" or the upstream's name.
	Target string `json:"target"`
	// Kind is readyz, list, latest, sumdb-supported or tls.
	Kind string `json:"kind"`
	// URL is what was asked: an http(s) URL, or tls://host:port.
	URL string `json:"url"`
	// Status is the HTTP status; 0 when there was no answer.
	Status int `json:"status,omitempty"`
	// Millis is how long the request took, in milliseconds.
	Millis float64 `json:"ms"`
	// Error says why there was no answer.
	Error string `json:"error,omitempty"`
	// Detail is the first line of an error answer's body.
	Detail string `json:"detail,omitempty"`
	// NotAfter is the end of the certificate's validity, for kind tls.
	NotAfter *time.Time `json:"not_after,omitempty"`
}

// Report is what `modgate doctor --json` prints.
type Report struct {
	// OK is false when any finding is an error.
	OK bool `json:"ok"`
	// Summary counts findings by severity.
	Summary map[Severity]int `json:"summary"`
	// Findings are in order of severity, then of discovery.
	Findings []Finding `json:"findings"`
	// Probes are the requests made, in order.
	Probes []Probe `json:"probes,omitempty"`
	// GoEnv holds the go env values doctor read.
	GoEnv map[string]string `json:"go_env,omitempty"`
}

// goEnvNames are the go env variables doctor reads.
var goEnvNames = []string{"GOPROXY", "GOSUMDB", "GOFLAGS", "GOINSECURE", "GONOSUMDB", "GOPRIVATE", "GONOPROXY", "GOTOOLCHAIN", "GOENV", "GOVERSION", "GOAUTH"}

// Modgate is the modgate doctor checks, as `modgate run` with the same
// config file, variables and flags would start it.
type Modgate struct {
	// Listen and Admin are the listen addresses as configured; Admin is
	// empty when there is no admin listener.
	Listen, Admin string
	// URL and AdminURL are how a client on this machine reaches them
	// ("http://127.0.0.1:7070" for a listener on every address).
	URL, AdminURL string
	// Upstreams are the chain, in order.
	Upstreams []Upstream
	// Resolve maps "host:port" to the address to dial instead.
	Resolve map[string]string
	// PolicyFile is the policy file, "" for none.
	PolicyFile string
	// SumDB is the checksum database modgate serves, "" for none; it may
	// have a path (sum.example.test/sumdb).
	SumDB string
	// SumDBURL is where modgate reaches the database directly; if empty,
	// https://<SumDB>.
	SumDBURL string
	// Verified is set when modgate has the database's key, and so
	// verifies what it keeps and serves against it.
	Verified bool
	// RootCAs verifies upstream certificates; nil means the system pool.
	RootCAs *x509.CertPool
	// ListenerCert is the module listener's certificate when it is HTTPS
	// (tls), nil when it is plain HTTP.
	ListenerCert *x509.Certificate
	// Clients says who may use the listener; the zero value: everyone.
	Clients Clients
	// Fleet are the parts a fleet of modgates shares (shared stores,
	// Redis), to be probed.
	Fleet []FleetPart
	// FleetSecretFile is fleet.secret_file, checked for who may read it.
	FleetSecretFile string
	// MITM says that modgate intercepts some hosts (forward.mitm_hosts):
	// clients must trust its CA.
	MITM bool
}

// FleetPart is one thing a fleet of modgates shares.
type FleetPart struct {
	// Name says what it is: "shared store (public)", "Redis".
	Name string
	// Where is its URL with credentials hidden.
	Where string
	// Probe checks that modgate can use it.
	Probe func(context.Context) error
}

// sumDBURL is where modgate reaches its checksum database directly.
func (d *run) sumDBURL() string {
	if d.m.SumDBURL != "" {
		return d.m.SumDBURL
	}
	return "https://" + d.m.SumDB + "/"
}

// Upstream is one entry of modgate's chain.
type Upstream struct {
	// Name is the configured name; if empty, the URL's host names it.
	Name string
	// URL is the upstream's URL, or direct, off, file://...
	URL string
	// Auth is how modgate authenticates to it; the probes do the same.
	Auth upstream.Auth
}

// GoEnvFunc runs `go env NAME...` and returns the values in order.
type GoEnvFunc func(ctx context.Context, names ...string) ([]string, error)

// Options are what one `modgate doctor` is given.
type Options struct {
	// Getenv reads the process environment. Required.
	Getenv func(string) string
	// GoEnv runs `go env`. Required.
	GoEnv GoEnvFunc
	// Load loads modgate's config as `modgate run` would, reading go env
	// values through goenv (which asks no second go command). On an error
	// it returns what it could load: the listen addresses at least.
	// Required.
	Load func(goenv GoEnvFunc) (Modgate, error)
	// PolicyFile stands in for the config's policy file when the config
	// does not load or names none (--policy, MODGATE_POLICY).
	PolicyFile string
	// Probe makes requests to modgate and its upstreams.
	Probe bool
	// Timeout bounds each probe.
	Timeout time.Duration
	// Module is the module whose version list and @latest the probes ask for.
	Module string
	// ScanDir, if not empty, is a repository to scan.
	ScanDir string
	// Version is modgate's, for the probes' User-Agent.
	Version string
	// Progress, if not nil, receives a line that says what is being
	// probed (a terminal).
	Progress io.Writer
	// GOOS is the system the go command runs on, for what trusts a CA
	// there. If empty, runtime.GOOS.
	GOOS string
}

// run is one `modgate doctor`: what it read, and what it found.
type run struct {
	opts     Options
	goenv    map[string]string
	envFile  map[string]string // the go env file's settings
	envPath  string            // the go env file, "" when off or unreadable
	m        Modgate
	cfgOK    bool
	private  []string // the policy's private patterns
	findings []Finding
	probes   []Probe
}

func (d *run) add(f Finding) { d.findings = append(d.findings, f) }

// Run checks everything opts allows and returns the report.
func Run(ctx context.Context, opts Options) Report {
	d := &run{opts: opts}
	d.readGoEnv(ctx)
	d.loadConfig()
	policyFile := d.m.PolicyFile
	if policyFile == "" {
		policyFile = opts.PolicyFile
	}
	d.loadPolicy(policyFile)
	d.checkGoEnv()
	d.checkVerification()
	d.checkPrivate(policyFile)
	d.checkGoproxy()
	d.checkProxyVars()
	d.checkEnvFile()
	d.checkClients()
	d.checkFleetSecret()
	d.checkCertFile()
	if opts.Probe && d.cfgOK {
		d.probe(ctx, opts.Timeout, opts.Module)
		d.probeFleet(ctx, opts.Timeout)
	}
	if opts.ScanDir != "" {
		d.scan(opts.ScanDir)
	}
	return d.report()
}

// readGoEnv reads the go env values and the go env file. Failing to run
// the go command is itself a finding: nothing else about Go can be
// checked then, but the repository scan still runs.
func (d *run) readGoEnv(ctx context.Context) {
	goenv := d.opts.GoEnv
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vals, err := goenv(ctx, goEnvNames...)
	d.goenv = map[string]string{}
	if err != nil || len(vals) != len(goEnvNames) {
		if err == nil {
			err = fmt.Errorf("got %d values for %d names", len(vals), len(goEnvNames))
		}
		d.add(Finding{Severity: Error, Check: "go-env", What: "cannot run `go env`: " + err.Error(),
			Fix: "Install Go or put it on PATH; the checks of the go env are skipped."})
		return
	}
	for i, n := range goEnvNames {
		d.goenv[n] = vals[i]
	}
	d.envFile = map[string]string{}
	if p := d.goenv["GOENV"]; p != "" && p != "off" {
		data, err := os.ReadFile(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			d.add(Finding{Severity: Warn, Check: "go-env-file", What: "cannot read the go env file: " + err.Error(), Where: p})
		default:
			d.envPath = p
			for _, line := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k != "" && !strings.HasPrefix(k, "#") {
					d.envFile[k] = v
				}
			}
		}
	}
}

// source says where a go env value comes from: the process environment
// wins over the go env file, which wins over the default.
func (d *run) source(name string) string {
	if d.opts.Getenv(name) != "" {
		return "environment"
	}
	if _, ok := d.envFile[name]; ok {
		return "go env file " + d.envPath
	}
	return "go env default"
}

// loadConfig loads modgate's config as `modgate run` with the same flags
// would, so that doctor checks the modgate that would run.
func (d *run) loadConfig() {
	m, err := d.opts.Load(func(ctx context.Context, names ...string) ([]string, error) {
		// Reuse what was read already: one go command run is enough.
		if len(d.goenv) == 0 {
			return nil, errors.New("go env unavailable")
		}
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = d.goenv[n]
		}
		return out, nil
	})
	d.m = m
	if err != nil {
		d.add(Finding{Severity: Error, Check: "config", What: "modgate's config does not load: " + strings.ReplaceAll(err.Error(), "\n", "; "),
			Fix: "Fix the key it names (modgate run would refuse to start); probes are skipped."})
		return
	}
	d.cfgOK = true
	for _, u := range m.Upstreams {
		uu, err := url.Parse(u.URL)
		if err != nil || uu.Scheme != "http" || (u.Auth.Kind() == "" && uu.User == nil) || isLoopback(uu.Hostname()) {
			continue
		}
		d.add(Finding{Severity: Warn, Check: "credentials-plain-http",
			What:  fmt.Sprintf("upstream %s gets credentials over plain http: anyone on the path can read them", upstreamName(u, uu)),
			Where: upstream.RedactURL(u.URL),
			Fix:   "Use the upstream's https:// URL (the go command itself sends credentials only over HTTPS)."})
	}
	for i, u := range m.Upstreams {
		if uu, err := url.Parse(u.URL); err == nil && (uu.Scheme == "http" || uu.Scheme == "https") && sameListener(uu.Host, m.Listen) {
			d.add(Finding{Severity: Error, Check: "upstream-loop",
				What:  fmt.Sprintf("modgate's upstream %d (%s) is modgate's own listener %s: every request would loop", i+1, u.URL, m.Listen),
				Where: "modgate config: upstreams",
				Fix: "Give modgate its upstreams explicitly (--upstream, MODGATE_UPSTREAM or upstreams in the config): by default it takes " +
					"`go env GOPROXY`, which points at modgate once the go command is set up to use it."})
		}
	}
}

func (d *run) loadPolicy(file string) {
	if file == "" {
		return
	}
	p, err := policy.Load(file)
	if err != nil {
		d.add(Finding{Severity: Error, Check: "policy", What: "the policy does not load: " + strings.ReplaceAll(err.Error(), "\n", "; "), Where: file,
			Fix: "Fix it (`modgate policy lint " + file + "`); its private patterns are not checked."})
		return
	}
	d.private = p.PrivatePatterns()
}

// checkVerification says whether modgate verifies what it keeps and
// serves against a checksum database (README, "Trust").
func (d *run) checkVerification() {
	switch {
	case !d.cfgOK:
	case d.m.Verified:
		d.add(Finding{Severity: Info, Check: "modgate-verified", What: "modgate verifies public modules' go.mod files and zips against " + d.m.SumDB + " before it keeps or serves them"})
	case d.m.SumDB == "":
		d.add(Finding{Severity: Warn, Check: "modgate-unverified", What: "modgate serves no checksum database (sumdb off): it keeps and serves modules checked only by the protocol's rules",
			Fix: "Give modgate the database your builds use: --sumdb name+key (GOSUMDB's form), or sumdb.name and sumdb.key in its config."})
	default:
		d.add(Finding{Severity: Warn, Check: "modgate-unverified", What: "modgate has no key for the checksum database " + d.m.SumDB + ": it keeps and serves modules checked only by the protocol's rules",
			Fix: "Give the key: --sumdb " + d.m.SumDB + "+<key> (GOSUMDB's name+key form), MODGATE_SUMDB_KEY, or sumdb.key in the config."})
	}
}

// checkGoEnv looks at the settings that turn verification off.
func (d *run) checkGoEnv() {
	if len(d.goenv) == 0 {
		return
	}
	if v := d.goenv["GOSUMDB"]; v == "off" {
		d.add(Finding{Severity: Error, Check: "gosumdb-off", What: "GOSUMDB=off: the go command verifies no module against the checksum database",
			Where: d.source("GOSUMDB"),
			Fix: "Turn it back on: `go env -u GOSUMDB` (and unset GOSUMDB in the environment). For private modules set GONOSUMDB " +
				"(or GOPRIVATE) to their patterns instead."})
	}
	if hasInsecureFlag(d.goenv["GOFLAGS"]) {
		d.add(Finding{Severity: Error, Check: "goflags-insecure", What: fmt.Sprintf("GOFLAGS=%q has -insecure: fetches over plain HTTP and skips certificate checks", d.goenv["GOFLAGS"]),
			Where: d.source("GOFLAGS"),
			Fix:   "Remove -insecure from GOFLAGS (`go env -w GOFLAGS=...` without it). Trust an internal CA with SSL_CERT_FILE instead."})
	}
	if v := d.goenv["GOINSECURE"]; v != "" {
		d.add(Finding{Severity: Warn, Check: "goinsecure", What: fmt.Sprintf("GOINSECURE=%q: modules matching it are fetched without TLS verification", v),
			Where: d.source("GOINSECURE"),
			Fix:   "Unset it (`go env -u GOINSECURE`) and give the go command the server's CA (SSL_CERT_FILE) instead."})
	}
	if v := d.opts.Getenv("GONOSUMCHECK"); v != "" {
		d.add(Finding{Severity: Warn, Check: "gonosumcheck", What: fmt.Sprintf("GONOSUMCHECK=%q is set, but the go command does not read it", v),
			Where: "environment",
			Fix:   "Use GONOSUMDB (or GOPRIVATE) for the private patterns it was meant to cover, and unset GONOSUMCHECK."})
	} else if v, ok := d.envFile["GONOSUMCHECK"]; ok {
		d.add(Finding{Severity: Warn, Check: "gonosumcheck", What: fmt.Sprintf("GONOSUMCHECK=%q is set, but the go command does not read it", v),
			Where: "go env file " + d.envPath,
			Fix:   "Use GONOSUMDB (or GOPRIVATE) for the private patterns it was meant to cover, and remove GONOSUMCHECK from the file."})
	}
	if v := d.goenv["GONOSUMDB"]; matchesEverything(v) {
		d.add(Finding{Severity: Error, Check: "gonosumdb-all", What: fmt.Sprintf("GONOSUMDB=%q matches every module: no checksum is verified", v),
			Where: d.source("GONOSUMDB"),
			Fix:   "List only the private patterns (e.g. *.corp.example.test,github.com/acme/*)."})
	}
}

// hasInsecureFlag reports whether a GOFLAGS value holds -insecure.
func hasInsecureFlag(goflags string) bool {
	for _, f := range strings.Fields(goflags) {
		name, _, _ := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if strings.HasPrefix(f, "-") && name == "insecure" {
			return true
		}
	}
	return false
}

// matchesEverything reports whether a GOPRIVATE-style list matches any
// module path.
func matchesEverything(list string) bool {
	for _, g := range strings.Split(list, ",") {
		if strings.TrimSpace(g) == "*" {
			return true
		}
	}
	return false
}

// checkPrivate compares the policy's private patterns with GONOSUMDB (which
// the go command defaults to GOPRIVATE).
func (d *run) checkPrivate(policyFile string) {
	if len(d.goenv) == 0 {
		return
	}
	if policyFile == "" {
		d.add(Finding{Severity: Info, Check: "policy", What: "no policy given: the private patterns are not compared with GONOSUMDB",
			Fix: "Pass --policy F or set MODGATE_POLICY."})
		return
	}
	missing := missingPatterns(d.private, d.goenv["GONOSUMDB"])
	if len(missing) == 0 {
		if len(d.private) > 0 {
			d.add(Finding{Severity: Info, Check: "gonosumdb", What: "GONOSUMDB covers every private pattern of the policy (" + strings.Join(d.private, ",") + ")", Where: d.source("GONOSUMDB")})
		}
		return
	}
	want := joinPatterns(d.goenv["GONOSUMDB"], missing)
	d.add(Finding{Severity: Error, Check: "gonosumdb-leak",
		What: fmt.Sprintf("private patterns of the policy are missing from GONOSUMDB (%q): %s. The go command asks the checksum database "+
			"about those modules, which tells its operator their names (modgate refuses the lookup, so builds fail with 403)",
			d.goenv["GONOSUMDB"], strings.Join(missing, ", ")),
		Where: d.source("GONOSUMDB"),
		Fix:   "`go env -w 'GONOSUMDB=" + want + "'` (or GOPRIVATE, which also keeps them away from public proxies); in CI set the same value in the environment."})
}

// missingPatterns returns the patterns that no glob of list covers. A
// pattern counts as covered when list matches it taken literally as a
// path: "*" in a glob matches "*" in a pattern, so "*.corp.example.test"
// covers itself and "github.com/acme" covers "github.com/acme/*".
func missingPatterns(patterns []string, list string) []string {
	var missing []string
	for _, p := range patterns {
		for _, one := range strings.Split(p, ",") {
			if one = strings.TrimSpace(one); one != "" && !module.MatchPrefixPatterns(list, one) {
				missing = append(missing, one)
			}
		}
	}
	return missing
}

func joinPatterns(list string, more []string) string {
	var out []string
	for _, g := range strings.Split(list, ",") {
		if g = strings.TrimSpace(g); g != "" {
			out = append(out, g)
		}
	}
	return strings.Join(append(out, more...), ",")
}

// modgateURL is the URL the go command should use to reach modgate.
func (d *run) modgateURL() string {
	if d.m.URL == "" {
		return "http://127.0.0.1:7070"
	}
	return d.m.URL
}

// sameListener reports whether host (host:port from a URL) reaches a
// listener on listen. "localhost" is whichever loopback address the
// client picks.
func sameListener(host, listen string) bool {
	if strings.EqualFold(host, listen) {
		return true
	}
	h, p, err := net.SplitHostPort(host)
	if err != nil {
		return false
	}
	if strings.EqualFold(strings.TrimSuffix(h, "."), "localhost") {
		return wire.SameListener(net.JoinHostPort("127.0.0.1", p), listen) || wire.SameListener(net.JoinHostPort("::1", p), listen)
	}
	return wire.SameListener(host, listen)
}

// goproxyEntries splits GOPROXY into its entries.
func goproxyEntries(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '|' })
}

// usesModgate reports whether a GOPROXY value starts with modgate.
func (d *run) usesModgate(goproxy string) bool {
	entries := goproxyEntries(goproxy)
	if len(entries) == 0 {
		return false
	}
	u, err := url.Parse(strings.TrimSpace(entries[0]))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	if self, err := url.Parse(d.m.URL); err == nil && d.m.URL != "" && strings.EqualFold(u.Host, self.Host) {
		return true // the name modgate's certificate holds
	}
	return sameListener(u.Host, d.m.Listen)
}

func (d *run) checkGoproxy() {
	v, ok := d.goenv["GOPROXY"]
	if !ok {
		return
	}
	where := d.source("GOPROXY")
	entries := goproxyEntries(v)
	switch {
	case v == "off":
		d.add(Finding{Severity: Warn, Check: "goproxy-off", What: "GOPROXY=off: the go command downloads nothing", Where: where,
			Fix: "`go env -w GOPROXY=" + d.modgateURL() + "`"})
	case !d.usesModgate(v):
		d.add(Finding{Severity: Warn, Check: "goproxy-bypass",
			What:  fmt.Sprintf("GOPROXY=%q does not start with modgate (%s): module traffic bypasses it, and with it the policy, the failover and the telemetry", v, d.modgateURL()),
			Where: where,
			Fix:   "`go env -w GOPROXY=" + d.modgateURL() + ",direct` on a laptop, GOPROXY=" + d.modgateURL() + " in a build pod."})
	case len(entries) == 1:
		d.add(Finding{Severity: Info, Check: "goproxy-no-fallback", What: "GOPROXY has no fallback after modgate: when modgate is down, builds fail",
			Where: where,
			Fix:   "That is right in a build pod (nothing may bypass the policy). On a laptop, add ,direct so that modules only reachable at their origin still work."})
	default:
		d.add(Finding{Severity: Info, Check: "goproxy", What: fmt.Sprintf("GOPROXY=%q: modgate first", v), Where: where})
	}
}

// checkProxyVars looks for proxy variables set in one case only: git (curl)
// ignores upper-case HTTP_PROXY, and some tools read only one case.
func (d *run) checkProxyVars() {
	for _, name := range []string{"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"} {
		upper, lower := d.opts.Getenv(name), d.opts.Getenv(strings.ToLower(name))
		switch {
		case upper == lower:
		case upper == "" || lower == "":
			set, unset := name, strings.ToLower(name)
			if upper == "" {
				set, unset = unset, set
			}
			why := "some tools read only one case"
			if name == "HTTP_PROXY" {
				why = "git (curl) ignores upper-case HTTP_PROXY"
			}
			d.add(Finding{Severity: Warn, Check: "proxy-var-case",
				What:  fmt.Sprintf("%s is set but %s is not: %s, so the go command and git may take different ways out", set, unset, why),
				Where: "environment",
				Fix:   fmt.Sprintf("Set both to the same value: export %s=\"$%s\"", unset, set)})
		default:
			d.add(Finding{Severity: Warn, Check: "proxy-var-case",
				What:  fmt.Sprintf("%s=%q and %s=%q differ: tools that read different cases go different ways", name, upper, strings.ToLower(name), lower),
				Where: "environment",
				Fix:   "Set both to the same value."})
		}
	}
}

// checkEnvFile reports go env file settings that the environment
// overrides, so that `go env -w` seems to do nothing.
func (d *run) checkEnvFile() {
	for _, name := range goEnvNames {
		fileVal, inFile := d.envFile[name]
		envVal := d.opts.Getenv(name)
		if !inFile || envVal == "" || envVal == fileVal {
			continue
		}
		d.add(Finding{Severity: Warn, Check: "go-env-overridden",
			What: fmt.Sprintf("%s is %q in the go env file but %q in the environment: the environment wins, so the go command uses %q and `go env -w %s=...` changes nothing",
				name, fileVal, envVal, envVal, name),
			Where: d.envPath,
			Fix:   fmt.Sprintf("Keep one: unset %s in the shell profile or CI settings, or remove it from the file (`go env -u %s`).", name, name)})
	}
}

// probe asks modgate and each upstream a few harmless questions, with a
// bound on each, and checks https upstreams' certificates.
func (d *run) probe(ctx context.Context, timeout time.Duration, mod string) {
	p := d.newProber(ctx, timeout)
	defer p.close()
	escMod, _ := module.EscapePath(mod)
	d.probeModgate(p, escMod, mod)
	results := d.probeUpstreams(p, escMod)
	if d.opts.Progress != nil {
		fmt.Fprint(d.opts.Progress, "\r\033[K")
	}
	d.judgeUpstreams(results, mod)
}

// prober asks one question each with get, every part of it bounded by
// timeout. It uses no proxy from the environment: doctor asks modgate and
// the upstreams themselves, as modgate would.
type prober struct {
	ctx       context.Context
	timeout   time.Duration
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	transport *http.Transport
	client    *http.Client
	// self asks modgate's own listener: over HTTPS it is checked against
	// modgate's certificate (whether clients trust it is checkClients'
	// question).
	self     *http.Client
	progress io.Writer
	version  string
}

func (d *run) newProber(ctx context.Context, timeout time.Duration) *prober {
	dialer := &net.Dialer{Timeout: timeout}
	p := &prober{ctx: ctx, timeout: timeout, progress: d.opts.Progress, version: d.opts.Version}
	p.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if to, ok := d.m.Resolve[addr]; ok {
			addr = to
		}
		return dialer.DialContext(ctx, network, addr)
	}
	p.transport = &http.Transport{DialContext: p.dial, TLSClientConfig: &tls.Config{RootCAs: d.m.RootCAs}, TLSHandshakeTimeout: timeout,
		ResponseHeaderTimeout: timeout, DisableKeepAlives: true}
	p.client = p.with(p.transport)
	p.self = p.client
	if d.m.ListenerCert != nil {
		pool := x509.NewCertPool()
		pool.AddCert(d.m.ListenerCert)
		st := p.transport.Clone()
		st.TLSClientConfig = &tls.Config{RootCAs: pool}
		p.self = p.with(st)
	}
	return p
}

// with is a client over rt that follows no redirect.
func (p *prober) with(rt http.RoundTripper) *http.Client {
	return &http.Client{Transport: rt, Timeout: p.timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (p *prober) close() {
	p.transport.CloseIdleConnections()
	if t, ok := p.self.Transport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
}

// get asks u through client and says how it went: the status, the first
// line of a body that is not a 200, or the error.
func (p *prober) get(client *http.Client, target, kind, u string) Probe {
	if p.progress != nil {
		fmt.Fprintf(p.progress, "\r\033[Kprobing %s: %s %s", target, kind, upstream.RedactText(u))
	}
	pr := Probe{Target: target, Kind: kind, URL: u}
	start := time.Now()
	req, err := http.NewRequestWithContext(p.ctx, http.MethodGet, u, nil)
	if err == nil {
		req.Header.Set("User-Agent", "modgate-doctor/"+p.version)
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			pr.Status = resp.StatusCode
			if resp.StatusCode != http.StatusOK {
				line, _ := bufio.NewReader(io.LimitReader(resp.Body, 512)).ReadString('\n')
				pr.Detail = strings.TrimSpace(line)
			}
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
		}
	}
	pr.Millis = float64(time.Since(start).Microseconds()) / 1000
	var ce *upstream.CredentialsError
	switch {
	case errors.As(err, &ce):
		pr.Error = "credentials: " + ce.Err.Error()
	case err != nil:
		pr.Error = shortErr(err)
	}
	return pr
}

// probeModgate asks modgate itself: its readiness, and a module list.
func (d *run) probeModgate(p *prober, escMod, mod string) {
	base := d.modgateURL()
	throughModgate := d.usesModgate(d.goenv["GOPROXY"])
	var mp []Probe
	if d.m.AdminURL != "" {
		mp = append(mp, p.get(p.self, "modgate", "readyz", d.m.AdminURL+"/readyz"))
	}
	mp = append(mp, p.get(p.self, "modgate", "list", base+"/"+escMod+"/@v/list"))
	d.probes = append(d.probes, mp...)
	d.judgeModgate(mp, throughModgate, mod)
}

// upstreamResult is what probing one upstream found.
type upstreamResult struct {
	probes []Probe // none: not asked
	cert   *certResult
	auth   string // the kind of credentials sent
}

// probeUpstreams asks the upstreams, each in its own goroutine: a hung one
// costs its timeouts once, not once per upstream. Results are in the
// order of d.m.Upstreams.
func (d *run) probeUpstreams(p *prober, escMod string) []upstreamResult {
	results := make([]upstreamResult, len(d.m.Upstreams))
	var wg sync.WaitGroup
	for i, u := range d.m.Upstreams {
		uu, err := url.Parse(u.URL)
		if err != nil || (uu.Scheme != "http" && uu.Scheme != "https") || sameListener(uu.Host, d.m.Listen) {
			continue // not a proxy, or modgate itself (reported already)
		}
		wg.Go(func() { results[i] = d.probeUpstream(p, u, uu, escMod) })
	}
	wg.Wait()
	return results
}

// probeUpstream asks one upstream for a module's list and latest version
// and, with a checksum database, whether it proxies it; it checks an https
// upstream's certificate.
func (d *run) probeUpstream(p *prober, u Upstream, uu *url.URL, escMod string) upstreamResult {
	name := upstreamName(u, uu)
	b := strings.TrimSuffix(u.URL, "/")
	// The probes send the upstream's credentials as modgate does: to its
	// own origin only, never shown.
	uc := p.client
	rt, kind, err := upstream.AuthTransport(u.URL, u.Auth, p.transport, nil)
	if err != nil {
		return upstreamResult{auth: u.Auth.Kind(), probes: []Probe{{Target: name, Kind: "list", URL: b, Error: "credentials: " + err.Error()}}}
	}
	if kind != "" {
		uc = p.with(rt)
	}
	r := upstreamResult{auth: kind, probes: []Probe{
		p.get(uc, name, "list", b+"/"+escMod+"/@v/list"),
		p.get(uc, name, "latest", b+"/"+escMod+"/@latest"),
	}}
	if db := d.m.SumDB; db != "" {
		r.probes = append(r.probes, p.get(uc, name, "sumdb-supported", b+"/sumdb/"+db+"/supported"))
	}
	if uu.Scheme == "https" {
		r.cert = checkCert(p.ctx, p.dial, uu, d.m.RootCAs, p.timeout)
		r.cert.target, r.cert.probe.Target = name, name
	}
	return r
}

// judgeUpstreams records the upstreams' probes and judges each, and all
// of them failing.
func (d *run) judgeUpstreams(results []upstreamResult, mod string) {
	failing, asked := 0, 0
	for i, r := range results {
		if r.probes == nil {
			continue
		}
		asked++
		d.probes = append(d.probes, r.probes...)
		if !d.judgeUpstream(d.m.Upstreams[i].URL, r.auth, r.probes, mod) {
			failing++
		}
		if r.cert != nil {
			d.probes = append(d.probes, r.cert.probe)
			d.judgeCert(r.cert)
		}
	}
	if asked > 0 && failing == asked {
		d.add(Finding{Severity: Error, Check: "upstreams-down", What: "no upstream of modgate answered the probes: every module request will fail",
			Fix: "Check the upstream URLs (--upstream, MODGATE_UPSTREAM or the config) and the network path from here to them."})
	}
}

// upstreamName names an upstream as modgate does: its configured name, or
// its host.
func upstreamName(u Upstream, uu *url.URL) string {
	if u.Name != "" {
		return u.Name
	}
	return uu.Host
}

// shortErr drops the method and URL that *url.Error repeats.
func shortErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// timings formats probes as "list 200 in 12ms, latest 200 in 9ms".
func timings(ps []Probe) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		res := fmt.Sprint(p.Status)
		if p.Error != "" {
			res = p.Error
		}
		// A tenth of a millisecond matters on loopback; not beyond 10 ms.
		prec := 0
		if p.Millis < 10 {
			prec = 1
		}
		parts[i] = fmt.Sprintf("%s %s in %.*fms", p.Kind, res, prec, p.Millis)
	}
	return strings.Join(parts, ", ")
}

func (d *run) judgeModgate(ps []Probe, throughModgate bool, mod string) {
	base := d.modgateURL()
	for _, p := range ps {
		switch {
		case p.Error != "":
			sev := Warn
			if throughModgate {
				sev = Error
			}
			d.add(Finding{Severity: sev, Check: "modgate-down", What: fmt.Sprintf("modgate does not answer %s: %s", p.Kind, p.Error), Where: p.URL,
				Fix: "Start it: `make run` in its repository, or `modgate run` (in a pod, check the modgate container's logs and probes)."})
			return
		case p.Kind == "readyz" && p.Status != http.StatusOK:
			d.add(Finding{Severity: Error, Check: "modgate-not-ready", What: fmt.Sprintf("modgate is not ready (%d): %s", p.Status, p.Detail), Where: p.URL,
				Fix: "`curl -s " + strings.TrimSuffix(p.URL, "/readyz") + "/debug/upstreams` shows each upstream's breaker; fix the upstreams it names."})
			return
		case p.Kind == "list" && p.Status >= 500:
			d.add(Finding{Severity: Warn, Check: "modgate-list", What: fmt.Sprintf("modgate answered %d for the version list of %s: %s", p.Status, mod, p.Detail), Where: p.URL,
				Fix: "The upstream probes below say which upstream fails; `modgate explain` explains modgate's answer."})
			return
		}
	}
	d.add(Finding{Severity: Info, Check: "modgate", What: fmt.Sprintf("modgate at %s answers: %s", base, timings(ps))})
}

// judgeUpstream turns an upstream's probes into a finding and reports
// whether it answered at all. auth is the kind of credentials the probes
// sent, "" for none.
func (d *run) judgeUpstream(rawURL, auth string, ps []Probe, mod string) bool {
	name := ps[0].Target
	var bad []string
	answered := false
	creds := "no credentials"
	if auth != "" {
		creds = "credentials: " + auth
	}
	for _, p := range ps {
		if why, ok := strings.CutPrefix(p.Error, "credentials: "); ok {
			d.add(Finding{Severity: Error, Check: "upstream-credentials", What: fmt.Sprintf("upstream %s (%s): its credentials (%s) cannot be had: %s", name, rawURL, auth, why),
				Where: "modgate config: upstreams[].auth",
				Fix:   "Check the file or command that upstreams[].auth names (README: Private upstreams): run the command by hand with the upstream's URL."})
			return false
		}
		if p.Status == http.StatusUnauthorized || p.Status == http.StatusForbidden {
			what, fix := fmt.Sprintf("upstream %s (%s): credentials refused (%s, %s %d)", name, rawURL, auth, p.Kind, p.Status),
				"The upstream refuses the credentials modgate sends: renew the secret in the file that upstreams[].auth names, or fix the auth command."
			if auth == "" {
				what = fmt.Sprintf("upstream %s (%s) wants credentials (%s %d) and modgate sends none", name, rawURL, p.Kind, p.Status)
				fix = "Give the upstream an auth section: basic (username and password_file), bearer_file, netrc or command (README: Private upstreams)."
			}
			d.add(Finding{Severity: Error, Check: "upstream-credentials", What: what, Where: rawURL, Fix: fix})
			return true
		}
	}
	for _, p := range ps {
		switch {
		case p.Error != "":
			bad = append(bad, p.Kind+": "+p.Error)
		case p.Status >= 500 || p.Status == http.StatusTooManyRequests || p.Status == http.StatusUnauthorized || p.Status == http.StatusForbidden:
			answered = true
			bad = append(bad, fmt.Sprintf("%s: %d %s", p.Kind, p.Status, p.Detail))
		default:
			answered = true
		}
	}
	if len(bad) > 0 {
		what := strings.Join(bad, "; ")
		if len(bad) == len(ps) {
			// The same cause for every probe is said once.
			first := bad[0][strings.Index(bad[0], ": ")+2:]
			same := true
			for _, b := range bad {
				same = same && strings.HasSuffix(b, ": "+first)
			}
			if same {
				what = "every probe: " + first
			}
		}
		d.add(Finding{Severity: Warn, Check: "upstream", What: fmt.Sprintf("upstream %s (%s) fails probes: %s", name, rawURL, what),
			Where: rawURL,
			Fix:   "Check that the URL is right and the upstream is up and reachable from here; modgate's breaker skips it while it fails."})
		return answered
	}
	what := fmt.Sprintf("upstream %s (%s, %s): %s", name, rawURL, creds, timings(ps))
	for _, p := range ps {
		if p.Kind == "sumdb-supported" && p.Status != http.StatusOK {
			what += fmt.Sprintf("; it does not proxy the checksum database %s, so modgate reaches %s directly", d.m.SumDB, d.sumDBURL())
		}
		if p.Kind == "list" && p.Status == http.StatusNotFound {
			what += "; it does not have " + mod + " (normal for an upstream of private modules only)"
		}
	}
	d.add(Finding{Severity: Info, Check: "upstream", What: what})
	return true
}

// certResult is what a TLS dial to an upstream found.
type certResult struct {
	target    string
	probe     Probe
	leaf      *x509.Certificate
	verifyErr error
}

// checkCert dials u and reads its certificate without verifying it first,
// so that an expired or untrusted certificate is still described; it then
// verifies it against roots (the system pool when nil).
func checkCert(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), u *url.URL, roots *x509.CertPool, timeout time.Duration) *certResult {
	host := u.Hostname()
	port := u.Port()
	if port == "" {
		port = "443"
	}
	addr := net.JoinHostPort(host, port)
	r := &certResult{probe: Probe{Kind: "tls", URL: "tls://" + addr}}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := dial(ctx, "tcp", addr)
	if err == nil {
		// Verification is done below, by hand, so that a bad certificate
		// can still be described.
		conn := tls.Client(raw, &tls.Config{ServerName: host, InsecureSkipVerify: true})
		err = conn.HandshakeContext(ctx)
		if err == nil {
			certs := conn.ConnectionState().PeerCertificates
			r.leaf = certs[0]
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, r.verifyErr = r.leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
			na := r.leaf.NotAfter
			r.probe.NotAfter = &na
		}
		conn.Close()
	}
	r.probe.Millis = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		r.probe.Error = err.Error()
	}
	return r
}

func (d *run) judgeCert(r *certResult) {
	where := r.probe.URL
	if r.leaf == nil {
		d.add(Finding{Severity: Warn, Check: "cert", What: fmt.Sprintf("upstream %s: TLS handshake failed: %s", r.target, r.probe.Error), Where: where})
		return
	}
	left := time.Until(r.leaf.NotAfter)
	days := int(left.Hours() / 24)
	when := r.leaf.NotAfter.UTC().Format("2006-01-02 15:04 MST")
	switch {
	case left <= 0:
		d.add(Finding{Severity: Error, Check: "cert-expired", What: fmt.Sprintf("upstream %s: certificate expired on %s (%d days ago)", r.target, when, -days), Where: where,
			Fix: "The upstream's operator must renew it; until then modgate's requests to it fail TLS verification."})
		return
	case left < certWarnBefore:
		d.add(Finding{Severity: Warn, Check: "cert-expiring", What: fmt.Sprintf("upstream %s: certificate expires on %s, in %d days", r.target, when, days), Where: where,
			Fix: "Ask the upstream's operator to renew it before then."})
	}
	if r.verifyErr != nil {
		d.add(Finding{Severity: Error, Check: "cert-untrusted", What: fmt.Sprintf("upstream %s: certificate does not verify: %v", r.target, r.verifyErr), Where: where,
			Fix: "If it is signed by an internal CA, give modgate that CA: tls_ca_file in the config (--tls-ca-file)."})
		return
	}
	if left >= certWarnBefore {
		d.add(Finding{Severity: Info, Check: "cert", What: fmt.Sprintf("upstream %s: certificate valid until %s (%d days)", r.target, when, days), Where: where})
	}
}

// ---- repository scan ----

// scanSkipDirs are never descended into: they hold other people's code,
// nothing of the repository's own, or (testdata) files that the go command
// ignores too, such as doctor's own fixtures.
var scanSkipDirs = map[string]bool{".git": true, "node_modules": true, "vendor": true, ".tools": true, "testdata": true}

// ciSettingRE finds a Go setting given a value in a CI file: YAML
// (`GOSUMDB: off`), shell and Makefile (`export GOSUMDB=off`, `GOSUMDB ?= off`),
// Dockerfile (`ENV GOSUMDB=off`, `ENV GOSUMDB off`), `go env -w GOSUMDB=off`.
var ciSettingRE = regexp.MustCompile(`(?:^|[^A-Za-z0-9_])(GOPROXY|GOSUMDB|GOFLAGS|GOINSECURE|GONOSUMCHECK|GONOSUMDB)\s*(?::=|\?=|\+=|=|:)\s*(.*)$`)

// dockerEnvRE finds the Dockerfile form without "=": `ENV GOSUMDB off`.
var dockerEnvRE = regexp.MustCompile(`^\s*(?:ENV|ARG)\s+(GOPROXY|GOSUMDB|GOFLAGS|GOINSECURE|GONOSUMCHECK|GONOSUMDB)\s+(.*)$`)

// isCIFile reports whether rel (slash-separated, relative to the scanned
// root) is a CI or build file worth scanning, and whether it is YAML.
func isCIFile(rel string) (ci, yaml bool) {
	base := filepath.Base(rel)
	dir := filepath.ToSlash(filepath.Dir(rel))
	switch {
	case dir == ".github/workflows" && (strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".yaml")):
		return true, true
	case base == ".gitlab-ci.yml":
		return true, true
	case base == "Jenkinsfile", base == "Makefile", strings.HasPrefix(base, "Dockerfile"), strings.HasSuffix(base, ".sh"):
		return true, false
	}
	return false, false
}

// scan looks for risky settings in a repository.
func (d *run) scan(root string) {
	st, err := os.Stat(root)
	if err != nil || !st.IsDir() {
		if err == nil {
			err = errors.New("not a directory")
		}
		d.add(Finding{Severity: Error, Check: "scan", What: "cannot scan " + root + ": " + err.Error()})
		return
	}
	found := 0
	filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable parts are skipped
		}
		if de.IsDir() {
			if p != root && scanSkipDirs[de.Name()] {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if de.Name() == "go.mod" {
			found++
			d.scanGoMod(p, rel)
			return nil
		}
		if ci, yaml := isCIFile(rel); ci {
			found++
			d.scanCIFile(p, rel, yaml)
		}
		return nil
	})
	d.add(Finding{Severity: Info, Check: "scan", What: fmt.Sprintf("scanned %d go.mod and CI files under %s", found, root)})
}

func (d *run) scanGoMod(p, rel string) {
	data, err := os.ReadFile(p)
	if err != nil {
		return
	}
	// ParseLax keeps every statement's syntax, even replacements that
	// Parse rejects (a URL), so that each can be reported with its line.
	f, err := modfile.ParseLax(rel, data, nil)
	if err != nil {
		d.add(Finding{Severity: Error, Check: "gomod-invalid", What: "go.mod does not parse: " + err.Error(), Where: rel,
			Fix: "The go command refuses it too; fix the line it names."})
		return
	}
	replaced := map[int]bool{} // lines with a finding already
	for _, stmt := range f.Syntax.Stmt {
		var lines []*modfile.Line
		switch s := stmt.(type) {
		case *modfile.Line:
			if len(s.Token) > 0 && s.Token[0] == "replace" {
				l := *s
				l.Token = s.Token[1:]
				lines = append(lines, &l)
			}
		case *modfile.LineBlock:
			if len(s.Token) > 0 && s.Token[0] == "replace" {
				lines = s.Line
			}
		}
		for _, l := range lines {
			if d.checkReplace(rel, l) {
				replaced[l.Start.Line] = true
			}
		}
	}
	// The go command's stricter parse fails on some of those replacements
	// (a URL, a Windows path elsewhere); each was reported already.
	if _, err := modfile.Parse(rel, data, nil); err != nil && !replacedLineErr(err, replaced) {
		d.add(Finding{Severity: Error, Check: "gomod-invalid", What: "go.mod does not parse: " + err.Error(), Where: rel,
			Fix: "The go command refuses it too; fix the line it names."})
	}
}

// replacedLineErr reports whether every error of a modfile.Parse error is
// on one of the lines.
func replacedLineErr(err error, lines map[int]bool) bool {
	var list modfile.ErrorList
	if !errors.As(err, &list) {
		return false
	}
	for _, e := range list {
		if !lines[e.Pos.Line] {
			return false
		}
	}
	return len(list) > 0
}

// windowsAbsRE matches a Windows absolute path, which filepath.IsAbs does
// not recognise on other systems.
var windowsAbsRE = regexp.MustCompile(`^[A-Za-z]:[\\/]`)

// checkReplace looks at one replacement, tokens "old [v] => new [v]", and
// reports whether it made a finding.
func (d *run) checkReplace(rel string, l *modfile.Line) bool {
	arrow := slices.Index(l.Token, "=>")
	if arrow < 0 || arrow+1 >= len(l.Token) {
		return false
	}
	old, target := l.Token[0], unquote(l.Token[arrow+1])
	// go.mod comments start with "//", so "https://host/path" reaches the
	// parser as the token "https:" and the comment "//host/path ...".
	if strings.HasSuffix(target, ":") && len(l.Comments.Suffix) > 0 {
		if rest := strings.Fields(l.Comments.Suffix[0].Token); len(rest) > 0 {
			target += rest[0]
		}
	}
	where := fmt.Sprintf("%s:%d", rel, l.Start.Line)
	switch {
	case strings.Contains(target, "://") || strings.HasPrefix(target, "git@"):
		d.add(Finding{Severity: Error, Check: "replace-url", What: fmt.Sprintf("replace %s => %s points at a URL: the go command does not fetch replacements by URL and rejects this go.mod", old, target),
			Where: where, Fix: "Replace with a module path and version (=> example.test/fork v1.2.3) served by a proxy, or with a relative directory."})
		return true
	case strings.HasPrefix(target, "/") || windowsAbsRE.MatchString(target) || filepath.IsAbs(target):
		d.add(Finding{Severity: Warn, Check: "replace-abs-path", What: fmt.Sprintf("replace %s => %s points at an absolute path: it builds only on a machine that has that directory", old, target),
			Where: where, Fix: "Use a relative path inside the repository, a go.work file for local development (not committed), or a published version."})
		return true
	}
	return false
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '`') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

func (d *run) scanCIFile(p, rel string, yaml bool) {
	f, err := os.Open(p)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || strings.HasPrefix(trimmed, "//") {
			continue
		}
		m := ciSettingRE.FindStringSubmatch(line)
		if m == nil && strings.HasPrefix(filepath.Base(rel), "Dockerfile") {
			m = dockerEnvRE.FindStringSubmatch(line)
		}
		if m == nil {
			continue
		}
		value := settingValue(m[2], yaml)
		d.checkCISetting(m[1], value, fmt.Sprintf("%s:%d", rel, n))
	}
}

// settingValue takes the value at the start of rest: a quoted string, the
// rest of a YAML line, or a shell word.
func settingValue(rest string, yaml bool) string {
	rest = strings.TrimSpace(rest)
	if rest == "" {
		return ""
	}
	if q := rest[0]; q == '"' || q == '\'' {
		if end := strings.IndexByte(rest[1:], q); end >= 0 {
			return rest[1 : end+1]
		}
		return rest[1:]
	}
	if yaml {
		if i := strings.Index(rest, " #"); i >= 0 {
			rest = rest[:i]
		}
		return strings.TrimSpace(rest)
	}
	if i := strings.IndexAny(rest, " \t;&|)#\\"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// checkCISetting judges one setting found in a CI file.
func (d *run) checkCISetting(name, value, where string) {
	if value == "" || strings.HasPrefix(value, "$") {
		return // set from elsewhere: nothing to judge here
	}
	switch name {
	case "GOSUMDB":
		if value == "off" {
			d.add(Finding{Severity: Error, Check: "ci-gosumdb-off", What: "GOSUMDB=off: CI verifies no checksum", Where: where,
				Fix: "Remove it; set GONOSUMDB to the private patterns instead."})
		}
	case "GOFLAGS":
		if hasInsecureFlag(value) {
			d.add(Finding{Severity: Error, Check: "ci-goflags-insecure", What: fmt.Sprintf("GOFLAGS=%q has -insecure: CI fetches without TLS verification", value), Where: where,
				Fix: "Remove -insecure; give the job the internal CA with SSL_CERT_FILE."})
		}
	case "GOINSECURE":
		d.add(Finding{Severity: Warn, Check: "ci-goinsecure", What: fmt.Sprintf("GOINSECURE=%q: CI fetches those modules without TLS verification", value), Where: where,
			Fix: "Remove it; give the job the server's CA with SSL_CERT_FILE."})
	case "GONOSUMCHECK":
		d.add(Finding{Severity: Warn, Check: "ci-gonosumcheck", What: fmt.Sprintf("GONOSUMCHECK=%q: the go command does not read this variable", value), Where: where,
			Fix: "Use GONOSUMDB (or GOPRIVATE) with the private patterns."})
	case "GONOSUMDB":
		switch missing := missingPatterns(d.private, value); {
		case matchesEverything(value):
			d.add(Finding{Severity: Error, Check: "ci-gonosumdb-all", What: fmt.Sprintf("GONOSUMDB=%q matches every module: CI verifies no checksum", value), Where: where,
				Fix: "List only the private patterns."})
		case len(missing) > 0:
			d.add(Finding{Severity: Error, Check: "ci-gonosumdb-leak", What: fmt.Sprintf("GONOSUMDB=%q lacks private patterns of the policy: %s", value, strings.Join(missing, ", ")), Where: where,
				Fix: "Set GONOSUMDB=" + joinPatterns(value, missing) + " (keep it in one place, e.g. a shared CI variable)."})
		default:
			d.add(Finding{Severity: Info, Check: "ci-gonosumdb", What: fmt.Sprintf("GONOSUMDB=%q: these modules are not checked against the checksum database", value), Where: where})
		}
	case "GOPROXY":
		switch {
		case value == "off":
			d.add(Finding{Severity: Warn, Check: "ci-goproxy-off", What: "GOPROXY=off: CI downloads nothing (fine only with a vendor directory or a warm cache)", Where: where})
		case !d.usesModgateOrLoopback(value):
			d.add(Finding{Severity: Warn, Check: "ci-goproxy-bypass", What: fmt.Sprintf("GOPROXY=%q bypasses modgate", value), Where: where,
				Fix: "Run modgate beside the build and set GOPROXY=http://127.0.0.1:7070 (deploy/k8s has a pod template)."})
		}
	}
}

// usesModgateOrLoopback accepts modgate's URL, or any loopback proxy: in a
// CI file the sidecar's address is what the pod makes it, not this
// machine's config.
func (d *run) usesModgateOrLoopback(goproxy string) bool {
	if d.usesModgate(goproxy) {
		return true
	}
	entries := goproxyEntries(goproxy)
	if len(entries) == 0 {
		return false
	}
	u, err := url.Parse(strings.TrimSpace(entries[0]))
	return err == nil && u.Scheme == "http" && wire.IsLoopbackHost(u.Host)
}

// ---- output ----

func (d *run) report() Report {
	r := Report{Summary: map[Severity]int{Error: 0, Warn: 0, Info: 0}, Probes: d.probes, GoEnv: d.goenv}
	for _, sev := range []Severity{Error, Warn, Info} {
		for _, f := range d.findings {
			if f.Severity == sev {
				r.Findings = append(r.Findings, f)
				r.Summary[sev]++
			}
		}
	}
	r.OK = r.Summary[Error] == 0
	return r.redacted()
}

// redacted hides the credentials of every URL in the report: upstream URLs
// and GOPROXY or proxy variables may carry a password or a token, and a
// doctor report is made to be pasted into a ticket.
func (r Report) redacted() Report {
	findings := make([]Finding, len(r.Findings))
	for i, f := range r.Findings {
		findings[i] = f.redacted()
	}
	r.Findings = findings
	if r.Probes != nil {
		probes := make([]Probe, len(r.Probes))
		for i, p := range r.Probes {
			probes[i] = p.redacted()
		}
		r.Probes = probes
	}
	if r.GoEnv != nil {
		env := make(map[string]string, len(r.GoEnv))
		for k, v := range r.GoEnv {
			env[k] = upstream.RedactText(v)
		}
		r.GoEnv = env
	}
	return r
}

func (f Finding) redacted() Finding {
	f.What, f.Where, f.Fix = upstream.RedactText(f.What), upstream.RedactText(f.Where), upstream.RedactText(f.Fix)
	return f
}

func (p Probe) redacted() Probe {
	p.URL, p.Error, p.Detail = upstream.RedactText(p.URL), upstream.RedactText(p.Error), upstream.RedactText(p.Detail)
	return p
}

// Counts says how many findings of each severity the report holds:
// "2 errors, 1 warning, 3 notes".
func (r Report) Counts() string {
	return fmt.Sprintf("%s, %s, %s", plural(r.Summary[Error], "error", "errors"),
		plural(r.Summary[Warn], "warning", "warnings"), plural(r.Summary[Info], "note", "notes"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// WriteReport prints the findings for a person, grouped by severity.
func WriteReport(w io.Writer, r Report) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "modgate doctor: %s\n", r.Counts())
	for _, g := range []struct {
		sev   Severity
		title string
	}{{Error, "Errors"}, {Warn, "Warnings"}, {Info, "Notes"}} {
		if r.Summary[g.sev] == 0 {
			continue
		}
		fmt.Fprintf(bw, "\n%s\n", g.title)
		for _, f := range r.Findings {
			if f.Severity != g.sev {
				continue
			}
			wrap.Paragraphs(bw, "  "+string(f.Severity)+strings.Repeat(" ", 6-len(f.Severity)), f.What)
			if f.Where != "" {
				fmt.Fprintf(bw, "        at:  %s\n", f.Where)
			}
			if f.Fix != "" {
				wrap.Paragraphs(bw, "        fix: ", f.Fix)
			}
		}
	}
}

// isLoopback reports whether host is localhost or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
