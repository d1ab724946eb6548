package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// Auth is how modgate proves who it is to one upstream. At most one way is
// set (the CLI checks). Secrets never appear here: they are read from
// files, which are read again when they change (a rotated Kubernetes
// secret), or printed by a command.
//
// Credentials go only to the upstream's own scheme and host:port. They are
// added to each request by the upstream's transport, hop by hop, never to
// the request the HTTP client copies for a redirect: a redirect to another
// host (a CDN in redirect_hosts, a subdomain, another port) carries none.
type Auth struct {
	// Username and PasswordFile: HTTP basic authentication, the password
	// being the file's content without its trailing newline.
	Username, PasswordFile string
	// BearerFile holds a token sent as "Authorization: Bearer TOKEN".
	BearerFile string
	// Netrc is a netrc file, read with the go command's rules: the first
	// "machine" entry whose name is the upstream URL's host (with its port,
	// if the URL has one) that has both login and password gives basic
	// authentication; nothing after "default" is read.
	Netrc string
	// Command is a GOAUTH-style command (see `go help goauth`), split into
	// words as the go command splits it (quotes group, no escapes). It is
	// run with a URL as its argument and prints blocks of URL prefixes, a
	// blank line, HTTP header lines and a blank line; the headers of the
	// longest prefix that matches a request's URL are sent with it. It runs
	// on first use, and again (once) after the upstream answers 401 or 403,
	// with that answer's status line and headers on its standard input,
	// and the request is then tried once more. Its standard output is never
	// shown; its standard error is logged with credentials hidden.
	Command string
	// CommandTimeout bounds each run of Command. If zero, 30s.
	CommandTimeout time.Duration
}

// DefaultCommandTimeout bounds a run of Auth.Command when
// Auth.CommandTimeout is zero.
const DefaultCommandTimeout = 30 * time.Second

// Auth kinds, as Auth.Kind names them. KindURL is a password in the
// upstream's URL.
const (
	AuthBasic   = "basic"
	AuthBearer  = "bearer"
	AuthNetrc   = "netrc"
	AuthCommand = "command"
	AuthURL     = "url"
)

// Kind names the way a is set to authenticate, or "" for none.
func (a Auth) Kind() string {
	switch {
	case a.PasswordFile != "" || a.Username != "":
		return AuthBasic
	case a.BearerFile != "":
		return AuthBearer
	case a.Netrc != "":
		return AuthNetrc
	case a.Command != "":
		return AuthCommand
	}
	return ""
}

// Check says what keeps a from working for the upstream at rawURL, without
// running its command: a file that cannot be read or is empty, a netrc
// file without an entry for the upstream's host, a command that is not
// found. Errors name files, never their content.
func (a Auth) Check(rawURL string) error {
	base, err := url.Parse(rawURL)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return errors.New("credentials are for http and https upstreams only")
	}
	if base.User != nil {
		return errors.New("the URL carries credentials too: give one or the other")
	}
	creds, err := newCredentials(a, base, nil, nil)
	if err != nil {
		return err
	}
	if fc, ok := creds.(*fileCreds); ok {
		if _, _, err := fc.header(base); err != nil {
			return err
		}
	}
	return nil
}

// credentials give the headers that authenticate a request to the
// upstream's own origin.
type credentials interface {
	// header returns the headers for a request to u, and the generation
	// of the credentials they come from.
	header(u *url.URL) (http.Header, uint64, error)
	// refused tells that credentials of generation gen got resp (401 or
	// 403) for u; it reports whether newer credentials are to be tried.
	refused(ctx context.Context, gen uint64, u *url.URL, resp *http.Response) bool
}

// newCredentials returns the credentials a describes for the upstream at
// base, or nil when a sets none and base has no user information.
func newCredentials(a Auth, base *url.URL, log *slog.Logger, clock wire.Clock) (credentials, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = wire.SystemClock{}
	}
	switch a.Kind() {
	case AuthBasic:
		if a.Username == "" || a.PasswordFile == "" {
			return nil, errors.New("basic credentials need a username and a password file")
		}
		user := a.Username
		return &fileCreds{f: &watchedFile{path: a.PasswordFile}, make: func(pass string) (http.Header, error) {
			if pass == "" {
				return nil, fmt.Errorf("password file %s is empty", a.PasswordFile)
			}
			return basicHeader(user, pass), nil
		}}, nil
	case AuthBearer:
		return &fileCreds{f: &watchedFile{path: a.BearerFile}, make: func(tok string) (http.Header, error) {
			if tok == "" {
				return nil, fmt.Errorf("token file %s is empty", a.BearerFile)
			}
			if strings.ContainsAny(tok, "\r\n") {
				return nil, fmt.Errorf("token file %s holds more than one line", a.BearerFile)
			}
			return http.Header{"Authorization": {"Bearer " + tok}}, nil
		}}, nil
	case AuthNetrc:
		host := base.Host
		return &fileCreds{f: &watchedFile{path: a.Netrc, keepSpace: true}, make: func(data string) (http.Header, error) {
			for _, l := range parseNetrc(data) {
				if l.machine == host {
					return basicHeader(l.login, l.password), nil
				}
			}
			return nil, fmt.Errorf("netrc file %s has no machine %s with a login and a password", a.Netrc, host)
		}}, nil
	case AuthCommand:
		words, err := splitCommand(a.Command)
		if err != nil {
			return nil, fmt.Errorf("auth command: %v", err)
		}
		if len(words) == 0 {
			return nil, errors.New("auth command is empty")
		}
		if _, err := exec.LookPath(words[0]); err != nil {
			return nil, fmt.Errorf("auth command: %v", err)
		}
		timeout := a.CommandTimeout
		if timeout <= 0 {
			timeout = DefaultCommandTimeout
		}
		return &commandCreds{words: words, timeout: timeout, base: base.String(), log: log, clock: clock}, nil
	}
	if base.User != nil {
		pass, _ := base.User.Password()
		return staticCreds(basicHeader(base.User.Username(), pass)), nil
	}
	return nil, nil
}

func basicHeader(user, pass string) http.Header {
	return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}}
}

// staticCreds are a URL's user information, sent as basic authentication.
type staticCreds http.Header

func (s staticCreds) header(*url.URL) (http.Header, uint64, error) { return http.Header(s), 0, nil }
func (s staticCreds) refused(context.Context, uint64, *url.URL, *http.Response) bool {
	return false
}

// watchedFile is a file read again whenever it changes: its identity,
// size or modification time (one stat per use).
type watchedFile struct {
	path      string
	keepSpace bool // keep the content as is (netrc); else trim spaces around it

	mu   sync.Mutex
	info os.FileInfo
	data string
	gen  uint64
}

// read returns the file's content and its generation, which changes each
// time the content is read anew. While the file cannot be read, the last
// content read stays in use.
func (f *watchedFile) read() (string, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.path)
	if err != nil {
		if f.info != nil {
			return f.data, f.gen, nil
		}
		return "", 0, err
	}
	if f.info != nil && os.SameFile(st, f.info) && st.Size() == f.info.Size() && st.ModTime().Equal(f.info.ModTime()) {
		return f.data, f.gen, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		if f.info != nil {
			return f.data, f.gen, nil
		}
		return "", 0, err
	}
	data := string(b)
	if !f.keepSpace {
		data = strings.TrimSpace(data)
	}
	f.info = st
	if f.gen == 0 || data != f.data {
		f.data, f.gen = data, f.gen+1
	}
	return f.data, f.gen, nil
}

// fileCreds are credentials made from a watched file's content.
type fileCreds struct {
	f    *watchedFile
	make func(content string) (http.Header, error)

	mu  sync.Mutex
	gen uint64
	h   http.Header
}

func (c *fileCreds) header(*url.URL) (http.Header, uint64, error) {
	data, gen, err := c.f.read()
	if err != nil {
		return nil, 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.h == nil || c.gen != gen {
		h, err := c.make(data)
		if err != nil {
			return nil, 0, err
		}
		c.h, c.gen = h, gen
	}
	return c.h, gen, nil
}

// refused tries again only when the file changed since (rotated between
// the read and the answer).
func (c *fileCreds) refused(_ context.Context, gen uint64, u *url.URL, _ *http.Response) bool {
	_, now, err := c.header(u)
	return err == nil && now != gen
}

// commandCreds are the headers a GOAUTH-style command printed, by prefix.
type commandCreds struct {
	words   []string
	timeout time.Duration
	base    string // the upstream's URL, the argument of the first run
	log     *slog.Logger
	clock   wire.Clock // times the hold-off after a failed run

	mu       sync.Mutex
	gen      uint64 // 0 until a run succeeds
	failed   time.Time
	err      error // the last run's, while it failed
	prefixes []authPrefix
}

// commandRetryAfter is how long a failed run is not repeated: requests in
// between fail with its error.
const commandRetryAfter = 5 * time.Second

type authPrefix struct {
	u *url.URL
	h http.Header
}

func (c *commandCreds) header(u *url.URL) (http.Header, uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == 0 {
		if c.err != nil && c.clock.Now().Sub(c.failed) < commandRetryAfter {
			return nil, 0, c.err
		}
		if err := c.run(context.Background(), c.base, nil); err != nil {
			return nil, 0, err
		}
	}
	return c.match(u), c.gen, nil
}

// match returns the headers of the longest prefix that matches u.
func (c *commandCreds) match(u *url.URL) http.Header {
	var best http.Header
	bestLen := -1
	for _, p := range c.prefixes {
		if !strings.EqualFold(p.u.Scheme, u.Scheme) || !strings.EqualFold(p.u.Host, u.Host) {
			continue
		}
		pp := strings.TrimSuffix(p.u.Path, "/")
		if pp != "" && u.Path != pp && !strings.HasPrefix(u.Path, pp+"/") {
			continue
		}
		if len(pp) > bestLen {
			best, bestLen = p.h, len(pp)
		}
	}
	return best
}

// refused runs the command again, once for all the requests refused with
// the same generation of credentials, as the go command does after a 401
// or 403.
func (c *commandCreds) refused(ctx context.Context, gen uint64, u *url.URL, resp *http.Response) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return true // another request ran it already
	}
	return c.run(ctx, u.String(), resp) == nil
}

// maxCommandOutput bounds what is read of the command's output.
const maxCommandOutput = 64 << 10

// run runs the command with arg and, when it succeeds, keeps what it
// printed as the new generation. c.mu is held.
func (c *commandCreds) run(ctx context.Context, arg string, resp *http.Response) (err error) {
	defer func() {
		c.err = err
		if err != nil {
			c.failed = c.clock.Now()
		}
	}()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.words[0], append(slices.Clone(c.words[1:]), arg)...)
	cmd.WaitDelay = time.Second
	var stdout, stderr limitedBuffer
	stdout.max, stderr.max = maxCommandOutput, 4<<10
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if resp != nil {
		var in strings.Builder
		in.WriteString(resp.Proto + " " + resp.Status + "\n")
		for k, vs := range resp.Header {
			in.WriteString(k + ": " + strings.Join(vs, ", ") + "\n")
		}
		in.WriteString("\n")
		cmd.Stdin = strings.NewReader(in.String())
	}
	err = cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %s", c.timeout)
	}
	prefixes, perr := parseAuthOutput(stdout.String())
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		c.log.Warn("auth command wrote to standard error", "command", c.words[0], "url", arg, "stderr", hideSecrets(msg, prefixes))
	}
	switch {
	case err != nil:
		return fmt.Errorf("auth command %s: %v", c.words[0], err)
	case stdout.over:
		return fmt.Errorf("auth command %s: more than %d bytes of output", c.words[0], maxCommandOutput)
	case perr != nil:
		return fmt.Errorf("auth command %s: %v", c.words[0], perr)
	}
	c.prefixes = prefixes
	c.gen++
	if c.match(mustParse(arg)) == nil {
		c.log.Warn("auth command printed no credentials for the upstream's URL", "command", c.words[0], "url", arg)
	}
	return nil
}

func mustParse(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		return &url.URL{}
	}
	return u
}

// hideSecrets hides, in s, every header value the command printed and
// every URL's credentials.
func hideSecrets(s string, prefixes []authPrefix) string {
	for _, p := range prefixes {
		for _, vs := range p.h {
			for _, v := range vs {
				if len(v) >= 4 {
					s = strings.ReplaceAll(s, v, redactedSecret)
					if _, tok, ok := strings.Cut(v, " "); ok && len(tok) >= 4 {
						s = strings.ReplaceAll(s, tok, redactedSecret)
					}
				}
			}
		}
	}
	return RedactText(s)
}

// parseAuthOutput reads a GOAUTH command's output, as the go command does
// (cmd/go/internal/auth/userauth.go): blocks of URL lines, a blank line,
// "Name: value" header lines and a blank line. Nothing of the output
// appears in its errors.
func parseAuthOutput(data string) ([]authPrefix, error) {
	var out []authPrefix
	for block := 1; data != ""; block++ {
		var lines []string
		var complete bool
		var urls []*url.URL
		lines, data, complete = cutLines(data)
		for _, line := range lines {
			u, err := url.ParseRequestURI(line)
			if err != nil || u.Host == "" || u.User != nil {
				return nil, fmt.Errorf("output block %d: a URL line is not an absolute URL without credentials", block)
			}
			urls = append(urls, u)
		}
		if !complete {
			return nil, fmt.Errorf("output block %d: no blank line after the URLs", block)
		}
		h := http.Header{}
		lines, data, complete = cutLines(data)
		for _, line := range lines {
			name, value, ok := strings.Cut(line, ": ")
			value = strings.TrimSpace(value)
			if !ok || !validHeaderName(name) || !validHeaderValue(value) {
				return nil, fmt.Errorf("output block %d: a header line is not \"Name: value\"", block)
			}
			h.Add(name, value)
		}
		if !complete {
			return nil, fmt.Errorf("output block %d: no blank line after the headers", block)
		}
		for _, u := range urls {
			out = append(out, authPrefix{u: u, h: h})
		}
	}
	return out, nil
}

// cutLines cuts the lines of data up to the next blank line (without
// their line endings) and returns what follows it; complete is false when
// data ends first, and lines then holds the lines that ended.
func cutLines(data string) (lines []string, rest string, complete bool) {
	for {
		line, after, ok := strings.Cut(data, "\n")
		if !ok {
			return lines, data, false
		}
		data = after
		if line = strings.TrimSuffix(line, "\r"); line == "" {
			return lines, data, true
		}
		lines = append(lines, line)
	}
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// splitCommand splits a command line into words as the go command splits
// GOAUTH (cmd/internal/quoted): spaces separate words, single or double
// quotes group them, nothing is unescaped.
func splitCommand(s string) ([]string, error) {
	var words []string
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			return words, nil
		}
		if q := s[0]; q == '"' || q == '\'' {
			end := strings.IndexByte(s[1:], q)
			if end < 0 {
				return nil, fmt.Errorf("unterminated %c string", q)
			}
			words = append(words, s[1:1+end])
			s = s[2+end:]
			continue
		}
		end := strings.IndexAny(s, " \t\r\n")
		if end < 0 {
			end = len(s)
		}
		words = append(words, s[:end])
		s = s[end:]
	}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); len(p) > room {
		b.over = true
		if room > 0 {
			b.Buffer.Write(p[:room])
		}
		return len(p), nil
	}
	return b.Buffer.Write(p)
}

type netrcLine struct{ machine, login, password string }

// parseNetrc is the go command's netrc parser
// (cmd/go/internal/auth/netrc.go): "machine" starts an entry, an entry
// counts once it has machine, login and password, "macdef" skips to the
// next blank line, and "default" ends the file.
func parseNetrc(data string) []netrcLine {
	var nrc []netrcLine
	var l netrcLine
	inMacro := false
	for line := range strings.SplitSeq(data, "\n") {
		if inMacro {
			if line == "" {
				inMacro = false
			}
			continue
		}
		f := strings.Fields(line)
		i := 0
		for ; i < len(f)-1; i += 2 {
			switch f[i] {
			case "machine":
				l = netrcLine{machine: f[i+1]}
			case "login":
				l.login = f[i+1]
			case "password":
				l.password = f[i+1]
			case "macdef":
				inMacro = true
			}
			if l.machine != "" && l.login != "" && l.password != "" {
				nrc = append(nrc, l)
				l = netrcLine{}
			}
		}
		if i < len(f) && f[i] == "default" {
			break
		}
	}
	return nrc
}

// authTransport adds an upstream's credentials to every request that goes
// to the upstream's own scheme and host:port, and to no other: it sees
// each hop of a redirect, and the request the HTTP client copies for a
// redirect never held them. A 401 or 403 with credentials that may be
// renewed (a command run again, a file rotated) is tried once more.
type authTransport struct {
	next   http.RoundTripper
	scheme string
	host   string // host:port as in the URL, lower case
	creds  credentials
	log    *slog.Logger
	name   string
}

func (t *authTransport) own(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, t.scheme) && strings.ToLower(u.Host) == t.host
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.own(req.URL) {
		return t.next.RoundTrip(req)
	}
	h, gen, err := t.creds.header(req.URL)
	if err != nil {
		closeBody(req)
		return nil, &CredentialsError{Upstream: t.name, Err: err}
	}
	resp, err := t.next.RoundTrip(withHeader(req, h))
	if err != nil || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
		redactErrorBody(resp, h)
		return resp, err
	}
	replay := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	if !replay || !t.creds.refused(req.Context(), gen, req.URL, resp) {
		redactErrorBody(resp, h)
		return resp, nil
	}
	t.log.Info("upstream refused the credentials; trying renewed ones", "status", resp.StatusCode)
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	h, _, err = t.creds.header(req.URL)
	if err != nil {
		closeBody(req)
		return nil, &CredentialsError{Upstream: t.name, Err: err}
	}
	retry := withHeader(req, h)
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	resp, err = t.next.RoundTrip(retry)
	redactErrorBody(resp, h)
	return resp, err
}

// redactBodyLimit is how much of an error answer is searched for the
// credentials sent: error bodies are short, and only their first line is
// ever shown.
const redactBodyLimit = 64 << 10

// redactErrorBody hides, in the start of an error answer's body, the
// credentials the request carried: an upstream that echoes them
// ("denied: Bearer TOKEN") must not have them shown to every client, on
// the status page and in the audit log. The Bearer and Basic values of
// other credentials are hidden too (RedactText).
func redactErrorBody(resp *http.Response, h http.Header) {
	if resp == nil || resp.StatusCode < 400 || resp.Body == nil {
		return
	}
	head, _ := io.ReadAll(io.LimitReader(resp.Body, redactBodyLimit))
	text := string(head)
	for _, secret := range secretsOf(h) {
		text = strings.ReplaceAll(text, secret, redactedSecret)
	}
	text = RedactText(text)
	resp.Body = readCloser{io.MultiReader(strings.NewReader(text), resp.Body), resp.Body}
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
}

type readCloser struct {
	io.Reader
	io.Closer
}

// secretsOf returns the secrets the header values h carry, longest first:
// each value, the credential after its scheme word, and for Basic the
// decoded user:password and password.
func secretsOf(h http.Header) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 4 {
			out = append(out, s)
		}
	}
	for _, vs := range h {
		for _, v := range vs {
			add(v)
			scheme, cred, ok := strings.Cut(v, " ")
			if !ok {
				continue
			}
			add(cred)
			if strings.EqualFold(scheme, "Basic") {
				if dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred)); err == nil {
					add(string(dec))
					if _, pass, ok := strings.Cut(string(dec), ":"); ok {
						add(pass)
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// CredentialsError is a request that was not sent because the upstream's
// credentials could not be had: a file gone before it was ever read, a
// command that fails. It shows no secret.
type CredentialsError struct {
	Upstream string // the upstream's URL, credentials hidden
	Err      error
}

func (e *CredentialsError) Error() string {
	return "credentials for upstream " + e.Upstream + ": " + e.Err.Error()
}

func (e *CredentialsError) Unwrap() error { return e.Err }

// withHeader returns a copy of req with h set (a RoundTripper must not
// change its request).
func withHeader(req *http.Request, h http.Header) *http.Request {
	r := req.Clone(req.Context())
	r.Body = req.Body
	for k, vs := range h {
		r.Header[k] = vs
	}
	return r
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// AuthTransport returns next with the credentials that a (or the user
// information of rawURL) sets for the upstream at rawURL, for callers
// that make their own requests to an upstream (`modgate doctor`'s
// probes). kind is Auth.Kind, AuthURL for a URL's password, or "" when
// there are none (next is returned).
func AuthTransport(rawURL string, a Auth, next http.RoundTripper, log *slog.Logger) (rt http.RoundTripper, kind string, err error) {
	return credentialTransport(rawURL, a, next, log, nil)
}

// credentialTransport is AuthTransport on clock (nil: the system's).
func credentialTransport(rawURL string, a Auth, next http.RoundTripper, log *slog.Logger, clock wire.Clock) (rt http.RoundTripper, kind string, err error) {
	base, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", errors.New("invalid URL")
	}
	creds, err := newCredentials(a, base, log, clock)
	if err != nil || creds == nil {
		return next, "", err
	}
	kind = a.Kind()
	if kind == "" {
		kind = AuthURL
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &authTransport{next: next, scheme: base.Scheme, host: strings.ToLower(base.Host), creds: creds, log: log, name: RedactURL(rawURL)}, kind, nil
}
