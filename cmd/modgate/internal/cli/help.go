package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Every command answers -h, -help and --help on standard output with exit
// status 0, its usage followed by its real flags and their defaults; a bad
// command line goes to standard error with exit status 2.

// newFlags returns the flag set of a command whose usage starts with head.
func (a *App) newFlags(name, head string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), head)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args into fs: the usage goes to standard output for
// -h (flag.ErrHelp), to standard error after the error for a bad flag
// (errUsage).
func (a *App) parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(a.Stderr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(a.Stdout)
		fs.Usage()
		fs.SetOutput(a.Stderr)
		return flag.ErrHelp
	}
	fmt.Fprintf(a.Stderr, "%s: %v\n", fs.Name(), err)
	fs.Usage()
	return errUsage
}

// isHelp reports whether arg asks for help in place of a subcommand.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// group dispatches a command made of subcommands (policy, ca, baseline,
// cache): help for the group on standard output, an unknown or missing
// subcommand on standard error with errUsage.
func (a *App) group(name, usage string, args []string, subs map[string]func([]string) error) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, usage)
		return errUsage
	}
	if isHelp(args[0]) {
		fmt.Fprint(a.Stdout, usage)
		return nil
	}
	sub, ok := subs[args[0]]
	if !ok {
		fmt.Fprintf(a.Stderr, "%s: unknown subcommand %q\n\n%s", name, args[0], usage)
		return errUsage
	}
	return sub(args[1:])
}
