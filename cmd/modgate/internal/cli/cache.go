package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/term"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/cache"
)

const cacheUsage = `usage:
  modgate cache ls [PATTERN]     list module@version, size, age and tier (public or private)
  modgate cache rm PATTERN       remove the matching module versions
  modgate cache warm FILE...     fetch every module@version of go.sum or go.mod files into the cache
  modgate cache du               the cache's size, by tier and kind
  modgate cache verify           re-check the cache against the checksum database, removing what fails

PATTERN is a module path pattern as GOPRIVATE takes it (example.test/*,
example.test/m), optionally with @VERSION (a version or a glob like v1.*).
Each subcommand takes run's config flags (--config, --cache-dir) and finds
the same cache folders modgate run uses. "modgate cache SUBCOMMAND -h"
lists its flags.
`

// cacheCmd is one subcommand of modgate cache: its usage, the run flags it
// reads, and what it does with the loaded config. A subcommand slots in by
// adding an entry (verify comes with checksum verification).
type cacheCmd struct {
	usage string
	flags []string // run's flags it takes, besides --config
	extra func(fs *flag.FlagSet)
	// minArgs and maxArgs bound its arguments; a maxArgs below 0, none.
	minArgs, maxArgs int
	do               func(ctx context.Context, c *cacheRun) error
}

// cacheRun is one run of a cache subcommand.
type cacheRun struct {
	a    *App
	fs   *flag.FlagSet
	cfg  Config
	sc   sidecar.Config
	args []string
}

func (a *App) cacheCmds() map[string]cacheCmd {
	var via string
	var jobs int
	var shared bool
	return map[string]cacheCmd{
		"ls": {
			usage:   "usage: modgate cache ls [flags] [PATTERN]\n\nLists the module versions in the cache: module@version, size, age (since the\nnewest of its files was stored) and tier (public: cache.dir, private:\ncache.private_dir).\n",
			flags:   []string{"cache-dir"},
			maxArgs: 1,
			do:      cacheLs,
		},
		"rm": {
			usage:   "usage: modgate cache rm [flags] PATTERN\n\nRemoves the matching module versions from the cache (every tier), and their\nversion lists. A running modgate may still answer a removed .info or .mod from\nmemory until it restarts.\n",
			flags:   []string{"cache-dir"},
			minArgs: 1,
			maxArgs: 1,
			do:      cacheRm,
		},
		"du": {
			usage:   "usage: modgate cache du [flags]\n\nPrints the cache's size by tier and kind of file.\n",
			flags:   []string{"cache-dir"},
			maxArgs: 0,
			do:      cacheDu,
		},
		"verify": {
			usage: "usage: modgate cache verify [flags]\n\nRe-checks every entry of the cache (with --shared, every object of the shared\nstore too) against the checksum database, as modgate checks what it reads back\nfrom a shared store: public modules' go.mod files and zips, and the\ndatabase's lookups and tiles. Removes what fails, leaves what cannot be\nverified now (the database cannot be asked), and prints what it did. Exits 1\nwhen anything failed. Needs the database's key (see README: Trust).\n",
			flags: []string{"cache-dir", "cache-shared", "upstream", "sumdb", "policy", "tls-ca-file", "resolve"},
			extra: func(fs *flag.FlagSet) {
				fs.BoolVar(&shared, "shared", false, "also check every object of the shared store (cache.shared)")
			},
			maxArgs: -1,
			do:      func(ctx context.Context, c *cacheRun) error { return cacheVerify(ctx, c, shared) },
		},
		"warm": {
			usage: "usage: modgate cache warm [flags] FILE...\n\nFetches .info, .mod and .zip of every module@version in go.sum files (only\n.info and .mod for their /go.mod lines) and the requirements of go.mod files,\nthrough the running modgate (--via), or, when none answers, straight into the\ncache with the config's upstreams and policy. Warm a cache online, then serve\nit with offline: true (CI images, air-gapped sites).\n",
			flags: []string{"cache-dir", "upstream", "sumdb", "policy", "listen", "tls-ca-file", "resolve"},
			extra: func(fs *flag.FlagSet) {
				fs.StringVar(&via, "via", "", "URL of the running modgate to fetch through (default: http://<listen> when it answers; else none)")
				fs.IntVar(&jobs, "jobs", 4, "fetches at once")
			},
			minArgs: 1,
			maxArgs: -1,
			do:      func(ctx context.Context, c *cacheRun) error { return cacheWarm(ctx, c, via, jobs) },
		},
	}
}

func (a *App) cache(ctx context.Context, args []string) error {
	subs := map[string]func([]string) error{}
	for name, cmd := range a.cacheCmds() {
		subs[name] = func(args []string) error {
			fs := a.newFlags("modgate cache "+name, cmd.usage)
			var rf runFlags
			rf.register(fs, cmd.flags...)
			if cmd.extra != nil {
				cmd.extra(fs)
			}
			if err := a.parseFlags(fs, args); err != nil {
				return err
			}
			cfg, sc, err := loader{getenv: a.Getenv, goenv: a.GoEnv, goDefault: a.GoDefaultProxy}.load(fs, &rf)
			if err != nil {
				return fmt.Errorf("config:\n%w", err)
			}
			if n := fs.NArg(); n < cmd.minArgs || (cmd.maxArgs >= 0 && n > cmd.maxArgs) {
				fs.Usage()
				return errUsage
			}
			return cmd.do(ctx, &cacheRun{a: a, fs: fs, cfg: cfg, sc: sc, args: fs.Args()})
		}
	}
	return a.group("modgate cache", cacheUsage, args, subs)
}

// tiers are the cache folders of the config, by tier name.
func (c *cacheRun) tiers() [][2]string {
	var t [][2]string
	if c.cfg.Cache.Dir != "" {
		t = append(t, [2]string{"public", c.cfg.Cache.Dir})
	}
	if c.cfg.Cache.PrivateDir != "" {
		t = append(t, [2]string{"private", c.cfg.Cache.PrivateDir})
	}
	return t
}

func (c *cacheRun) needCache() error {
	if len(c.tiers()) == 0 {
		return errors.New("no cache: cache.dir is empty (--cache-dir, MODGATE_CACHE_DIR or cache.dir in the config)")
	}
	return nil
}

// modVersion is a module version's entries in one tier.
type modVersion struct {
	mod    module.Version
	tier   string
	size   int64
	stored time.Time
	keys   []string
}

// versionOf parses a cache key of a module version's file
// (<escaped path>/@v/<escaped version>.info|.mod|.zip).
func versionOf(key string) (module.Version, bool) {
	if strings.HasPrefix(key, "sumdb/") || strings.HasPrefix(key, "origin/") {
		return module.Version{}, false
	}
	escPath, file, ok := strings.Cut(key, "/@v/")
	if !ok {
		return module.Version{}, false
	}
	ext := path.Ext(file)
	if ext != ".info" && ext != ".mod" && ext != ".zip" {
		return module.Version{}, false
	}
	p, err1 := module.UnescapePath(escPath)
	v, err2 := module.UnescapeVersion(strings.TrimSuffix(file, ext))
	if err1 != nil || err2 != nil || semver.Canonical(v) != v {
		return module.Version{}, false
	}
	return module.Version{Path: p, Version: v}, true
}

// matcher returns whether a module version matches PATTERN (module path
// patterns as GOPRIVATE takes them, optionally @version or @glob).
func matcher(pattern string) (func(module.Version) bool, error) {
	if pattern == "" {
		return func(module.Version) bool { return true }, nil
	}
	pp, vp, hasV := strings.Cut(pattern, "@")
	if _, err := path.Match(pp, ""); err != nil || pp == "" {
		return nil, fmt.Errorf("%q is not a module path pattern", pattern)
	}
	if _, err := path.Match(vp, ""); hasV && (err != nil || vp == "") {
		return nil, fmt.Errorf("%q: bad version pattern", pattern)
	}
	return func(m module.Version) bool {
		if !module.MatchPrefixPatterns(pp, m.Path) {
			return false
		}
		if !hasV {
			return true
		}
		ok, _ := path.Match(vp, m.Version)
		return ok
	}, nil
}

// progress returns a func that counts entries read and, on a terminal,
// shows the count now and then (a large cache takes a while to walk), and
// a func that ends the line.
func (c *cacheRun) progress(what string) (step func(), end func()) {
	f, ok := c.a.Stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}, func() {}
	}
	n := 0
	last := time.Now()
	return func() {
			n++
			if time.Since(last) > 200*time.Millisecond {
				last = time.Now()
				fmt.Fprintf(f, "\r%s: %d files read ", what, n)
			}
		}, func() {
			if n > 0 {
				fmt.Fprint(f, "\r\033[K")
			}
		}
}

// versions walks the tiers and returns the module versions that match.
func (c *cacheRun) versions(match func(module.Version) bool) ([]*modVersion, error) {
	var out []*modVersion
	step, end := c.progress(c.fs.Name())
	defer end()
	for _, t := range c.tiers() {
		byMod := map[module.Version]*modVersion{}
		err := cache.Walk(t[1], func(e cache.Stored) error {
			step()
			m, ok := versionOf(e.Key)
			if !ok || !match(m) {
				return nil
			}
			mv := byMod[m]
			if mv == nil {
				mv = &modVersion{mod: m, tier: t[0]}
				byMod[m] = mv
				out = append(out, mv)
			}
			mv.size += e.FileSize
			mv.keys = append(mv.keys, e.Key)
			if e.Stored.After(mv.stored) {
				mv.stored = e.Stored
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cache %s: %w", t[1], err)
		}
	}
	slices.SortFunc(out, func(a, b *modVersion) int {
		if c := strings.Compare(a.mod.Path, b.mod.Path); c != 0 {
			return c
		}
		if c := semver.Compare(a.mod.Version, b.mod.Version); c != 0 {
			return c
		}
		return strings.Compare(a.tier, b.tier)
	})
	return out, nil
}

func cacheLs(_ context.Context, c *cacheRun) error {
	if err := c.needCache(); err != nil {
		return err
	}
	match, err := matcher(strings.Join(c.args, ""))
	if err != nil {
		return err
	}
	vs, err := c.versions(match)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(c.a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MODULE@VERSION\tSIZE\tAGE\tTIER")
	now := time.Now()
	for _, v := range vs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", v.mod, byteSize(v.size), age(now.Sub(v.stored)), v.tier)
	}
	return w.Flush()
}

func cacheRm(_ context.Context, c *cacheRun) error {
	if err := c.needCache(); err != nil {
		return err
	}
	match, err := matcher(c.args[0])
	if err != nil {
		return err
	}
	vs, err := c.versions(match)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		return fmt.Errorf("cache rm: no module version in the cache matches %s", c.args[0])
	}
	dirs := map[string]string{}
	for _, t := range c.tiers() {
		dirs[t[0]] = t[1]
	}
	opened := map[string]*cache.Cache{}
	var total int64
	for _, v := range vs {
		ch := opened[v.tier]
		if ch == nil {
			if ch, err = cache.Open(dirs[v.tier], 0, nil); err != nil {
				return err
			}
			opened[v.tier] = ch
		}
		for _, k := range v.keys {
			ch.Remove(k)
		}
		// The version list and @latest may name the version: gone too,
		// so that they are asked for again.
		if esc, err := module.EscapePath(v.mod.Path); err == nil {
			ch.Remove(esc + "/@v/list")
			ch.Remove(esc + "/@latest")
		}
		total += v.size
		fmt.Fprintf(c.a.Stdout, "removed %s (%s, %s)\n", v.mod, byteSize(v.size), v.tier)
	}
	fmt.Fprintf(c.a.Stdout, "%d module versions, %s\n", len(vs), byteSize(total))
	return nil
}

func cacheDu(_ context.Context, c *cacheRun) error {
	if err := c.needCache(); err != nil {
		return err
	}
	step, end := c.progress("modgate cache du")
	w := tabwriter.NewWriter(c.a.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "TIER\tKIND\tFILES\tSIZE\t")
	for _, t := range c.tiers() {
		kinds := []string{"zip", "mod", "info", "list", "checksum database", "other"}
		files, sizes := map[string]int{}, map[string]int64{}
		var total int64
		err := cache.Walk(t[1], func(e cache.Stored) error {
			step()
			k := "other"
			switch {
			case strings.HasPrefix(e.Key, "sumdb/"):
				k = "checksum database"
			case strings.HasSuffix(e.Key, ".zip"):
				k = "zip"
			case strings.HasSuffix(e.Key, ".mod"):
				k = "mod"
			case strings.HasSuffix(e.Key, ".info"):
				k = "info"
			case strings.HasSuffix(e.Key, "/@v/list"), strings.HasSuffix(e.Key, "/@latest"):
				k = "list"
			}
			files[k]++
			sizes[k] += e.FileSize
			total += e.FileSize
			return nil
		})
		if err != nil {
			end()
			return fmt.Errorf("cache %s: %w", t[1], err)
		}
		for _, k := range kinds {
			if files[k] > 0 {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t\n", t[0], k, files[k], byteSize(sizes[k]))
			}
		}
		limit := "no limit"
		if c.cfg.Cache.MaxBytes > 0 {
			limit = "limit " + byteSize(int64(c.cfg.Cache.MaxBytes))
		}
		fmt.Fprintf(w, "%s\ttotal (%s, %s)\t\t%s\t\n", t[0], t[1], limit, byteSize(total))
	}
	end()
	return w.Flush()
}

// warmFile reads the module versions of a go.sum or go.mod file and, for
// each, whether its zip is wanted: not for a go.sum's /go.mod lines (the
// go command reads only the go.mod of those), but for every other go.sum
// line and every requirement of a go.mod.
func warmFile(name string) (map[module.Version]bool, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	out := map[module.Version]bool{}
	if strings.HasSuffix(name, ".mod") {
		f, err := modfile.ParseLax(name, data, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range f.Require {
			out[r.Mod] = true
		}
		return out, nil
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("%s:%d: want \"module version hash\"", name, n)
		}
		v, goModOnly := strings.CutSuffix(f[1], "/go.mod")
		m := module.Version{Path: f[0], Version: v}
		if err := module.Check(m.Path, m.Version); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, n, err)
		}
		out[m] = out[m] || !goModOnly
	}
	return out, sc.Err()
}

func cacheWarm(ctx context.Context, c *cacheRun, via string, jobs int) error {
	want, err := warmFiles(c.args)
	if err != nil {
		return err
	}
	base, stop, err := c.warmProxy(ctx, via)
	if err != nil {
		return err
	}
	defer stop()
	list := warmList(want)
	n, failed := c.fetchAll(ctx, base, list, max(jobs, 1))
	for _, f := range failed {
		fmt.Fprintln(c.a.Stderr, "  "+f)
	}
	fmt.Fprintf(c.a.Stdout, "warmed %d module versions: %d files, %s, %d failed\n", len(want), len(list)-len(failed), byteSize(n), len(failed))
	if len(failed) > 0 {
		return fmt.Errorf("cache warm: %d of %d files failed", len(failed), len(list))
	}
	return ctx.Err()
}

// warmFiles reads the module versions that the files names list, each
// with whether its zip is wanted.
func warmFiles(names []string) (map[module.Version]bool, error) {
	want := map[module.Version]bool{}
	for _, name := range names {
		vs, err := warmFile(name)
		if err != nil {
			return nil, err
		}
		for m, zip := range vs {
			want[m] = want[m] || zip
		}
	}
	return want, nil
}

// warmProxy is the modgate to warm through: via, else the one that
// answers on the config's listener, else one started for this command on
// a loopback port, with the config's cache, upstreams and policy (stop
// stops it).
func (c *cacheRun) warmProxy(ctx context.Context, via string) (base string, stop func(), err error) {
	base = via
	if base == "" && !c.sc.TLS.Enabled() {
		addr := clientAddr(c.cfg.Listen)
		if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			conn.Close()
			base = "http://" + addr
		}
	}
	if base != "" {
		return strings.TrimSuffix(base, "/"), func() {}, nil
	}
	if err := c.needCache(); err != nil {
		return "", nil, err
	}
	url, stop, err := c.serveForWarm(ctx)
	if err != nil {
		return "", nil, err
	}
	fmt.Fprintf(c.a.Stderr, "modgate cache warm: no modgate answers on %s; fetching straight into %s\n", clientAddr(c.cfg.Listen), c.cfg.Cache.Dir)
	return strings.TrimSuffix(url, "/"), stop, nil
}

// warmJob is one file of a module version to fetch.
type warmJob struct {
	m   module.Version
	ext string
}

// warmList is the files to fetch for want, in order.
func warmList(want map[module.Version]bool) []warmJob {
	var list []warmJob
	for m, zip := range want {
		list = append(list, warmJob{m, ".info"}, warmJob{m, ".mod"})
		if zip {
			list = append(list, warmJob{m, ".zip"})
		}
	}
	slices.SortFunc(list, func(a, b warmJob) int { return strings.Compare(a.m.String()+a.ext, b.m.String()+b.ext) })
	return list
}

// fetchAll fetches list from the proxy at base with jobs at a time, with
// progress on a terminal, and returns the bytes read and the failures,
// sorted.
func (c *cacheRun) fetchAll(ctx context.Context, base string, list []warmJob, jobs int) (int64, []string) {
	var progress io.Writer
	if f, ok := c.a.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		progress = c.a.Stderr
	}
	client := &http.Client{Timeout: 10 * time.Minute}
	var done, bytes atomic.Int64
	var mu sync.Mutex
	var failed []string
	work := make(chan warmJob)
	var wg sync.WaitGroup
	for range jobs {
		wg.Go(func() {
			for j := range work {
				n, err := fetchTo(ctx, client, base, j.m, j.ext)
				bytes.Add(n)
				d := done.Add(1)
				mu.Lock()
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s %s: %v", j.m, j.ext, err))
				}
				if progress != nil {
					fmt.Fprintf(progress, "\rmodgate cache warm: %d/%d files, %s ", d, len(list), byteSize(bytes.Load()))
				}
				mu.Unlock()
			}
		})
	}
	for _, j := range list {
		select {
		case work <- j:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if progress != nil {
		fmt.Fprintln(progress)
	}
	slices.Sort(failed)
	return bytes.Load(), failed
}

// fetchTo GETs one file of a module version from the proxy at base and
// reads it whole (the proxy caches what it serves).
func fetchTo(ctx context.Context, client *http.Client, base string, m module.Version, ext string) (int64, error) {
	p, err := module.EscapePath(m.Path)
	if err != nil {
		return 0, err
	}
	v, err := module.EscapeVersion(m.Version)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+p+"/@v/"+v+ext, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 648))
		first, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		return 0, fmt.Errorf("%s: %s", resp.Status, first)
	}
	return io.Copy(io.Discard, resp.Body)
}

// serveForWarm runs a modgate with the loaded config on a loopback port
// until stop is called, and returns its URL.
func (c *cacheRun) serveForWarm(ctx context.Context) (string, func(), error) {
	sc := c.sc
	sc.Listen, sc.Admin, sc.TLS, sc.Clients = "127.0.0.1:0", "", sidecar.ListenerTLS{}, sidecar.ClientsConfig{}
	sc.Logger = slog.New(slog.NewTextHandler(c.a.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if c.cfg.PolicyFile != "" {
		st, err := policy.NewStore(c.cfg.PolicyFile)
		if err != nil {
			return "", nil, fmt.Errorf("policy:\n%w", err)
		}
		sc.Policy = st
	}
	srv, err := sidecar.New(sc)
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ctx, ln, nil)
	}()
	return "http://" + ln.Addr().String(), func() { cancel(); <-done }, nil
}

// byteSize writes n bytes for people: 512 B, 1.5 KiB, 3.2 MiB.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// age writes a duration for people: 45s, 12m, 3h, 5d.
func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// cacheVerify re-checks the cache (and the shared store, with shared)
// against the checksum database with a modgate of the loaded config that
// does not serve, and says what it did.
func cacheVerify(ctx context.Context, c *cacheRun, shared bool) error {
	if err := c.needCache(); err != nil {
		return err
	}
	sc := c.sc
	sc.Listen, sc.Admin = "", ""
	sc.Logger = slog.New(slog.NewTextHandler(c.a.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	if c.cfg.PolicyFile != "" {
		st, err := policy.NewStore(c.cfg.PolicyFile)
		if err != nil {
			return fmt.Errorf("policy:\n%w", err)
		}
		sc.Policy = st
	}
	srv, err := sidecar.New(sc)
	if err != nil {
		return err
	}
	var keys []string
	if err := cache.Walk(c.cfg.Cache.Dir, func(e cache.Stored) error {
		keys = append(keys, e.Key)
		return nil
	}); err != nil {
		return err
	}
	slices.Sort(keys)
	r, err := srv.VerifyCache(ctx, slices.Values(keys), shared, func(tier, key, verdict, detail string) {
		if verdict != sidecar.VerdictVerified {
			fmt.Fprintf(c.a.Stdout, "%-8s %s %s: %s\n", verdict, tier, key, detail)
		}
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.a.Stdout, "%d verified, %d removed, %d left unverified (the database could not be asked), %d not the checksum database's to judge\n",
		r.Verified, r.Removed, r.Kept, r.Skipped)
	if r.Removed > 0 {
		return exitStatus(1)
	}
	return nil
}
