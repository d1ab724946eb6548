package sidecar

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"

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
// ClientsConfig.Anonymous is set.
const AnonymousIdentity = "anonymous"

// clients checks who is asking, for every way in: a verified client
// certificate, Basic credentials (htpasswd, or forward mode's older
// auth_file users) or a Bearer token. Safe for concurrent use.
type clients struct {
	cfg    ClientsConfig
	users  map[string][32]byte // forward.auth_file: user → sha256(password)
	logins *loginLimiter

	htpasswd *watchedFile[map[string][]byte]   // user → bcrypt hash
	tokens   *watchedFile[map[[32]byte]string] // sha256(token) → name
	cas      *watchedFile[*x509.CertPool]

	// good remembers, per user, the hash a password last matched and the
	// password's sha256, so that only the first request of a user pays
	// for bcrypt (the go command makes hundreds).
	good sync.Map // user → goodLogin
}

type goodLogin struct {
	hash []byte
	sum  [32]byte
}

// dummyHash is compared against for unknown users, so that timing does not
// tell which user names exist.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("modgate: no such user"), bcrypt.DefaultCost)
	return h
})

func newClients(cfg ClientsConfig, users map[string]string, now func() time.Time, log *slog.Logger) (*clients, error) {
	c := &clients{cfg: cfg, logins: newLoginLimiter(now)}
	if len(users) > 0 {
		c.users = map[string][32]byte{}
		for u, p := range users {
			c.users[u] = sha256.Sum256([]byte(p))
		}
	}
	var err error
	if cfg.HtpasswdFile != "" {
		if c.htpasswd, err = newWatchedFile(cfg.HtpasswdFile, "", parseHtpasswd, log); err != nil {
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

// authenticate returns who r is, or the problem that refuses it: 401 with
// WWW-Authenticate in reverse mode, 407 with Proxy-Authenticate in forward
// mode, 429 after too many failures from the client's address. With
// nothing configured everyone is "" (nobody in particular).
func (c *clients) authenticate(r *http.Request, forward bool) (identity string, err error) {
	if !c.required(forward) {
		return "", nil
	}
	if cn, ok := c.certIdentity(r); ok {
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
	tried := true
	switch {
	case !found && scheme == "":
		if c.cfg.Anonymous {
			return AnonymousIdentity, nil
		}
		tried = false
	case strings.EqualFold(scheme, "Basic"):
		user, pass, ok := parseBasic("Basic " + cred)
		if ok && c.checkPassword(user, pass) {
			return user, nil
		}
		identity, reason = user, "wrong user name or password"
	case strings.EqualFold(scheme, "Bearer"):
		if name, ok := c.checkToken(cred); ok {
			return name, nil
		}
		reason = "unknown token"
	default:
		reason = "unsupported " + header + " scheme"
	}
	if tried {
		c.logins.failed(client) // a request without credentials costs nothing: the go command's first has none
	}
	return identity, c.refusal(r, forward, reason)
}

// certIdentity is the subject common name of r's verified client
// certificate.
func (c *clients) certIdentity(r *http.Request) (string, bool) {
	if c.cas == nil || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return "", false
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	return cn, cn != ""
}

// checkPassword checks user and pass against the forward users and the
// htpasswd file, in constant time for a given user.
func (c *clients) checkPassword(user, pass string) bool {
	sum := sha256.Sum256([]byte(pass))
	if want, ok := c.users[user]; ok {
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
	if c.htpasswd == nil {
		return false
	}
	hash, known := c.htpasswd.get()[user]
	if known {
		if g, ok := c.good.Load(user); ok {
			g := g.(goodLogin)
			if bytes.Equal(g.hash, hash) && subtle.ConstantTimeCompare(g.sum[:], sum[:]) == 1 {
				return true
			}
		}
	} else {
		hash = dummyHash()
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil || !known {
		return false
	}
	c.good.Store(user, goodLogin{hash: hash, sum: sum})
	return true
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
		return &problem{status: http.StatusProxyAuthRequired, code: wire.AuthRequired, decision: decisionDeny, reason: reason,
			lines:  []string{"proxy authentication required: " + reason, "set the user and password in HTTPS_PROXY/HTTP_PROXY (" + scheme + "://user:password@host:port)"},
			header: http.Header{"Proxy-Authenticate": c.challenges()}}
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
	return &problem{status: http.StatusUnauthorized, code: wire.AuthRequired, decision: decisionDeny, reason: reason,
		lines: lines, header: http.Header{"Www-Authenticate": c.challenges()}}
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
