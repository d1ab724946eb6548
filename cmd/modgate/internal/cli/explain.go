package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// `modgate explain` reads what the go command printed and says, for each
// failure it recognises, the line it saw, the likely cause and the fix. It
// knows the go command's own messages and the answers modgate writes (see
// DESIGN.md, "What clients see"), so it can say which upstream did what.
//
// The work is split in three: parse the output into blocks (one failure and
// the lines the go command indents under it), run rules over each block
// (first match wins), then merge explanations that say the same thing.

const explainUsage = `usage: modgate explain [FILE]

Reads go command output from FILE, or from standard input when FILE is
absent or "-", and explains each failure it recognises: what it saw, the
likely cause, and the fix.

  go mod download 2>&1 | modgate explain

Exit status: 0 when it explained something, 1 when it recognised nothing.
`

// errNothingExplained makes `modgate explain` exit 1 when it recognised
// nothing, after saying so on stdout.
var errNothingExplained = errors.New("explain: found nothing to explain")

func (a *App) explain(_ context.Context, args []string) error {
	fs := flag.NewFlagSet("modgate explain", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), explainUsage) }
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return errUsage
	}
	var in io.Reader = os.Stdin
	switch fs.NArg() {
	case 0:
	case 1:
		if name := fs.Arg(0); name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
	default:
		fmt.Fprintf(a.Stderr, "modgate explain: want at most one file, got %d\n\n%s", fs.NArg(), explainUsage)
		return errUsage
	}
	// Build logs can be large; only a bounded amount is read, which is far
	// more than any go command failure needs.
	data, err := io.ReadAll(io.LimitReader(in, 16<<20))
	if err != nil {
		return err
	}
	text := string(data)
	found := explainText(text)
	if len(found) == 0 {
		lines := strings.Count(text, "\n")
		if text != "" && !strings.HasSuffix(text, "\n") {
			lines++
		}
		fmt.Fprintf(a.Stdout, "modgate explain: found no go command error it recognises in %d lines of input.\n", lines)
		fmt.Fprint(a.Stdout, "It knows network, TLS, proxy, checksum, policy, authentication and version errors, and modgate's own answers.\n"+
			"Pass the go command's standard error too: go build ./... 2>&1 | modgate explain\n")
		return errNothingExplained
	}
	writeExplanation(a.Stdout, found)
	return nil
}

// explanation is what modgate explain says about one failure.
type explanation struct {
	// Rule names the rule that matched, e.g. "proxy-refused"; tests and
	// merging use it.
	Rule string
	// Title is a few words, e.g. "modgate is not running".
	Title string
	// Saw is the output it is about: the failure's first line and the
	// lines that decided the explanation.
	Saw []string
	// Cause and Fix are plain sentences; Cause may hold several lines (a
	// line per upstream).
	Cause, Fix string
	// More counts other failures that had the same explanation.
	More int
}

// block is one failure as the go command prints it: a first line, then the
// lines it indents under it (a server's response, git's stderr, the
// hashes of a checksum mismatch) and its fixed follow-on paragraphs
// ("SECURITY ERROR ...").
type block struct {
	head string
	// body holds the continuation lines, trimmed.
	body []string
	// resp holds the lines of the server's response, trimmed, in order.
	resp []string
}

// all returns every line of the block.
func (b *block) all() []string { return append([]string{b.head}, b.body...) }

// has reports whether any line of the block contains s.
func (b *block) has(s string) bool {
	for _, l := range b.all() {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// line returns the first line of the block that contains s, or "".
func (b *block) line(s string) string {
	for _, l := range b.all() {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

var (
	// blockStartRE matches a line that starts a new failure. Every other
	// non-blank line belongs to the failure above it, which also copes with
	// output pasted with its indentation lost.
	blockStartRE = regexp.MustCompile(`^(?:go: |verifying |# |\S+\.go:\d+|package |build |cannot find |go\.mod:|go\.sum:)`)
	// followOnRE matches the go command's fixed paragraphs that come after
	// a blank line but still belong to the failure above.
	followOnRE = regexp.MustCompile(`^(?:SECURITY ERROR|This download does NOT match|For more information, see 'go help)`)
)

// parseBlocks splits go command output into failures.
func parseBlocks(text string) []*block {
	var blocks []*block
	var cur *block
	inResp := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		raw := strings.TrimRight(sc.Text(), "\r \t")
		trimmed := strings.TrimSpace(raw)
		indented := raw != "" && (raw[0] == '\t' || raw[0] == ' ')
		switch {
		case trimmed == "":
			// A blank line ends the failure unless the go command's own
			// follow-on paragraph comes next; see followOnRE.
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur, inResp = nil, false
			continue
		case followOnRE.MatchString(trimmed) && cur == nil && len(blocks) > 0:
			cur = blocks[len(blocks)-1]
			blocks = blocks[:len(blocks)-1]
		case cur == nil || (!indented && blockStartRE.MatchString(trimmed)):
			if cur != nil {
				blocks = append(blocks, cur)
			}
			cur, inResp = &block{head: trimmed}, false
			continue
		}
		cur.body = append(cur.body, trimmed)
		if rest, ok := strings.CutPrefix(trimmed, "server response:"); ok {
			inResp = true
			if rest = strings.TrimSpace(rest); rest != "" {
				cur.resp = append(cur.resp, rest)
			}
			continue
		}
		if inResp {
			cur.resp = append(cur.resp, trimmed)
		}
	}
	if cur != nil {
		blocks = append(blocks, cur)
	}
	return blocks
}

// explainText explains every failure in go command output, merging
// failures that have the same explanation.
func explainText(text string) []explanation {
	var out []explanation
	for _, b := range parseBlocks(text) {
		e := explainBlock(b)
		if e == nil {
			continue
		}
		merged := false
		for i := range out {
			if out[i].Rule == e.Rule && out[i].Cause == e.Cause && out[i].Fix == e.Fix {
				out[i].More++
				merged = true
				break
			}
		}
		if !merged {
			out = append(out, *e)
		}
	}
	return out
}

// explainRules are tried in order on each block; the first that answers
// wins, so the specific ones (modgate's own answers) come before the
// general ones (a word in a Go error).
var explainRules = []func(*block) *explanation{
	explainLoop,
	explainPolicyDeny,
	explainLeakGuard,
	explainChecksumMismatch,
	explainChainOff,
	explainGoproxyOff,
	explainModgateChain,
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

func explainBlock(b *block) *explanation {
	for _, rule := range explainRules {
		if e := rule(b); e != nil {
			if len(e.Saw) == 0 || e.Saw[0] != b.head {
				e.Saw = append([]string{b.head}, e.Saw...)
			}
			return e
		}
	}
	return nil
}

// Small patterns the rules use to pick a detail out of a line.
var (
	probedAgainRE     = regexp.MustCompile(`probed again in (\d+s)`)
	dialAddrRE        = regexp.MustCompile(`dial tcp ([^:\s]+:\d+|\[[^\]]+\]:\d+)`)
	dialTimeoutRE     = regexp.MustCompile(`dial tcp (\S+): i/o timeout`)
	noSuchHostRE      = regexp.MustCompile(`lookup (\S+?)(?: on \S+)?: no such host`)
	promptHostRE      = regexp.MustCompile(`for '([^']+)'`)
	unknownRevisionRE = regexp.MustCompile(`unknown revision (\S+)`)
)

var (
	// subjectRE finds module@version in "go: M@V: ..." and "verifying M@V: ...".
	subjectRE = regexp.MustCompile(`^(?:go: |verifying )(\S+?@[^\s:/]+)`)
	// urlRE finds the URL the go command fetched: `reading URL: ` or `Get "URL"`.
	urlRE = regexp.MustCompile(`(?:reading |Get ")(https?://[^\s"]+?)(?:": |: |"$)`)
	// statusRE finds the HTTP status after the URL: ": 404 Not Found".
	statusRE = regexp.MustCompile(`: (\d{3}) [A-Z][A-Za-z ]*$`)
)

// subject returns the module@version a failure is about, or "the module".
func (b *block) subject() string {
	if m := subjectRE.FindStringSubmatch(b.head); m != nil {
		return m[1]
	}
	return "the module"
}

// fetched returns the URL the failing request went to, or nil.
func (b *block) fetched() *url.URL {
	for _, l := range b.all() {
		if m := urlRE.FindStringSubmatch(l); m != nil {
			if u, err := url.Parse(m[1]); err == nil {
				return u
			}
		}
	}
	return nil
}

// status returns the HTTP status the go command reported, or 0.
func (b *block) status() int {
	m := statusRE.FindStringSubmatch(b.head)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// modgateLine returns the first line of the server's response that
// modgate wrote ("modgate: ..."), or "".
func (b *block) modgateLine() string {
	for _, l := range b.resp {
		if strings.HasPrefix(l, "modgate: ") {
			return l
		}
	}
	// Indentation lost: the response may have been glued to its label.
	for _, l := range b.body {
		if i := strings.Index(l, "modgate: "); i >= 0 {
			return l[i:]
		}
	}
	return ""
}

// origin returns "scheme://host" of the failing request, or "the proxy".
func (b *block) origin() string {
	if u := b.fetched(); u != nil {
		return u.Scheme + "://" + u.Host
	}
	return "the proxy"
}

// isLoopback reports whether host (with or without a port) names this
// machine.
func isLoopback(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func explainLoop(b *block) *explanation {
	if b.status() != 508 && !b.has("request loop") {
		return nil
	}
	return &explanation{
		Rule:  "loop",
		Title: "request loop (508 Loop Detected)",
		Saw:   nonEmpty(b.modgateLine()),
		Cause: "The request came back to a modgate it had already passed through: an upstream in modgate's chain " +
			"(or an upstream of that upstream) is modgate itself, so the request would go round forever. modgate " +
			"refuses it as soon as it sees its own Via token.",
		Fix: "Check the upstreams of each modgate on the path (`curl -s 127.0.0.1:7071/debug/upstreams`, the config's " +
			"upstreams or --upstream): none may lead back to a modgate that forwards to it. A modgate's default upstreams " +
			"come from `go env GOPROXY`, so a GOPROXY that points at modgate, read by modgate itself, makes a loop: " +
			"give modgate --upstream explicitly.",
	}
}

// denyRE matches policy.DenyMessage: "modgate: M@V denied by policy rule N (TEXT): REASON".
var denyRE = regexp.MustCompile(`modgate: (\S+) denied by policy (?:rule (\d+) \((.*?)\)|\((no rule matched[^)]*)\))(?:: (.*))?$`)

func explainPolicyDeny(b *block) *explanation {
	var m []string
	var line string
	for _, l := range b.all() {
		if m = denyRE.FindStringSubmatch(l); m != nil {
			line = l[strings.Index(l, "modgate: "):]
			break
		}
	}
	if m == nil {
		return nil
	}
	subject, ruleNo, ruleText, noRule, reason := m[1], m[2], m[3], m[4], m[5]
	var cause strings.Builder
	if ruleNo != "" {
		fmt.Fprintf(&cause, "modgate's policy refused %s: rule %s (%s) matched it", subject, ruleNo, ruleText)
	} else {
		fmt.Fprintf(&cause, "modgate's policy refused %s: no rule matched and the policy's default is to deny (%s)", subject, noRule)
	}
	if reason != "" {
		fmt.Fprintf(&cause, ", with the reason %q", reason)
	}
	cause.WriteString(". This is a decision, not an outage: no upstream was asked.")
	// The policy's contact line comes right after the deny line.
	contact := ""
	for i, l := range b.resp {
		if strings.Contains(l, " denied by policy ") && i+1 < len(b.resp) {
			contact = b.resp[i+1]
		}
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
	saw := []string{line}
	if contact != "" {
		saw = append(saw, contact)
	}
	return &explanation{Rule: "policy-deny", Title: "denied by modgate's policy", Saw: saw, Cause: cause.String(), Fix: fix}
}

// pathOf returns the module path of "path@version".
func pathOf(subject string) string {
	p, _, _ := strings.Cut(subject, "@")
	return p
}

var addToGONOSUMDBRE = regexp.MustCompile(`add (\S+) to GONOSUMDB`)

func explainLeakGuard(b *block) *explanation {
	u := b.fetched()
	if b.status() != 403 || u == nil || !strings.Contains(u.Path, "/sumdb/") {
		return nil
	}
	subject := b.subject()
	pattern := pathOf(subject)
	var saw []string
	for _, l := range b.resp {
		if m := addToGONOSUMDBRE.FindStringSubmatch(l); m != nil {
			pattern = m[1]
			saw = append(saw, l)
		}
	}
	if ml := b.modgateLine(); ml != "" {
		saw = append([]string{ml}, saw...)
	}
	return &explanation{
		Rule:  "leak-guard",
		Title: "checksum lookup of a private module refused",
		Saw:   saw,
		Cause: "The go command asked the checksum database (through " + b.origin() + ") to vouch for " + subject + ", " +
			"which modgate's policy marks private. modgate refuses that lookup (403) because it would tell the " +
			"database's operator the private module's name. The go command looks up every module that GONOSUMDB " +
			"(or GOPRIVATE) does not exclude.",
		Fix: "Tell the go command the path is private: `go env -w 'GONOSUMDB=" + pattern + "'` (add it, comma-separated, " +
			"to any value GONOSUMDB already has; GOPRIVATE works too and also sets GONOPROXY). In CI, set GONOSUMDB in the " +
			"build's environment. `modgate doctor --policy F` compares GONOSUMDB with the policy's private patterns.",
	}
}

// hashLineRE matches the hash lines under a checksum mismatch:
// "downloaded: h1:...", "go.sum:     h1:...", "sum.example.test: h1:...".
var hashLineRE = regexp.MustCompile(`^(\S+):\s+h1:`)

func explainChecksumMismatch(b *block) *explanation {
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
	e := &explanation{Rule: "checksum-mismatch", Title: "checksum mismatch (SECURITY ERROR)", Saw: saw}
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

func explainChainOff(b *block) *explanation {
	if !b.has("disabled by GOPROXY=off in modgate's upstream chain") {
		return nil
	}
	return &explanation{
		Rule:  "chain-off",
		Title: "modgate's chain is off (403)",
		Saw:   nonEmpty(b.modgateLine()),
		Cause: "modgate's upstream chain ends in off before any upstream had " + b.subject() + ": off answers 403 by design.",
		Fix: "Add an upstream that has the module before off in modgate's chain (--upstream, MODGATE_UPSTREAM or the " +
			"config's upstreams), or replace off by direct if the go command may fetch from the origin itself.",
	}
}

func explainGoproxyOff(b *block) *explanation {
	if !b.has("module lookup disabled by GOPROXY=off") || b.has("modgate:") {
		return nil
	}
	return &explanation{
		Rule:  "goproxy-off",
		Title: "GOPROXY=off",
		Cause: "The go command's own GOPROXY is off, so it may not download " + b.subject() + " from anywhere; only the module cache is used.",
		Fix:   "Point it at modgate: `go env -w GOPROXY=http://127.0.0.1:7070` (or set GOPROXY in the environment; `go env GOPROXY` shows which value wins).",
	}
}

// attempt is one upstream line of a modgate answer: "public: 404 Not Found (detail)".
type attempt struct {
	name, what string
	status     int
}

var attemptRE = regexp.MustCompile(`^(\S+?): (.+)$`)

// modgateAttempts returns the upstream lines of a modgate answer.
func (b *block) modgateAttempts() []attempt {
	var out []attempt
	seenSummary := false
	for _, l := range b.resp {
		if strings.HasPrefix(l, "modgate: ") {
			seenSummary = true
			continue
		}
		if !seenSummary || strings.HasPrefix(l, "the chain stops there") {
			continue
		}
		m := attemptRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		a := attempt{name: m[1], what: m[2]}
		if len(m[2]) >= 4 && m[2][3] == ' ' {
			a.status, _ = strconv.Atoi(m[2][:3])
		}
		out = append(out, a)
	}
	return out
}

// describeAttempt says in words what one upstream did and what it means
// for the chain.
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

func explainModgateChain(b *block) *explanation {
	ml := b.modgateLine()
	if ml == "" {
		return nil
	}
	notFound := strings.Contains(ml, "not found in any upstream")
	direct := strings.Contains(ml, "the chain ends in direct")
	failed := strings.Contains(ml, "no upstream could serve it")
	if !notFound && !direct && !failed {
		return nil
	}
	atts := b.modgateAttempts()
	stopped := b.has("the chain stops there")
	subject := b.subject()
	saw := []string{ml}
	var cause strings.Builder
	kinds := map[string]bool{}
	var openFor string
	for _, a := range atts {
		what, kind := describeAttempt(a)
		kinds[kind] = true
		saw = append(saw, a.name+": "+a.what)
		fmt.Fprintf(&cause, "\n- %s %s.", a.name, what)
		if kind == "open" {
			if m := probedAgainRE.FindStringSubmatch(a.what); m != nil {
				openFor = m[1]
			}
		}
	}
	if stopped {
		saw = append(saw, b.line("the chain stops there"))
		cause.WriteString("\nThe chain stopped there: after \",\" only 404 and 410 move on to the next upstream, so the ones after it were not asked.")
	}
	e := &explanation{Saw: saw}
	switch {
	case kinds["open"]:
		e.Rule, e.Title = "circuit-open", "upstream circuit open (503 from modgate)"
		e.Cause = "modgate stopped asking an upstream that kept failing, so " + subject + " failed at once:" + cause.String()
		e.Fix = "Wait for the probe"
		if openFor != "" {
			e.Fix += " (in " + openFor + ")"
		}
		e.Fix += ": one request then decides whether the upstream is back. Meanwhile `curl -s 127.0.0.1:7071/debug/upstreams` " +
			"shows why it opened and its recent failures; fix that upstream, or add a fallback after \"|\" in modgate's chain " +
			"(fallthrough: error) so that requests move on while it is open."
	case notFound || direct:
		e.Rule, e.Title = "not-found-upstream", "no upstream has "+subject+" (404 from modgate)"
		e.Cause = "modgate asked every upstream in its chain and each said it does not have " + subject + ":" + cause.String()
		if kinds["skip"] {
			e.Title = "no upstream may be asked for " + subject + " (404 from modgate)"
			e.Cause = "modgate had no upstream it may ask for " + subject + ":" + cause.String()
			e.Fix = "Mark the upstream that serves private modules with private: true in modgate's config (upstreams[].private), " +
				"or add a route for the module to it in the policy (routes). `modgate policy check " + pathOf(subject) + "` shows " +
				"which private pattern and route apply."
			break
		}
		if direct {
			e.Cause += "\nmodgate's chain ends in direct, which tells the go command to fetch from the module's origin itself; it did not, because its GOPROXY has no direct after modgate."
			e.Fix = "If the module exists only at its origin (a private repository), let the go command fetch it: " +
				"GOPROXY=http://127.0.0.1:7070,direct (`go env -w` or the environment), with GOPRIVATE set for private paths. " +
				"Otherwise check the module path and version for typos."
		} else {
			e.Fix = "Check the module path and version (a typo, a tag never pushed, a version retracted upstream). If the module " +
				"is private or only at its origin, add an upstream that has it to modgate's chain, or let the go command " +
				"fetch it itself: GOPROXY=http://127.0.0.1:7070,direct."
		}
	case kinds["hang"] && !kinds["server"] && !kinds["down"] && !kinds["refused"]:
		e.Rule, e.Title = "gateway-timeout", "upstream timed out (504 from modgate)"
		e.Cause = "modgate gave up waiting for an upstream, so " + subject + " failed:" + cause.String()
		e.Fix = "The upstream is hung or overloaded: check it (its status page, `curl -s 127.0.0.1:7071/debug/upstreams`). " +
			"To fail over sooner, lower timeouts.header for it and put a fallback after \"|\" (fallthrough: error) in modgate's chain."
	default:
		e.Rule, e.Title = "upstream-failed", "no upstream could serve "+subject+" ("+statusWords(b.status())+" from modgate)"
		e.Cause = "modgate reached the end of its chain without an answer for " + subject + ":" + cause.String()
		var fixes []string
		if kinds["refused"] {
			fixes = append(fixes, "give modgate what the refusing upstream wants (credentials, network access) or remove it from the chain")
		}
		if kinds["down"] || kinds["unreachable"] || kinds["dns"] {
			fixes = append(fixes, "check the upstream's URL and port in modgate's config, and that it is up and reachable from where modgate runs")
		}
		if kinds["ratelimit"] {
			fixes = append(fixes, "slow down (fewer parallel builds) or ask the upstream's operator for a higher limit; modgate already honours Retry-After within its retry cap")
		}
		if kinds["server"] {
			fixes = append(fixes, "the upstream is failing: retry later, and look at `curl -s 127.0.0.1:7071/debug/upstreams` for how often")
		}
		if kinds["tls"] {
			fixes = append(fixes, "fix the upstream's certificate or give modgate its CA with tls_ca_file")
		}
		if kinds["hang"] {
			fixes = append(fixes, "lower timeouts.header for a hung upstream")
		}
		if stopped {
			fixes = append(fixes, "if the next upstream should be tried when this one fails, join them with \"|\" instead of \",\" (fallthrough: error in the config)")
		} else if len(atts) == 1 {
			fixes = append(fixes, "add a second upstream after \"|\" so that one failing upstream does not fail the build")
		}
		if len(fixes) == 0 {
			fixes = append(fixes, "look at what each upstream said above; `curl -s 127.0.0.1:7071/debug/upstreams` shows their recent failures")
		}
		e.Fix = capitalise(strings.Join(fixes, "; ")) + "."
	}
	return e
}

// statusWords returns "502" or "an error" for 0.
func statusWords(code int) string {
	if code == 0 {
		return "an error"
	}
	return strconv.Itoa(code)
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// proxyconnectRE matches "proxyconnect tcp: <why>".
var proxyconnectRE = regexp.MustCompile(`proxyconnect tcp: (.*)$`)

func explainProxyconnect(b *block) *explanation {
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
	e := &explanation{Rule: "proxyconnect", Title: "cannot reach the HTTP proxy (proxyconnect)"}
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
var connectAnswerRE = regexp.MustCompile(`Get "https://([^/"]+)[^"]*": ([A-Z][A-Za-z ]+|modgate: .*)$`)

func explainConnectAnswer(b *block) *explanation {
	m := connectAnswerRE.FindStringSubmatch(b.head)
	if m == nil {
		return nil
	}
	host, answer := m[1], m[2]
	if answer == "Proxy Authentication Required" {
		return &explanation{
			Rule:  "proxy-auth",
			Title: "the HTTP proxy wants credentials (407)",
			Cause: "The go command reaches " + host + " through the HTTP proxy that HTTPS_PROXY names, and that proxy answered " +
				"407 Proxy Authentication Required: it lets no one through without credentials.",
			Fix: "Put the credentials in the proxy URL (HTTPS_PROXY=http://user:token@proxy:port, and the same in https_proxy " +
				"for git), or bypass the proxy for this host with NO_PROXY. If modgate is your GOPROXY, the go command needs no " +
				"HTTP proxy at all: modgate is the one that must reach the upstreams.",
		}
	}
	if reason, ok := strings.CutPrefix(answer, "modgate: "); ok {
		fix := "Fetch modules through modgate as a GOPROXY instead (GOPROXY=http://127.0.0.1:7070): then no tunnel is needed."
		switch {
		case strings.Contains(reason, "not in allow_hosts"):
			fix = "If the build may reach " + host + ", add it to modgate's forward.allow_hosts (MODGATE_ALLOW_HOSTS). " + fix
		case strings.Contains(reason, "connect_ports"):
			fix = "If that port is meant to be reachable, add it to modgate's forward.connect_ports. " + fix
		case strings.Contains(reason, "resolves to"):
			fix = "modgate refuses loopback, private and link-local addresses unless the host is named in forward.allow_hosts " +
				"without a wildcard (or pinned with resolve); name it there if the internal host is meant to be reached. " + fix
		}
		return &explanation{
			Rule:  "connect-refused",
			Title: "modgate refused the tunnel to " + host,
			Cause: "The go command reaches " + host + " through modgate as its HTTPS_PROXY, and modgate's forward mode refused to " +
				"open the tunnel: " + reason + ".",
			Fix: fix,
		}
	}
	return &explanation{
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

func explainRefused(b *block) *explanation {
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
	if u != nil && isLoopback(u.Host) {
		return &explanation{
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
	return &explanation{
		Rule:  "proxy-refused",
		Title: "connection refused",
		Cause: "Nothing accepts connections at " + addr + ", which the go command tried to reach (" + where + "): the server is down, or the URL's host or port is wrong.",
		Fix:   "Check the URL in GOPROXY (`go env GOPROXY`) and that the server behind it is up. If it should be modgate, start it (`modgate run`) and point GOPROXY at its --listen address.",
	}
}

func explainTLSHandshakeTimeout(b *block) *explanation {
	if !b.has("TLS handshake timeout") {
		return nil
	}
	return &explanation{
		Rule:  "tls-handshake-timeout",
		Title: "TLS handshake timeout",
		Cause: "The go command connected to " + b.origin() + " but the TLS handshake did not finish within 10 s: the server is overloaded " +
			"or hung, something between (a proxy, a firewall doing inspection) holds the connection, or the server does not speak TLS " +
			"on that port and waits for the client to say something else.",
		Fix: "Check that the URL's scheme and port are right (modgate's listener is plain http://). If the server is just slow, retry " +
			"later or go through modgate, which bounds the handshake (timeouts.tls) and fails over to the next upstream.",
	}
}

func explainIOTimeout(b *block) *explanation {
	l := b.line("i/o timeout")
	if l == "" {
		return nil
	}
	addr := ""
	if m := dialTimeoutRE.FindStringSubmatch(l); m != nil {
		addr = m[1]
	}
	e := &explanation{Rule: "io-timeout", Title: "i/o timeout"}
	switch {
	case strings.Contains(l, "lookup "):
		e.Cause = "A DNS lookup timed out: the resolver the machine uses did not answer."
		e.Fix = "Check the machine's DNS (/etc/resolv.conf, the pod's dnsPolicy). Going through modgate on 127.0.0.1 needs no DNS for the go command."
	case addr != "":
		e.Cause = "The go command could not connect to " + addr + " in time: no answer at all, which is what a host that is down, " +
			"a wrong address, or a firewall that drops packets looks like."
		e.Fix = "Check that the address in GOPROXY (`go env GOPROXY`) is right and reachable from here (`curl -v " + b.origin() + "/`). " +
			"If it is modgate, check that it runs and listens on that address; in a pod, GOPROXY must be http://127.0.0.1:7070."
		if isLoopback(addr) {
			e.Cause += " For a loopback address, the process there accepts no more connections (stopped or overloaded)."
		}
	default:
		e.Cause = "A network read or write timed out: the other side stopped answering."
		e.Fix = "Retry; if it repeats, check the network path to " + b.origin() + ". modgate bounds each phase of its upstream requests and fails over, so going through it turns a hang into a clear error."
	}
	return e
}

func explainUnknownAuthority(b *block) *explanation {
	if !b.has("certificate signed by unknown authority") {
		return nil
	}
	return &explanation{
		Rule:  "x509-unknown-authority",
		Title: "certificate signed by an unknown authority",
		Cause: "The go command does not trust the certificate " + b.origin() + " presented. When modgate intercepts HTTPS (its MITM " +
			"mode), it signs certificates with its own CA, which the go command and git must be told to trust; otherwise a " +
			"corporate proxy or an internal server uses a CA this machine does not have.",
		Fix: "Trust the CA: for modgate, `export SSL_CERT_FILE=$(modgate ca path)` for the go command and " +
			"`export GIT_SSL_CAINFO=$(modgate ca path)` for git (for an internal CA, point both at its PEM file, or add it to the " +
			"system store). Do not use GOINSECURE or GOFLAGS=-insecure instead: they turn off the check for everyone.",
	}
}

func explainX509(b *block) *explanation {
	l := b.line("x509: ")
	if l == "" {
		return nil
	}
	_, what, _ := strings.Cut(l, "x509: ")
	return &explanation{
		Rule:  "x509",
		Title: "certificate problem",
		Cause: "The certificate of " + b.origin() + " failed verification: " + what + ".",
		Fix: "An expired certificate or one for another name is the server's to fix; a wrong clock on this machine makes valid " +
			"ones look expired. `modgate doctor` shows each upstream's certificate expiry.",
	}
}

func explainHTTPToHTTPS(b *block) *explanation {
	if !b.has("server gave HTTP response to HTTPS client") {
		return nil
	}
	return &explanation{
		Rule:  "http-to-https",
		Title: "https:// URL for a plain-HTTP server",
		Cause: "The go command spoke TLS to " + b.origin() + ", but the server there answers plain HTTP. modgate's listener is plain " +
			"HTTP (it is meant for loopback or the pod's own network), so its URL starts with http://.",
		Fix: "Use http:// in GOPROXY: `go env -w GOPROXY=http://127.0.0.1:7070` (or the environment variable, whichever you set; " +
			"`go env GOPROXY` shows the value in force).",
	}
}

func explainNoSuchHost(b *block) *explanation {
	l := b.line("no such host")
	if l == "" {
		return nil
	}
	host := "a host"
	if m := noSuchHostRE.FindStringSubmatch(l); m != nil {
		host = m[1]
	}
	return &explanation{
		Rule:  "no-such-host",
		Title: "host name does not resolve",
		Cause: "The DNS name " + host + " does not resolve from this machine: a typo, an internal name outside the internal network, or no DNS at all (a sandboxed build).",
		Fix:   "Check the name in GOPROXY or the import path. In a sandbox, go through modgate on 127.0.0.1 and let it reach the upstreams.",
	}
}

func explainTerminalPrompts(b *block) *explanation {
	if !b.has("terminal prompts disabled") {
		return nil
	}
	repo := ""
	if m := promptHostRE.FindStringSubmatch(b.line("terminal prompts disabled")); m != nil {
		repo = " at " + m[1]
	}
	return &explanation{
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

func explainUnknownRevision(b *block) *explanation {
	l := b.line("unknown revision")
	if l == "" {
		return nil
	}
	rev := ""
	if m := unknownRevisionRE.FindStringSubmatch(l); m != nil {
		rev = " " + m[1]
	}
	return &explanation{
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

func explainNoMatchingVersions(b *block) *explanation {
	if !b.has("no matching versions for query") {
		return nil
	}
	return &explanation{
		Rule:  "no-matching-versions",
		Title: "no matching versions",
		Cause: "The go command asked for the list of versions of " + pathOf(b.subject()) + " and none matched the query: " +
			"the version or prefix asked for does not exist, or all matching versions are retracted or pre-releases.",
		Fix: "See which versions exist with `go list -m -versions " + pathOf(b.subject()) + "` and ask for one of those (or @latest). " +
			"If the list is empty, the proxy does not know the module: check its path, or whether it is private " +
			"(GOPRIVATE, and an upstream or direct that can reach it).",
	}
}

func explainRateLimited(b *block) *explanation {
	if b.status() != 429 && !b.has("429 Too Many Requests") {
		return nil
	}
	return &explanation{
		Rule:  "rate-limited",
		Title: "rate limited (429 Too Many Requests)",
		Saw:   b.resp,
		Cause: b.origin() + " refuses more requests from this client for now: too many builds share its quota, or a " +
			"cold module cache fetched a whole graph at once.",
		Fix: "Wait and retry. To stop it happening, fetch through modgate: it retries with back-off and Retry-After within a budget, " +
			"fails over to another upstream, and its cache takes repeat requests off the upstream.",
	}
}

func explainBadRequest(b *block) *explanation {
	if b.status() != 400 {
		return nil
	}
	ml := b.modgateLine()
	why := "the server's response says why"
	if ml != "" {
		why = strings.TrimPrefix(ml, "modgate: ")
	}
	return &explanation{
		Rule:  "bad-request",
		Title: "bad request (400)",
		Saw:   nonEmpty(ml),
		Cause: "The proxy could not decode the module path or version it was asked for: " + why + ".",
		Fix:   "Check the module path and version as written in go.mod or on the command line (case, a missing v, a stray character).",
	}
}

func explainNotFound(b *block) *explanation {
	code := b.status()
	if code != 404 && code != 410 {
		return nil
	}
	return &explanation{
		Rule:  "not-found",
		Title: "not found (" + strconv.Itoa(code) + ")",
		Saw:   b.resp,
		Cause: b.origin() + " does not have " + b.subject() + ": the path or version is wrong, the module is private, or it " +
			"exists only at its origin.",
		Fix: "Check the module path and version. For a private module, set GOPRIVATE and add ,direct to GOPROXY (or an upstream " +
			"in modgate's chain that has it).",
	}
}

func explainProxyError(b *block) *explanation {
	code := b.status()
	if code < 500 || code > 599 {
		return nil
	}
	return &explanation{
		Rule:  "proxy-error",
		Title: "proxy error (" + strconv.Itoa(code) + ")",
		Saw:   b.resp,
		Cause: b.origin() + " failed to serve " + b.subject() + " with a server error.",
		Fix: "Retry later. Going through modgate with a second upstream after \"|\" lets builds continue when one proxy fails; " +
			"its answer then names each upstream and what it did.",
	}
}

// nonEmpty returns the non-empty strings of ss.
func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// writeExplanation prints explanations for a person: a numbered list,
// each with what was seen, the cause and the fix, wrapped to fit a
// terminal.
func writeExplanation(w io.Writer, es []explanation) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	n := len(es)
	noun := "problems"
	if n == 1 {
		noun = "problem"
	}
	fmt.Fprintf(bw, "modgate explain: %d %s\n", n, noun)
	for i, e := range es {
		fmt.Fprintf(bw, "\n%d. %s\n", i+1, e.Title)
		for j, s := range e.Saw {
			label := "   saw:   "
			if j > 0 {
				label = "          "
			}
			fmt.Fprintf(bw, "%s%s\n", label, s)
		}
		if e.More > 0 {
			like := "failures"
			if e.More == 1 {
				like = "failure"
			}
			fmt.Fprintf(bw, "          (and %d more %s like it)\n", e.More, like)
		}
		writeWrapped(bw, "   cause: ", e.Cause)
		writeWrapped(bw, "   fix:   ", e.Fix)
	}
}

// explainWidth is where explanations wrap; the lines seen are printed as
// they were.
const explainWidth = 100

// writeWrapped prints text after label, wrapped at explainWidth with a
// hanging indent. Lines of text that start with "- " are list items and
// get a further indent when they wrap.
func writeWrapped(w io.Writer, label, text string) {
	indent := strings.Repeat(" ", len(label))
	first := true
	for _, para := range strings.Split(text, "\n") {
		if para == "" {
			continue
		}
		prefix := indent
		if first {
			prefix = label
		}
		first = false
		cont := indent
		if strings.HasPrefix(para, "- ") {
			cont += "  "
		}
		line := prefix
		fresh := true
		for _, word := range codeAwareFields(para) {
			if !fresh && len(line)+1+len(word) > explainWidth {
				fmt.Fprintln(w, line)
				line, fresh = cont, true
			}
			if !fresh {
				line += " "
			}
			line += word
			fresh = false
		}
		fmt.Fprintln(w, line)
	}
}

// codeAwareFields splits s into words like strings.Fields, but keeps a
// `code span` in one piece so that a command is never cut across lines.
func codeAwareFields(s string) []string {
	var out []string
	var cur strings.Builder
	inCode := false
	for _, r := range s {
		switch {
		case r == '`':
			inCode = !inCode
			cur.WriteRune(r)
		case r == ' ' && !inCode:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
