package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/modgate/modgate/sidecar"
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
	{"listen", "listen", "module listener address"},
	{"admin", "admin", "admin listener address (empty: none)"},
	{"admin-hosts", "admin_hosts", "Host names the admin listener answers besides IP addresses and localhost (comma separated patterns)"},
	{"upstream", "upstreams", `upstream chain in GOPROXY syntax, e.g. "https://a.example.test,https://b.example.test|direct" (default: go env GOPROXY)`},
	{"sumdb", "sumdb.name", "checksum database name, a GOSUMDB value (name+key [url]), or off (default: go env GOSUMDB)"},
	{"tls-ca-file", "tls_ca_file", "extra root CAs (PEM) for upstreams"},
	{"log-level", "log.level", "debug, info, warn or error"},
	{"log-format", "log.format", "auto, text or json"},
	{"policy", "policy_file", "policy file (reloaded when it changes and on SIGHUP)"},
	{"audit-log", "audit_log", "audit log: a file (rotated by size), - for standard output, empty for none"},
	{"cache-dir", "cache.dir", "artifact cache folder (empty: no cache)"},
	{"fleet-redis", "fleet.redis", "the fleet's Redis (redis://host:6379/0): one upstream fetch per artifact across replicas, and breaker news"},
	{"cache-shared", "cache.shared", "shared store of a fleet's artifacts, a gocloud.dev/blob URL (s3://bucket?endpoint=...&region=..., gs://, azblob://, file://)"},
	{"ca-dir", "forward.ca_dir", "folder of the CA that `modgate ca init` made (default: the user's config folder)"},
	{"max-traces-per-second", "telemetry.max_traces_per_second", "new traces the default sampler records a second, when OTEL_TRACES_SAMPLER is unset (default 100)"},
}

func (f *runFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.config, "config", "", "YAML config file (env MODGATE_CONFIG)")
	f.values = map[string]*string{}
	for _, k := range flagKeys {
		f.values[k.key] = fs.String(k.flag, "", k.usage)
	}
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof/ on the admin listener")
	fs.BoolVar(&f.offline, "offline", false, "serve only from the cache; everything else is 404 (air-gapped builds)")
	fs.Func("resolve", "host:port=addr:port: dial addr instead of host (repeatable)", func(s string) error {
		f.resolve = append(f.resolve, s)
		return nil
	})
	fs.Func("mitm-host", "intercept CONNECTs to this host with modgate's CA (repeatable)", func(s string) error {
		f.mitm = append(f.mitm, s)
		return nil
	})
}

// loader gathers what loading the config reads from outside, so that tests
// can give it their own.
type loader struct {
	getenv func(string) string
	goenv  func(ctx context.Context, names ...string) ([]string, error)
}

// load builds the config: defaults, file, MODGATE_* variables, flags, then
// the user's go env for upstreams and checksum database left unset, then
// validation.
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
	cfg.netrc = netrcPath(l.getenv, runtime.GOOS)
	sc, err := cfg.validate(o)
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
