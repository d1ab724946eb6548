package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/wire"
)

// ListenerTLS makes the module listener HTTPS. The go command sends netrc
// and GOAUTH credentials only over HTTPS.
type ListenerTLS struct {
	// CertFile and KeyFile are the PEM certificate (chain) and its key.
	// Both are read again when either file changes. If CertFile is empty,
	// the listener is plain HTTP.
	CertFile, KeyFile string
}

// Enabled reports whether the listener is HTTPS.
func (t ListenerTLS) Enabled() bool { return t.CertFile != "" }

// ClientsConfig says who may use the module listener. Every file is read
// again when it changes; a file that no longer parses is logged and the
// previous contents stay in force.
type ClientsConfig struct {
	// HtpasswdFile holds "name:bcrypt-hash" lines (htpasswd -B); the
	// name is the identity. If empty, no user names and passwords.
	HtpasswdFile string
	// TokensFile holds "name token" lines, presented as
	// "Authorization: Bearer token"; the name is the identity. If empty,
	// no tokens.
	TokensFile string
	// ClientCAFile holds the PEM CAs that sign client certificates
	// (mutual TLS; needs ListenerTLS); the certificate's subject common
	// name is the identity. If empty, client certificates are not asked for.
	ClientCAFile string
	// Anonymous lets requests without credentials in, as the identity
	// "anonymous". Wrong credentials are refused all the same.
	Anonymous bool
}

// Enabled reports whether clients must say who they are (or are
// "anonymous"): any field is set.
func (c ClientsConfig) Enabled() bool {
	return c.HtpasswdFile != "" || c.TokensFile != "" || c.ClientCAFile != "" || c.Anonymous
}

// AnonymousIdentity is the identity of a request without credentials when
// ClientsConfig.Anonymous is set. Policy matches it only by name: a rule
// for identities: ["*"] never applies to it.
const AnonymousIdentity = policy.AnonymousIdentity

// clients checks who is asking, for every way in: a verified client
// certificate, Basic credentials (htpasswd, or forward mode's older
// auth_file users) or a Bearer token. Safe for concurrent use.
type clients struct {
	cfg    ClientsConfig
	users  map[string][32]byte // forward.auth_file: user → sha256(password)
	logins *loginLimiter
	pw     *passwords
	clock  wire.Clock

	htpasswd *watchedFile[*htpasswd]
	tokens   *watchedFile[map[[32]byte]string] // sha256(token) → name
	cas      *watchedFile[*x509.CertPool]
}

// htpasswd is an htpasswd file: user → bcrypt hash, and the hash unknown
// users are checked against, at the cost of the file's own.
type htpasswd struct {
	users map[string][]byte
	dummy []byte
}

func parseHtpasswdFile(data []byte) (*htpasswd, error) {
	users, err := parseHtpasswd(data)
	if err != nil {
		return nil, err
	}
	return &htpasswd{users: users, dummy: dummyHash(commonCost(users))}, nil
}

func newClients(cfg ClientsConfig, users map[string]string, clock wire.Clock, log *slog.Logger) (*clients, error) {
	c := &clients{cfg: cfg, logins: newLoginLimiter(clock), pw: newPasswords(), clock: clock}
	if len(users) > 0 {
		c.users = map[string][32]byte{}
		for u, p := range users {
			c.users[u] = sha256.Sum256([]byte(p))
		}
	}
	var err error
	if cfg.HtpasswdFile != "" {
		if c.htpasswd, err = newWatchedFile(cfg.HtpasswdFile, "", parseHtpasswdFile, log); err != nil {
			return nil, fmt.Errorf("clients.htpasswd_file: %w", err)
		}
	}
	if cfg.TokensFile != "" {
		if c.tokens, err = newWatchedFile(cfg.TokensFile, "", parseTokens, log); err != nil {
			return nil, fmt.Errorf("clients.tokens_file: %w", err)
		}
	}
	if cfg.ClientCAFile != "" {
		if c.cas, err = newWatchedFile(cfg.ClientCAFile, "", parseCAs, log); err != nil {
			return nil, fmt.Errorf("clients.client_ca_file: %w", err)
		}
	}
	return c, nil
}

// describe says which credentials modgate takes, for the start-up line.
func (c *clients) describe() string {
	var ways []string
	if c.htpasswd != nil {
		ways = append(ways, "htpasswd "+c.cfg.HtpasswdFile)
	}
	if c.tokens != nil {
		ways = append(ways, "tokens "+c.cfg.TokensFile)
	}
	if c.cas != nil {
		ways = append(ways, "client certificates "+c.cfg.ClientCAFile)
	}
	if c.cfg.Anonymous {
		ways = append(ways, "anonymous")
	}
	return strings.Join(ways, ", ")
}

// required reports whether a way in must authenticate: reverse mode when
// clients are configured; forward mode also when auth_file users are.
func (c *clients) required(forward bool) bool {
	return c.cfg.Enabled() || (forward && c.users != nil)
}

// setIdentity records authenticate's answer on x: the identity of a
// request let in, or the name a refused one claimed, which is audited as
// claimed_identity and never taken for its identity.
func (x *exchange) setIdentity(identity string, err error) {
	if err != nil {
		x.identity, x.claimed = "", identity
		return
	}
	x.identity = identity
}

// authenticate returns who r is, or the problem that refuses it (and the
// name it claimed, if any): 401 with WWW-Authenticate in reverse mode,
// 407 with Proxy-Authenticate in forward mode, 429 after too many
// failures from the client's address, 503 when too many passwords are
// being checked at once. With nothing configured everyone is "" (nobody
// in particular).
func (c *clients) authenticate(r *http.Request, forward bool) (identity string, err error) {
	if !c.required(forward) {
		return "", nil
	}
	if cn, why := c.certIdentity(r); why != "" {
		return cn, c.refusal(r, forward, why)
	} else if cn != "" {
		return cn, nil
	}
	client := clientIP(r.RemoteAddr)
	if p := c.logins.blocked(client); p != nil {
		return "", p
	}
	header := "Authorization"
	if forward {
		header = "Proxy-Authorization"
	}
	scheme, cred, found := strings.Cut(strings.TrimSpace(r.Header.Get(header)), " ")
	cred = strings.TrimSpace(cred)
	reason := "no credentials"
	if forward {
		reason = "no Proxy-Authorization"
	}
	switch {
	case !found && scheme == "":
		// A request without credentials costs nothing: the go command's
		// first has none.
		if c.cfg.Anonymous {
			return AnonymousIdentity, nil
		}
		return "", c.refusal(r, forward, reason)
	case strings.EqualFold(scheme, "Basic"):
		user, pass, ok := parseBasic("Basic " + cred)
		if !ok {
			user, reason = "", "unreadable Basic credentials"
			break
		}
		good, p := c.checkLogin(r.Context(), client, user, pass)
		if p != nil {
			return user, p
		}
		if good {
			return user, nil
		}
		return user, c.refusal(r, forward, "wrong user name or password")
	case strings.EqualFold(scheme, "Bearer"):
		// A token is looked up in a map of digests, cheaply; it still
		// takes a token of the bucket first, so that concurrent guesses
		// get no more tries than sequential ones.
		if p := c.logins.take(client); p != nil {
			return "", p
		}
		if name, ok := c.checkToken(cred); ok {
			c.logins.refund(client)
			return name, nil
		}
		return "", c.refusal(r, forward, "unknown token")
	default:
		reason = "unsupported " + header + " scheme"
	}
	if p := c.logins.take(client); p != nil {
		return "", p
	}
	return "", c.refusal(r, forward, reason)
}

// certIdentity is the subject common name of r's verified client
// certificate ("" without one), or why the certificate is refused: a
// subject with more than one common name (/CN=bob/CN=alice), which
// x509 reads as its last and other tools as their first.
func (c *clients) certIdentity(r *http.Request) (cn, refused string) {
	if c.cas == nil || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", ""
	}
	leaf := r.TLS.VerifiedChains[0][0]
	n := 0
	for _, a := range leaf.Subject.Names {
		if a.Type.Equal(oidCommonName) {
			n++
		}
	}
	if n > 1 {
		return "", fmt.Sprintf("client certificate has %d common names; modgate takes one", n)
	}
	return leaf.Subject.CommonName, ""
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// checkLogin checks user and pass for client: at once against a login
// remembered or forward mode's users, else with bcrypt, once for any
// number of concurrent requests with the same credentials from client,
// after taking one of client's failed-login tokens (given back when the
// password is right). The problem is a 429 (no tokens left) or a 503
// (too many checks at once).
func (c *clients) checkLogin(ctx context.Context, client, user, pass string) (bool, *problem) {
	if want, ok := c.users[user]; ok {
		if p := c.logins.take(client); p != nil {
			return false, p
		}
		sum := sha256.Sum256([]byte(pass))
		if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
			c.logins.refund(client)
			return true, nil
		}
		return false, nil
	}
	if c.htpasswd == nil {
		return false, c.logins.take(client)
	}
	key := c.pw.credKey(user, pass)
	var callKey [32]byte
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte(client))
	m.Sum(callKey[:0])
	return c.pw.once(callKey, func() (bool, *problem) {
		if p := c.logins.take(client); p != nil {
			return false, p
		}
		f := c.htpasswd.get()
		hash, known := f.users[user]
		if known && c.pw.remembered(key, hash, c.clock.Now()) {
			c.logins.refund(client)
			return true, nil
		}
		if !known {
			hash = f.dummy
		}
		good, p := c.pw.bcrypt(ctx, hash, pass)
		if p != nil {
			c.logins.refund(client) // not checked: not a failure
			return false, p
		}
		if !good || !known {
			return false, nil
		}
		c.logins.refund(client)
		c.pw.remember(key, hash, c.clock.Now())
		return true, nil
	})
}

// checkToken returns the name of token.
func (c *clients) checkToken(token string) (string, bool) {
	if c.tokens == nil || token == "" {
		return "", false
	}
	// A map of digests: looking one up tells nothing of the tokens.
	name, ok := c.tokens.get()[sha256.Sum256([]byte(token))]
	return name, ok
}

// refusal is the 401 (reverse) or 407 (forward) that asks for credentials
// and says which ones modgate takes and how the go command sends them.
func (c *clients) refusal(r *http.Request, forward bool, reason string) *problem {
	if forward {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		p := deny(wire.AuthRequired, reason, "proxy authentication required: "+reason, "set the user and password in HTTPS_PROXY/HTTP_PROXY ("+scheme+"://user:password@host:port)")
		p.proxyAuth, p.header = true, http.Header{"Proxy-Authenticate": c.challenges()}
		return p
	}
	machine := r.Host
	if h, port, err := net.SplitHostPort(r.Host); err == nil && port == "443" {
		machine = h
	}
	lines := []string{"authentication required: " + reason}
	if c.htpasswd != nil {
		lines = append(lines,
			"modgate takes a user name and password: set GOAUTH=netrc and add to your netrc file ($NETRC or ~/.netrc):",
			"machine "+cleanLine(machine)+" login <name> password <password>")
	}
	if c.tokens != nil {
		lines = append(lines, "modgate takes a token: Authorization: Bearer <token> (a GOAUTH command can print that header)")
	}
	if c.cas != nil {
		lines = append(lines, "modgate takes a client certificate signed by its clients.client_ca_file")
	}
	lines = append(lines, "the go command sends credentials only over https: GOPROXY=https://"+cleanLine(r.Host)+" (see modgate env)")
	p := deny(wire.AuthRequired, reason, lines...)
	p.header = http.Header{"Www-Authenticate": c.challenges()}
	return p
}

func (c *clients) challenges() []string {
	var ch []string
	if c.htpasswd != nil || c.users != nil || !c.cfg.Enabled() {
		ch = append(ch, `Basic realm="modgate"`)
	}
	if c.tokens != nil {
		ch = append(ch, `Bearer realm="modgate"`)
	}
	if len(ch) == 0 {
		ch = append(ch, `Basic realm="modgate"`)
	}
	return ch
}

// tlsConfig is the module listener's TLS: the certificate re-read when its
// files change, and client certificates asked for (not required: netrc
// and token users have none) when there is a client CA.
func (c *clients) tlsConfig(t ListenerTLS, log *slog.Logger) (*tls.Config, error) {
	pair, err := newWatchedFile(t.CertFile, t.KeyFile, func(cert []byte) (*tls.Certificate, error) {
		key, err := os.ReadFile(t.KeyFile)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("with %s: %v", t.KeyFile, err)
		}
		return &pair, nil
	}, log)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// HTTP/1.1 only: CONNECT (forward mode over TLS) hijacks the connection.
		NextProtos:     []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return pair.get(), nil },
	}
	if c.cas == nil {
		return base, nil
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: base.NextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cfg := base.Clone()
			cfg.ClientAuth = tls.VerifyClientCertIfGiven
			cfg.ClientCAs = c.cas.get()
			return cfg, nil
		},
	}, nil
}

// watchedFile is a file's parsed contents, parsed again when the file (or
// the file named by also) changes: its size, modification time or inode.
type watchedFile[T any] struct {
	path  string
	also  string
	parse func([]byte) (T, error)
	log   *slog.Logger

	mu    sync.Mutex
	stamp atomic.Pointer[string]
	val   atomic.Pointer[T]
}

func newWatchedFile[T any](path, also string, parse func([]byte) (T, error), log *slog.Logger) (*watchedFile[T], error) {
	w := &watchedFile[T]{path: path, also: also, parse: parse, log: log}
	if err := w.load(w.stampNow()); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *watchedFile[T]) stampNow() string {
	var b strings.Builder
	for _, p := range []string{w.path, w.also} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%d.%d;", st.Size(), st.ModTime().UnixNano())
		} else {
			b.WriteString("missing;")
		}
	}
	return b.String()
}

func (w *watchedFile[T]) load(stamp string) error {
	data, err := os.ReadFile(w.path)
	if err != nil {
		return err
	}
	v, err := w.parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	w.val.Store(&v)
	w.stamp.Store(&stamp)
	return nil
}

// get returns the contents, read again first if the file changed. A file
// that fails to read or parse leaves the previous contents in force.
func (w *watchedFile[T]) get() T {
	stamp := w.stampNow()
	if old := w.stamp.Load(); old != nil && *old == stamp {
		return *w.val.Load()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if old := w.stamp.Load(); old == nil || *old != stamp {
		if err := w.load(stamp); err != nil {
			w.stamp.Store(&stamp) // logged once per change, not per request
			w.log.Error("file changed and does not load; keeping what it said before", "file", w.path, "err", err)
		} else {
			w.log.Info("file changed; loaded again", "file", w.path)
		}
	}
	return *w.val.Load()
}

// parseHtpasswd reads "name:hash" lines; only bcrypt hashes are taken.
// Errors name the line, never its hash.
func parseHtpasswd(data []byte) (map[string][]byte, error) {
	users := map[string][]byte{}
	err := eachLine(data, func(n int, line string) error {
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || hash == "" {
			return fmt.Errorf("line %d: want name:hash (htpasswd -B)", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return fmt.Errorf("line %d: user %s: not a bcrypt hash: create it with htpasswd -B", n, user)
		}
		if _, dup := users[user]; dup {
			return fmt.Errorf("line %d: user %s is listed twice", n, user)
		}
		users[user] = []byte(hash)
		return nil
	})
	return users, err
}

// parseTokens reads "name token" lines. Errors name the line, never its
// token.
func parseTokens(data []byte) (map[[32]byte]string, error) {
	tokens := map[[32]byte]string{}
	err := eachLine(data, func(n int, line string) error {
		f := strings.Fields(line)
		if len(f) != 2 {
			return fmt.Errorf("line %d: want \"name token\"", n)
		}
		sum := sha256.Sum256([]byte(f[1]))
		if other, dup := tokens[sum]; dup {
			return fmt.Errorf("line %d: %s has the token of %s", n, f[0], other)
		}
		tokens[sum] = f[0]
		return nil
	})
	return tokens, err
}

func parseCAs(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("holds no PEM certificate")
	}
	return pool, nil
}

// eachLine calls f with each line that is not blank or a # comment.
func eachLine(data []byte, f func(n int, line string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := f(n, line); err != nil {
			return err
		}
	}
	return sc.Err()
}

// Check reads the certificate and key as the listener will, so that a
// config loader can refuse them before start-up.
func (t ListenerTLS) Check() error {
	if t.CertFile == "" && t.KeyFile == "" {
		return nil
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return errors.New("needs both cert_file and key_file")
	}
	_, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	return err
}

// Certificate returns the listener's certificate (the leaf), for tools
// that print client settings.
func (t ListenerTLS) Certificate() (*x509.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(pair.Certificate[0])
}

// Check reads the files c names as the server will and returns the
// problem of each, by its key (htpasswd_file, tokens_file,
// client_ca_file). Problems name the file's line, never a secret.
func (c ClientsConfig) Check() map[string]error {
	errs := map[string]error{}
	check := func(key, path string, parse func([]byte) error) {
		if path == "" {
			return
		}
		data, err := os.ReadFile(path)
		if err == nil {
			if err = parse(data); err != nil {
				err = fmt.Errorf("%s: %w", path, err)
			}
		}
		if err != nil {
			errs[key] = err
		}
	}
	check("htpasswd_file", c.HtpasswdFile, func(b []byte) error { _, err := parseHtpasswd(b); return err })
	check("tokens_file", c.TokensFile, func(b []byte) error { _, err := parseTokens(b); return err })
	check("client_ca_file", c.ClientCAFile, func(b []byte) error { _, err := parseCAs(b); return err })
	return errs
}

func parseBasic(h string) (user, pass string, ok bool) {
	scheme, cred, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", "", false
	}
	return strings.Cut(string(b), ":")
}
