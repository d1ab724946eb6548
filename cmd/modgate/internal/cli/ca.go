package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/modgate/modgate/sidecar/mitm"
)

const caUsage = `usage:
  modgate ca init [--ca-dir D]   make the CA that intercepts mitm_hosts (refuses to overwrite one)
  modgate ca path [--ca-dir D]   print the CA certificate's path, for SSL_CERT_FILE and GIT_SSL_CAINFO
`

func (a *App) ca(_ context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "init" && args[0] != "path") {
		fmt.Fprint(a.Stderr, caUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("modgate ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	dir := fs.String("ca-dir", "", "CA folder (default $MODGATE_CA_DIR, else modgate/ca in the user's config folder)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageOrHelp(err)
	}
	if *dir == "" {
		*dir = a.Getenv("MODGATE_CA_DIR")
	}
	d := caDir(*dir)
	if args[0] == "init" {
		if err := mitm.Init(d); err != nil {
			return err
		}
		fmt.Fprintf(a.Stderr, "modgate: made a CA in %s; clients trust it with SSL_CERT_FILE and GIT_SSL_CAINFO set to:\n", d)
	} else if _, err := mitm.Load(d); err != nil {
		return err
	}
	fmt.Fprintln(a.Stdout, mitm.CertPath(d))
	return nil
}
