// Package cli holds modgate's command line: each subcommand's flags, the
// one config loader, and the subcommands small enough to need no package
// of their own (explain and doctor have theirs and are handed what cli
// read). It is the only package that reads the environment.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/modgate/modgate/sidecar/upstream"
)

// version is set at build time with -ldflags "-X ...cli.version=v1.2.3";
// otherwise the module version from the build info is used.
var version = ""

// Version returns modgate's version.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// App is one invocation of modgate: its arguments' world.
type App struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// GoEnv runs `go env NAME...`.
	GoEnv func(ctx context.Context, names ...string) ([]string, error)
	// GoDefaultProxy returns the go command's built-in GOPROXY, for a
	// chain from the go env that named only modgate. If nil, there is
	// no such fallback.
	GoDefaultProxy func(ctx context.Context) (string, error)
	// LookupHost resolves upstream host names for run's start-up check.
	// If nil, net.DefaultResolver.LookupHost.
	LookupHost func(ctx context.Context, host string) ([]string, error)
}

// Main runs modgate with the process's arguments and environment and
// returns the exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &App{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, GoEnv: goEnv, GoDefaultProxy: goDefaultProxy}
	return app.Run(ctx, os.Args[1:])
}

const usage = `modgate is a sidecar for Go module traffic: a GOPROXY with an upstream chain,
checksum-database pass-through, telemetry and policy.

Usage:
  modgate run [flags]     serve (modgate run -h lists the flags)
  modgate env [--shell S] print GOPROXY, GONOSUMDB, HTTPS_PROXY... for the config run would load
  modgate policy check|lint   ask the policy about a module, or check a policy file
  modgate explain [FILE]  explain go command errors (stdin or FILE), with the fix
  modgate doctor [flags]  check go env, modgate, upstreams, certificates and a repository's settings
  modgate baseline record|compare   save upstream latency baselines, or compare two
  modgate ca init|path    make the CA for intercepted hosts, or print its certificate's path
  modgate version         print the version

Point the go command at it with GOPROXY=http://127.0.0.1:7070.
`

// Run runs the subcommand in args and returns the exit code: 0 on success,
// 1 on failure, 2 on a usage error.
func (a *App) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "run":
		err = a.run(ctx, rest)
	case "env":
		err = a.env(ctx, rest)
	case "policy":
		err = a.policy(ctx, rest)
	case "explain":
		err = a.explain(ctx, rest)
	case "doctor":
		err = a.doctor(ctx, rest)
	case "baseline":
		err = a.baseline(ctx, rest)
	case "ca":
		err = a.ca(ctx, rest)
	case "version":
		fmt.Fprintf(a.Stdout, "modgate %s %s %s/%s\n", Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(a.Stdout, usage)
	default:
		fmt.Fprintf(a.Stderr, "modgate: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errDenied):
		return 1
	}
	// The last line of defence: an error that quotes a URL never shows its
	// credentials.
	fmt.Fprintf(a.Stderr, "modgate: %s\n", upstream.RedactText(err.Error()))
	return 1
}

// errUsage is returned after a usage message has been printed.
var errUsage = errors.New("usage")
