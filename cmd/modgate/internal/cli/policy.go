package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"

	"github.com/modgate/modgate/policy"
	"github.com/modgate/modgate/sidecar/wire"
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
	return a.group("modgate policy", policyUsage, args, map[string]func([]string) error{
		"check": a.policyCheck,
		"lint":  a.policyLint,
	})
}

func (a *App) policyCheck(args []string) error {
	fs := a.newFlags("modgate policy check", `usage: modgate policy check [flags] MODULE[@VERSION]

Prints the policy's decision for the module, the rule and the reason;
exit status 0 for allow, 1 for deny.
`)
	file := fs.String("policy", "", "policy file (default $MODGATE_POLICY)")
	kind := fs.String("kind", "zip", "request kind: list info mod zip latest sumdb-lookup ...")
	host := fs.String("host", "", "destination host, for rules with hosts")
	identity := fs.String("identity", "", "who asks (a clients name, a certificate CN, anonymous), for rules and routes with identities")
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
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
	d := p.Decide(policy.Request{Module: mod, Version: version, Kind: wire.Kind(*kind), Host: *host, Identity: *identity})
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
	fs := a.newFlags("modgate policy lint", `usage: modgate policy lint FILE

Checks a policy file and prints what it says.
`)
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	file := fs.Arg(0)
	p, err := policy.Load(file)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.Stdout, "%s: ok\n", file)
	for _, line := range p.Describe() {
		fmt.Fprintln(a.Stdout, "  "+line)
	}
	return nil
}
