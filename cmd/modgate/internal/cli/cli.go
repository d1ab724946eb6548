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
	// Environ is the environment that `modgate exec` passes on to its
	// command. If nil, os.Environ.
	Environ func() []string
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
checksum-database pass-through, a cache, telemetry and policy.

Usage:
  modgate run [flags]              serve on 127.0.0.1:7070 (status page on 127.0.0.1:7071)
  modgate env [--shell S]          print GOPROXY, HTTPS_PROXY, SSL_CERT_FILE... for the config run would load
  modgate cache ls|rm|warm|du|verify  list, remove, fill, measure or verify the artifact cache
  modgate policy check|lint        ask the policy about a module, or check a policy file
  modgate explain [FILE]           explain go command errors (stdin or FILE), with the fix
  modgate doctor [flags]           check go env, modgate, upstreams, certificates and a repository's settings
  modgate baseline record|compare  save upstream latency baselines, or compare two
  modgate exec [flags] -- CMD      run a build (go build ./..., make) as one trace, with a build report
  modgate ca init|path|bundle|trust|issue
                                   make the CA for intercepted hosts, trust it, or mint modgate's HTTPS certificate
  modgate version                  print the version
  modgate help [COMMAND]           print this, or a command's help (as COMMAND -h does)

Quick start:
  modgate run &
  eval "$(modgate env)"
  go mod download
`

// commands are modgate's commands, by name.
func (a *App) commands() map[string]func(context.Context, []string) error {
	return map[string]func(context.Context, []string) error{
		"run":      a.run,
		"env":      a.env,
		"cache":    a.cache,
		"policy":   a.policy,
		"explain":  a.explain,
		"doctor":   a.doctor,
		"baseline": a.baseline,
		"exec":     a.exec,
		"ca":       a.ca,
		"version":  a.version,
	}
}

// Run runs the subcommand in args and returns the exit code: 0 on success,
// 1 on failure, 2 on a usage error.
func (a *App) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, usage)
		return 2
	}
	cmds := a.commands()
	cmd, rest := args[0], args[1:]
	if isHelp(cmd) {
		if len(rest) == 0 {
			fmt.Fprint(a.Stdout, usage)
			return 0
		}
		// modgate help COMMAND [SUB]: that command's -h.
		cmd, rest = rest[0], append(rest[1:], "-h")
	}
	do, ok := cmds[cmd]
	if !ok {
		fmt.Fprintf(a.Stderr, "modgate: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	err := do(ctx, rest)
	var status exitStatus
	switch {
	case err == nil:
		return 0
	case errors.As(err, &status):
		return int(status) // the command's own, or a build past its baseline: both said why
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

func (a *App) version(_ context.Context, args []string) error {
	fs := a.newFlags("modgate version", "usage: modgate version\n\nPrints modgate's version, the Go version it was built with, and its platform.\n")
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "modgate %s %s %s/%s\n", Version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// errUsage is returned after a usage message has been printed.
var errUsage = errors.New("usage")
