package explain

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/mod/module"

	"github.com/modgate/modgate/sidecar/wire"
)

// An answer of modgate's is recognised by the code on its first line
// (wire.ParseLine), never by its prose, which may change: the code picks
// the explanation. The message after the code and the lines after the
// first are read only for specifics (which rule, which upstream did what),
// and each explanation still makes sense when they say something else.

// answer is an answer of modgate's as the go command quoted it.
type answer struct {
	code wire.Code
	// line is the first line, from "modgate: " on.
	line string
	// msg is the first line after the code.
	msg string
	// details are the lines after the first.
	details []string
	// tunnel is set when the answer is a CONNECT's status line: the go
	// command prints only that, after the URL it wanted.
	tunnel bool
}

// answer finds modgate's answer in a failure: the first line that carries
// a code, in the server's response as the go command indents it, in any
// line when the indentation was lost, or in the failure's first line,
// where the go command puts a refused CONNECT's status line.
func (b *block) answer() (answer, bool) {
	if a, ok := findAnswer(b.resp); ok {
		return a, true
	}
	if a, ok := findAnswer(b.body); ok {
		return a, true
	}
	if code, msg, ok := wire.ParseLine(b.head); ok {
		return answer{code: code, line: b.head[strings.Index(b.head, wire.Prefix):], msg: msg, tunnel: true}, true
	}
	return answer{}, false
}

func findAnswer(lines []string) (answer, bool) {
	for i, l := range lines {
		if code, msg, ok := wire.ParseLine(l); ok {
			return answer{code: code, line: l[strings.Index(l, wire.Prefix):], msg: msg, details: lines[i+1:]}, true
		}
	}
	return answer{}, false
}

// answerRules holds the explanation of each code. TestEveryCodeExplained
// keeps it complete.
var answerRules = map[wire.Code]func(*block, answer) *Explanation{
	wire.BadRequest:       explainBadRequestAnswer,
	wire.NotModuleRequest: explainNotModuleRequest,
	wire.MethodNotAllowed: explainMethodNotAllowed,
	wire.AuthRequired:     explainAuthRequired,
	wire.Misdirected:      explainMisdirected,
	wire.Denied:           explainDenied,
	wire.PrivateLookup:    explainPrivateLookup,
	wire.PrivateHost:      explainPrivateHost,
	wire.Refused:          explainRefusedAnswer,
	wire.Loop:             explainLoop,
	wire.NotFound:         explainChain,
	wire.Direct:           explainChain,
	wire.Off:              explainOff,
	wire.CircuitOpen:      explainChain,
	wire.Timeout:          explainChain,
	wire.UpstreamFailed:   explainChain,
	wire.UpstreamCut:      explainUpstreamCut,
	wire.BadUpstream:      explainBadUpstream,
	wire.ChecksumMismatch: explainUpstreamMismatch,
	wire.UnknownSumDB:     explainUnknownSumDB,
	wire.Busy:             explainBusy,
	wire.TooManyLogins:    explainTooManyLogins,
	wire.Offline:          explainOffline,
	wire.Internal:         explainInternal,
}

// explainAnswer explains a failure that quotes an answer of modgate's, or
// returns nil. The explanation's Rule is the answer's code.
func explainAnswer(b *block) *Explanation {
	a, ok := b.answer()
	if !ok {
		return nil
	}
	rule := answerRules[a.code]
	if rule == nil {
		rule = explainUnknownCode
	}
	e := rule(b, a)
	e.Rule = string(a.code)
	// A CONNECT's answer is on the failure's first line, shown already.
	if !a.tunnel && (len(e.Saw) == 0 || e.Saw[0] != a.line) {
		e.Saw = append([]string{a.line}, e.Saw...)
	}
	return e
}

// fromModgate is " (403 from modgate)" for the status the go command
// printed, or "" when it printed none (a CONNECT's answer).
func fromModgate(b *block) string {
	if s := b.status(); s != 0 {
		return " (" + strconv.Itoa(s) + " from modgate)"
	}
	return ""
}

// host is the host the failing request was for, or "the host".
func (b *block) host() string {
	if u := b.fetched(); u != nil {
		return u.Host
	}
	return "the host"
}

func explainUnknownCode(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "modgate refused or failed the request" + fromModgate(b),
		Cause: "modgate answered with the code " + string(a.code) + ": " + a.msg + ".",
		Fix:   "This modgate explain does not know that code yet; the lines modgate wrote under it say more.",
	}
}

func explainBadRequestAnswer(b *block, a answer) *Explanation {
	e := &Explanation{
		Title: "bad request" + fromModgate(b),
		Cause: "modgate refused the request before asking any upstream, because it is not one it will pass on: " + a.msg + ".",
		Fix:   "Check the module path and version as written in go.mod or on the command line (case, a missing v, a stray character).",
	}
	if fix := b.goproxyPathFix(); fix != "" {
		e.Cause += " The go command put " + b.proxyPath() + " before the module path, so modgate read it as part of the request."
		e.Fix = fix
	}
	return e
}

func explainNotModuleRequest(b *block, a answer) *Explanation {
	fix := b.goproxyPathFix()
	if fix == "" {
		fix = "Point GOPROXY at modgate's address with no path: GOPROXY=http://127.0.0.1:7070 (`go env GOPROXY` shows the value in force)."
	}
	return &Explanation{
		Title: "not a module proxy request" + fromModgate(b),
		Cause: "modgate's listener answers only the module proxy protocol, and " + b.origin() + " was asked for something else: " +
			a.msg + ". A GOPROXY that names modgate with a path after its address does that.",
		Fix: fix,
	}
}

// proxyPath returns what the failing URL has between its host and the
// module path: the path of a GOPROXY entry such as http://host/mods.
func (b *block) proxyPath() string {
	u := b.fetched()
	if u == nil {
		return ""
	}
	esc, err := module.EscapePath(pathOf(b.subject()))
	if err != nil {
		return ""
	}
	prefix, _, found := strings.Cut(u.Path, "/"+esc+"/")
	if !found {
		return ""
	}
	return prefix
}

// goproxyPathFix says to drop the path from a GOPROXY that has one, or
// returns "": modgate serves the protocol at its root.
func (b *block) goproxyPathFix() string {
	p := b.proxyPath()
	if p == "" {
		return ""
	}
	return "modgate serves the module proxy protocol at its root: drop " + p + " from GOPROXY, e.g. GOPROXY=" + b.origin() +
		" (`go env GOPROXY` shows the value in force)."
}

func explainMethodNotAllowed(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "method not allowed" + fromModgate(b),
		Cause: "A module proxy answers GET and HEAD only, and modgate was sent something else: " + a.msg + ".",
		Fix:   "Send only module downloads to modgate's listener; uploads and other requests go to the server itself.",
	}
}

func explainAuthRequired(b *block, a answer) *Explanation {
	if b.status() == 401 {
		return &Explanation{
			Title: "modgate wants credentials (401)",
			Cause: "modgate lets only known clients use its module listener, and the go command sent no valid credentials: " + a.msg + ".",
			Fix: "Give the go command modgate's credentials in ~/.netrc (or GOAUTH) for modgate's host; it sends them only over " +
				"HTTPS, so GOPROXY must be modgate's https:// address.",
		}
	}
	return &Explanation{
		Title: "modgate's forward mode wants credentials (407)",
		Cause: "The go command sent this request through modgate as its HTTP proxy (HTTP_PROXY or HTTPS_PROXY), and modgate " +
			"lets only known users through its forward mode (forward.auth_file): " + a.msg + ".",
		Fix: "Put the user in the proxy URLs: HTTP_PROXY=http://user:password@127.0.0.1:7070, the same in HTTPS_PROXY, " +
			"http_proxy and https_proxy (`modgate env` prints them). Fetching through modgate as the GOPROXY needs no proxy " +
			"credentials.",
	}
}

func explainMisdirected(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "request for another host inside a tunnel" + fromModgate(b),
		Cause: "modgate intercepts HTTPS to this host, and a request inside the tunnel named another host: " + a.msg + ".",
		Fix:   "Open a separate connection (CONNECT) for each host; a client that reuses one connection for several hosts cannot do so through modgate's interception.",
	}
}

func explainLoop(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "request loop (508 Loop Detected)",
		Cause: "The request came back to a modgate it had already passed through: an upstream in modgate's chain " +
			"(or an upstream of that upstream) is modgate itself, so the request would go round forever. modgate " +
			"refuses it as soon as it sees its own Via token.",
		Fix: "Check the upstreams of each modgate on the path (`curl -s 127.0.0.1:7071/debug/upstreams`, the config's " +
			"upstreams or --upstream): none may lead back to a modgate that forwards to it. A modgate's default upstreams " +
			"come from `go env GOPROXY`, so a GOPROXY that points at modgate, read by modgate itself, makes a loop: " +
			"give modgate --upstream explicitly.",
	}
}

func explainDenied(b *block, a answer) *Explanation {
	subject := b.subject()
	var cause strings.Builder
	ruleText := ""
	if d, ok := wire.ParseDenial(a.msg); ok {
		subject, ruleText = d.Subject, d.RuleText
		if d.Rule > 0 {
			fmt.Fprintf(&cause, "modgate's policy refused %s: rule %d (%s) matched it", subject, d.Rule, d.RuleText)
		} else {
			noRule := "no rule matched"
			if d.RuleText != "" {
				noRule += ", " + d.RuleText
			}
			fmt.Fprintf(&cause, "modgate's policy refused %s: no rule matched and the policy's default is to deny (%s)", subject, noRule)
		}
		if d.Reason != "" {
			fmt.Fprintf(&cause, ", with the reason %q", d.Reason)
		}
	} else {
		fmt.Fprintf(&cause, "modgate's policy refused %s: %s", subject, a.msg)
	}
	cause.WriteString(". This is a decision, not an outage: no upstream was asked.")
	// The policy's contact line comes right after the first.
	contact := ""
	if len(a.details) > 0 {
		contact = a.details[0]
	}
	fix := "Use a version or module the policy allows"
	if strings.Contains(ruleText, " versions ") {
		fix += " (this rule is about versions: `go get " + pathOf(subject) + "@latest` may pick an allowed one)"
	}
	fix += ". `modgate policy check " + subject + "` shows which rule decides. If the rule is wrong, change the policy file " +
		"(its private, rules and default keys)"
	if contact != "" {
		fix += "; the policy says: " + contact
	}
	fix += "."
	return &Explanation{Title: "denied by modgate's policy", Saw: nonEmpty(a.line, contact), Cause: cause.String(), Fix: fix}
}

// privatePattern returns the private pattern an answer names, and the
// line that names it, or the module path of subject.
func privatePattern(a answer, subject string) (pattern, line string) {
	if p, l, ok := wire.ParsePattern(append([]string{a.msg}, a.details...)...); ok {
		if l == a.msg {
			l = ""
		}
		return p, l
	}
	return pathOf(subject), ""
}

func explainPrivateLookup(b *block, a answer) *Explanation {
	subject := b.subject()
	pattern, line := privatePattern(a, subject)
	return &Explanation{
		Title: "checksum lookup of a private module refused",
		Saw:   nonEmpty(a.line, line),
		Cause: "The go command asked the checksum database (through " + b.origin() + ") to vouch for " + subject + ", " +
			"which modgate's policy marks private. modgate refuses that lookup (403) because it would tell the " +
			"database's operator the private module's name. The go command looks up every module that GONOSUMDB " +
			"(or GOPRIVATE) does not exclude.",
		Fix: "Tell the go command the path is private: `go env -w 'GONOSUMDB=" + pattern + "'` (add it, comma-separated, " +
			"to any value GONOSUMDB already has; GOPRIVATE works too and also sets GONOPROXY). In CI, set GONOSUMDB in the " +
			"build's environment. `modgate doctor --policy F` compares GONOSUMDB with the policy's private patterns.",
	}
}

func explainPrivateHost(b *block, a answer) *Explanation {
	subject := b.subject()
	pattern, _ := privatePattern(a, subject)
	host := b.host()
	return &Explanation{
		Title: "private module kept from " + host + fromModgate(b),
		Cause: "The go command fetched " + subject + " from " + b.origin() + " through modgate's forward mode. modgate's policy " +
			"marks the module private, and " + host + " is not a host modgate may tell private module paths to, so it refused.",
		Fix: "If " + host + " is where your private modules live, mark it private in modgate's config (an upstream with private: true, " +
			"or forward.private_hosts). Otherwise tell the go command the module is private, so that it fetches it from its " +
			"origin: `go env -w 'GOPRIVATE=" + pattern + "'`.",
	}
}

func explainRefusedAnswer(b *block, a answer) *Explanation {
	host := b.host()
	// The reason names the guard that refused; each has its own key.
	fix := "Fetch modules through modgate as a GOPROXY instead (GOPROXY=http://127.0.0.1:7070): then modgate's forward mode is not needed."
	switch {
	case strings.Contains(a.msg, "allow_hosts"):
		fix = "If the build may reach " + host + ", add it to modgate's forward.allow_hosts. " + fix
	case strings.Contains(a.msg, "connect_ports"):
		fix = "If that port is meant to be reachable, add it to modgate's forward.connect_ports. " + fix
	case strings.Contains(a.msg, "resolves to"):
		fix = "modgate refuses loopback, private and link-local addresses unless the host is named in forward.allow_hosts " +
			"without a wildcard (or pinned with resolve); name it there if the internal host is meant to be reached. " + fix
	}
	how := "as its HTTP_PROXY"
	if a.tunnel {
		how = "as its HTTPS_PROXY (a CONNECT tunnel)"
	}
	return &Explanation{
		Title: "modgate refused to reach " + host + fromModgate(b),
		Cause: "The go command reaches " + host + " through modgate " + how + ", and modgate's forward mode may not go there: " + a.msg + ".",
		Fix:   fix,
	}
}

func explainOff(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "modgate's chain is off" + fromModgate(b),
		Cause: "modgate's upstream chain ends in off before any upstream had " + b.subject() + ": off answers 403 by design.",
		Fix: "Add an upstream that has the module before off in modgate's chain (--upstream, MODGATE_UPSTREAM or the " +
			"config's upstreams), or replace off by direct if the go command may fetch from the origin itself.",
	}
}

func explainUpstreamCut(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "an upstream broke off its answer" + fromModgate(b),
		Saw:   a.details,
		Cause: "An upstream started to send " + b.subject() + " and stopped before the end. modgate never passes on a partial " +
			"answer, so it failed the request instead.",
		Fix: "Retry: a broken connection is often passing. If it repeats, the upstream named above is failing: check it, or " +
			"put a fallback after \"|\" in modgate's chain (fallthrough: error).",
	}
}

func explainBadUpstream(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "an upstream's answer broke the protocol" + fromModgate(b),
		Saw:   a.details,
		Cause: "An upstream answered " + b.subject() + " with something the module proxy protocol does not allow, so modgate " +
			"did not pass it on: " + a.msg + ".",
		Fix: "The upstream is misconfigured or is not a module proxy: check its URL in modgate's chain (a missing path prefix " +
			"is common) and what it answers to the URL the lines above name.",
	}
}

func explainUpstreamMismatch(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "an upstream's answer is not what the checksum database vouches for" + fromModgate(b),
		Saw:   a.details,
		Cause: "modgate checked " + b.subject() + " against the checksum database before passing it on, as the go command " +
			"does, and the hashes differ (the lines above name both): the upstream serves a changed module, or a tampered " +
			"copy of the database. modgate neither relayed nor kept it, and counted it against that upstream.",
		Fix: "Tell whoever runs the upstream named above: it serves content the checksum database does not vouch for. " +
			"With a fallback after \"|\" in modgate's chain (fallthrough: error) builds get the right content meanwhile. " +
			"Never work around it with GONOSUMDB or GOFLAGS=-insecure.",
	}
}

func explainUnknownSumDB(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "checksum database not served by modgate" + fromModgate(b),
		Cause: "The go command asked modgate for a checksum database other than the one modgate serves: " + a.msg + ".",
		Fix:   "Make them agree: modgate's sumdb (--sumdb or the config's sumdb.name) and the go command's GOSUMDB (`go env GOSUMDB`) must name the same database.",
	}
}

func explainBusy(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "modgate is busy" + fromModgate(b),
		Cause: "modgate had no room for the request just then: " + a.msg + ".",
		Fix:   "Retry. If it keeps happening, modgate's log says which request failed first; its upstreams may be failing.",
	}
}

func explainTooManyLogins(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "too many failed logins" + fromModgate(b),
		Cause: "modgate refuses credentials from this address for a while after too many of them failed: " + a.msg + ".",
		Fix: "Fix the user and password (in HTTPS_PROXY/HTTP_PROXY as http://user:password@host:port, or the netrc " +
			"entry), then retry after the time the answer gives. Every failed login is in modgate's audit log.",
	}
}

func explainOffline(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "modgate is offline and does not have " + b.subject() + fromModgate(b),
		Cause: "modgate runs with offline: true and serves only what its cache holds; " + a.msg + ".",
		Fix: "Fetch the module once through a modgate that is online and shares the cache (cache.dir), " +
			"or turn offline off. `ls` the cache folder to see what it holds.",
	}
}

func explainInternal(b *block, a answer) *Explanation {
	return &Explanation{
		Title: "modgate failed" + fromModgate(b),
		Cause: "modgate could not serve " + b.subject() + " because of a fault of its own, not of an upstream: " + a.msg + ".",
		Fix: "Look at modgate's log. A cache read failure means the cache folder (cache.dir) is damaged or its disk is full: " +
			"free it or clear the folder, then retry.",
	}
}

// attempt is one upstream line of a chain's answer: "public: 404 Not Found (detail)".
type attempt struct {
	name, what string
	status     int
}

var (
	attemptRE     = regexp.MustCompile(`^(\S+?): (.+)$`)
	probedAgainRE = regexp.MustCompile(`probed again in (\d+s)`)
)

// attempts returns the upstream lines of a chain's answer.
func (a answer) attempts() []attempt {
	var out []attempt
	for _, l := range a.details {
		m := attemptRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		at := attempt{name: m[1], what: m[2]}
		if len(m[2]) >= 4 && m[2][3] == ' ' {
			at.status, _ = strconv.Atoi(m[2][:3])
		}
		out = append(out, at)
	}
	return out
}

// describeAttempt says in words what one upstream did and what it means
// for the chain. It reads the prose of an upstream's line, which only
// shades the explanation: the code chose it.
func describeAttempt(a attempt) (what, kind string) {
	w := a.what
	switch {
	case strings.HasPrefix(w, "not asked: "):
		// modgate passed it by: the policy keeps the module away from it.
		return "was not asked (" + strings.TrimPrefix(w, "not asked: ") + "): modgate sends a private module only to upstreams " +
			"marked private: true, and a routed module only to the upstreams its route names", "skip"
	case a.status == 404 || a.status == 410:
		return "does not have it (" + strconv.Itoa(a.status) + "); after \",\" and \"|\" alike the chain moves on", "notfound"
	case a.status == 401 || a.status == 403:
		return "refused the request (" + strconv.Itoa(a.status) + "): it wants credentials modgate did not send, or an access rule there says no; " +
			"after \",\" the chain stops at anything but 404 and 410", "refused"
	case a.status == 429:
		return "is rate-limiting modgate (429 Too Many Requests)", "ratelimit"
	case a.status >= 500:
		return "failed with a server error (" + strconv.Itoa(a.status) + ")", "server"
	case a.status != 0:
		return "answered " + w, "other"
	case strings.HasPrefix(w, "circuit open:"):
		return "was not asked: its circuit breaker is open after repeated failures (" + strings.TrimPrefix(w, "circuit open: ") + ")", "open"
	case strings.HasPrefix(w, "no response headers within"):
		return "accepted the request but sent no answer within modgate's header timeout (" + strings.TrimPrefix(w, "no response headers within ") + ")", "hang"
	case strings.HasPrefix(w, "body stalled"):
		return "started an answer and then stopped sending", "hang"
	case strings.Contains(w, "connection refused"):
		return "refused the connection: nothing listens at its address (the upstream is down, or its URL or port is wrong)", "down"
	case strings.Contains(w, "i/o timeout") && strings.Contains(w, "dial"):
		return "could not be reached within modgate's dial timeout: the host is down, the address is wrong, or a firewall drops the packets", "unreachable"
	case strings.Contains(w, "no such host"):
		return "has a host name that does not resolve (DNS)", "dns"
	case strings.Contains(w, "x509:") || strings.Contains(w, "tls:") || strings.Contains(w, "TLS handshake"):
		return "failed TLS: " + w + " (if it uses an internal CA, give modgate tls_ca_file)", "tls"
	}
	return "failed: " + w, "other"
}

// explainChain explains a walk of modgate's upstream chain that ended
// without an answer: not-found, direct, circuit-open, upstream-timeout and
// upstream-failed. In forward mode the chain is the one origin, and a
// CONNECT's answer names it in the message alone.
func explainChain(b *block, a answer) *Explanation {
	if a.tunnel {
		return explainTunnelFailed(b, a)
	}
	w := readWalk(a)
	subject := b.subject()
	e := &Explanation{Saw: w.saw}
	switch a.code {
	case wire.CircuitOpen:
		e.Title = "upstream circuit open" + fromModgate(b)
		e.Cause = "modgate stopped asking an upstream that kept failing, so " + subject + " failed at once:" + w.cause
		e.Fix = "Wait for the probe"
		if w.openFor != "" {
			e.Fix += " (in " + w.openFor + ")"
		}
		e.Fix += ": one request then decides whether the upstream is back. Meanwhile `curl -s 127.0.0.1:7071/debug/upstreams` " +
			"shows why it opened and its recent failures; fix that upstream, or add a fallback after \"|\" in modgate's chain " +
			"(fallthrough: error) so that requests move on while it is open."
	case wire.NotFound, wire.Direct:
		explainNotFoundChain(e, b, a, w, subject)
	case wire.Timeout:
		e.Title = "upstream timed out" + fromModgate(b)
		e.Cause = "modgate gave up waiting for an upstream, so " + subject + " failed:" + w.cause
		e.Fix = "The upstream is hung or overloaded: check it (its status page, `curl -s 127.0.0.1:7071/debug/upstreams`). " +
			"To fail over sooner, lower timeouts.header for it and put a fallback after \"|\" (fallthrough: error) in modgate's chain."
	default:
		e.Title = "no upstream could serve " + subject + fromModgate(b)
		e.Cause = "modgate reached the end of its chain without an answer for " + subject + ":" + w.cause
		if w.attempts == 0 {
			e.Cause = "modgate could not get " + subject + " from " + b.origin() + ": " + a.msg + "."
		}
		e.Fix = w.fixes()
	}
	return e
}

// walk is what an answer says each upstream of the chain did.
type walk struct {
	saw      []string        // the attempt lines, and the line that says the chain stopped
	cause    string          // one sentence per attempt, each on its own line
	kinds    map[string]bool // the kinds of failure (describeAttempt)
	attempts int
	openFor  string // when an open circuit probes again
	stopped  bool   // a "," entry stopped the walk at a failure
}

func readWalk(a answer) walk {
	w := walk{kinds: map[string]bool{}}
	var cause strings.Builder
	for _, at := range a.attempts() {
		what, kind := describeAttempt(at)
		w.kinds[kind] = true
		w.attempts++
		w.saw = append(w.saw, at.name+": "+at.what)
		fmt.Fprintf(&cause, "\n- %s %s.", at.name, what)
		if m := probedAgainRE.FindStringSubmatch(at.what); m != nil && kind == "open" {
			w.openFor = m[1]
		}
	}
	for _, l := range a.details {
		if strings.HasPrefix(l, "the chain stops there") {
			w.stopped = true
			w.saw = append(w.saw, l)
			cause.WriteString("\nThe chain stopped there: after \",\" only 404 and 410 move on to the next upstream, so the ones after it were not asked.")
			break
		}
	}
	w.cause = cause.String()
	return w
}

// explainNotFoundChain explains a walk where no upstream had the module,
// or none could be asked for it.
func explainNotFoundChain(e *Explanation, b *block, a answer, w walk, subject string) {
	e.Title = "no upstream has " + subject + fromModgate(b)
	e.Cause = "modgate asked every upstream in its chain and each said it does not have " + subject + ":" + w.cause
	switch {
	case w.kinds["skip"] && !w.kinds["notfound"]:
		e.Title = "no upstream may be asked for " + subject + fromModgate(b)
		e.Cause = "modgate had no upstream it may ask for " + subject + ":" + w.cause
		e.Fix = "Mark the upstream that serves private modules with private: true in modgate's config (upstreams[].private), " +
			"or add a route for the module to it in the policy (routes). `modgate policy check " + pathOf(subject) + "` shows " +
			"which private pattern and route apply."
	case a.code == wire.Direct:
		e.Cause += "\nmodgate's chain ends in direct, which tells the go command to fetch from the module's origin itself; it did not, because its GOPROXY has no direct after modgate."
		e.Fix = "If the module exists only at its origin (a private repository), let the go command fetch it: " +
			"GOPROXY=http://127.0.0.1:7070,direct (`go env -w` or the environment), with GOPRIVATE set for private paths. " +
			"Otherwise check the module path and version for typos."
	default:
		e.Fix = "Check the module path and version (a typo, a tag never pushed, a version retracted upstream). If the module " +
			"is private or only at its origin, add an upstream that has it to modgate's chain, or let the go command " +
			"fetch it itself: GOPROXY=http://127.0.0.1:7070,direct."
	}
}

// fixes says what to do about the failures of the walk, one clause for
// each kind of failure.
func (w walk) fixes() string {
	var fixes []string
	for _, f := range []struct{ kinds, fix string }{
		{"refused", "give modgate what the refusing upstream wants (credentials, network access) or remove it from the chain"},
		{"down unreachable dns", "check the upstream's URL and port in modgate's config, and that it is up and reachable from where modgate runs"},
		{"ratelimit", "slow down (fewer parallel builds) or ask the upstream's operator for a higher limit; modgate already honours Retry-After within its retry cap"},
		{"server", "the upstream is failing: retry later, and look at `curl -s 127.0.0.1:7071/debug/upstreams` for how often"},
		{"tls", "fix the upstream's certificate or give modgate its CA with tls_ca_file"},
		{"hang", "lower timeouts.header for a hung upstream"},
	} {
		if slices.ContainsFunc(strings.Fields(f.kinds), func(k string) bool { return w.kinds[k] }) {
			fixes = append(fixes, f.fix)
		}
	}
	if w.stopped {
		fixes = append(fixes, "if the next upstream should be tried when this one fails, join them with \"|\" instead of \",\" (fallthrough: error in the config)")
	} else if w.attempts == 1 {
		fixes = append(fixes, "add a second upstream after \"|\" so that one failing upstream does not fail the build")
	}
	if len(fixes) == 0 {
		fixes = append(fixes, "look at what each upstream said above; `curl -s 127.0.0.1:7071/debug/upstreams` shows their recent failures")
	}
	return capitalise(strings.Join(fixes, "; ")) + "."
}

// explainTunnelFailed explains a CONNECT that modgate accepted but could
// not open: the origin's breaker is open, or dialling it failed.
func explainTunnelFailed(b *block, a answer) *Explanation {
	host := b.host()
	if a.code == wire.CircuitOpen {
		return &Explanation{
			Title: "modgate's circuit for " + host + " is open",
			Cause: "The go command reaches " + host + " through modgate as its HTTPS_PROXY, and modgate stopped connecting to " +
				host + " after repeated failures: " + a.msg + ".",
			Fix: "Wait for the probe: one tunnel then decides whether the host is back. `curl -s 127.0.0.1:7071/debug/upstreams` shows why it opened.",
		}
	}
	return &Explanation{
		Title: "modgate could not reach " + host,
		Cause: "The go command reaches " + host + " through modgate as its HTTPS_PROXY, and modgate could not open the " +
			"connection to it: " + a.msg + ".",
		Fix: "Check that " + host + " is up and reachable from where modgate runs (its DNS, the network path, a resolve pin in " +
			"modgate's config that points at the wrong address).",
	}
}
