package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/wire"
)

// runFlags are the flags of `modgate run`. Each sets the config key named
// in flagKeys.
type runFlags struct {
	config  string
	values  map[string]*string // by config key
	resolve []string
	mitm    []string
	pprof   bool
	offline bool
}

var flagKeys = []struct{ flag, key, usage string }{
	{"listen", "listen", "module listener address, the GOPROXY and HTTPS_PROXY (default 127.0.0.1:7070)"},
	{"admin", "admin", `admin listener address: status page, /metrics, /healthz (default 127.0.0.1:7071; "" for none)`},
	{"admin-hosts", "admin_hosts", "Host names the admin listener answers besides IP addresses and localhost (comma separated patterns)"},
	{"upstream", "upstreams", `upstream chain in GOPROXY syntax, e.g. "https://a.example.test,https://b.example.test|direct" (default: go env GOPROXY)`},
	{"sumdb", "sumdb.name", "checksum database name, a GOSUMDB value (name+key [url]), or off (default: go env GOSUMDB)"},
	{"tls-ca-file", "tls_ca_file", "extra root CAs (PEM) for upstreams"},
	{"log-level", "log.level", "debug, info, warn or error (default info)"},
	{"log-format", "log.format", "auto (text on a terminal, JSON otherwise), text or json (default auto)"},
	{"policy", "policy_file", "policy file (reloaded when it changes and on SIGHUP)"},
	{"audit-log", "audit_log", "audit log: a file (rotated by size), - for standard output, empty for none"},
	{"cache-dir", "cache.dir", `artifact cache folder (default: modgate in the user's cache folder; "" for no cache)`},
	{"fleet-redis", "fleet.redis", "the fleet's Redis (redis://host:6379/0): one upstream fetch per artifact across replicas, and breaker news"},
	{"cache-shared", "cache.shared", "shared store of a fleet's artifacts, a gocloud.dev/blob URL (s3://bucket?endpoint=...&region=..., gs://, azblob://, file://)"},
	{"ca-dir", "forward.ca_dir", "folder of the CA that modgate ca init made (default: modgate/ca in the user's config folder)"},
	{"max-traces-per-second", "telemetry.max_traces_per_second", "new traces the default sampler records a second, when OTEL_TRACES_SAMPLER is unset (default 100)"},
}

// register adds run's flags to fs: all of them, or only the ones named
// (besides --config), for a command that reads just those settings.
func (f *runFlags) register(fs *flag.FlagSet, only ...string) {
	want := func(name string) bool { return len(only) == 0 || slices.Contains(only, name) }
	fs.StringVar(&f.config, "config", "", "YAML config file (env MODGATE_CONFIG)")
	f.values = map[string]*string{}
	for _, k := range flagKeys {
		if want(k.flag) {
			f.values[k.key] = fs.String(k.flag, "", k.usage)
		}
	}
	if want("pprof") {
		fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on the admin listener")
	}
	if want("offline") {
		fs.BoolVar(&f.offline, "offline", false, "serve only from the cache; everything else is 404 (air-gapped builds)")
	}
	if want("resolve") {
		fs.Func("resolve", "host:port=addr:port: dial addr:port instead of host:port (repeatable)", func(s string) error {
			f.resolve = append(f.resolve, s)
			return nil
		})
	}
	if want("mitm-host") {
		fs.Func("mitm-host", "intercept CONNECTs to this host with modgate's CA (repeatable)", func(s string) error {
			f.mitm = append(f.mitm, s)
			return nil
		})
	}
}

// loader gathers what loading the config reads from outside, so that tests
// can give it their own.
type loader struct {
	getenv func(string) string
	goenv  func(ctx context.Context, names ...string) ([]string, error)
	// goDefault returns the go command's built-in GOPROXY (what it uses
	// with no go env file and no variable). If nil, there is none to fall
	// back to.
	goDefault func(ctx context.Context) (string, error)
}

// load builds the config: defaults, file, MODGATE_* variables, flags, then
// the user's go env for upstreams and checksum database left unset, then
// validation; last, once the config is valid, it opens the shared stores.
func (l loader) load(fs *flag.FlagSet, f *runFlags) (Config, sidecar.Config, error) {
	cfg := defaultConfig()
	o := origins{}
	file := f.config
	if file == "" {
		file = l.getenv("MODGATE_CONFIG")
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return cfg, sidecar.Config{}, err
		}
		if err := parseFile(file, data, &cfg, o); err != nil {
			return cfg, sidecar.Config{}, err
		}
	}
	for _, e := range envKeys {
		if v, ok := lookupEnv(l.getenv, e.env); ok {
			if err := cfg.set(e.key, v, e.env, o); err != nil {
				return cfg, sidecar.Config{}, err
			}
		}
	}
	var err error
	fs.Visit(func(fl *flag.Flag) {
		if (fl.Name == "pprof" || fl.Name == "offline") && err == nil {
			err = cfg.set(fl.Name, fl.Value.String(), "--"+fl.Name, o)
		}
		for _, k := range flagKeys {
			if k.flag == fl.Name && err == nil {
				err = cfg.set(k.key, fl.Value.String(), "--"+fl.Name, o)
			}
		}
	})
	if err != nil {
		return cfg, sidecar.Config{}, err
	}
	for _, r := range f.resolve {
		o["resolve"] = "--resolve"
		if err := cfg.addResolve(r); err != nil {
			return cfg, sidecar.Config{}, &configError{at: "--resolve", key: "resolve", msg: err.Error()}
		}
	}
	if len(f.mitm) > 0 {
		o["forward.mitm_hosts"] = "--mitm-host"
		cfg.Forward.MITMHosts = f.mitm
	}
	if err := l.fillFromGoEnv(&cfg, o); err != nil {
		return cfg, sidecar.Config{}, err
	}
	l.fillSumDBKey(&cfg, o)
	if _, set := o["cache.dir"]; !set {
		// Never configured (a flag, variable or key set to "" turns the
		// cache off): a per-user folder, so that a laptop's second build
		// is served from disk.
		if dir := userCacheDir(l.getenv, runtime.GOOS); dir != "" {
			cfg.Cache.Dir = filepath.Join(dir, "modgate")
			cfg.defaultCacheDir = true
		}
	}
	cfg.netrc = netrcPath(l.getenv, runtime.GOOS)
	sc, err := cfg.validate(o)
	if err != nil {
		return cfg, sc, err
	}
	err = cfg.openStores(o, &sc)
	return cfg, sc, err
}

// lookupEnv treats a variable set to the empty string as unset, as the go
// command does for its own variables.
func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

// fillFromGoEnv takes the upstream chain and checksum database that no
// other source set from the user's go env, falling back to $GOPROXY and
// $GOSUMDB when the go command cannot be run.
func (l loader) fillFromGoEnv(cfg *Config, o origins) error {
	needProxy, needSumDB := len(cfg.Upstreams) == 0, cfg.SumDB.Name == ""
	if !needProxy && !needSumDB {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vals, goErr := l.goenv(ctx, "GOPROXY", "GOSUMDB")
	source := "go env"
	if goErr != nil || len(vals) != 2 {
		vals = []string{l.getenv("GOPROXY"), l.getenv("GOSUMDB")}
		source = "$"
	}
	if needProxy {
		if vals[0] == "" {
			why := "the go command gave no GOPROXY"
			if goErr != nil {
				why = fmt.Sprintf("`go env GOPROXY` failed (%v)", goErr)
			}
			return fmt.Errorf("no upstream: %s and $GOPROXY is empty; give --upstream, MODGATE_UPSTREAM or upstreams in the config", why)
		}
		if err := cfg.set("upstreams", vals[0], sourceName(source, "GOPROXY"), o); err != nil {
			return err
		}
		if err := l.dropSelf(cfg, o, source); err != nil {
			return err
		}
	}
	if needSumDB {
		name, key, url := parseGOSUMDB(vals[1])
		o["sumdb.name"] = sourceName(source, "GOSUMDB")
		cfg.SumDB.Name, cfg.SumDB.URL = name, url
		if url != "" {
			o["sumdb.url"] = sourceName(source, "GOSUMDB")
		}
		if key != "" && cfg.SumDB.Key == "" {
			cfg.SumDB.Key = key
			o["sumdb.key"] = sourceName(source, "GOSUMDB")
		}
		if name == "" {
			cfg.SumDB.Name = "off"
		}
	}
	return nil
}

// fillSumDBKey takes the checksum database's key, when no source gave one,
// from the go command itself: it builds in the key of the database it
// knows by name (cmd/go/internal/modfetch's knownGOSUMDB), and that key is
// in the Go installation's source, in GOROOT. For any other database a key
// must be given; without one nothing is verified, and modgate says so.
func (l loader) fillSumDBKey(cfg *Config, o origins) {
	name := cfg.SumDB.Name
	if cfg.SumDB.Key != "" || name == "" || name == "off" || l.goenv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	goroot := ""
	if vals, err := l.goenv(ctx, "GOROOT"); err == nil && len(vals) == 1 {
		goroot = vals[0]
	}
	if key := knownSumDBKey(goroot, name); key != "" {
		cfg.SumDB.Key = key
		o["sumdb.key"] = "the go command's own key for " + name
	}
}

// builtinSumDBKeys are the keys the go command that built modgate builds
// in ("name+hash+key", space separated), set at build time by the
// Makefile and the Dockerfile from their toolchain's GOROOT, for machines
// (a container image) without a Go installation of their own.
var builtinSumDBKeys string

// knownSumDBKey returns the key the go command builds in for the database
// called name: the one in goroot (a "name": "name+hash+key" entry of
// cmd/go/internal/modfetch's knownGOSUMDB map), else the one modgate was
// built with, or "".
func knownSumDBKey(goroot, name string) string {
	if key := goSourceKey(goroot, name); key != "" {
		return key
	}
	for _, key := range strings.Fields(builtinSumDBKeys) {
		if strings.HasPrefix(key, name+"+") {
			return key
		}
	}
	return ""
}

func goSourceKey(goroot, name string) string {
	files, _ := filepath.Glob(filepath.Join(goroot, "src", "cmd", "go", "internal", "modfetch", "*.go"))
	re := regexp.MustCompile(`"` + regexp.QuoteMeta(name) + `":\s*"(` + regexp.QuoteMeta(name) + `\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+)"`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if m := re.FindSubmatch(src); m != nil {
			return string(m[1])
		}
	}
	return ""
}

// dropSelf leaves modgate's own listener out of a chain taken from the go
// env: once the go command is set up to use modgate (GOPROXY=modgate,direct
// as README: Quick start says), its GOPROXY names modgate, and modgate
// must not ask itself. When nothing is left, the go command's built-in
// default stands in. A chain the user configured keeps its refusal (in
// sidecar.New).
func (l loader) dropSelf(cfg *Config, o origins, source string) error {
	var kept []UpstreamConfig
	var self []string
	for _, u := range cfg.Upstreams {
		if pointsAtListener(u.URL, cfg.Listen) {
			self = append(self, u.URL)
			continue
		}
		kept = append(kept, u)
	}
	if len(self) == 0 {
		return nil
	}
	from := sourceName(source, "GOPROXY")
	note := fmt.Sprintf("%s names modgate's own listener (%s): left out of the upstream chain", from, strings.Join(self, ", "))
	if len(kept) == 0 {
		def := ""
		if l.goDefault != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var err error
			if def, err = l.goDefault(ctx); err != nil {
				def = ""
			}
		}
		if def == "" {
			return fmt.Errorf("no upstream: %s names only modgate itself (%s) and the go command's default GOPROXY is unknown; give --upstream, MODGATE_UPSTREAM or upstreams in the config", from, strings.Join(self, ", "))
		}
		if err := cfg.set("upstreams", def, "the go command's default GOPROXY", o); err != nil {
			return err
		}
		cfg.notes = append(cfg.notes, loadNote{msg: note + "; nothing else was left, so the go command's default GOPROXY is used: " + def})
		return nil
	}
	cfg.Upstreams = kept
	cfg.notes = append(cfg.notes, loadNote{msg: note})
	return nil
}

// pointsAtListener reports whether an upstream URL reaches listen on
// this machine: the same port on a loopback address (or localhost) when
// modgate listens on loopback or everywhere, or on listen's own address.
func pointsAtListener(rawURL, listen string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	host := u.Hostname()
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		host = "127.0.0.1"
	}
	return wire.SameListener(net.JoinHostPort(host, port), listen)
}

// goDefaultProxy runs `go env GOPROXY` without the user's go env file and
// GOPROXY variable: the go command's built-in default.
func goDefaultProxy(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOPROXY")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "GOPROXY" && k != "GOENV" && k != "GOFLAGS" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "GOENV=off")
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// userCacheDir is os.UserCacheDir with the loader's environment: the
// folder for per-user caches, or "" when there is none.
func userCacheDir(getenv func(string) string, goos string) string {
	switch goos {
	case "windows":
		return getenv("LocalAppData")
	case "darwin", "ios":
		if home := getenv("HOME"); home != "" {
			return filepath.Join(home, "Library", "Caches")
		}
	case "plan9":
		if home := getenv("home"); home != "" {
			return filepath.Join(home, "lib", "cache")
		}
	default:
		if dir := getenv("XDG_CACHE_HOME"); filepath.IsAbs(dir) {
			return dir
		}
		if home := getenv("HOME"); home != "" {
			return filepath.Join(home, ".cache")
		}
	}
	return ""
}

func sourceName(source, name string) string {
	if source == "$" {
		return "$" + name
	}
	return source + " " + name
}

// goEnv runs `go env NAME...` and returns one value per name.
func goEnv(ctx context.Context, names ...string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"env"}, names...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = errors.New(msg)
		}
		return nil, err
	}
	vals := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(vals) != len(names) {
		return nil, fmt.Errorf("go env printed %d lines for %d names", len(vals), len(names))
	}
	return vals, nil
}

// netrcPath is the netrc file as the go command finds it
// (cmd/go/internal/auth/netrc.go): $NETRC, else .netrc in the home
// folder, or _netrc there on Windows when it exists. "" when there is no
// home folder.
func netrcPath(getenv func(string) string, goos string) string {
	if f := getenv("NETRC"); f != "" {
		return f
	}
	home := getenv("HOME")
	if goos == "windows" {
		home = getenv("USERPROFILE")
	}
	if goos == "plan9" {
		home = getenv("home")
	}
	if home == "" {
		return ""
	}
	if goos == "windows" {
		if _, err := os.Stat(filepath.Join(home, "_netrc")); err == nil {
			return filepath.Join(home, "_netrc")
		}
	}
	return filepath.Join(home, ".netrc")
}
