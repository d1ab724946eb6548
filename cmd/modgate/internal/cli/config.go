package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/mod/sumdb/note"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/fleet"
	"github.com/modgate/modgate/sidecar/mitm"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

// Config is modgate's configuration as the YAML file spells it. Every flag
// has a key. It is loaded once: defaults, then the file, then MODGATE_*
// environment variables, then flags, then validation.
type Config struct {
	Listen    string            `yaml:"listen"`
	Admin     string            `yaml:"admin"`
	Upstreams []UpstreamConfig  `yaml:"upstreams"`
	SumDB     SumDBConfig       `yaml:"sumdb"`
	Resolve   map[string]string `yaml:"resolve"`
	TLSCAFile string            `yaml:"tls_ca_file"`
	Log       LogConfig         `yaml:"log"`
	// PolicyFile is the policy (see README); empty allows everything.
	PolicyFile string `yaml:"policy_file"`
	// AuditLog is a file, "-" for standard output, or empty for none.
	AuditLog string `yaml:"audit_log"`
	// Forward is forward mode (HTTP_PROXY / HTTPS_PROXY).
	Forward ForwardConfig `yaml:"forward"`
	// Cache is the artifact cache.
	Cache CacheConfig `yaml:"cache"`
	// ClientTimeouts bound what a client may take of modgate's listener.
	ClientTimeouts ClientTimeoutsConfig `yaml:"client_timeouts"`
	// MaxConnections bounds the listener's open connections (tunnels and
	// intercepted ones included); 0: the default (1024).
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerClient bounds one client address's; 0: 256.
	MaxConnectionsPerClient int `yaml:"max_connections_per_client"`
	// AdminHosts are the Host names (patterns like *.svc.example.test)
	// the admin listener answers besides IP addresses and localhost.
	AdminHosts []string `yaml:"admin_hosts"`
	// PProf serves /debug/pprof/ on the admin listener.
	PProf bool `yaml:"pprof"`
	// Offline serves only from the cache (air-gapped builds).
	Offline bool `yaml:"offline"`
	// ListenerSecurity is the tls and clients sections (clients.go).
	ListenerSecurity `yaml:",inline"`
	// Fleet is the coordination of many modgates through Redis.
	Fleet FleetConfig `yaml:"fleet"`
	// Telemetry is what modgate adds to the standard OTEL_* variables.
	Telemetry TelemetryConfig `yaml:"telemetry"`

	// fleetSecret and fleetPassword are what fleet.secret_file and
	// fleet.password_file hold, read by validate.
	fleetSecret   []byte
	fleetPassword string
	rootCAs       *x509.CertPool // tls_ca_file's, for rediss://

	// netrc is the netrc file that upstreams[].auth.netrc reads, as the
	// go command finds it ($NETRC, else ~/.netrc, or ~/_netrc on
	// Windows); the loader sets it from the environment.
	netrc string
	// notes are what loading decided on the user's behalf (an upstream
	// left out), for run to log once it has a logger.
	notes []loadNote
	// defaultCacheDir says that Cache.Dir is the per-user default, not
	// configured: a folder that cannot be made then means no cache, not
	// a refusal to start.
	defaultCacheDir bool
}

// FleetConfig is the fleet section.
type FleetConfig struct {
	// Redis is the replicas' Redis (redis:// or rediss://); empty: each
	// replica on its own.
	Redis string `yaml:"redis"`
	// SecretFile holds the fleet's shared secret (the same file on every
	// replica, at least 16 bytes): breaker news and leases are signed
	// with it and artifact keys hashed with it. Required with Redis.
	SecretFile string `yaml:"secret_file"`
	// PasswordFile holds Redis's password (of the URL's ACL user, if it
	// names one), so that it is not in the URL.
	PasswordFile string `yaml:"password_file"`
	// Wait is how long a replica waits for another's fetch of an
	// artifact before fetching it itself.
	Wait time.Duration `yaml:"wait"`
}

// TelemetryConfig is the telemetry section.
type TelemetryConfig struct {
	// MaxTracesPerSecond bounds the new traces the default sampler
	// records (when OTEL_TRACES_SAMPLER is unset); 0 records only traces
	// a client started and sampled.
	MaxTracesPerSecond float64 `yaml:"max_traces_per_second"`
}

// ClientTimeoutsConfig is the client_timeouts section; zero keys take
// defaults (10s and 60s).
type ClientTimeoutsConfig struct {
	// Header is how long a client may take to send its request headers.
	Header time.Duration `yaml:"header"`
	// Idle is how long a client may leave an answer unread before modgate
	// gives up on it.
	Idle time.Duration `yaml:"idle"`
}

// CacheConfig is the cache section.
type CacheConfig struct {
	Dir          string        `yaml:"dir"`
	MaxBytes     ByteSize      `yaml:"max_bytes"`
	ListTTL      time.Duration `yaml:"list_ttl"`
	StaleIfError time.Duration `yaml:"stale_if_error"`
	PrivateDir   string        `yaml:"private_dir"`
	// Shared is the shared store (a gocloud.dev/blob URL) of a fleet's
	// immutable artifacts; SharedPrivate the one of private modules.
	Shared        string        `yaml:"shared"`
	SharedPrivate string        `yaml:"shared_private"`
	SharedTimeout time.Duration `yaml:"shared_timeout"`
}

// loadNote is something loading decided on the user's behalf.
type loadNote struct {
	warn bool
	msg  string
}

// ByteSize is a size written 10GiB, 500MB, 1024 or the like.
type ByteSize int64

// UnmarshalYAML reads a size with an optional unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*b = ByteSize(v)
	return nil
}

func parseByteSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q, want a size like 10GiB or 500MB", s)
	}
	return n * mult, nil
}

// ForwardConfig is forward mode's section.
type ForwardConfig struct {
	ConnectPorts []int         `yaml:"connect_ports"`
	AllowHosts   []string      `yaml:"allow_hosts"`
	MITMHosts    []string      `yaml:"mitm_hosts"`
	CADir        string        `yaml:"ca_dir"`
	PrivateHosts []string      `yaml:"private_hosts"`
	AuthFile     string        `yaml:"auth_file"` // lines of user:password
	TunnelIdle   time.Duration `yaml:"tunnel_idle"`
	MaxTunnels   int           `yaml:"max_tunnels"` // open CONNECTs at once; default 1024
}

// UpstreamConfig is one entry of upstreams.
type UpstreamConfig struct {
	Name        string         `yaml:"name"`
	URL         string         `yaml:"url"`
	Private     bool           `yaml:"private"`
	Fallthrough string         `yaml:"fallthrough"` // notfound (GOPROXY ",") | error (GOPROXY "|")
	Timeouts    TimeoutsConfig `yaml:"timeouts"`
	Breaker     BreakerConfig  `yaml:"breaker"`
	Retry       RetryConfig    `yaml:"retry"`
	// RedirectHosts are other hosts the upstream may redirect to (a CDN).
	RedirectHosts []string `yaml:"redirect_hosts"`
	// Auth is how modgate authenticates to the upstream.
	Auth *AuthConfig `yaml:"auth"`
}

// AuthConfig is one upstream's credentials: exactly one key. Secrets are
// read from files or a command, never written in the config.
type AuthConfig struct {
	Basic *BasicAuthConfig `yaml:"basic"`
	// BearerFile holds a token sent as "Authorization: Bearer TOKEN".
	BearerFile string `yaml:"bearer_file"`
	// Netrc reads $NETRC or ~/.netrc as the go command does.
	Netrc bool `yaml:"netrc"`
	// Command is a GOAUTH-style command (go help goauth).
	Command string `yaml:"command"`
	// CommandTimeout bounds each run of Command; default 30s.
	CommandTimeout time.Duration `yaml:"command_timeout"`
}

// BasicAuthConfig is HTTP basic authentication with a password file.
type BasicAuthConfig struct {
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
}

// BreakerConfig is one upstream's circuit breaker; zero keys take defaults.
type BreakerConfig struct {
	ConsecutiveFailures uint32        `yaml:"consecutive_failures"`
	FailureRatio        float64       `yaml:"failure_ratio"`
	MinRequests         uint32        `yaml:"min_requests"`
	Window              time.Duration `yaml:"window"`
	OpenFor             time.Duration `yaml:"open_for"`
	HalfOpenProbes      uint32        `yaml:"half_open_probes"`
	Disabled            bool          `yaml:"disabled"`
}

// RetryConfig is one upstream's retry policy; zero keys take defaults.
type RetryConfig struct {
	Attempts    int           `yaml:"attempts"`
	Base        time.Duration `yaml:"base"`
	Cap         time.Duration `yaml:"cap"`
	BudgetRatio float64       `yaml:"budget_ratio"`
}

// TimeoutsConfig bounds each phase of an upstream request.
type TimeoutsConfig struct {
	Dial   time.Duration `yaml:"dial"`
	TLS    time.Duration `yaml:"tls"`
	Header time.Duration `yaml:"header"`
	Idle   time.Duration `yaml:"idle"`
}

// SumDBConfig names the checksum database served under /sumdb/, and the
// key that artifacts are verified with.
type SumDBConfig struct {
	Name string `yaml:"name"` // "off" serves none; may have a path: sum.example.test/sumdb
	URL  string `yaml:"url"`  // where it answers directly; default https://<name>
	// Key is the database's verifier key, GOSUMDB's "name+hash+key";
	// default: GOSUMDB's, or the go command's own for the database it
	// knows. Without one nothing is verified.
	Key string `yaml:"key"`
}

// parseGOSUMDB splits GOSUMDB's "name", "name+key" or "name+key url" into
// the database's name, verifier key ("name+key", or "") and URL.
func parseGOSUMDB(v string) (name, key, url string) {
	fields := strings.Fields(v)
	if len(fields) == 0 {
		return "", "", ""
	}
	name, _, hasKey := strings.Cut(fields[0], "+")
	if hasKey {
		key = fields[0]
	}
	if len(fields) > 1 {
		url = fields[1]
	}
	return name, key, url
}

// LogConfig sets up logging.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // auto (text on a terminal, JSON otherwise), text, json
	// Requests writes one access log line per request at info level.
	Requests bool `yaml:"requests"`
}

func defaultConfig() Config {
	return Config{
		Listen: "127.0.0.1:7070",
		Admin:  "127.0.0.1:7071",
		Log:    LogConfig{Level: "info", Format: "auto", Requests: true},
		Telemetry: TelemetryConfig{
			MaxTracesPerSecond: telemetry.DefaultMaxTracesPerSecond,
		},
	}
}

// origins remembers where each key's value came from ("modgate.yaml:7",
// "MODGATE_LISTEN", "--listen"), so that a bad value is reported where the
// user can fix it.
type origins map[string]string

// of returns where key, or the nearest key above it, was set.
func (o origins) of(key string) string {
	for k := key; k != ""; {
		if at, ok := o[k]; ok {
			return at
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return "default"
}

// configError is a problem with one key, said where it was set.
type configError struct {
	at, key, msg string
}

func (e *configError) Error() string {
	// A value quoted in msg may be a URL with credentials (an upstream,
	// GOPROXY): they never reach a terminal or a log.
	return upstream.RedactText(fmt.Sprintf("%s: %s: %s", e.at, e.key, e.msg))
}

// parseFile decodes a config file over cfg. Unknown keys and values of the
// wrong type are errors that name the key and its line.
func parseFile(name string, data []byte, cfg *Config, o origins) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return syntaxError(name, data, err)
	}
	lines := map[int]string{}
	indexKeys(&doc, "", lines, name, o)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(cfg)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// A value's own check (a size) says "line N: ..."; name its key.
		return yamlError(name, strings.TrimPrefix(err.Error(), "yaml: "), lines)
	}
	var errs []error
	for _, msg := range te.Errors {
		if m := typeErrorRE.FindStringSubmatch(msg); m != nil && m[3] == "[]cli.UpstreamConfig" {
			// upstreams: "https://a.example.test,direct": GOPROXY syntax,
			// as --upstream and MODGATE_UPSTREAM take it.
			if v := topScalar(&doc, "upstreams"); v != nil {
				if err := cfg.set("upstreams", v.Value, fmt.Sprintf("%s:%d", name, v.Line), o); err != nil {
					errs = append(errs, err)
				}
				continue
			}
		}
		errs = append(errs, yamlError(name, msg, lines))
	}
	return errors.Join(errs...)
}

// topScalar returns the value of a top-level key when it is a scalar.
func topScalar(doc *yaml.Node, key string) *yaml.Node {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	m := doc.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i+1].Kind == yaml.ScalarNode {
			return m.Content[i+1]
		}
	}
	return nil
}

// syntaxError names the line where a document stops being YAML. yaml's
// own line is where the enclosing block or flow started (its "context"),
// often lines above the mistake; the first prefix of the document that
// fails the same way ends at the mistake.
func syntaxError(file string, data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		return fmt.Errorf("%s: %s", file, msg)
	}
	what := m[2]
	lines := strings.SplitAfter(string(data), "\n")
	for n := 1; n <= len(lines); n++ {
		var node yaml.Node
		perr := yaml.Unmarshal([]byte(strings.Join(lines[:n], "")), &node)
		if perr == nil {
			continue
		}
		if pm := lineRE.FindStringSubmatch(strings.TrimPrefix(perr.Error(), "yaml: ")); pm != nil && pm[2] == what {
			return fmt.Errorf("%s:%d: %s: %q", file, n, what, strings.TrimRight(lines[n-1], "\r\n"))
		}
	}
	return fmt.Errorf("%s:%s: %s", file, m[1], what)
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type`)
	typeErrorRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!\\w+(?: `(.*)`)? into (.*)$")
	lineRE         = regexp.MustCompile(`^line (\d+): (.*)$`)
)

// yamlError rewrites one of yaml's messages to name the file, line and key.
func yamlError(file, msg string, lines map[int]string) error {
	if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &configError{at: fmt.Sprintf("%s:%d", file, n), key: lines[n], msg: "unknown key " + strconv.Quote(m[2])}
	}
	if m := typeErrorRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		want := map[string]string{
			"time.Duration": "a duration like 10s",
			"bool":          "true or false",
			"string":        "a string",
			"int":           "a number",
			"uint32":        "a whole number",
			"float64":       "a number",
		}[m[3]]
		switch {
		case want != "":
		case m[3] == "[]cli.UpstreamConfig":
			want = `a list of upstreams ("- url: https://..." lines) or a GOPROXY-style string`
		case strings.HasPrefix(m[3], "[]"):
			want = "a list ([a, b] or \"- \" lines)"
		case strings.HasPrefix(m[3], "map["), strings.HasPrefix(m[3], "cli."), strings.HasPrefix(m[3], "*cli."):
			want = "a section of key: value lines"
		default:
			want = "a " + m[3]
		}
		if m[2] == "" {
			return &configError{at: fmt.Sprintf("%s:%d", file, n), key: lines[n], msg: "want " + want}
		}
		return &configError{at: fmt.Sprintf("%s:%d", file, n), key: lines[n], msg: fmt.Sprintf("invalid value %q, want %s", m[2], want)}
	}
	if m := lineRE.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &configError{at: fmt.Sprintf("%s:%d", file, n), key: lines[n], msg: m[2]}
	}
	return fmt.Errorf("%s: %s", file, msg)
}

// indexKeys records, for every key of the document, its dotted name by line
// (for yaml's errors) and its line by name (for validation errors).
func indexKeys(n *yaml.Node, prefix string, lines map[int]string, file string, o origins) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			indexKeys(c, prefix, lines, file, o)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := k.Value
			if prefix != "" {
				key = prefix + "." + k.Value
			}
			lines[k.Line] = key
			if _, seen := lines[v.Line]; !seen {
				lines[v.Line] = key
			}
			o[key] = fmt.Sprintf("%s:%d", file, k.Line)
			indexKeys(v, key, lines, file, o)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			key := fmt.Sprintf("%s[%d]", prefix, i+1) // 1-based, as policy errors and line numbers are
			if _, seen := lines[c.Line]; !seen {
				lines[c.Line] = key
			}
			o[key] = fmt.Sprintf("%s:%d", file, c.Line)
			indexKeys(c, key, lines, file, o)
		}
	}
}

// envKeys are the MODGATE_* variables, by the key they set.
var envKeys = []struct{ env, key string }{
	{"MODGATE_LISTEN", "listen"},
	{"MODGATE_ADMIN", "admin"},
	{"MODGATE_ADMIN_HOSTS", "admin_hosts"},
	{"MODGATE_PPROF", "pprof"},
	{"MODGATE_OFFLINE", "offline"},
	{"MODGATE_UPSTREAM", "upstreams"},
	{"MODGATE_SUMDB", "sumdb.name"},
	{"MODGATE_SUMDB_KEY", "sumdb.key"},
	{"MODGATE_RESOLVE", "resolve"},
	{"MODGATE_TLS_CA_FILE", "tls_ca_file"},
	{"MODGATE_LOG_LEVEL", "log.level"},
	{"MODGATE_LOG_FORMAT", "log.format"},
	{"MODGATE_LOG_REQUESTS", "log.requests"},
	{"MODGATE_POLICY", "policy_file"},
	{"MODGATE_AUDIT_LOG", "audit_log"},
	{"MODGATE_CA_DIR", "forward.ca_dir"},
	{"MODGATE_MITM_HOSTS", "forward.mitm_hosts"},
	{"MODGATE_ALLOW_HOSTS", "forward.allow_hosts"},
	{"MODGATE_CACHE_DIR", "cache.dir"},
	{"MODGATE_CACHE_SHARED", "cache.shared"},
	{"MODGATE_CACHE_SHARED_PRIVATE", "cache.shared_private"},
	{"MODGATE_FLEET_REDIS", "fleet.redis"},
	{"MODGATE_FLEET_SECRET_FILE", "fleet.secret_file"},
	{"MODGATE_FLEET_PASSWORD_FILE", "fleet.password_file"},
	{"MODGATE_MAX_TRACES_PER_SECOND", "telemetry.max_traces_per_second"},
}

// set applies one value given as a string (from the environment or a
// flag) to the key it names.
func (c *Config) set(key, value, at string, o origins) error {
	o[key] = at
	switch key {
	case "listen":
		c.Listen = value
	case "admin":
		c.Admin = value
	case "admin_hosts":
		c.AdminHosts = splitList(value)
	case "pprof":
		on, err := strconv.ParseBool(value)
		if err != nil {
			return &configError{at: at, key: key, msg: fmt.Sprintf("%q: want true or false", value)}
		}
		c.PProf = on
	case "offline":
		on, err := strconv.ParseBool(value)
		if err != nil {
			return &configError{at: at, key: key, msg: fmt.Sprintf("%q: want true or false", value)}
		}
		c.Offline = on
	case "upstreams":
		list, err := upstream.ParseList(value)
		if err != nil {
			return &configError{at: at, key: key, msg: err.Error()}
		}
		c.Upstreams = upstreamsFromList(list)
		for k := range o {
			if strings.HasPrefix(k, "upstreams[") {
				delete(o, k)
			}
		}
	case "sumdb.name":
		// A name, or a whole GOSUMDB value (name+key [url]).
		var key string
		c.SumDB.Name, key, c.SumDB.URL = parseGOSUMDB(value)
		if c.SumDB.URL != "" {
			o["sumdb.url"] = at
		}
		if key != "" {
			c.SumDB.Key = key
			o["sumdb.key"] = at
		}
	case "sumdb.key":
		c.SumDB.Key = value
	case "resolve":
		c.Resolve = map[string]string{}
		for _, r := range strings.FieldsFunc(value, func(r rune) bool { return r == ',' || r == ' ' }) {
			if err := c.addResolve(r); err != nil {
				return &configError{at: at, key: key, msg: err.Error()}
			}
		}
	case "tls_ca_file":
		c.TLSCAFile = value
	case "log.level":
		c.Log.Level = value
	case "log.format":
		c.Log.Format = value
	case "log.requests":
		on, err := strconv.ParseBool(value)
		if err != nil {
			return &configError{at: at, key: key, msg: fmt.Sprintf("%q: want true or false", value)}
		}
		c.Log.Requests = on
	case "policy_file":
		c.PolicyFile = value
	case "audit_log":
		c.AuditLog = value
	case "forward.ca_dir":
		c.Forward.CADir = value
	case "forward.mitm_hosts":
		c.Forward.MITMHosts = splitList(value)
	case "forward.allow_hosts":
		c.Forward.AllowHosts = splitList(value)
	case "cache.dir":
		c.Cache.Dir = value
	case "cache.shared":
		c.Cache.Shared = value
	case "cache.shared_private":
		c.Cache.SharedPrivate = value
	case "fleet.redis":
		c.Fleet.Redis = value
	case "fleet.secret_file":
		c.Fleet.SecretFile = value
	case "fleet.password_file":
		c.Fleet.PasswordFile = value
	case "telemetry.max_traces_per_second":
		n, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return &configError{at: at, key: key, msg: fmt.Sprintf("invalid value %q, want a number", value)}
		}
		c.Telemetry.MaxTracesPerSecond = n
	default:
		return fmt.Errorf("%s: unknown key %q", at, key)
	}
	return nil
}

// splitList splits a comma or space separated list.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

func (c *Config) addResolve(r string) error {
	from, to, ok := strings.Cut(r, "=")
	if !ok {
		return fmt.Errorf("%q: want host:port=addr:port", r)
	}
	if c.Resolve == nil {
		c.Resolve = map[string]string{}
	}
	c.Resolve[from] = to
	return nil
}

// upstreamsFromList turns GOPROXY syntax into config entries.
func upstreamsFromList(list []upstream.Config) []UpstreamConfig {
	out := make([]UpstreamConfig, len(list))
	for i, u := range list {
		out[i] = UpstreamConfig{URL: u.URL, Fallthrough: u.Fallthrough.String()}
	}
	return out
}

// badValue records that key's value is wrong, with a message that says why.
type badValue = func(key, format string, args ...any)

// validate checks every value and builds the data plane's config. It opens
// nothing: the shared stores are opened by openStores once the config is
// valid.
func (c *Config) validate(o origins) (sidecar.Config, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &configError{at: o.of(key), key: key, msg: fmt.Sprintf(format, args...)})
	}
	c.checkListeners(bad)
	out := sidecar.Config{Listen: c.Listen, Admin: c.Admin, AdminHosts: c.AdminHosts, PProf: c.PProf, Offline: c.Offline, Resolve: c.Resolve, LogRequests: c.Log.Requests}
	out.Upstreams = c.upstreamConfigs(bad)
	out.SumDB, out.SumDBKey, out.SumDBURL = c.SumDB.check(bad)
	c.checkResolve(bad)
	if c.TLSCAFile != "" {
		pool, err := loadCAs(c.TLSCAFile)
		if err != nil {
			bad("tls_ca_file", "%v", err)
		}
		out.RootCAs = pool
		c.rootCAs = pool
	}
	out.Forward = c.Forward.validate(bad)
	c.ListenerSecurity.validate(bad, &out)
	c.checkClientLimits(bad)
	out.ClientHeader, out.ClientIdle = c.ClientTimeouts.Header, c.ClientTimeouts.Idle
	out.MaxConnections, out.MaxConnectionsPerClient = c.MaxConnections, c.MaxConnectionsPerClient
	out.Cache = c.cacheConfig(bad)
	c.validateFleet(bad)
	if c.Fleet.Wait < 0 {
		bad("fleet.wait", "must not be negative")
	}
	out.Fleet.Wait = c.Fleet.Wait
	c.checkLogAndTelemetry(bad)
	return out, errors.Join(errs...)
}

// checkListeners checks the module and admin listeners' addresses and the
// admin port's host names.
func (c *Config) checkListeners(bad badValue) {
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	} else if err := checkPort(port); err != nil {
		bad("listen", "%q: %v", c.Listen, err)
	}
	if c.Admin != "" {
		if _, port, err := net.SplitHostPort(c.Admin); err != nil {
			bad("admin", "%q is not host:port (leave empty for no admin listener)", c.Admin)
		} else if err := checkPort(port); err != nil {
			bad("admin", "%q: %v", c.Admin, err)
		}
	}
	for i, h := range c.AdminHosts {
		if _, err := path.Match(h, ""); err != nil || h == "" || strings.ContainsAny(h, "/: ") {
			bad(fmt.Sprintf("admin_hosts[%d]", i+1), "%q is not a host pattern (a name like modgate.corp.example.test or *.svc.example.test)", h)
		}
	}
}

// upstreamConfigs checks the upstreams section and builds the chain's
// entries, in order.
func (c *Config) upstreamConfigs(bad badValue) []upstream.Config {
	if len(c.Upstreams) == 0 {
		bad("upstreams", "no upstream: give --upstream, MODGATE_UPSTREAM or upstreams in the config")
	}
	var out []upstream.Config
	names := map[string]bool{}
	for i, u := range c.Upstreams {
		key := fmt.Sprintf("upstreams[%d]", i+1)
		out = append(out, c.upstreamConfig(key, u, bad))
		if u.Name != "" {
			if names[u.Name] {
				bad(key+".name", "%q names two upstreams", u.Name)
			}
			names[u.Name] = true
		}
	}
	return out
}

// upstreamConfig checks one entry of upstreams (key names it) and builds
// its upstream.Config.
func (c *Config) upstreamConfig(key string, u UpstreamConfig, bad badValue) upstream.Config {
	b, r := u.Breaker, u.Retry
	uc := upstream.Config{
		Name: u.Name, URL: u.URL, Private: u.Private, RedirectHosts: u.RedirectHosts,
		Timeouts: upstream.Timeouts{Dial: u.Timeouts.Dial, TLS: u.Timeouts.TLS, Header: u.Timeouts.Header, Idle: u.Timeouts.Idle},
		Breaker: upstream.BreakerSettings{
			ConsecutiveFailures: b.ConsecutiveFailures, FailureRatio: b.FailureRatio, MinRequests: b.MinRequests,
			Window: b.Window, OpenFor: b.OpenFor, HalfOpenProbes: b.HalfOpenProbes, Disabled: b.Disabled,
		},
		Retry: upstream.RetrySettings{Attempts: r.Attempts, Base: r.Base, Cap: r.Cap, BudgetRatio: r.BudgetRatio},
	}
	if b.FailureRatio < 0 || b.FailureRatio > 1 {
		bad(key+".breaker.failure_ratio", "%v: want a share between 0 and 1", b.FailureRatio)
	}
	if r.BudgetRatio < 0 || r.BudgetRatio > 1 {
		bad(key+".retry.budget_ratio", "%v: want a share between 0 and 1", r.BudgetRatio)
	}
	if r.Attempts < 0 || r.Attempts > 10 {
		bad(key+".retry.attempts", "%d: want 1 to 10 (1: no retry)", r.Attempts)
	}
	if r.Base > 0 && r.Cap > 0 && r.Base > r.Cap {
		bad(key+".retry.base", "%s is more than the cap %s", r.Base, r.Cap)
	}
	for j, h := range u.RedirectHosts {
		if _, err := path.Match(h, ""); err != nil || h == "" {
			bad(fmt.Sprintf("%s.redirect_hosts[%d]", key, j+1), "%q is not a host pattern", h)
		}
	}
	if u.Auth != nil {
		uc.Auth = c.upstreamAuth(key+".auth", u.URL, *u.Auth, bad)
	}
	switch u.Fallthrough {
	case "", "notfound":
	case "error":
		uc.Fallthrough = upstream.OnError
	default:
		bad(key+".fallthrough", "%q: want notfound (GOPROXY \",\") or error (GOPROXY \"|\")", u.Fallthrough)
	}
	if err := checkUpstreamURL(u.URL); err != nil {
		bad(key+".url", "%v", err)
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{"timeouts.dial", u.Timeouts.Dial}, {"timeouts.tls", u.Timeouts.TLS}, {"timeouts.header", u.Timeouts.Header}, {"timeouts.idle", u.Timeouts.Idle},
		{"breaker.window", b.Window}, {"breaker.open_for", b.OpenFor}, {"retry.base", r.Base}, {"retry.cap", r.Cap},
	} {
		if t.d < 0 {
			bad(key+"."+t.name, "must not be negative")
		}
	}
	return uc
}

// check checks the sumdb section and returns the database's name, key and
// URL for the data plane (all empty for none, or for off).
func (s SumDBConfig) check(bad badValue) (name, key, rawURL string) {
	if s.Name == "" || s.Name == "off" {
		return "", "", ""
	}
	name = s.Name
	host, path, _ := strings.Cut(name, "/")
	if host == "" || strings.ContainsAny(name, ":+ ") || strings.ToLower(name) != name || strings.Contains("/"+path+"/", "/../") || strings.Contains(path, "//") {
		bad("sumdb.name", "%q: want the database's name: a host name, optionally with a path (sum.example.test, sum.example.test/sumdb)", name)
	}
	if k := s.Key; k != "" {
		if v, err := note.NewVerifier(k); err != nil {
			bad("sumdb.key", "%q: want the database's verifier key, name+hash+key as GOSUMDB gives it: %v", k, err)
		} else if v.Name() != name {
			bad("sumdb.key", "the key is for %s, not for %s", v.Name(), name)
		}
	}
	if u := s.URL; u != "" {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" || pu.RawQuery != "" {
			bad("sumdb.url", "%q: want https://host[/path], where the database answers", u)
		}
	}
	return name, s.Key, s.URL
}

// checkResolve checks that resolve maps host:port to addr:port.
func (c *Config) checkResolve(bad badValue) {
	for from, to := range c.Resolve {
		if _, port, err := net.SplitHostPort(from); err != nil {
			bad("resolve", "%q: want host:port", from)
		} else if err := checkPort(port); err != nil {
			bad("resolve", "%q: %v", from, err)
		}
		if _, port, err := net.SplitHostPort(to); err != nil {
			bad("resolve", "%q (for %s): want addr:port", to, from)
		} else if err := checkPort(port); err != nil {
			bad("resolve", "%q (for %s): %v", to, from, err)
		}
	}
}

// checkClientLimits checks the bounds on the module listener's clients.
func (c *Config) checkClientLimits(bad badValue) {
	if c.MaxConnections < 0 {
		bad("max_connections", "must not be negative (0: the default, %d)", sidecar.DefaultMaxConnections)
	}
	if c.MaxConnectionsPerClient < 0 {
		bad("max_connections_per_client", "must not be negative (0: the default, %d)", sidecar.DefaultMaxConnectionsPerClient)
	}
	if c.ClientTimeouts.Header < 0 {
		bad("client_timeouts.header", "must not be negative")
	}
	if c.ClientTimeouts.Idle < 0 {
		bad("client_timeouts.idle", "must not be negative")
	}
}

// cacheConfig checks the cache section and builds the data plane's cache
// config, without its shared stores (openStores opens them). A per-user
// default folder that cannot be written turns the cache off, with a note.
func (c *Config) cacheConfig(bad badValue) sidecar.CacheConfig {
	if c.Cache.Dir != "" {
		if err := checkWritableDir(c.Cache.Dir); err != nil {
			if c.defaultCacheDir {
				c.notes = append(c.notes, loadNote{warn: true, msg: fmt.Sprintf("no cache: the per-user cache folder %s cannot be used (%v); set cache.dir (--cache-dir) to a writable folder, or to \"\" for none", c.Cache.Dir, err)})
				c.Cache.Dir = ""
			} else {
				bad("cache.dir", "%v: want a folder modgate can write (or \"\" for no cache)", err)
			}
		}
	}
	if c.Cache.PrivateDir != "" {
		if err := checkWritableDir(c.Cache.PrivateDir); err != nil {
			bad("cache.private_dir", "%v: want a folder modgate can write", err)
		}
	}
	if c.Offline && c.Cache.Dir == "" {
		bad("offline", "offline serves only from the cache: set cache.dir (--cache-dir) too")
	}
	if c.Cache.ListTTL < 0 || c.Cache.StaleIfError < 0 {
		bad("cache", "list_ttl and stale_if_error must not be negative")
	}
	if c.Cache.PrivateDir != "" && c.Cache.PrivateDir == c.Cache.Dir {
		bad("cache.private_dir", "must not be the shared cache directory: a shared cache would hold private modules")
	}
	public, private := c.sharedStores()
	for _, s := range []sharedStore{public, private} {
		if s.url != "" && s.local == "" {
			bad(s.key, "needs %s: artifacts from the shared store are copied through the local cache", s.localKey)
		}
	}
	if c.Cache.Shared != "" && c.Cache.Shared == c.Cache.SharedPrivate {
		bad("cache.shared_private", "must not be the store of public modules (cache.shared): private modules only go to a store of their own")
	}
	if c.Cache.SharedTimeout < 0 {
		bad("cache.shared_timeout", "must not be negative")
	}
	return sidecar.CacheConfig{
		Dir: c.Cache.Dir, MaxBytes: int64(c.Cache.MaxBytes), ListTTL: c.Cache.ListTTL,
		StaleIfError: c.Cache.StaleIfError, PrivateDir: c.Cache.PrivateDir,
	}
}

// checkLogAndTelemetry checks the log and telemetry sections.
func (c *Config) checkLogAndTelemetry(bad badValue) {
	if r := c.Telemetry.MaxTracesPerSecond; r < 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		bad("telemetry.max_traces_per_second", "%v: want a number of traces a second, 0 or more", r)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if !slices.Contains([]string{"auto", "text", "json"}, c.Log.Format) {
		bad("log.format", "%q: want auto, text or json", c.Log.Format)
	}
}

// checkWritableDir says why dir cannot hold a cache: not a folder, or
// neither it nor the nearest folder above it that exists takes a new file.
// It creates nothing that stays.
func checkWritableDir(dir string) error {
	d := dir
	for {
		st, err := os.Stat(d)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s is not a folder", d)
			}
			break
		}
		parent := filepath.Dir(d)
		if parent == d {
			return err
		}
		d = parent
	}
	f, err := os.CreateTemp(d, ".modgate-write-check-*")
	if err != nil {
		if d != dir {
			return fmt.Errorf("cannot create %s: %w", dir, err)
		}
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// sharedStore is one of the cache's shared stores: its key, its URL and
// the local cache folder that artifacts from it are copied through.
type sharedStore struct {
	key, url        string
	localKey, local string
	private         bool
}

// sharedStores are the cache's two shared stores.
func (c *Config) sharedStores() (public, private sharedStore) {
	return sharedStore{key: "cache.shared", url: c.Cache.Shared, localKey: "cache.dir", local: c.Cache.Dir},
		sharedStore{key: "cache.shared_private", url: c.Cache.SharedPrivate, localKey: "cache.private_dir", local: c.Cache.PrivateDir, private: true}
}

// openStores opens the shared stores that the validated config names into
// sc. It does not reach them: a store that is down is skipped at run time,
// never fatal.
func (c *Config) openStores(o origins, sc *sidecar.Config) error {
	var errs []error
	open := func(s sharedStore) *store.Store {
		if s.url == "" {
			return nil
		}
		st, err := store.Open(context.Background(), s.url, store.Options{Timeout: c.Cache.SharedTimeout, Private: s.private})
		if err != nil {
			errs = append(errs, &configError{at: o.of(s.key), key: s.key, msg: err.Error()})
			return nil
		}
		return st
	}
	public, private := c.sharedStores()
	sc.Cache.Shared, sc.Cache.SharedPrivate = open(public), open(private)
	return errors.Join(errs...)
}

// upstreamAuth checks one upstream's auth section: exactly one way, its
// files there (and the netrc file's entry for the upstream's host), its
// command found.
func (c *Config) upstreamAuth(key, rawURL string, a AuthConfig, bad badValue) upstream.Auth {
	var set []string
	var out upstream.Auth
	if a.Basic != nil {
		set = append(set, "basic")
		out.Username, out.PasswordFile = a.Basic.Username, a.Basic.PasswordFile
		if a.Basic.Username == "" {
			bad(key+".basic.username", "missing: basic needs a username and a password_file")
		}
		if a.Basic.PasswordFile == "" {
			bad(key+".basic.password_file", "missing: basic needs a username and a password_file (the password is never written in the config)")
		}
	}
	if a.BearerFile != "" {
		set = append(set, "bearer_file")
		out.BearerFile = a.BearerFile
	}
	if a.Netrc {
		set = append(set, "netrc")
		out.Netrc = c.netrc
		if c.netrc == "" {
			bad(key+".netrc", "no netrc file: set NETRC or HOME")
		}
	}
	if a.Command != "" {
		set = append(set, "command")
		out.Command = a.Command
	}
	if a.CommandTimeout < 0 {
		bad(key+".command_timeout", "must not be negative")
	}
	out.CommandTimeout = a.CommandTimeout
	switch {
	case len(set) == 0:
		bad(key, "give one of basic, bearer_file, netrc or command")
		return upstream.Auth{}
	case len(set) > 1:
		bad(key, "%s: give only one", strings.Join(set, " and "))
		return upstream.Auth{}
	}
	if a.Basic != nil && (a.Basic.Username == "" || a.Basic.PasswordFile == "") {
		return out
	}
	if rawURL == "" || checkUpstreamURL(rawURL) != nil {
		return out // the URL's own error says enough
	}
	if err := out.Check(rawURL); err != nil {
		k := key + "." + set[0]
		if set[0] == "basic" {
			k += ".password_file"
		}
		bad(k, "%v", err)
	}
	return out
}

// checkUpstreamURL says what is wrong with an upstream URL, its
// credentials hidden.
func checkUpstreamURL(rawURL string) error {
	switch rawURL {
	case "":
		return errors.New("missing (want an http, https or file URL, or direct or off)")
	case "direct", "off":
		return nil
	}
	raw := upstream.RedactURL(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse's error repeats the URL, credentials and all.
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%q: %v", raw, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" || u.Hostname() == "" {
			return fmt.Errorf("%q has no host", raw)
		}
		if p := u.Port(); p != "" {
			if err := checkPort(p); err != nil {
				return fmt.Errorf("%q: %v", raw, err)
			}
		}
	case "file":
		if st, err := os.Stat(u.Path); err != nil || !st.IsDir() {
			return fmt.Errorf("%q: %s is not a directory", raw, u.Path)
		}
	default:
		return fmt.Errorf("%q: want an http, https or file URL, or direct or off", raw)
	}
	return nil
}

// checkPort refuses a port that is not a number from 1 to 65535.
func checkPort(port string) error {
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a port: want 1 to 65535", port)
	}
	return nil
}

// loadCAs returns the system roots plus the certificates in file.
func loadCAs(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// validate checks forward mode's section and loads what it names: the CA
// (only when there are hosts to intercept) and the users file.
func (f ForwardConfig) validate(bad badValue) sidecar.ForwardConfig {
	out := sidecar.ForwardConfig{
		ConnectPorts: f.ConnectPorts, AllowHosts: f.AllowHosts, MITMHosts: f.MITMHosts,
		PrivateHosts: f.PrivateHosts, TunnelIdle: f.TunnelIdle, MaxTunnels: f.MaxTunnels,
	}
	for i, p := range f.ConnectPorts {
		if p < 1 || p > 65535 {
			bad(fmt.Sprintf("forward.connect_ports[%d]", i+1), "%d is not a port", p)
		}
	}
	for key, list := range map[string][]string{"forward.allow_hosts": f.AllowHosts, "forward.mitm_hosts": f.MITMHosts, "forward.private_hosts": f.PrivateHosts} {
		for i, h := range list {
			if _, err := path.Match(h, ""); err != nil || h == "" || strings.ContainsAny(h, "/: ") {
				bad(fmt.Sprintf("%s[%d]", key, i+1), "%q is not a host pattern (a name like proxy.example.test or *.example.test)", h)
			}
		}
	}
	if f.MaxTunnels < 0 {
		bad("forward.max_tunnels", "must not be negative")
	}
	if f.TunnelIdle < 0 {
		bad("forward.tunnel_idle", "must not be negative")
	}
	if len(f.MITMHosts) > 0 {
		ca, err := mitm.Load(caDir(f.CADir))
		if err != nil {
			bad("forward.ca_dir", "%v", err)
		}
		out.CA = ca
	}
	if f.AuthFile != "" {
		users, err := readUsers(f.AuthFile)
		if err != nil {
			bad("forward.auth_file", "%v", err)
		}
		out.Users = users
	}
	return out
}

// caDir is where the CA lives: the configured folder, or modgate's folder
// in the user's configuration directory.
func caDir(dir string) string {
	if dir != "" {
		if rest, ok := strings.CutPrefix(dir, "~/"); ok {
			if home, err := os.UserHomeDir(); err == nil {
				return filepath.Join(home, rest)
			}
		}
		return dir
	}
	if conf, err := os.UserConfigDir(); err == nil {
		return filepath.Join(conf, "modgate", "ca")
	}
	return "modgate-ca"
}

// readUsers reads a file of "user:password" lines (# starts a comment).
func readUsers(file string) (map[string]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		if !ok || user == "" || pass == "" {
			return nil, fmt.Errorf("%s:%d: want user:password", file, i+1)
		}
		users[user] = pass
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s names no user", file)
	}
	return users, nil
}

// validateFleet reads the fleet's secret and Redis password files and
// checks the Redis URL; the fleet itself is opened by run (with its
// logger), and by doctor to probe it.
func (c *Config) validateFleet(bad badValue) {
	if c.Fleet.PasswordFile != "" {
		pw, err := os.ReadFile(c.Fleet.PasswordFile)
		switch {
		case err != nil:
			bad("fleet.password_file", "%v", err)
		case len(bytes.TrimSpace(pw)) == 0:
			bad("fleet.password_file", "%s is empty", c.Fleet.PasswordFile)
		}
		c.fleetPassword = string(bytes.TrimSpace(pw))
	}
	if c.Fleet.Redis == "" {
		return
	}
	if c.Fleet.SecretFile == "" {
		bad("fleet.secret_file", "missing: fleet.redis needs the fleet's shared secret, the same file on every replica (e.g. openssl rand -hex 32 > fleet.secret), so that breaker news and leases in Redis are signed")
	} else if secret, err := os.ReadFile(c.Fleet.SecretFile); err != nil {
		bad("fleet.secret_file", "%v", err)
	} else if c.fleetSecret = bytes.TrimSpace(secret); len(c.fleetSecret) < fleet.MinSecret {
		bad("fleet.secret_file", "%s holds %d bytes; want at least %d (e.g. openssl rand -hex 32)", c.Fleet.SecretFile, len(c.fleetSecret), fleet.MinSecret)
	}
	// The URL is checked whatever the secret's problems.
	if err := fleet.CheckURL(c.Fleet.Redis); err != nil {
		bad("fleet.redis", "%v", strings.TrimPrefix(err.Error(), "fleet: "))
	}
}

// openFleet opens the fleet that the validated config describes.
func (c *Config) openFleet(log *slog.Logger) (*fleet.Fleet, error) {
	return fleet.Open(fleet.Config{URL: c.Fleet.Redis, Password: c.fleetPassword, Secret: c.fleetSecret, RootCAs: c.rootCAs, Logger: log})
}
