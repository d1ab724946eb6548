package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/modgate/modgate/cmd/modgate/internal/explain"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/upstream"
	"github.com/modgate/modgate/telemetry"
)

const execUsage = `usage: modgate exec [flags] -- CMD [ARGS...]

Runs CMD (go build ./..., go test ./..., make) as one build, one trace: a
root span for the command, a child of TRACEPARENT when it is set, and every
request CMD's go commands (and git, through forward mode) make to modgate
under it, whatever modgate's max_traces_per_second. CMD gets:

  GOPROXY      modgate's URL carrying the trace context (entries of GOPROXY
               that point at modgate are rewritten; without one, it is
               modgate's URL, then direct)
  HTTP_PROXY, HTTPS_PROXY, http_proxy, https_proxy
               when they point at modgate, with the trace context in
               their user name (your own user name and password stay)
  TRACEPARENT  the build span's context, for tools in the build that speak
               OpenTelemetry

When CMD ends, a summary goes to stderr (and to --report as JSON), from
modgate's admin port: requests by kind and outcome, bytes, cache hits, the
time spent waiting on modgate, the slowest modules and who served them,
failures explained, breakers that opened. CMD's exit status is modgate
exec's; past --max-ratio of a --baseline report it is 1 (or CMD's).

The build span is exported as the OTEL_* variables say; MODGATE_TRACE_URL
(e.g. http://jaeger.example.test:16686/trace/{trace_id}) links the trace.

`

// exitStatus is an exit status to leave with, after whatever had to be
// said was said.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// BuildReport is what `modgate exec --report` writes: modgate's summary of
// the build, and what exec knows of the command.
type BuildReport struct {
	telemetry.BuildSummary
	// WallMS is how long CMD ran.
	WallMS   float64 `json:"wall_ms"`
	TraceURL string  `json:"trace_url,omitempty"`
	// Incomplete says why the modgate part is missing, when it is.
	Incomplete string                     `json:"incomplete,omitempty"`
	Baseline   *telemetry.BuildComparison `json:"baseline,omitempty"`
}

func (a *App) environ() []string {
	if a.Environ != nil {
		return a.Environ()
	}
	return os.Environ()
}

func (a *App) exec(ctx context.Context, args []string) error {
	o, err := a.execFlags(args)
	if err != nil {
		return err
	}
	b, err := a.startBuild(ctx, o)
	if err != nil {
		return err
	}
	code, err := a.runBuild(b, o.argv)
	if err != nil {
		return err
	}
	// An interrupted build (Ctrl-C reaches CMD and this process alike)
	// still gets its summary.
	rep, err := a.buildReport(context.WithoutCancel(ctx), b, o, code)
	if err != nil {
		return err
	}
	writeBuildSummary(a.Stderr, rep, o.maxRatio)
	if o.report != "" {
		if err := writeBuildReport(o.report, rep); err != nil {
			return fmt.Errorf("exec: --report: %w", err)
		}
	}
	if code == 0 && rep.Baseline != nil && len(rep.Baseline.Exceeded) > 0 {
		code = 1
	}
	if code != 0 {
		return exitStatus(code)
	}
	return nil
}

// execOptions are modgate exec's flags and command, checked.
type execOptions struct {
	argv     []string
	proxy    *url.URL
	admin    string
	name     string       // the build span's
	report   string       // --report's file, or ""
	baseline string       // --baseline's file, or ""
	base     *BuildReport // read from baseline
	maxRatio float64
}

func (a *App) execFlags(args []string) (execOptions, error) {
	fs := a.newFlags("modgate exec", execUsage)
	proxyFlag := fs.String("proxy", "", "modgate's URL (env MODGATE_PROXY; default from MODGATE_LISTEN, else http://127.0.0.1:7070)")
	adminFlag := fs.String("admin", "", "modgate's admin URL, for the build's summary (env MODGATE_ADMIN; default http://127.0.0.1:7071)")
	report := fs.String("report", "", "write the build report to this file, as JSON")
	name := fs.String("name", "", "the build span's name (default: the command, e.g. \"go build\")")
	baseline := fs.String("baseline", "", "compare the build's module time with this report (from --report on a good day)")
	maxRatio := fs.Float64("max-ratio", 1.5, "with --baseline: the ratio of module time, or of a kind's mean latency, past which the build fails")
	if err := a.parseFlags(fs, args); err != nil {
		return execOptions{}, err
	}
	o := execOptions{argv: fs.Args(), name: *name, report: *report, baseline: *baseline, maxRatio: *maxRatio}
	if len(o.argv) == 0 {
		fmt.Fprint(a.Stderr, "modgate exec: no command: modgate exec [flags] -- CMD [ARGS...]\n")
		return o, errUsage
	}
	if o.maxRatio <= 1 {
		fmt.Fprintf(a.Stderr, "modgate exec: --max-ratio %g: want more than 1\n", o.maxRatio)
		return o, errUsage
	}
	if o.baseline != "" {
		b, err := readBuildReport(o.baseline)
		if err != nil {
			return o, fmt.Errorf("exec: --baseline: %w", err)
		}
		o.base = &b
	}
	var err error
	if o.proxy, err = a.execProxy(*proxyFlag); err != nil {
		return o, err
	}
	if o.admin, err = a.execAdmin(*adminFlag); err != nil {
		return o, err
	}
	if o.name == "" {
		o.name = commandName(o.argv)
	}
	return o, nil
}

// build is one run of modgate exec's command: its span, and its
// registration with modgate's admin port.
type build struct {
	bt      *telemetry.BuildTracing
	ctx     context.Context // carries the build span
	span    trace.Span
	traceID string
	reg     sidecar.BuildRegistration
	client  *http.Client // to the admin port
	admin   string
	proxy   *url.URL
	regErr  error // registering failed: no summary from modgate
}

// startBuild starts the build's span (a child of TRACEPARENT when set) and
// registers the build with modgate.
func (a *App) startBuild(ctx context.Context, o execOptions) (*build, error) {
	dir, _ := os.Getwd()
	cmdline := strings.Join(o.argv, " ")
	bt, err := telemetry.SetupBuildTracing(ctx, telemetry.Config{ServiceName: "modgate-exec", Version: Version(), Getenv: a.Getenv})
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	parent := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{
		"traceparent": strings.TrimSpace(a.Getenv("TRACEPARENT")), "tracestate": strings.TrimSpace(a.Getenv("TRACESTATE")),
	})
	start := time.Now()
	bctx, span := bt.Tracer().Start(parent, o.name, trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(start), trace.WithAttributes(
		semconv.ProcessCommandLine(cmdline),
		semconv.ProcessExecutableName(filepath.Base(o.argv[0])),
		semconv.ProcessWorkingDirectory(dir),
		attribute.String("modgate.build.proxy", upstream.RedactText(o.proxy.String())),
	))
	b := &build{bt: bt, ctx: bctx, span: span, traceID: span.SpanContext().TraceID().String(),
		reg:    sidecar.BuildRegistration{Name: o.name, Command: cmdline, Dir: dir, Start: start},
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}},
		admin:  o.admin, proxy: o.proxy}
	b.regErr = registerBuild(ctx, b.client, b.admin, b.traceID, b.reg)
	return b, nil
}

// runBuild runs the command with the build's environment, ends the build's
// span and flushes it, and returns the command's exit status.
func (a *App) runBuild(b *build, argv []string) (int, error) {
	env, err := buildEnv(a.environ(), b.proxy, b.ctx)
	if err != nil {
		b.span.End()
		return 0, fmt.Errorf("exec: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, os.Stdin, a.Stdout, a.Stderr
	code := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
			if code < 0 {
				code = 1 // killed by a signal
			}
		default:
			fmt.Fprintf(a.Stderr, "modgate exec: %v\n", err)
			code = 127
		}
	}
	b.reg.End, b.reg.ExitCode = time.Now(), &code
	b.span.SetAttributes(semconv.ProcessExitCode(code))
	if code != 0 {
		b.span.SetStatus(codes.Error, fmt.Sprintf("exit status %d", code))
	}
	b.span.End(trace.WithTimestamp(b.reg.End))
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := b.bt.Shutdown(sctx); err != nil {
		fmt.Fprintf(a.Stderr, "modgate exec: the build span was not exported: %v\n", err)
	}
	cancel()
	return code, nil
}

// buildReport tells modgate the build ended and builds the report from its
// summary, compared with the baseline if there is one.
func (a *App) buildReport(ctx context.Context, b *build, o execOptions, code int) (BuildReport, error) {
	reg := b.reg
	rep := BuildReport{WallMS: float64(reg.End.Sub(reg.Start).Microseconds()) / 1000, TraceURL: sidecar.TraceLink(a.Getenv("MODGATE_TRACE_URL"), b.traceID)}
	regErr := b.regErr
	if regErr == nil {
		regErr = registerBuild(ctx, b.client, b.admin, b.traceID, reg)
	}
	if regErr == nil {
		rep.BuildSummary, regErr = buildSummary(ctx, b.client, b.admin, b.traceID)
	}
	if regErr != nil {
		rep.Incomplete = regErr.Error()
		rep.BuildSummary = telemetry.BuildSummary{TraceID: b.traceID}
	}
	rep.Name, rep.Command, rep.Dir, rep.Start, rep.End, rep.ExitCode = reg.Name, reg.Command, reg.Dir, reg.Start, reg.End, reg.ExitCode
	for i, f := range rep.Failures {
		rep.Failures[i].Explain = explainAnswer(f.Answer)
	}
	if o.base != nil && rep.Incomplete == "" {
		c, err := telemetry.CompareBuilds(o.base.BuildSummary, rep.BuildSummary, o.maxRatio)
		if err != nil {
			return rep, fmt.Errorf("exec: --baseline %s: %w", o.baseline, err)
		}
		rep.Baseline = &c
	}
	return rep, nil
}

// execProxy is modgate's URL: --proxy, MODGATE_PROXY, the address of
// MODGATE_LISTEN, or the default listener.
func (a *App) execProxy(flagValue string) (*url.URL, error) {
	raw := flagValue
	if raw == "" {
		raw = a.Getenv("MODGATE_PROXY")
	}
	if raw == "" {
		raw = "http://127.0.0.1:7070"
		if l := a.Getenv("MODGATE_LISTEN"); l != "" {
			raw = "http://" + clientAddr(l)
		}
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("exec: --proxy %q: want modgate's URL, e.g. http://127.0.0.1:7070", upstream.RedactText(raw))
	}
	return u, nil
}

// execAdmin is modgate's admin URL: --admin, MODGATE_ADMIN (a URL, or the
// admin listener's address as run takes it), or the default.
func (a *App) execAdmin(flagValue string) (string, error) {
	raw := flagValue
	if raw == "" {
		raw = a.Getenv("MODGATE_ADMIN")
	}
	if raw == "" {
		raw = "127.0.0.1:7071"
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + clientAddr(raw)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("exec: --admin %q: want modgate's admin URL, e.g. http://127.0.0.1:7071", raw)
	}
	return strings.TrimSuffix(u.String(), "/"), nil
}

// commandName names the build span after the command: the program and
// its subcommands, e.g. "go build", "go mod download", "make".
func commandName(argv []string) string {
	parts := []string{filepath.Base(argv[0])}
	for _, a := range argv[1:] {
		if len(parts) == 3 || strings.HasPrefix(a, "-") || strings.ContainsAny(a, "/.@=") {
			break
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// buildEnv is CMD's environment: environ with the build's trace context
// in GOPROXY, in the proxy variables that point at modgate, and in
// TRACEPARENT and TRACESTATE.
func buildEnv(environ []string, proxy *url.URL, ctx context.Context) ([]string, error) {
	sc := trace.SpanContextFromContext(ctx)
	vars := map[string]string{}
	var order []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if _, seen := vars[k]; !seen {
			order = append(order, k)
		}
		vars[k] = v
	}
	set := func(k, v string) {
		if _, seen := vars[k]; !seen {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("GOPROXY", traceGOPROXY(vars["GOPROXY"], proxy, sc))
	forward := false
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"} {
		if v, ok := vars[k]; ok && v != "" {
			if nv, ok := traceProxyURL(v, proxy, sc); ok {
				vars[k], forward = nv, true
			}
		}
	}
	if _, given := vars[gitProxyAuth]; forward && !given {
		set(gitProxyAuth, "basic")
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	set("TRACEPARENT", c["traceparent"])
	if ts := c["tracestate"]; ts != "" {
		set("TRACESTATE", ts)
	} else {
		delete(vars, "TRACESTATE")
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		if v, ok := vars[k]; ok {
			out = append(out, k+"="+v)
		}
	}
	return out, nil
}

// gitProxyAuth makes git send the proxy URL's user information with its
// first CONNECT: by default curl first asks without it, to learn which
// schemes the proxy takes, and a request without it carries no trace.
const gitProxyAuth = "GIT_HTTP_PROXY_AUTHMETHOD"

// traceGOPROXY puts sc into the entries of a GOPROXY list that point at
// modgate (replacing a context an outer build put there). A list without
// one becomes modgate, then direct, as `modgate env` prints it.
func traceGOPROXY(list string, proxy *url.URL, sc trace.SpanContext) string {
	var b strings.Builder
	found := false
	for list != "" {
		entry, sep := list, ""
		if i := strings.IndexAny(list, ",|"); i >= 0 {
			entry, sep, list = list[:i], list[i:i+1], list[i+1:]
		} else {
			list = ""
		}
		if u, err := url.Parse(strings.TrimSpace(entry)); err == nil && sameServer(u, proxy) {
			u.Path = withoutTracePath(u.Path)
			u.RawPath = ""
			entry = telemetry.TraceGOPROXY(u.String(), sc)
			found = true
		}
		b.WriteString(entry + sep)
	}
	if !found {
		u := *proxy
		u.Path = withoutTracePath(u.Path)
		return telemetry.TraceGOPROXY(u.String(), sc) + ",direct"
	}
	return b.String()
}

// withoutTracePath removes a /.trace/<traceparent> element from a
// GOPROXY URL's path.
func withoutTracePath(p string) string {
	prefix := "/" + telemetry.TracePathElem + "/"
	i := strings.Index(p, prefix)
	if i < 0 {
		return p
	}
	rest := p[i+len(prefix):]
	_, after, _ := strings.Cut(rest, "/")
	out := p[:i]
	if after != "" {
		out += "/" + after
	}
	return out
}

// traceProxyURL puts sc into the user name of a proxy URL that points at
// modgate, keeping its own user and password. The password part is
// always there (possibly empty): git asks a credential helper for the
// password of a proxy URL that has a user and none.
func traceProxyURL(raw string, proxy *url.URL, sc trace.SpanContext) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil || !sameServer(u, proxy) {
		return raw, false
	}
	user, pass := "", ""
	if u.User != nil {
		user = u.User.Username()
		pass, _ = u.User.Password()
	} else if proxy.User != nil {
		user = proxy.User.Username()
		pass, _ = proxy.User.Password()
	}
	user, _, _ = telemetry.SplitTraceUser(user)
	u.User = url.UserPassword(telemetry.TraceUser(user, sc), pass)
	return u.String(), true
}

// sameServer reports whether u is modgate's listener.
func sameServer(u, proxy *url.URL) bool {
	if u == nil || u.Host == "" || u.Scheme != proxy.Scheme {
		return false
	}
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if u.Scheme == "https" {
			return "443"
		}
		return "80"
	}
	return strings.EqualFold(u.Hostname(), proxy.Hostname()) && port(u) == port(proxy)
}

func registerBuild(ctx context.Context, client *http.Client, admin, traceID string, reg sidecar.BuildRegistration) error {
	body, _ := json.Marshal(reg)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, admin+"/debug/builds/"+traceID, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("modgate's admin port %s: %w (no build summary)", admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("modgate's admin port %s: %s: %s (a modgate without build summaries? no build summary)", admin, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// buildSummary asks modgate for the build's summary, once the requests
// still in flight (the very last of the build) are done.
func buildSummary(ctx context.Context, client *http.Client, admin, traceID string) (telemetry.BuildSummary, error) {
	var sum telemetry.BuildSummary
	c := *client
	c.Timeout = 20 * time.Second
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, admin+"/debug/builds/"+traceID+"?wait=10s", nil)
	if err != nil {
		return sum, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return sum, fmt.Errorf("modgate's admin port %s: %w", admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return sum, fmt.Errorf("modgate's admin port %s: %s: %s", admin, resp.Status, strings.TrimSpace(string(msg)))
	}
	err = json.NewDecoder(resp.Body).Decode(&sum)
	return sum, err
}

// explainAnswer is `modgate explain` of one of modgate's answers.
func explainAnswer(answer []string) string {
	if len(answer) == 0 {
		return ""
	}
	es := explain.Text(strings.Join(answer, "\n"))
	if len(es) == 0 {
		return ""
	}
	e := es[0]
	return strings.TrimSpace(e.Title + ": " + e.Cause + " Fix: " + e.Fix)
}

func readBuildReport(name string) (BuildReport, error) {
	var r BuildReport
	data, err := os.ReadFile(name)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: not a build report of modgate exec --report: %w", name, err)
	}
	if r.TraceID == "" {
		return r, fmt.Errorf("%s: not a build report of modgate exec --report (no trace_id)", name)
	}
	return r, nil
}

func writeBuildReport(name string, r BuildReport) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(name, append(data, '\n'), 0o666)
}

// writeBuildSummary prints the short summary of a build for a person.
func writeBuildSummary(w io.Writer, r BuildReport, maxRatio float64) {
	var b strings.Builder
	exit := 0
	if r.ExitCode != nil {
		exit = *r.ExitCode
	}
	fmt.Fprintf(&b, "modgate exec: %s: exit status %d after %s\n", r.Name, exit, msText(r.WallMS))
	switch {
	case r.Incomplete != "":
		fmt.Fprintf(&b, "  no summary from modgate: %s\n", r.Incomplete)
	case r.Requests == 0:
		b.WriteString("  no request reached modgate (the command fetched no module, or its GOPROXY was set again inside it)\n")
	default:
		var kinds []string
		for _, k := range sortedKeys(r.ByKind) {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, r.ByKind[k].Requests))
		}
		var outs []string
		for _, o := range []string{"ok", "notfound", "denied", "error", "gone"} {
			if n := r.ByOutcome[o]; n > 0 {
				outs = append(outs, fmt.Sprintf("%d %s", n, o))
			}
		}
		fmt.Fprintf(&b, "  %d requests to modgate (%s): %s; %d cache hits; %s\n", r.Requests, strings.Join(kinds, ", "), strings.Join(outs, ", "), r.CacheHits, byteSize(r.Bytes))
		fmt.Fprintf(&b, "  waiting on modgate: %s", msText(r.WaitMS))
		if r.Fallthroughs > 0 {
			fmt.Fprintf(&b, "; %d fall-throughs", r.Fallthroughs)
		}
		b.WriteString("\n")
		if len(r.Slowest) > 0 {
			var slow []string
			for _, m := range r.Slowest[:min(3, len(r.Slowest))] {
				who := m.Upstream
				if who == "" {
					who = "modgate"
				}
				slow = append(slow, fmt.Sprintf("%s@%s %s (%s)", m.Module, m.Version, msText(m.SumMS), who))
			}
			fmt.Fprintf(&b, "  slowest: %s\n", strings.Join(slow, ", "))
		}
		for _, o := range r.Breakers {
			fmt.Fprintf(&b, "  breaker opened: %s: %s\n", o.Upstream, o.Reason)
		}
		for i, f := range r.Failures {
			if i == 5 {
				fmt.Fprintf(&b, "  ... and %d more failures (see --report)\n", len(r.Failures)-5)
				break
			}
			what := f.Module
			if f.Version != "" {
				what += "@" + f.Version
			}
			if what == "" {
				what = f.Host
			}
			first := ""
			if len(f.Answer) > 0 {
				first = f.Answer[0]
			}
			fmt.Fprintf(&b, "  failed: %s %s: %d %s\n", f.Kind, what, f.Status, first)
			if f.Explain != "" {
				fmt.Fprintf(&b, "    %s\n", f.Explain)
			}
		}
	}
	if c := r.Baseline; c != nil {
		if len(c.Exceeded) == 0 {
			fmt.Fprintf(&b, "  baseline: module time %.2f× the baseline's (within %g×)\n", c.Ratio, maxRatio)
		} else {
			fmt.Fprintf(&b, "  SLOWER THAN THE BASELINE (past %g×):\n", maxRatio)
			for _, e := range c.Exceeded {
				fmt.Fprintf(&b, "    %s\n", e)
			}
			if c.Worst != "" {
				for _, u := range c.Upstreams {
					if u.Name == c.Worst {
						fmt.Fprintf(&b, "    the time was lost at upstream %s: %s, against %s in the baseline\n", u.Name, msText(u.NowMS), msText(u.BaselineMS))
					}
				}
			}
		}
	}
	fmt.Fprintf(&b, "  trace %s", r.TraceID)
	if r.TraceURL != "" {
		fmt.Fprintf(&b, ": %s", r.TraceURL)
	}
	b.WriteString("\n")
	io.WriteString(w, b.String())
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func msText(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", ms)
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// traceEnv is `modgate env --trace`: the GOPROXY and proxy lines carry
// traceparent (a CI job's TRACEPARENT), as modgate exec sets them, for CI
// systems that already make a trace of each job.
func traceEnv(lines []envLine, traceparent string) ([]envLine, error) {
	if strings.TrimSpace(traceparent) == "" {
		return nil, errors.New("env --trace: TRACEPARENT is not set: --trace carries the trace context a CI job exports (or use modgate exec, which makes one)")
	}
	sc, err := telemetry.ParseTraceparent(strings.TrimSpace(traceparent))
	if err != nil {
		return nil, fmt.Errorf("env --trace: TRACEPARENT: %w", err)
	}
	var self *url.URL
	for _, l := range lines {
		if l.name == "GOPROXY" {
			first, _, _ := strings.Cut(l.value, ",")
			self, err = url.Parse(first)
			if err != nil {
				return nil, err
			}
		}
	}
	if self == nil {
		return nil, errors.New("env --trace: no GOPROXY to carry the trace context")
	}
	out := make([]envLine, 0, len(lines)+1)
	for _, l := range lines {
		switch l.name {
		case "GOPROXY":
			out = append(out, comment("GOPROXY and the proxy URLs carry TRACEPARENT (trace %s): every request of the build joins that trace", sc.TraceID()))
			l.value = traceGOPROXY(l.value, self, sc)
		case "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy":
			l.value, _ = traceProxyURL(l.value, self, sc)
		}
		out = append(out, l)
		if l.name == "https_proxy" {
			out = append(out, comment("%s: git sends the proxy URL's user name (and with it the trace) from its first request", gitProxyAuth),
				envLine{name: gitProxyAuth, value: "basic"})
		}
	}
	return out, nil
}
