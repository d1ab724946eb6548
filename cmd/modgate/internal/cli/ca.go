package cli

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/modgate/modgate/sidecar/mitm"
)

const caUsage = `usage:
  modgate ca init [--ca-dir D]     make the CA that intercepts mitm_hosts (refuses to overwrite one)
  modgate ca path [--ca-dir D]     print the CA certificate's path
  modgate ca bundle [--out FILE] [--ca-dir D]
                                   write the system's roots plus the CA, for SSL_CERT_FILE and
                                   GIT_SSL_CAINFO (modgate env keeps it fresh), and print its path
  modgate ca trust [--ca-dir D]    print the commands that make this system trust the CA
                                   (macOS and Windows: the go command ignores SSL_CERT_FILE there)
  modgate ca issue --host H [--host H]... [--out DIR] [--ca-dir D]
                                   mint a certificate for modgate's own HTTPS listener (tls:), signed by the CA:
                                   DIR/<first host>.crt and DIR/<first host>.key (default DIR: the CA folder)
`

const caDirUsage = "CA folder (default $MODGATE_CA_DIR, else modgate/ca in the user's config folder)"

func (a *App) ca(_ context.Context, args []string) error {
	sub := func(name, head string, extra func(fs *flag.FlagSet), do func(fs *flag.FlagSet, dir string) error) func([]string) error {
		return func(args []string) error {
			fs := a.newFlags("modgate ca "+name, head)
			dir := fs.String("ca-dir", "", caDirUsage)
			if extra != nil {
				extra(fs)
			}
			if err := a.parseFlags(fs, args); err != nil {
				return err
			}
			if fs.NArg() > 0 {
				fmt.Fprintf(a.Stderr, "modgate ca %s: unexpected argument %q\n", name, fs.Arg(0))
				return errUsage
			}
			if *dir == "" {
				*dir = a.Getenv("MODGATE_CA_DIR")
			}
			return do(fs, caDir(*dir))
		}
	}
	var hosts []string
	var out string
	return a.group("modgate ca", caUsage, args, map[string]func([]string) error{
		"init": sub("init", "usage: modgate ca init [--ca-dir D]\n\nMakes the CA that signs certificates for intercepted hosts (forward.mitm_hosts)\nand for modgate's own HTTPS listener. It refuses to overwrite a CA.\n", nil,
			func(_ *flag.FlagSet, d string) error {
				if err := mitm.Init(d); err != nil {
					return err
				}
				fmt.Fprintf(a.Stderr, "modgate: made a CA in %s; clients trust it through modgate env (Linux: SSL_CERT_FILE and GIT_SSL_CAINFO name a bundle of the system's roots and this CA) or modgate ca trust (macOS, Windows). Its certificate:\n", d)
				fmt.Fprintln(a.Stdout, mitm.CertPath(d))
				return nil
			}),
		"path": sub("path", "usage: modgate ca path [--ca-dir D]\n\nPrints the path of the CA's certificate.\n", nil,
			func(_ *flag.FlagSet, d string) error {
				if _, err := mitm.Load(d); err != nil {
					return err
				}
				fmt.Fprintln(a.Stdout, mitm.CertPath(d))
				return nil
			}),
		"bundle": sub("bundle", "usage: modgate ca bundle [--out FILE] [--ca-dir D]\n\nWrites the roots this system trusts (as the go command finds them) followed by\nmodgate's CA, and prints the file's path: the file for SSL_CERT_FILE and\nGIT_SSL_CAINFO, which replace the system's roots rather than add to them.\nmodgate env rewrites it when the system's roots change.\n",
			func(fs *flag.FlagSet) {
				fs.StringVar(&out, "out", "", "file to write (default: "+BundleFile+" in the CA folder)")
			},
			func(_ *flag.FlagSet, d string) error {
				file, n, err := writeBundle(a.Getenv, d, out)
				if err != nil {
					return err
				}
				if n == 0 {
					fmt.Fprintln(a.Stderr, "modgate: found no system roots: the bundle holds only modgate's CA, so hosts reached through a plain tunnel will not be trusted")
				}
				fmt.Fprintln(a.Stdout, file)
				return nil
			}),
		"trust": sub("trust", "usage: modgate ca trust [--ca-dir D] [--goos OS]\n\nPrints the commands that make this system trust modgate's CA. On macOS and\nWindows the go command verifies certificates through the system and ignores\nSSL_CERT_FILE, so this is how it learns to trust intercepted hosts.\n",
			func(fs *flag.FlagSet) {
				fs.StringVar(&out, "goos", runtime.GOOS, "the operating system to print the commands for: linux, darwin or windows")
			},
			func(_ *flag.FlagSet, d string) error {
				if _, err := mitm.Load(d); err != nil {
					return err
				}
				cert, err := filepath.Abs(mitm.CertPath(d))
				if err != nil {
					return err
				}
				for _, line := range trustCommands(out, cert) {
					fmt.Fprintln(a.Stdout, line)
				}
				return nil
			}),
		"issue": sub("issue", "usage: modgate ca issue --host H [--host H]... [--out DIR] [--ca-dir D]\n\nMints a certificate for modgate's own HTTPS listener (tls:), signed by the CA,\nvalid for a year: DIR/<first host>.crt and DIR/<first host>.key.\n",
			func(fs *flag.FlagSet) {
				fs.Func("host", "a name or IP address clients reach modgate by (repeatable; the first names the files)", func(s string) error {
					if s == "" || (net.ParseIP(s) == nil && strings.ContainsAny(s, "/\\ :*[]")) {
						return fmt.Errorf("%q is not a host name or IP address", s)
					}
					hosts = append(hosts, s)
					return nil
				})
				fs.StringVar(&out, "out", "", "folder for the certificate and key (default: the CA folder)")
			},
			func(_ *flag.FlagSet, d string) error { return a.caIssue(d, out, hosts) }),
	})
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
