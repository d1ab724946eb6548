package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"go.opentelemetry.io/otel"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/fleet"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

const runUsage = `usage: modgate run [flags]

Serves the module listener (the go command's GOPROXY, and HTTPS_PROXY for
direct fetches) and the admin listener (status page, /metrics, /healthz).
Settings come from defaults, then the config file (--config or
MODGATE_CONFIG), then MODGATE_* variables, then flags. The upstream chain
and checksum database default to the user's go env GOPROXY and GOSUMDB.
`

func (a *App) run(ctx context.Context, args []string) error {
	fs := a.newFlags("modgate run", runUsage)
	var f runFlags
	f.register(fs)
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "modgate run: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	l := loader{getenv: a.Getenv, goenv: a.GoEnv, goDefault: a.GoDefaultProxy}
	cfg, sc, err := l.load(fs, &f)
	if err != nil {
		return fmt.Errorf("config:\n%w", err)
	}
	// Buffered, so that a busy modgate does not make one write per access
	// log line; deferred first, so written out last, after every other
	// deferred step has logged.
	logOut := newLogBuffer(a.Stderr)
	defer logOut.Close()
	log := newLogger(logOut, cfg.Log)
	for _, n := range cfg.notes {
		if n.warn {
			log.Warn(n.msg)
		} else {
			log.Info(n.msg)
		}
	}
	if cfg.Cache.Dir != "" {
		log.Info("cache", "dir", cfg.Cache.Dir)
	}
	sc.Logger = log
	sc.CommandLine = append([]string{"modgate", "run"}, args...)
	warnSecretArgs(log, args)
	sc.Version = Version()
	// A rate of 0 in the config means "no new traces"; telemetry.Config
	// spells that with a negative rate (its zero is the default).
	maxTraces := cfg.Telemetry.MaxTracesPerSecond
	if maxTraces == 0 {
		maxTraces = -1
	}
	tel, err := telemetry.Setup(ctx, telemetry.Config{Version: Version(), Getenv: a.Getenv, MaxTracesPerSecond: maxTraces})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		// The exporter retries while its collector is away; never for long.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(sctx); err != nil {
			log.Warn("telemetry not flushed", "err", err)
		}
	}()
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("telemetry", "err", err) }))
	log.Info("telemetry", "export", tel.Exporting())
	sc.Telemetry = tel
	sc.TraceURL = a.Getenv("MODGATE_TRACE_URL") // the status page's links to a trace viewer, as modgate exec's
	if cfg.PolicyFile != "" {
		if sc.Policy, err = policy.NewStore(cfg.PolicyFile); err != nil {
			return fmt.Errorf("policy:\n%w", err)
		}
	}
	audit, err := policy.NewAuditLog(cfg.AuditLog, policy.AuditOptions{Stdout: a.Stdout})
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	sc.Audit = audit
	if cfg.Fleet.Redis != "" {
		fleet.LogTo(log)
		f, err := cfg.openFleet(log)
		if err != nil {
			return fmt.Errorf("config:\nfleet.redis: %w", err)
		}
		defer f.Close()
		sc.Fleet.Fleet = f
		log.Info("fleet", "redis", f.Status().URL, "replica", f.Replica())
	}
	srv, err := sidecar.New(sc)
	if err != nil {
		audit.Close()
		return err
	}
	if sc.Policy != nil {
		stop := watchPolicy(ctx, sc.Policy, log, tel)
		defer stop()
	}
	ln, adminLn, err := listen(cfg)
	if err != nil {
		audit.Close()
		return err
	}
	go a.probeUpstreams(ctx, log, sc.Upstreams, sc.Resolve)
	err = srv.Serve(ctx, ln, adminLn)
	// Every request has finished: the last audit lines are flushed now.
	if cerr := audit.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("audit log: %w", cerr)
	}
	return err
}

// listen opens the module and admin listeners, with errors that say which
// one and how to move it: "address already in use" alone does not say
// that the admin port is the one taken.
func listen(cfg Config) (ln, adminLn net.Listener, err error) {
	ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("module listener (listen, --listen, MODGATE_LISTEN) on %s: %w%s", cfg.Listen, err, inUseHint(err, "--listen"))
	}
	if cfg.Admin == "" {
		return ln, nil, nil
	}
	adminLn, err = net.Listen("tcp", cfg.Admin)
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("admin listener (admin, --admin, MODGATE_ADMIN) on %s: %w%s", cfg.Admin, err, inUseHint(err, "--admin"))
	}
	return ln, adminLn, nil
}

func inUseHint(err error, flag string) string {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return ""
	}
	hint := fmt.Sprintf("\nanother program (another modgate?) holds that port: stop it, or give another address with %s HOST:PORT", flag)
	if flag == "--admin" {
		hint += ` (--admin "" for no admin listener)`
	}
	return hint
}

// probeUpstreams resolves each upstream's host name once at start-up and
// warns about one that does not resolve: a misspelled host would
// otherwise fail only on the first request. Never fatal: DNS may come
// later (a laptop joining a VPN).
func (a *App) probeUpstreams(ctx context.Context, log *slog.Logger, ups []upstream.Config, resolve map[string]string) {
	lookup := a.LookupHost
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	for i, u := range ups {
		pu, err := url.Parse(u.URL)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") {
			continue
		}
		host := pu.Hostname()
		port := pu.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[pu.Scheme]
		}
		if _, ok := resolve[net.JoinHostPort(host, port)]; ok || net.ParseIP(host) != nil {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = lookup(lctx, host)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			name := u.Name
			if name == "" {
				name = host
			}
			log.Warn(fmt.Sprintf("upstream %s: host %s does not resolve; check its URL (upstreams item %d)", name, host, i+1), "err", err)
		}
	}
}

// watchPolicy reloads the policy when its file changes and on SIGHUP. A
// policy that does not parse is logged with its file, line and key, and the
// one in force stays.
func watchPolicy(ctx context.Context, st *policy.Store, log *slog.Logger, tel *telemetry.Telemetry) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	report := func(how string) func(error) {
		return func(err error) {
			if err != nil {
				tel.AddPolicyReloadFailure(ctx)
				log.Error("policy not reloaded; the previous policy stays in force", "how", how, "err", err, "failures", st.ReloadFailures())
				return
			}
			log.Info("policy reloaded", "how", how, "file", st.Path())
		}
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := st.Watch(ctx, report("file changed")); err != nil {
			log.Warn("cannot watch the policy file; reload it with SIGHUP", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-hup:
				report("SIGHUP")(st.Reload())
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}
}

// newLogger writes text to a terminal and JSON lines anywhere else (a
// container's log collector).
func newLogger(w io.Writer, c LogConfig) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	format := c.Format
	if format == "auto" {
		format = "json"
		under := w
		if b, ok := w.(*logBuffer); ok {
			under = b.Unwrap()
		}
		if f, ok := under.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(redactHandler{slog.NewTextHandler(w, opts)})
	}
	return slog.New(redactHandler{newJSONHandler(w, opts)})
}
