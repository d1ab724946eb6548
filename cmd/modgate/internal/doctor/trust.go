package doctor

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
)

// checkCertFile checks how the go command will trust modgate's CA (and
// every other host): SSL_CERT_FILE replaces the system's roots on Linux
// and other Unix, and is ignored on macOS and Windows
// (crypto/x509/root_darwin.go, root_windows.go verify through the system).
func (d *run) checkCertFile() {
	goos := d.opts.GOOS
	if goos == "" {
		goos = runtime.GOOS
	}
	file := d.opts.Getenv("SSL_CERT_FILE")
	if goos == "windows" || goos == "darwin" || goos == "ios" {
		name := map[bool]string{true: "Windows", false: "macOS"}[goos == "windows"]
		if file != "" {
			d.add(Finding{Severity: Warn, Check: "ssl-cert-file-ignored", Where: "environment",
				What: fmt.Sprintf("SSL_CERT_FILE is set (%s), but on %s the go command ignores it and verifies through the system's store", file, name),
				Fix:  "Trust modgate's CA in the system's store: `modgate ca trust` prints the commands (certutil -user -addstore Root on Windows, security add-trusted-cert on macOS)."})
		} else if d.m.MITM {
			d.add(Finding{Severity: Info, Check: "ca-trust", Where: "system store",
				What: fmt.Sprintf("modgate intercepts hosts with its CA; on %s the go command trusts it only from the system's store", name),
				Fix:  "If intercepted hosts fail with \"certificate signed by unknown authority\", run the commands `modgate ca trust` prints."})
		}
		return
	}
	if file == "" {
		return
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return // checkListenerTrust and the go command say so
	}
	if n := bytes.Count(data, []byte("-----BEGIN CERTIFICATE-----")); n <= 3 {
		d.add(Finding{Severity: Warn, Check: "ssl-cert-file-alone", Where: "environment",
			What: fmt.Sprintf("SSL_CERT_FILE %s holds %d certificate(s) and replaces the system's roots for the go command: every host those do not sign (a host reached through a plain tunnel, direct fetches) fails with \"certificate signed by unknown authority\"", file, n),
			Fix:  "Point SSL_CERT_FILE and GIT_SSL_CAINFO at a bundle of the system's roots and the CA: `eval \"$(modgate env)\"` does, or `modgate ca bundle` writes one."})
	}
}
