package doctor

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Clients is who may use modgate's listener (the clients section).
type Clients struct {
	// Htpasswd, Tokens and ClientCerts say which credentials modgate
	// takes: user names and passwords, Bearer tokens, client
	// certificates.
	Htpasswd, Tokens, ClientCerts bool
	// Anonymous lets requests without credentials in.
	Anonymous bool
}

// required reports whether modgate refuses requests without credentials.
func (c Clients) required() bool {
	return (c.Htpasswd || c.Tokens || c.ClientCerts) && !c.Anonymous
}

// checkClients checks that the go command can reach a modgate that asks
// who is asking: GOPROXY over https, modgate's certificate trusted,
// GOAUTH on, and a netrc line for modgate's host. It never shows a
// password.
func (d *run) checkClients() {
	if !d.cfgOK {
		return
	}
	c := d.m.Clients
	self, err := url.Parse(d.modgateURL())
	if err != nil {
		return
	}
	goproxy := d.goenv["GOPROXY"]
	var first *url.URL
	if e := goproxyEntries(goproxy); len(e) > 0 && d.usesModgate(goproxy) {
		first, _ = url.Parse(strings.TrimSpace(e[0]))
	}
	if d.m.ListenerCert != nil && first != nil && first.Scheme == "http" {
		d.add(Finding{Severity: Error, Check: "goproxy-not-https", What: fmt.Sprintf("GOPROXY=%q reaches modgate over http, but its listener is HTTPS", goproxy),
			Where: d.source("GOPROXY"), Fix: "`go env -w GOPROXY=" + self.String() + ",direct` (see `modgate env`)."})
	}
	if d.m.ListenerCert != nil {
		d.checkListenerTrust(self.Hostname())
	}
	if !c.required() {
		return
	}
	if d.m.ListenerCert == nil {
		d.add(Finding{Severity: Error, Check: "clients-over-http",
			What:  "modgate asks who is asking (clients), but its listener is plain HTTP: the go command sends netrc and GOAUTH credentials only over HTTPS",
			Where: "modgate config: clients", Fix: "Give the listener a certificate: `modgate ca issue --host <name>` and tls: {cert_file, key_file} in the config."})
		return
	}
	if !c.Htpasswd {
		return // tokens come from a GOAUTH command; certificates from other tools
	}
	goauth := strings.TrimSpace(d.goenv["GOAUTH"])
	switch {
	case goauth == "off":
		d.add(Finding{Severity: Error, Check: "goauth", What: "GOAUTH=off: the go command sends no credentials, and modgate asks for them",
			Where: d.source("GOAUTH"), Fix: "`go env -w GOAUTH=netrc`"})
		return
	case goauth != "" && !strings.Contains(";"+strings.ReplaceAll(goauth, " ", "")+";", ";netrc;"):
		d.add(Finding{Severity: Warn, Check: "goauth", What: fmt.Sprintf("GOAUTH=%q does not read the netrc file, where modgate's user and password go", goauth),
			Where: d.source("GOAUTH"), Fix: "Add netrc: `go env -w GOAUTH=\"netrc;" + goauth + "\"`, or have your command print modgate's credentials."})
		return
	}
	d.checkNetrc(self)
}

// checkListenerTrust checks that the go command trusts modgate's
// certificate: through SSL_CERT_FILE when it is set (it replaces the
// system's roots), else the system's roots.
func (d *run) checkListenerTrust(host string) {
	cert := d.m.ListenerCert
	opts := x509.VerifyOptions{DNSName: host}
	where := "system roots"
	if f := d.opts.Getenv("SSL_CERT_FILE"); f != "" {
		where = "SSL_CERT_FILE " + f
		pem, err := os.ReadFile(f)
		if err != nil {
			d.add(Finding{Severity: Error, Check: "listener-trust", What: "SSL_CERT_FILE cannot be read: " + err.Error(), Where: "environment"})
			return
		}
		opts.Roots = x509.NewCertPool()
		opts.Roots.AppendCertsFromPEM(pem)
	}
	if _, err := cert.Verify(opts); err != nil {
		d.add(Finding{Severity: Error, Check: "listener-trust", What: fmt.Sprintf("the go command would not trust modgate's certificate for %s (%s): %v", host, where, err),
			Where: where, Fix: "Set SSL_CERT_FILE to the CA that signed it (for a certificate from `modgate ca issue`: `modgate ca path`); see `modgate env`."})
		return
	}
	d.add(Finding{Severity: Info, Check: "listener-trust", What: fmt.Sprintf("modgate's certificate for %s is trusted (%s)", host, where)})
}

// checkNetrc looks for a machine line for modgate in the netrc file the
// go command reads ($NETRC, else ~/.netrc). It reports the login, never
// the password.
func (d *run) checkNetrc(self *url.URL) {
	machine := self.Host
	if self.Port() == "443" {
		machine = self.Hostname()
	}
	file := d.opts.Getenv("NETRC")
	if file == "" {
		home := d.opts.Getenv("HOME")
		if home == "" {
			home = d.opts.Getenv("USERPROFILE")
		}
		name := ".netrc"
		if filepath.Separator == '\\' {
			name = "_netrc"
		}
		file = filepath.Join(home, name)
	}
	fix := fmt.Sprintf("Add `machine %s login <name> password <password>` to %s (chmod 600); see `modgate env`.", machine, file)
	data, err := os.ReadFile(file)
	if err != nil {
		d.add(Finding{Severity: Error, Check: "netrc", What: "modgate asks for a user and password, and there is no netrc file: " + shortErr(err), Where: file, Fix: fix})
		return
	}
	login, found := netrcLogin(string(data), machine)
	if !found {
		d.add(Finding{Severity: Error, Check: "netrc", What: fmt.Sprintf("the netrc file has no machine %s with a login and password: the go command sends modgate no credentials", machine),
			Where: file, Fix: fix})
		return
	}
	d.add(Finding{Severity: Info, Check: "netrc", What: fmt.Sprintf("the netrc file logs in to %s as %s", machine, login), Where: file})
	if st, err := os.Stat(file); err == nil && st.Mode().Perm()&0o077 != 0 && filepath.Separator == '/' {
		d.add(Finding{Severity: Warn, Check: "netrc-mode", What: fmt.Sprintf("the netrc file is readable by others (%v): it holds your password", st.Mode().Perm()),
			Where: file, Fix: "chmod 600 " + file})
	}
}

// netrcLogin returns the login of the netrc entry for machine, as the go
// command reads the file (first entry with login and password wins).
func netrcLogin(data, machine string) (login string, ok bool) {
	var cur, user string
	havePass := false
	flush := func() bool {
		return cur == machine && user != "" && havePass
	}
	f := strings.Fields(data)
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "machine", "default":
			if flush() {
				return user, true
			}
			cur, user, havePass = "", "", false
			if f[i] == "machine" && i+1 < len(f) {
				cur = f[i+1]
				i++
			}
		case "login":
			if i+1 < len(f) {
				user = f[i+1]
				i++
			}
		case "password":
			if i+1 < len(f) {
				havePass = true
				i++
			}
		case "macdef":
			return "", false // the go command stops reading there too
		}
	}
	if flush() {
		return user, true
	}
	return "", false
}
