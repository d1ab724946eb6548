package telemetry

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// Thresholds of Compare.
const (
	// DefaultMaxRatio is the growth of a percentile that Compare tolerates
	// when given a ratio of zero or less.
	DefaultMaxRatio = 1.5
	// MinSamples is the number of requests each side of a row needs before
	// Compare judges it: a p99 of ten requests is one unlucky request.
	MinSamples = 20
	// LatencyFloor is the latency below which changes are noise: a
	// percentile under it is compared as if it were LatencyFloor, so 1 ms
	// becoming 3 ms is not a regression, and 1 ms becoming 30 ms is.
	LatencyFloor = 5 * time.Millisecond
	// ErrorRateMargin is how much the error rate may rise, in absolute
	// terms (0.05 is five percentage points), before a row regresses.
	ErrorRateMargin = 0.05
)

// ComparisonRow compares one (upstream, kind) pair between two reports.
type ComparisonRow struct {
	Upstream string
	Kind     string
	// Then and Now are the pair's rows; either is nil when the pair is in
	// one report only.
	Then, Now *BaselineRow
	// Regressed is set when a percentile grew past the ratio or the error
	// rate rose past ErrorRateMargin.
	Regressed bool
	// Notes says why the row regressed, or why it was not judged.
	Notes []string
}

// Compare matches the rows of then and now by (upstream, kind) and judges
// each pair that has at least MinSamples requests on both sides: it
// regresses when its p50, p95 or p99 grew by more than maxRatio (if zero or
// less, DefaultMaxRatio), counting anything below LatencyFloor as
// LatencyFloor, or when its error rate rose by more than ErrorRateMargin.
// The rows come sorted by upstream and kind; regressed reports whether any
// row regressed.
func Compare(then, now BaselineReport, maxRatio float64) (rows []ComparisonRow, regressed bool) {
	if maxRatio <= 0 {
		maxRatio = DefaultMaxRatio
	}
	byKey := map[seriesKey]*ComparisonRow{}
	row := func(upstream, kind string) *ComparisonRow {
		k := seriesKey{upstream, wire.Kind(kind)}
		if byKey[k] == nil {
			byKey[k] = &ComparisonRow{Upstream: upstream, Kind: kind}
		}
		return byKey[k]
	}
	for i := range then.Rows {
		r := then.Rows[i]
		row(r.Upstream, r.Kind).Then = &r
	}
	for i := range now.Rows {
		r := now.Rows[i]
		row(r.Upstream, r.Kind).Now = &r
	}
	for _, c := range byKey {
		c.judge(maxRatio)
		regressed = regressed || c.Regressed
		rows = append(rows, *c)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Upstream != rows[j].Upstream {
			return rows[i].Upstream < rows[j].Upstream
		}
		return rows[i].Kind < rows[j].Kind
	})
	return rows, regressed
}

func (c *ComparisonRow) judge(maxRatio float64) {
	switch {
	case c.Then == nil:
		c.Notes = append(c.Notes, "new")
		return
	case c.Now == nil:
		c.Notes = append(c.Notes, "gone")
		return
	case c.Then.Count < MinSamples || c.Now.Count < MinSamples:
		c.Notes = append(c.Notes, fmt.Sprintf("too few samples to judge (want %d each)", MinSamples))
		return
	}
	floor := float64(LatencyFloor) / float64(time.Millisecond)
	for _, p := range []struct {
		name      string
		then, now float64
	}{
		{"p50", c.Then.P50Ms, c.Now.P50Ms},
		{"p95", c.Then.P95Ms, c.Now.P95Ms},
		{"p99", c.Then.P99Ms, c.Now.P99Ms},
	} {
		base := max(p.then, floor)
		if p.now > base*maxRatio {
			c.Regressed = true
			c.Notes = append(c.Notes, fmt.Sprintf("%s %.1f×", p.name, p.now/base))
		}
	}
	if c.Now.ErrorRate-c.Then.ErrorRate > ErrorRateMargin {
		c.Regressed = true
		c.Notes = append(c.Notes, fmt.Sprintf("errors +%.1f points", 100*(c.Now.ErrorRate-c.Then.ErrorRate)))
	}
}

// WriteComparison writes rows as a table for a terminal: each pair's
// request count, percentiles and error rate then → now, and REGRESSED with
// the reasons where a row regressed.
func WriteComparison(w io.Writer, rows []ComparisonRow) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "UPSTREAM\tKIND\tREQUESTS\tP50\tP95\tP99\tERRORS\t")
	for _, r := range rows {
		var then, now BaselineRow
		if r.Then != nil {
			then = *r.Then
		}
		if r.Now != nil {
			now = *r.Now
		}
		cell := func(f func(BaselineRow) string) string {
			a, b := "-", "-"
			if r.Then != nil {
				a = f(then)
			}
			if r.Now != nil {
				b = f(now)
			}
			return a + " → " + b
		}
		status := strings.Join(r.Notes, ", ")
		if r.Regressed {
			status = "REGRESSED: " + status
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Upstream, r.Kind,
			cell(func(b BaselineRow) string { return strconv.FormatInt(b.Count, 10) }),
			cell(func(b BaselineRow) string { return fmtMs(b.P50Ms) }),
			cell(func(b BaselineRow) string { return fmtMs(b.P95Ms) }),
			cell(func(b BaselineRow) string { return fmtMs(b.P99Ms) }),
			cell(func(b BaselineRow) string { return strconv.FormatFloat(100*b.ErrorRate, 'f', 1, 64) + "%" }),
			status)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// The status column is empty on most rows; its padding is not worth
	// keeping at the end of a line.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+strings.Repeat("\n", strings.Count(line, "\n"))); err != nil {
			return err
		}
	}
	return nil
}

// fmtMs prints a latency with the precision a reader needs: 0.42ms, 12ms,
// 1.25s.
func fmtMs(ms float64) string {
	switch {
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	}
	return strconv.FormatFloat(ms/1000, 'f', 2, 64) + "s"
}
