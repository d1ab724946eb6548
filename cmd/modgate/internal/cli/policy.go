package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modgate/modgate/policy"
)

const policyUsage = `usage:
  modgate policy check [--policy F] [--kind K] [--host H] [--identity NAME] MODULE[@VERSION]
      print the decision, the rule and the reason; exit 0 allow, 1 deny
  modgate policy lint F
      check a policy file and print what it says
`

// errDenied makes `policy check` exit 1 after printing a denial.
var errDenied = errors.New("denied")

func (a *App) policy(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(a.Stderr, policyUsage)
		return errUsage
	}
	switch args[0] {
	case "check":
		return a.policyCheck(args[1:])
	case "lint":
		return a.policyLint(args[1:])
	}
	fmt.Fprintf(a.Stderr, "modgate policy: unknown command %q\n%s", args[0], policyUsage)
	return errUsage
}

func (a *App) policyCheck(args []string) error {
	fs := flag.NewFlagSet("modgate policy check", flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	file := fs.String("policy", "", "policy file (default $MODGATE_POLICY)")
	kind := fs.String("kind", "zip", "request kind: list info mod zip latest sumdb-lookup ...")
	host := fs.String("host", "", "destination host, for rules with hosts")
	identity := fs.String("identity", "", "who asks (a clients name, a certificate CN, anonymous), for rules and routes with identities")
	if err := fs.Parse(args); err != nil {
		return usageOrHelp(err)
	}
	if fs.NArg() != 1 {
		fmt.Fprint(a.Stderr, policyUsage)
		return errUsage
	}
	if *file == "" {
		*file = a.Getenv("MODGATE_POLICY")
	}
	if *file == "" {
		return errors.New("policy check: no policy file: give --policy or set MODGATE_POLICY")
	}
	p, err := policy.Load(*file)
	if err != nil {
		return err
	}
	mod, version, _ := strings.Cut(fs.Arg(0), "@")
	if err := module.CheckPath(mod); err != nil {
		return fmt.Errorf("policy check: %v", err)
	}
	if version != "" && !semver.IsValid(version) {
		return fmt.Errorf("policy check: %q is not a semantic version", version)
	}
	d := p.Decide(policy.Request{Module: mod, Version: version, Kind: *kind, Host: *host, Identity: *identity})
	fmt.Fprintf(a.Stdout, "%s %s\n", d, fs.Arg(0))
	if d.Rule > 0 {
		fmt.Fprintf(a.Stdout, "rule:    %d (%s)\n", d.Rule, d.RuleText)
	} else {
		fmt.Fprintf(a.Stdout, "rule:    none matched (%s)\n", d.RuleText)
	}
	if d.Reason != "" {
		fmt.Fprintf(a.Stdout, "reason:  %s\n", d.Reason)
	}
	if pattern, ok := p.IsPrivate(mod); ok {
		fmt.Fprintf(a.Stdout, "private: yes (%s): only private upstreams; add %s to GONOSUMDB\n", pattern, pattern)
	}
	if ups, ok := p.RouteFor(mod, *identity); ok {
		fmt.Fprintf(a.Stdout, "route:   %s\n", strings.Join(ups, ", "))
	}
	if !d.Allow {
		if c := p.Contact(); c != "" {
			fmt.Fprintf(a.Stdout, "contact: %s\n", c)
		}
		return errDenied
	}
	return nil
}

func (a *App) policyLint(args []string) error {
	if len(args) != 1 {
		fmt.Fprint(a.Stderr, policyUsage)
		return errUsage
	}
	p, err := policy.Load(args[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "%s: ok\n", args[0])
	for _, line := range p.Describe() {
		fmt.Fprintln(a.Stdout, "  "+line)
	}
	return nil
}

// usageOrHelp maps a flag parsing error to Run's exit codes.
func usageOrHelp(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return errUsage
}
