package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/modgate/modgate/telemetry"
)

// `modgate baseline` saves a running modgate's per-upstream latency
// baselines (its admin /debug/baseline) and compares two of them, so that
// "the proxy feels slow today" can be checked against a day when it did not:
// record one when things are fine, compare when they are not, or compare in
// CI after a change of upstreams.

const baselineUsage = `usage:
  modgate baseline record [--admin URL] --out FILE
  modgate baseline compare --baseline FILE [--admin URL | --current FILE] [--max-ratio R]

record saves the baselines of a running modgate (GET URL/debug/baseline on
its admin listener): per upstream and request kind, the requests, error rate
and p50/p95/p99 latency of the last window (15 minutes by default).

compare prints, per upstream and kind, the saved baseline next to the
current one (from the admin listener, or a file saved by record) and marks
a row REGRESSED when a percentile grew by more than R times (default 1.5;
latencies under 5ms count as 5ms) or the error rate rose by more than 5
points. Rows with fewer than 20 requests on either side are not judged.
Exit status 1 when any row regressed.

--admin defaults to MODGATE_ADMIN, else 127.0.0.1:7071.
`

// errRegressed makes Run exit 1 after compare has printed its table.
var errRegressed = errors.New("baseline: latency or errors regressed")

func (a *App) baseline(ctx context.Context, args []string) error {
	return a.group("modgate baseline", baselineUsage, args, map[string]func([]string) error{
		"record":  func(rest []string) error { return a.baselineRecord(ctx, rest) },
		"compare": func(rest []string) error { return a.baselineCompare(ctx, rest) },
	})
}

// baselineFlags parses args for one subcommand; it prints the usage and
// returns errUsage (or flag.ErrHelp for -h) on a bad command line.
func (a *App) baselineFlags(name string, args []string, register func(*flag.FlagSet)) (*flag.FlagSet, error) {
	fs := a.newFlags("modgate baseline "+name, baselineUsage)
	register(fs)
	if err := a.parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.Stderr, "modgate baseline %s: unexpected argument %q\n\n%s", name, fs.Arg(0), baselineUsage)
		return nil, errUsage
	}
	return fs, nil
}

func (a *App) defaultAdmin() string {
	if a.Getenv != nil {
		if v := a.Getenv("MODGATE_ADMIN"); v != "" {
			return v
		}
	}
	return "127.0.0.1:7071"
}

func (a *App) baselineRecord(ctx context.Context, args []string) error {
	var admin, out string
	if _, err := a.baselineFlags("record", args, func(fs *flag.FlagSet) {
		fs.StringVar(&admin, "admin", a.defaultAdmin(), "admin listener of the running modgate (URL or host:port)")
		fs.StringVar(&out, "out", "", "file to write the baseline to (- for standard output)")
	}); err != nil {
		return err
	}
	if out == "" {
		fmt.Fprintf(a.Stderr, "modgate baseline record: --out is required\n\n%s", baselineUsage)
		return errUsage
	}
	raw, rep, err := fetchBaseline(ctx, admin)
	if err != nil {
		return err
	}
	if out == "-" {
		_, err = a.Stdout.Write(raw)
		return err
	}
	if err := os.WriteFile(out, raw, 0o644); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	fmt.Fprintf(a.Stderr, "modgate: saved the baseline of %d upstream/kind pairs over %s to %s\n",
		len(rep.Rows), time.Duration(rep.WindowSeconds*float64(time.Second)), out)
	return nil
}

func (a *App) baselineCompare(ctx context.Context, args []string) error {
	var admin, then, current string
	var maxRatio float64
	fs, err := a.baselineFlags("compare", args, func(fs *flag.FlagSet) {
		fs.StringVar(&then, "baseline", "", "baseline file saved by modgate baseline record")
		fs.StringVar(&admin, "admin", a.defaultAdmin(), "admin listener of the running modgate to compare with (URL or host:port)")
		fs.StringVar(&current, "current", "", "a second saved baseline to compare with, instead of a running modgate")
		fs.Float64Var(&maxRatio, "max-ratio", telemetry.DefaultMaxRatio, "how many times a percentile may grow before the row regresses")
	})
	if err != nil {
		return err
	}
	adminSet := false
	fs.Visit(func(f *flag.Flag) { adminSet = adminSet || f.Name == "admin" })
	switch {
	case then == "":
		fmt.Fprintf(a.Stderr, "modgate baseline compare: --baseline is required\n\n%s", baselineUsage)
		return errUsage
	case current != "" && adminSet:
		fmt.Fprintf(a.Stderr, "modgate baseline compare: give --admin or --current, not both\n\n%s", baselineUsage)
		return errUsage
	case maxRatio <= 1:
		fmt.Fprintf(a.Stderr, "modgate baseline compare: --max-ratio %v: want a ratio above 1, e.g. 1.5\n", maxRatio)
		return errUsage
	}

	thenRep, err := readBaseline(then)
	if err != nil {
		return err
	}
	var nowRep telemetry.BaselineReport
	if current != "" {
		nowRep, err = readBaseline(current)
	} else {
		_, nowRep, err = fetchBaseline(ctx, admin)
	}
	if err != nil {
		return err
	}
	rows, regressed := telemetry.Compare(thenRep, nowRep, maxRatio)
	fmt.Fprintf(a.Stdout, "baseline %s (%s) vs %s (%s)\n\n",
		then, thenRep.Generated.Format(time.RFC3339), nowSource(current, admin), nowRep.Generated.Format(time.RFC3339))
	if len(rows) == 0 {
		fmt.Fprintln(a.Stdout, "no requests in either baseline: nothing to compare")
		return nil
	}
	if err := telemetry.WriteComparison(a.Stdout, rows); err != nil {
		return err
	}
	if regressed {
		return errRegressed
	}
	return nil
}

func nowSource(current, admin string) string {
	if current != "" {
		return current
	}
	return adminURL(admin)
}

// adminURL turns "127.0.0.1:7071" or "http://host:7071/" into the URL of
// the admin listener's root, without the trailing slash.
func adminURL(admin string) string {
	if !strings.Contains(admin, "://") {
		admin = "http://" + admin
	}
	return strings.TrimRight(admin, "/")
}

// fetchBaseline reads /debug/baseline of a running modgate and checks that
// it is a baseline report, returning the body as served and as parsed.
func fetchBaseline(ctx context.Context, admin string) ([]byte, telemetry.BaselineReport, error) {
	var rep telemetry.BaselineReport
	u := adminURL(admin) + "/debug/baseline"
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, rep, fmt.Errorf("baseline: --admin %s: %w", admin, err)
	}
	// The admin listener is local: a proxy from the environment (which
	// may be this very modgate) has no business in between.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, rep, fmt.Errorf("baseline: is modgate running with its admin listener on %s? %w", admin, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, rep, fmt.Errorf("baseline: GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, rep, fmt.Errorf("baseline: GET %s: %s: %s", u, resp.Status, firstLine(body))
	}
	if err := decodeBaseline(body, &rep); err != nil {
		return nil, rep, fmt.Errorf("baseline: GET %s: %w", u, err)
	}
	return body, rep, nil
}

func readBaseline(path string) (telemetry.BaselineReport, error) {
	var rep telemetry.BaselineReport
	b, err := os.ReadFile(path)
	if err != nil {
		return rep, fmt.Errorf("baseline: %w", err)
	}
	if err := decodeBaseline(b, &rep); err != nil {
		return rep, fmt.Errorf("baseline: %s: %w", path, err)
	}
	return rep, nil
}

// decodeBaseline parses a report and insists on its rows, so that a file
// that is not a baseline (an HTML error page, another tool's JSON) is
// refused rather than compared as empty. Unknown fields are let through: a
// newer modgate may add some.
func decodeBaseline(b []byte, rep *telemetry.BaselineReport) error {
	if err := json.Unmarshal(b, rep); err != nil {
		return fmt.Errorf("not a modgate baseline: %w", err)
	}
	if rep.Rows == nil {
		return errors.New("not a modgate baseline: no rows")
	}
	return nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
