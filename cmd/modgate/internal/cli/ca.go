package cli

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/modgate/modgate/sidecar/mitm"
)

const caUsage = `usage:
  modgate ca init [--ca-dir D]   make the CA that intercepts mitm_hosts (refuses to overwrite one)
  modgate ca path [--ca-dir D]   print the CA certificate's path, for SSL_CERT_FILE and GIT_SSL_CAINFO
  modgate ca issue --host H [--host H]... [--out DIR] [--ca-dir D]
                                 mint a certificate for modgate's own HTTPS listener (tls:), signed by the CA:
                                 DIR/<first host>.crt and DIR/<first host>.key (default DIR: the CA folder)
`

func (a *App) ca(_ context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "init" && args[0] != "path" && args[0] != "issue") {
		fmt.Fprint(a.Stderr, caUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("modgate ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(a.Stderr)
	dir := fs.String("ca-dir", "", "CA folder (default $MODGATE_CA_DIR, else modgate/ca in the user's config folder)")
	var hosts []string
	out := ""
	if args[0] == "issue" {
		fs.Func("host", "a name or IP address clients reach modgate by (repeatable; the first names the files)", func(s string) error {
			if s == "" || (net.ParseIP(s) == nil && strings.ContainsAny(s, "/\\ :*[]")) {
				return fmt.Errorf("%q is not a host name or IP address", s)
			}
			hosts = append(hosts, s)
			return nil
		})
		fs.StringVar(&out, "out", "", "folder for the certificate and key (default: the CA folder)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return usageOrHelp(err)
	}
	if *dir == "" {
		*dir = a.Getenv("MODGATE_CA_DIR")
	}
	d := caDir(*dir)
	switch args[0] {
	case "init":
		if err := mitm.Init(d); err != nil {
			return err
		}
		fmt.Fprintf(a.Stderr, "modgate: made a CA in %s; clients trust it with SSL_CERT_FILE and GIT_SSL_CAINFO set to:\n", d)
	case "issue":
		return a.caIssue(d, out, hosts)
	default:
		if _, err := mitm.Load(d); err != nil {
			return err
		}
	}
	fmt.Fprintln(a.Stdout, mitm.CertPath(d))
	return nil
}

// caIssue writes a server certificate for hosts, signed by the CA in
// caDir, to out/<first host>.crt and .key (0600).
func (a *App) caIssue(caDir, out string, hosts []string) error {
	if len(hosts) == 0 {
		fmt.Fprint(a.Stderr, "modgate ca issue: give at least one --host (the name clients reach modgate by)\n")
		return errUsage
	}
	ca, err := mitm.Load(caDir)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.IssueServer(hosts)
	if err != nil {
		return err
	}
	if out == "" {
		out = caDir
	}
	// Absolute: the paths go into a config and into clients' settings.
	if out, err = filepath.Abs(out); err != nil {
		return err
	}
	if caDir, err = filepath.Abs(caDir); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	base := filepath.Join(out, hosts[0])
	certFile, keyFile := base+".crt", base+".key"
	// The key first, then the certificate: a listener that watches them
	// reloads once both are new. Each is renamed into place whole.
	if err := writeReplace(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeReplace(certFile, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(a.Stderr, "modgate: a certificate for %s, valid for a year, signed by the CA in %s; in modgate's config:\n", strings.Join(hosts, ", "), caDir)
	fmt.Fprintf(a.Stdout, "tls: {cert_file: %s, key_file: %s}\n", certFile, keyFile)
	fmt.Fprintf(a.Stderr, "clients trust it with SSL_CERT_FILE=%s (see modgate env)\n", mitm.CertPath(caDir))
	return nil
}

// writeReplace writes data to name through a temporary file renamed over
// it, with mode from the start.
func writeReplace(name string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".modgate-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), name)
}
