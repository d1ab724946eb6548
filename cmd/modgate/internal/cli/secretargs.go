package cli

import (
	"log/slog"
	"strings"

	"github.com/modgate/modgate/sidecar/store"
)

// secretArgs returns the flags of args whose values carry a secret (a
// URL's password, a store's key): the redaction that pages and logs apply
// would change them.
func secretArgs(args []string) []string {
	var flags []string
	for i, a := range args {
		if store.Redact(a) == a {
			continue
		}
		name := a
		if f, _, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "-") {
			name = f
		} else if i > 0 && strings.HasPrefix(args[i-1], "-") {
			name = args[i-1]
		} else {
			name = "an argument"
		}
		flags = append(flags, name)
	}
	return flags
}

// warnSecretArgs warns when a secret is given on the command line: every
// local user can read it in /proc/PID/cmdline (and ps). /debug/pprof/cmdline
// hides it, but the kernel does not.
func warnSecretArgs(log *slog.Logger, args []string) {
	if flags := secretArgs(args); len(flags) > 0 {
		log.Warn("a secret is on the command line, where every user of this machine can read it (ps, /proc/PID/cmdline): put it in a file instead (upstreams[].auth password_file or bearer_file, fleet.password_file, the AWS SDK's AWS_SHARED_CREDENTIALS_FILE) or in the config file",
			"flags", strings.Join(flags, ", "))
	}
}
