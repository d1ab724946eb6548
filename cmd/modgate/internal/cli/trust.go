package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/modgate/modgate/sidecar/mitm"
)

// BundleFile is the file in the CA folder that holds the system's roots
// followed by modgate's CA: what SSL_CERT_FILE and GIT_SSL_CAINFO name.
// SSL_CERT_FILE replaces the go command's system roots (crypto/x509 reads
// only that file then), so a file with modgate's CA alone would break
// every host reached through a plain tunnel.
const BundleFile = "modgate-bundle.pem"

// systemCertFiles and systemCertDirs are where crypto/x509 finds the
// system's roots on Linux (crypto/x509/root_linux.go): the first file that
// exists, and every file in the folders. Tests point them at a fake
// system.
var (
	systemCertFiles = []string{
		"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo
		"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
		"/etc/ssl/ca-bundle.pem",                            // OpenSUSE
		"/etc/pki/tls/cacert.pem",                           // OpenELEC
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
		"/etc/ssl/cert.pem",                                 // Alpine, BSDs
	}
	systemCertDirs = []string{"/etc/ssl/certs", "/etc/pki/tls/certs"}
)

// systemRootsPEM returns the roots the go command trusts on this machine
// without modgate, as PEM, each certificate once: $SSL_CERT_FILE (unless it
// is modgate's own bundle or CA) or the first system file, and the files
// of $SSL_CERT_DIR or the system folders.
func systemRootsPEM(getenv func(string) string, caDir string) []byte {
	own := map[string]bool{}
	for _, f := range []string{filepath.Join(caDir, BundleFile), mitm.CertPath(caDir)} {
		if abs, err := filepath.Abs(f); err == nil {
			own[abs] = true
		}
	}
	var files []string
	if f := getenv("SSL_CERT_FILE"); f != "" {
		if abs, err := filepath.Abs(f); err == nil && !own[abs] {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		for _, f := range systemCertFiles {
			if _, err := os.Stat(f); err == nil {
				files = append(files, f)
				break
			}
		}
	}
	dirs := systemCertDirs
	if d := getenv("SSL_CERT_DIR"); d != "" {
		dirs = filepath.SplitList(d)
	}
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if p := filepath.Join(d, e.Name()); !own[p] && (e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0) {
				files = append(files, p)
			}
		}
	}
	var out bytes.Buffer
	seen := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for {
			var b *pem.Block
			b, data = pem.Decode(data)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" || seen[string(b.Bytes)] {
				continue
			}
			if _, err := x509.ParseCertificate(b.Bytes); err != nil {
				continue
			}
			seen[string(b.Bytes)] = true
			pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})
		}
	}
	return out.Bytes()
}

// writeBundle writes the system's roots and modgate's CA (from caDir) to
// out (default: the bundle in caDir) when its content changed, and
// returns its absolute path and how many system roots it holds.
func writeBundle(getenv func(string) string, caDir, out string) (string, int, error) {
	caPEM, err := os.ReadFile(mitm.CertPath(caDir))
	if err != nil {
		return "", 0, fmt.Errorf("modgate's CA: %w (make it with modgate ca init)", err)
	}
	if out == "" {
		out = filepath.Join(caDir, BundleFile)
	}
	if out, err = filepath.Abs(out); err != nil {
		return "", 0, err
	}
	roots := systemRootsPEM(getenv, caDir)
	n := bytes.Count(roots, []byte("-----BEGIN CERTIFICATE-----"))
	var b bytes.Buffer
	fmt.Fprintf(&b, "# The system's roots (%d) and modgate's CA, for SSL_CERT_FILE and GIT_SSL_CAINFO.\n# Written by modgate ca bundle and modgate env; rewritten when either changes.\n", n)
	b.Write(roots)
	b.WriteString("# modgate's CA\n")
	b.Write(caPEM)
	if old, err := os.ReadFile(out); err == nil && bytes.Equal(old, b.Bytes()) {
		return out, n, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		return "", 0, err
	}
	return out, n, writeReplace(out, b.Bytes(), 0o644)
}

// trustCommands are the commands that make the operating system (and so
// the go command, which ignores SSL_CERT_FILE on macOS and Windows)
// trust modgate's CA in file.
func trustCommands(goos, file string) []string {
	switch goos {
	case "darwin", "ios":
		return []string{
			"# macOS: the go command verifies through the keychain and ignores SSL_CERT_FILE.",
			"security add-trusted-cert -r trustRoot -k ~/Library/Keychains/login.keychain-db " + shellQuote(file),
			"# undo: security remove-trusted-cert " + shellQuote(file),
		}
	case "windows":
		return []string{
			"# Windows: the go command verifies through the system store and ignores SSL_CERT_FILE (PowerShell or cmd):",
			`certutil -user -addstore Root "` + file + `"`,
			`# undo: certutil -user -delstore Root "<serial number that certutil -user -store Root shows>"`,
		}
	}
	return []string{
		"# Linux and other Unix: modgate env sets SSL_CERT_FILE and GIT_SSL_CAINFO to the bundle of the system's roots and this CA,",
		"# which is enough for the go command and git. To trust it system-wide instead (as root):",
		"#   Debian, Ubuntu:  cp " + shellQuote(file) + " /usr/local/share/ca-certificates/modgate-ca.crt && update-ca-certificates",
		"#   Fedora, RHEL:    cp " + shellQuote(file) + " /etc/pki/ca-trust/source/anchors/modgate-ca.pem && update-ca-trust",
		"#   Alpine:          cp " + shellQuote(file) + " /usr/local/share/ca-certificates/modgate-ca.crt && update-ca-certificates",
		"#   Arch:            trust anchor " + shellQuote(file),
	}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./~:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ignoresSSLCertFile reports whether the go command on goos verifies
// through the platform and so ignores SSL_CERT_FILE
// (crypto/x509/root_darwin.go, root_windows.go).
func ignoresSSLCertFile(goos string) bool {
	return goos == "darwin" || goos == "ios" || goos == "windows"
}
