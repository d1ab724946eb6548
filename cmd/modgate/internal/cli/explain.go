package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/modgate/modgate/cmd/modgate/internal/explain"
)

const explainUsage = `usage: modgate explain [FILE]

Reads go command output from FILE, or from standard input when FILE is
absent or "-", and explains each failure it recognises: what it saw, the
likely cause, and the fix.

  go mod download 2>&1 | modgate explain

Exit status: 0 when it explained something, 1 when it recognised nothing.
`

// errNothingExplained makes `modgate explain` exit 1 when it recognised
// nothing, after saying so on stdout.
var errNothingExplained = errors.New("explain: found nothing to explain")

func (a *App) explain(_ context.Context, args []string) error {
	fs := a.newFlags("modgate explain", explainUsage)
	if err := a.parseFlags(fs, args); err != nil {
		return err
	}
	var in io.Reader = os.Stdin
	switch fs.NArg() {
	case 0:
	case 1:
		if name := fs.Arg(0); name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
	default:
		fmt.Fprintf(a.Stderr, "modgate explain: want at most one file, got %d\n\n%s", fs.NArg(), explainUsage)
		return errUsage
	}
	// Build logs can be large; only a bounded amount is read, which is far
	// more than any go command failure needs.
	data, err := io.ReadAll(io.LimitReader(in, 16<<20))
	if err != nil {
		return err
	}
	text := string(data)
	found := explain.Text(text)
	if len(found) == 0 {
		lines := strings.Count(text, "\n")
		if text != "" && !strings.HasSuffix(text, "\n") {
			lines++
		}
		fmt.Fprintf(a.Stdout, "modgate explain: found no go command error it recognises in %d lines of input.\n", lines)
		fmt.Fprint(a.Stdout, "It knows network, TLS, proxy, checksum, policy, authentication and version errors, and modgate's own answers.\n"+
			"Pass the go command's standard error too: go build ./... 2>&1 | modgate explain\n")
		return errNothingExplained
	}
	explain.Write(a.Stdout, found)
	return nil
}
