package explain

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/modgate/modgate/sidecar/wire"
)

// The go command's own errors are recognised by its words: they are not
// modgate's to give a code. A failure that quotes an answer of modgate's
// never reaches these rules (see explainAnswer).

// goRules are tried in order on each failure; the first that answers wins,
// so the specific ones come before the general ones (a status code).
var goRules = []func(*block) *Explanation{
	explainChecksumMismatch,
	explainGoproxyOff,
	explainProxyconnect,
	explainConnectAnswer,
	explainRefused,
	explainTLSHandshakeTimeout,
	explainIOTimeout,
	explainUnknownAuthority,
	explainX509,
	explainHTTPToHTTPS,
	explainNoSuchHost,
	explainTerminalPrompts,
	explainUnknownRevision,
	explainNoMatchingVersions,
	explainRateLimited,
	explainBadRequest,
	explainNotFound,
	explainProxyError,
}

// Small patterns the rules use to pick a detail out of a line.
var (
	dialAddrRE        = regexp.MustCompile(`dial tcp ([^:\s]+:\d+|\[[^\]]+\]:\d+)`)
	dialTimeoutRE     = regexp.MustCompile(`dial tcp (\S+): i/o timeout`)
	noSuchHostRE      = regexp.MustCompile(`lookup (\S+?)(?: on \S+)?: no such host`)
	promptHostRE      = regexp.MustCompile(`for '([^']+)'`)
	unknownRevisionRE = regexp.MustCompile(`unknown revision (\S+)`)
)

// hashLineRE matches the hash lines under a checksum mismatch:
// "downloaded: h1:...", "go.sum:     h1:...", "sum.example.test: h1:...".
var hashLineRE = regexp.MustCompile(`^(\S+):\s+h1:`)

func explainChecksumMismatch(b *block) *Explanation {
	if !b.has("checksum mismatch") && !b.has("SECURITY ERROR") {
		return nil
	}
	saw := nonEmpty(b.line("downloaded:"))
	against := ""
	for _, l := range b.body {
		if m := hashLineRE.FindStringSubmatch(l); m != nil && m[1] != "downloaded" {
			against = m[1]
			saw = append(saw, l)
		}
	}
	if against == "" && b.has("go.sum") {
		against = "go.sum"
	}
	subject := b.subject()
	e := &Explanation{Rule: "checksum-mismatch", Title: "checksum mismatch (SECURITY ERROR)", Saw: saw}
	if against == "go.sum" {
		e.Cause = "The " + subject + " just downloaded does not hash to the value go.sum recorded earlier. Either the bits " +
			"changed since (the version was re-tagged or rebuilt at its origin, or a proxy now serves different bits), " +
			"someone intercepted the download, or the go.sum line itself is wrong (a bad merge, a hand edit)."
		e.Fix = "Do not delete the go.sum line to make the error go away. Find out which side is right: look at the line's " +
			"history (`git log -p go.sum`), and compare with what the module's owner published. If go.sum is wrong, restore " +
			"the right line; if the download is wrong, report it and fetch through another upstream. A corrupt local " +
			"cache is cleared with `go clean -modcache`."
		return e
	}
	db := against
	if db == "" {
		db = "the checksum database"
	}
	e.Cause = "The " + subject + " that the proxy served does not hash to the value " + db + " (the checksum database) " +
		"holds for it. The database records the first bits ever published for a version, so the proxy or the origin now " +
		"serves something else: a re-tagged or rebuilt version, or tampering on the way."
	e.Fix = "Treat it as a possible attack: do not turn verification off (GONOSUMDB, GOSUMDB=off, GOFLAGS=-insecure) to get " +
		"past it. Find which upstream served the bits (modgate's audit log, or `curl -s 127.0.0.1:7071/debug/upstreams`), " +
		"report it to whoever runs that upstream, and ask the module's owner whether the version was changed."
	return e
}

func explainGoproxyOff(b *block) *Explanation {
	if !b.has("module lookup disabled by GOPROXY=off") {
		return nil
	}
	return &Explanation{
		Rule:  "goproxy-off",
		Title: "GOPROXY=off",
		Cause: "The go command's own GOPROXY is off, so it may not download " + b.subject() + " from anywhere; only the module cache is used.",
		Fix:   "Point it at modgate: `go env -w GOPROXY=http://127.0.0.1:7070` (or set GOPROXY in the environment; `go env GOPROXY` shows which value wins).",
	}
}

// proxyconnectRE matches "proxyconnect tcp: <why>".
var proxyconnectRE = regexp.MustCompile(`proxyconnect tcp: (.*)$`)

func explainProxyconnect(b *block) *Explanation {
	var why string
	for _, l := range b.all() {
		if m := proxyconnectRE.FindStringSubmatch(l); m != nil {
			why = m[1]
			break
		}
	}
	if why == "" {
		return nil
	}
	var addr string
	if m := dialAddrRE.FindStringSubmatch(why); m != nil {
		addr = m[1]
	}
	scheme := "https"
	if u := b.fetched(); u != nil {
		scheme = u.Scheme
	}
	variable := strings.ToUpper(scheme) + "_PROXY"
	e := &Explanation{Rule: "proxyconnect", Title: "cannot reach the HTTP proxy (proxyconnect)"}
	where := "the proxy that " + variable + " names"
	if addr != "" {
		where += " (" + addr + ")"
	}
	switch {
	case strings.Contains(why, "connection refused"):
		e.Cause = "The go command sends " + scheme + ":// requests through " + where + ", and nothing listens there: the proxy (modgate in forward mode, or another) is not running."
	case strings.Contains(why, "i/o timeout"):
		e.Cause = "The go command sends " + scheme + ":// requests through " + where + ", and it could not connect in time: the address is wrong or a firewall drops the packets."
	case strings.Contains(why, "first record does not look like a TLS handshake") || strings.Contains(why, "tls:"):
		e.Cause = "The go command sends " + scheme + ":// requests through " + where + " and talks TLS to it, but the proxy speaks plain HTTP: " + variable + " starts with https:// where it should say http://."
	default:
		e.Cause = "The go command sends " + scheme + ":// requests through " + where + ", and connecting to it failed: " + why + "."
	}
	e.Fix = "Start the proxy, or fix or unset " + variable + " (and its lower-case twin; `env | grep -i _proxy` shows them). " +
		"If modgate is your GOPROXY, the go command needs no HTTP proxy to reach it: add 127.0.0.1 to NO_PROXY."
	return e
}

// connectAnswerRE matches what the go command prints when an HTTP proxy
// answers CONNECT with anything but 200: Go's transport reports only the
// status line's reason phrase, e.g. `Get "https://...": Forbidden`.
// modgate puts its code in that phrase, so its refusals never get here.
var connectAnswerRE = regexp.MustCompile(`Get "https://([^/"]+)[^"]*": ([A-Z][A-Za-z ]+)$`)

func explainConnectAnswer(b *block) *Explanation {
	m := connectAnswerRE.FindStringSubmatch(b.head)
	if m == nil {
		return nil
	}
	host, answer := m[1], m[2]
	if answer == "Proxy Authentication Required" {
		return &Explanation{
			Rule:  "proxy-auth",
			Title: "the HTTP proxy wants credentials (407)",
			Cause: "The go command reaches " + host + " through the HTTP proxy that HTTPS_PROXY names, and that proxy answered " +
				"407 Proxy Authentication Required: it lets no one through without credentials.",
			Fix: "Put the credentials in the proxy URL (HTTPS_PROXY=http://user:token@proxy:port, and the same in https_proxy " +
				"for git), or bypass the proxy for this host with NO_PROXY. If modgate is your GOPROXY, the go command needs no " +
				"HTTP proxy at all: modgate is the one that must reach the upstreams.",
		}
	}
	return &Explanation{
		Rule:  "connect-refused",
		Title: "the HTTP proxy refused the tunnel",
		Cause: "The go command asked the HTTP proxy that HTTPS_PROXY names to open a tunnel (CONNECT) to " + host +
			", and the proxy said no: \"" + answer + "\". Go shows only the status line's words, so that is all the proxy said; " +
			"a proxy that blocks a host answers so.",
		Fix: "Ask whoever runs the proxy to allow " + host + ", or fetch through a GOPROXY that may reach it " +
			"(modgate: GOPROXY=http://127.0.0.1:7070), for which the go command needs no tunnel.",
	}
}

// refusedRE matches "dial tcp ADDR: connect: connection refused".
var refusedRE = regexp.MustCompile(`dial tcp (\S+): connect: connection refused`)

func explainRefused(b *block) *Explanation {
	var addr string
	for _, l := range b.all() {
		if m := refusedRE.FindStringSubmatch(l); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		return nil
	}
	u := b.fetched()
	if u != nil && wire.IsLoopbackHost(u.Host) {
		return &Explanation{
			Rule:  "proxy-refused",
			Title: "modgate is not running (connection refused)",
			Cause: "Nothing accepts connections at " + u.Host + ", the GOPROXY the go command used: modgate is not running there, " +
				"or it listens on another address.",
			Fix: "Start modgate: `make run` in its repository, or `modgate run` (it listens on 127.0.0.1:7070 unless --listen says " +
				"otherwise; in a pod, check that the modgate container is ready). Check that GOPROXY names the address modgate " +
				"listens on (`go env GOPROXY`); `modgate doctor` checks both.",
		}
	}
	where := addr
	if u != nil {
		where = u.Scheme + "://" + u.Host
	}
	return &Explanation{
		Rule:  "proxy-refused",
		Title: "connection refused",
		Cause: "Nothing accepts connections at " + addr + ", which the go command tried to reach (" + where + "): the server is down, or the URL's host or port is wrong.",
		Fix:   "Check the URL in GOPROXY (`go env GOPROXY`) and that the server behind it is up. If it should be modgate, start it (`modgate run`) and point GOPROXY at its --listen address.",
	}
}

func explainTLSHandshakeTimeout(b *block) *Explanation {
	if !b.has("TLS handshake timeout") {
		return nil
	}
	return &Explanation{
		Rule:  "tls-handshake-timeout",
		Title: "TLS handshake timeout",
		Cause: "The go command connected to " + b.origin() + " but the TLS handshake did not finish within 10 s: the server is overloaded " +
			"or hung, something between (a proxy, a firewall doing inspection) holds the connection, or the server does not speak TLS " +
			"on that port and waits for the client to say something else.",
		Fix: "Check that the URL's scheme and port are right (modgate's listener is plain http://). If the server is just slow, retry " +
			"later or go through modgate, which bounds the handshake (timeouts.tls) and fails over to the next upstream.",
	}
}

func explainIOTimeout(b *block) *Explanation {
	l := b.line("i/o timeout")
	if l == "" {
		return nil
	}
	addr := ""
	if m := dialTimeoutRE.FindStringSubmatch(l); m != nil {
		addr = m[1]
	}
	e := &Explanation{Rule: "io-timeout", Title: "i/o timeout"}
	switch {
	case strings.Contains(l, "lookup "):
		e.Cause = "A DNS lookup timed out: the resolver the machine uses did not answer."
		e.Fix = "Check the machine's DNS (/etc/resolv.conf, the pod's dnsPolicy). Going through modgate on 127.0.0.1 needs no DNS for the go command."
	case addr != "":
		e.Cause = "The go command could not connect to " + addr + " in time: no answer at all, which is what a host that is down, " +
			"a wrong address, or a firewall that drops packets looks like."
		e.Fix = "Check that the address in GOPROXY (`go env GOPROXY`) is right and reachable from here (`curl -v " + b.origin() + "/`). " +
			"If it is modgate, check that it runs and listens on that address; in a pod, GOPROXY must be http://127.0.0.1:7070."
		if wire.IsLoopbackHost(addr) {
			e.Cause += " For a loopback address, the process there accepts no more connections (stopped or overloaded)."
		}
	default:
		e.Cause = "A network read or write timed out: the other side stopped answering."
		e.Fix = "Retry; if it repeats, check the network path to " + b.origin() + ". modgate bounds each phase of its upstream requests and fails over, so going through it turns a hang into a clear error."
	}
	return e
}

func explainUnknownAuthority(b *block) *Explanation {
	if !b.has("certificate signed by unknown authority") {
		return nil
	}
	return &Explanation{
		Rule:  "x509-unknown-authority",
		Title: "certificate signed by an unknown authority",
		Cause: "The go command does not trust the certificate " + b.origin() + " presented. When modgate intercepts HTTPS (its MITM " +
			"mode), it signs certificates with its own CA, which the go command and git must be told to trust; otherwise a " +
			"corporate proxy or an internal server uses a CA this machine does not have.",
		Fix: "Trust the CA without dropping the system's: for modgate, `eval \"$(modgate env)\"` points SSL_CERT_FILE and " +
			"GIT_SSL_CAINFO at a bundle of this system's roots and modgate's CA (`modgate ca bundle`). A file with one CA alone " +
			"replaces the system's roots, and then every other host fails this way. On macOS and Windows the go command ignores " +
			"SSL_CERT_FILE: `modgate ca trust` prints the commands that add the CA to the system's store. For an internal CA, " +
			"add it to the system's store. Do not use GOINSECURE or GOFLAGS=-insecure instead: they turn off the check for everyone.",
	}
}

func explainX509(b *block) *Explanation {
	l := b.line("x509: ")
	if l == "" {
		return nil
	}
	_, what, _ := strings.Cut(l, "x509: ")
	return &Explanation{
		Rule:  "x509",
		Title: "certificate problem",
		Cause: "The certificate of " + b.origin() + " failed verification: " + what + ".",
		Fix: "An expired certificate or one for another name is the server's to fix; a wrong clock on this machine makes valid " +
			"ones look expired. `modgate doctor` shows each upstream's certificate expiry.",
	}
}

func explainHTTPToHTTPS(b *block) *Explanation {
	if !b.has("server gave HTTP response to HTTPS client") {
		return nil
	}
	return &Explanation{
		Rule:  "http-to-https",
		Title: "https:// URL for a plain-HTTP server",
		Cause: "The go command spoke TLS to " + b.origin() + ", but the server there answers plain HTTP. modgate's listener is plain " +
			"HTTP (it is meant for loopback or the pod's own network), so its URL starts with http://.",
		Fix: "Use http:// in GOPROXY: `go env -w GOPROXY=http://127.0.0.1:7070` (or the environment variable, whichever you set; " +
			"`go env GOPROXY` shows the value in force).",
	}
}

func explainNoSuchHost(b *block) *Explanation {
	l := b.line("no such host")
	if l == "" {
		return nil
	}
	host := "a host"
	if m := noSuchHostRE.FindStringSubmatch(l); m != nil {
		host = m[1]
	}
	return &Explanation{
		Rule:  "no-such-host",
		Title: "host name does not resolve",
		Cause: "The DNS name " + host + " does not resolve from this machine: a typo, an internal name outside the internal network, or no DNS at all (a sandboxed build).",
		Fix:   "Check the name in GOPROXY or the import path. In a sandbox, go through modgate on 127.0.0.1 and let it reach the upstreams.",
	}
}

func explainTerminalPrompts(b *block) *Explanation {
	if !b.has("terminal prompts disabled") {
		return nil
	}
	repo := ""
	if m := promptHostRE.FindStringSubmatch(b.line("terminal prompts disabled")); m != nil {
		repo = " at " + m[1]
	}
	return &Explanation{
		Rule:  "terminal-prompts",
		Title: "private repository needs credentials",
		Saw:   nonEmpty(b.line("terminal prompts disabled")),
		Cause: "The go command fetched " + b.subject() + " directly with git, and the server" + repo + " asked for a user name. " +
			"The go command never lets git prompt (GIT_TERMINAL_PROMPT=0), so the fetch failed: the repository is private, or " +
			"the path does not exist and the server answers 401 for unknown repositories.",
		Fix: "Give git credentials without a prompt: a credential helper or a ~/.netrc entry for the host (a token, not a password), " +
			"or `git config --global url.\"ssh://git@HOST/\".insteadOf \"https://HOST/\"` to use SSH keys. Mark the path private " +
			"(`go env -w GOPRIVATE=...`) so that it is not looked up in public proxies and checksum databases. Check the " +
			"import path for typos too.",
	}
}

func explainUnknownRevision(b *block) *Explanation {
	l := b.line("unknown revision")
	if l == "" {
		return nil
	}
	rev := ""
	if m := unknownRevisionRE.FindStringSubmatch(l); m != nil {
		rev = " " + m[1]
	}
	return &Explanation{
		Rule:  "unknown-revision",
		Title: "unknown revision",
		Saw:   nonEmpty(l),
		Cause: "The repository of " + pathOf(b.subject()) + " has no tag, branch or commit named" + rev + ": a typo, a tag that was never " +
			"pushed (or was deleted), or a commit that lives only on someone's machine.",
		Fix: "List what exists with `go list -m -versions " + pathOf(b.subject()) + "` (or `git ls-remote` on the repository) and pick " +
			"one; push the tag if it is yours. If a proxy says this for a version that exists, it may not have seen it yet: " +
			"retry in a few minutes.",
	}
}

func explainNoMatchingVersions(b *block) *Explanation {
	if !b.has("no matching versions for query") {
		return nil
	}
	return &Explanation{
		Rule:  "no-matching-versions",
		Title: "no matching versions",
		Cause: "The go command asked for the list of versions of " + pathOf(b.subject()) + " and none matched the query: " +
			"the version or prefix asked for does not exist, or all matching versions are retracted or pre-releases.",
		Fix: "See which versions exist with `go list -m -versions " + pathOf(b.subject()) + "` and ask for one of those (or @latest). " +
			"If the list is empty, the proxy does not know the module: check its path, or whether it is private " +
			"(GOPRIVATE, and an upstream or direct that can reach it).",
	}
}

func explainRateLimited(b *block) *Explanation {
	if b.status() != 429 && !b.has("429 Too Many Requests") {
		return nil
	}
	return &Explanation{
		Rule:  "rate-limited",
		Title: "rate limited (429 Too Many Requests)",
		Saw:   b.resp,
		Cause: b.origin() + " refuses more requests from this client for now: too many builds share its quota, or a " +
			"cold module cache fetched a whole graph at once.",
		Fix: "Wait and retry. To stop it happening, fetch through modgate: it retries with back-off and Retry-After within a budget, " +
			"fails over to another upstream, and its cache takes repeat requests off the upstream.",
	}
}

func explainBadRequest(b *block) *Explanation {
	if b.status() != 400 {
		return nil
	}
	return &Explanation{
		Rule:  "proxy-bad-request",
		Title: "bad request (400)",
		Saw:   b.resp,
		Cause: b.origin() + " could not decode the module path or version it was asked for; its response, if any, says why.",
		Fix:   "Check the module path and version as written in go.mod or on the command line (case, a missing v, a stray character).",
	}
}

func explainNotFound(b *block) *Explanation {
	code := b.status()
	if code != 404 && code != 410 {
		return nil
	}
	return &Explanation{
		Rule:  "proxy-not-found",
		Title: "not found (" + strconv.Itoa(code) + ")",
		Saw:   b.resp,
		Cause: b.origin() + " does not have " + b.subject() + ": the path or version is wrong, the module is private, or it " +
			"exists only at its origin.",
		Fix: "Check the module path and version. For a private module, set GOPRIVATE and add ,direct to GOPROXY (or an upstream " +
			"in modgate's chain that has it).",
	}
}

func explainProxyError(b *block) *Explanation {
	code := b.status()
	if code < 500 || code > 599 {
		return nil
	}
	return &Explanation{
		Rule:  "proxy-error",
		Title: "proxy error (" + strconv.Itoa(code) + ")",
		Saw:   b.resp,
		Cause: b.origin() + " failed to serve " + b.subject() + " with a server error.",
		Fix: "Retry later. Going through modgate with a second upstream after \"|\" lets builds continue when one proxy fails; " +
			"its answer then names each upstream and what it did.",
	}
}
