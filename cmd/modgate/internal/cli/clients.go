package cli

import (
	"crypto/x509"
	"fmt"
	"net"
	"slices"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/mitm"
)

// ListenerSecurity is HTTPS on the module listener and who may use it
// (the tls and clients sections).
type ListenerSecurity struct {
	// TLS makes the module listener HTTPS; the go command sends netrc and
	// GOAUTH credentials only over HTTPS.
	TLS TLSConfig `yaml:"tls"`
	// Clients says who may use the module listener.
	Clients ClientsConfig `yaml:"clients"`
}

// TLSConfig is the tls section: the listener's certificate and key (PEM),
// read again when they change. `modgate ca issue` makes a pair.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ClientsConfig is the clients section.
type ClientsConfig struct {
	HtpasswdFile string `yaml:"htpasswd_file"`  // name:bcrypt-hash lines (htpasswd -B)
	TokensFile   string `yaml:"tokens_file"`    // "name token" lines; Authorization: Bearer
	ClientCAFile string `yaml:"client_ca_file"` // mutual TLS: the identity is the certificate's subject CN
	Anonymous    bool   `yaml:"anonymous"`      // requests without credentials are "anonymous"
}

func (c ClientsConfig) sidecar() sidecar.ClientsConfig {
	return sidecar.ClientsConfig{HtpasswdFile: c.HtpasswdFile, TokensFile: c.TokensFile, ClientCAFile: c.ClientCAFile, Anonymous: c.Anonymous}
}

// validate checks the sections and reads the files they name, so that a
// bad one is refused with its key before start-up.
func (l ListenerSecurity) validate(bad func(key, format string, args ...any), out *sidecar.Config) {
	out.TLS = sidecar.ListenerTLS{CertFile: l.TLS.CertFile, KeyFile: l.TLS.KeyFile}
	if err := out.TLS.Check(); err != nil {
		key := "tls.cert_file"
		if l.TLS.CertFile != "" && l.TLS.KeyFile == "" {
			key = "tls.key_file"
		}
		bad(key, "%v", err)
	}
	out.Clients = l.Clients.sidecar()
	errs := out.Clients.Check()
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		bad("clients."+k, "%v", errs[k])
	}
	if l.Clients.ClientCAFile != "" && l.TLS.CertFile == "" {
		bad("clients.client_ca_file", "client certificates need HTTPS on the listener: set tls.cert_file and tls.key_file")
	}
}

// listenerTrust is what a client needs to know of modgate's HTTPS
// listener: the address its certificate names, and who signed it.
type listenerTrust struct {
	addr          string // host:port clients dial, a name the certificate holds
	machine       string // the netrc machine: addr without :443
	systemTrusted bool   // the system's roots verify it
	modgateCA     bool   // modgate's CA (ca_dir) signed it
}

// newListenerTrust reads the listener's certificate. addr is where a
// client on this machine would dial; when the certificate does not name
// its host, its first name is used instead, with the same port.
func newListenerTrust(t sidecar.ListenerTLS, addr, caDir string) (*listenerTrust, error) {
	cert, err := t.Certificate()
	if err != nil {
		return nil, fmt.Errorf("tls: %v", err)
	}
	host, port, _ := net.SplitHostPort(addr)
	if cert.VerifyHostname(host) != nil {
		switch {
		case len(cert.DNSNames) > 0:
			host = cert.DNSNames[0]
		case len(cert.IPAddresses) > 0:
			host = cert.IPAddresses[0].String()
		}
	}
	lt := &listenerTrust{addr: net.JoinHostPort(host, port), machine: net.JoinHostPort(host, port)}
	if port == "443" {
		lt.machine = host
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: host}); err == nil {
		lt.systemTrusted = true
	}
	if ca, err := mitm.Load(caDir); err == nil {
		pool := x509.NewCertPool()
		pool.AddCert(ca.Certificate())
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err == nil {
			lt.modgateCA = true
		}
	}
	return lt, nil
}

// proxyAuth reports whether forward mode asks who the client is.
func proxyAuth(cfg Config) bool {
	c := cfg.Clients
	return cfg.Forward.AuthFile != "" || c.HtpasswdFile != "" || c.TokensFile != "" || c.ClientCAFile != ""
}

// clientsEnv is GOAUTH and the netrc line a client adds, when modgate
// asks who is asking. It never prints a secret: only placeholders.
func clientsEnv(c sidecar.ClientsConfig, trust *listenerTrust, addr string) []envLine {
	if !c.Enabled() {
		return nil
	}
	if trust == nil {
		lines := []envLine{comment("GOAUTH: modgate asks who you are (clients:), but its listener is plain HTTP and the go command sends credentials only over HTTPS: set tls in modgate's config")}
		if c.Anonymous {
			lines = append(lines, comment("  until then you are anonymous"))
		}
		return lines
	}
	var lines []envLine
	if c.HtpasswdFile != "" {
		lines = append(lines,
			comment("GOAUTH=netrc: the go command sends the netrc's user and password for %s; add this line to $NETRC or ~/.netrc (chmod 600), with your own name and password:", trust.machine),
			comment("  machine %s login <name> password <password>", trust.machine),
			envLine{name: "GOAUTH", value: "netrc"})
	}
	if c.TokensFile != "" {
		lines = append(lines, comment("tokens: a GOAUTH command may print \"https://%s\" and \"Authorization: Bearer <token>\" instead (go help goauth)", addr))
	}
	if c.ClientCAFile != "" {
		lines = append(lines, comment("client certificates: the go command cannot present one; tools that can are known by the certificate's subject CN"))
	}
	if c.Anonymous {
		lines = append(lines, comment("without credentials you are anonymous"))
	}
	return lines
}
