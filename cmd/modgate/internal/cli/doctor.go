package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/term"

	"github.com/modgate/modgate/cmd/modgate/internal/doctor"
	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/store"
	"github.com/modgate/modgate/sidecar/upstream"
)

const doctorUsage = `usage: modgate doctor [--json] [--scan DIR] [--policy F] [--no-probe] [run's config flags]

Checks the go env, the environment, modgate's config and policy, probes
modgate and its upstreams (with timings) and each https upstream's
certificate, and with --scan finds the same risks in a repository's go.mod
files and CI files. Each finding has a severity (error, warn, info), what
was found and the fix. Exit status 1 when any finding is an error.
`

// errDoctorFailed makes `modgate doctor` exit 1 after printing its report.
var errDoctorFailed = errors.New("doctor found problems")

// doctor wires `modgate doctor`'s flags and run's config loader to
// doctor.Run, and prints its report.
func (a *App) doctor(ctx context.Context, args []string) error {
	fs := a.newFlags("modgate doctor", doctorUsage)
	var rf runFlags
	// The settings doctor checks or probes.
	rf.register(fs, "listen", "admin", "upstream", "sumdb", "policy", "tls-ca-file", "resolve", "ca-dir", "mitm-host", "cache-dir", "cache-shared", "fleet-redis")
	jsonOut := fs.Bool("json", false, "print a JSON document instead of the list")
	scanDir := fs.String("scan", "", "also scan the repository in `folder`: go.mod replace directives and CI files")
	// `modgate run` has a --policy flag (registered above with the others);
	// this one only stands in if run ever loses it.
	if fs.Lookup("policy") == nil {
		fs.String("policy", "", "policy `file` whose private patterns GONOSUMDB must cover (env MODGATE_POLICY)")
	}
	noProbe := fs.Bool("no-probe", false, "make no requests: check settings only")
	goos := fs.String("goos", runtime.GOOS, "the system the go command runs on, for how it trusts modgate's CA (linux, darwin, windows)")
	timeout := fs.Duration("timeout", 3*time.Second, "bound on each probe")
	probeModule := fs.String("module", "golang.org/x/mod", "module whose version list and @latest the probes ask for")
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "modgate doctor: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if err := module.CheckPath(*probeModule); err != nil {
		return fmt.Errorf("doctor: --module: %v", err)
	}
	goenv := a.GoEnv
	if goenv == nil {
		goenv = goEnv
	}
	// The loaded config merges policy_file, MODGATE_POLICY and --policy;
	// when it does not load, the flag and the variable still say.
	policyFile := fs.Lookup("policy").Value.String()
	if policyFile == "" {
		policyFile = a.Getenv("MODGATE_POLICY")
	}
	opts := doctor.Options{
		Getenv: a.Getenv,
		GoEnv:  goenv,
		Load: func(goenv doctor.GoEnvFunc) (doctor.Modgate, error) {
			cfg, sc, err := loader{getenv: a.Getenv, goenv: goenv, goDefault: a.GoDefaultProxy}.load(fs, &rf)
			return doctorModgate(cfg, sc), err
		},
		PolicyFile: policyFile,
		Probe:      !*noProbe,
		Timeout:    *timeout,
		Module:     *probeModule,
		ScanDir:    *scanDir,
		Version:    Version(),
		GOOS:       *goos,
	}
	if f, ok := a.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		opts.Progress = a.Stderr
	}
	report := doctor.Run(ctx, opts)
	if *jsonOut {
		enc := json.NewEncoder(a.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else {
		doctor.WriteReport(a.Stdout, report)
	}
	if !report.OK {
		return fmt.Errorf("%w: %s", errDoctorFailed, report.Counts())
	}
	return nil
}

// doctorModgate is what doctor checks of the loaded config: modgate's
// listeners and how clients reach them, its upstreams, checksum database,
// fleet and policy file.
func doctorModgate(cfg Config, sc sidecar.Config) doctor.Modgate {
	m := doctor.Modgate{
		Listen: cfg.Listen, Admin: cfg.Admin,
		Resolve: cfg.Resolve, PolicyFile: cfg.PolicyFile, SumDB: sc.SumDB, SumDBURL: sc.SumDBURL, Verified: sc.SumDBKey != "", RootCAs: sc.RootCAs,
	}
	if cfg.Listen != "" {
		m.URL = "http://" + clientAddr(cfg.Listen)
	}
	m.Clients = doctor.Clients{Htpasswd: sc.Clients.HtpasswdFile != "", Tokens: sc.Clients.TokensFile != "",
		ClientCerts: sc.Clients.ClientCAFile != "", Anonymous: sc.Clients.Anonymous}
	if sc.TLS.Enabled() && cfg.Listen != "" {
		if trust, terr := newListenerTrust(sc.TLS, clientAddr(cfg.Listen), caDir(cfg.Forward.CADir)); terr == nil {
			m.URL = "https://" + trust.addr
			m.ListenerCert, _ = sc.TLS.Certificate()
		}
	}
	if cfg.Admin != "" {
		m.AdminURL = "http://" + clientAddr(cfg.Admin)
	}
	m.Fleet = fleetParts(cfg, sc)
	if cfg.Fleet.Redis != "" {
		m.FleetSecretFile = cfg.Fleet.SecretFile
	}
	m.MITM = len(cfg.Forward.MITMHosts) > 0
	for i, u := range cfg.Upstreams {
		du := doctor.Upstream{Name: u.Name, URL: u.URL}
		if i < len(sc.Upstreams) {
			du.Auth = sc.Upstreams[i].Auth
		}
		m.Upstreams = append(m.Upstreams, du)
	}
	return m
}

// fleetParts are the shared stores and the Redis of the config, for
// doctor to probe.
func fleetParts(cfg Config, sc sidecar.Config) []doctor.FleetPart {
	var parts []doctor.FleetPart
	for _, st := range []struct {
		tier string
		s    *store.Store
	}{{"public", sc.Cache.Shared}, {"private", sc.Cache.SharedPrivate}} {
		if st.s != nil {
			parts = append(parts, doctor.FleetPart{Name: "shared store (" + st.tier + ")", Where: st.s.Name(), Probe: st.s.Probe})
		}
	}
	if raw := cfg.Fleet.Redis; raw != "" {
		parts = append(parts, doctor.FleetPart{Name: "Redis", Where: upstream.RedactURL(raw), Probe: func(ctx context.Context) error {
			f, err := cfg.openFleet(nil)
			if err != nil {
				return err
			}
			defer f.Close()
			return f.Ping(ctx)
		}})
	}
	return parts
}
