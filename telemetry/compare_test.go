package telemetry

import (
	"strings"
	"testing"
)

func report(rows ...BaselineRow) BaselineReport {
	return BaselineReport{WindowSeconds: 900, Rows: rows}
}

func row(upstream, kind string, count int64, rate, p50, p95, p99 float64) BaselineRow {
	return BaselineRow{Upstream: upstream, Kind: kind, Count: count, ErrorRate: rate, P50Ms: p50, P95Ms: p95, P99Ms: p99}
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		name      string
		then, now BaselineRow
		ratio     float64
		regressed bool
		note      string
	}{
		{"steady", row("p", "zip", 100, 0, 40, 120, 300), row("p", "zip", 100, 0, 44, 130, 310), 1.5, false, ""},
		{"p95 tripled", row("p", "zip", 100, 0, 40, 120, 300), row("p", "zip", 100, 0, 44, 400, 450), 1.5, true, "p95 3.3×"},
		{"under the ratio", row("p", "zip", 100, 0, 40, 120, 300), row("p", "zip", 100, 0, 40, 170, 300), 1.5, false, ""},
		{"past a custom ratio", row("p", "zip", 100, 0, 40, 120, 300), row("p", "zip", 100, 0, 40, 170, 300), 1.2, true, "p95 1.4×"},
		{"default ratio", row("p", "zip", 100, 0, 40, 120, 300), row("p", "zip", 100, 0, 40, 170, 300), 0, false, ""},
		{"tiny latencies", row("p", "info", 100, 0, 0.4, 1, 2), row("p", "info", 100, 0, 1.5, 4, 4.9), 1.5, false, ""},
		{"tiny to real", row("p", "info", 100, 0, 0.4, 1, 2), row("p", "info", 100, 0, 0.5, 1, 30), 1.5, true, "p99 6.0×"},
		{"errors rose", row("p", "list", 100, 0.01, 10, 20, 30), row("p", "list", 100, 0.10, 10, 20, 30), 1.5, true, "errors +9.0 points"},
		{"errors rose a little", row("p", "list", 100, 0.01, 10, 20, 30), row("p", "list", 100, 0.04, 10, 20, 30), 1.5, false, ""},
		{"too few samples", row("p", "zip", 19, 0, 40, 120, 300), row("p", "zip", 100, 1, 4000, 12000, 30000), 1.5, false, "too few samples"},
	} {
		rows, regressed := Compare(report(tc.then), report(tc.now), tc.ratio)
		if len(rows) != 1 {
			t.Fatalf("%s: %d rows", tc.name, len(rows))
		}
		r := rows[0]
		if regressed != tc.regressed || r.Regressed != tc.regressed {
			t.Errorf("%s: regressed %v (row %v), want %v; notes %v", tc.name, regressed, r.Regressed, tc.regressed, r.Notes)
		}
		if note := strings.Join(r.Notes, "; "); !strings.Contains(note, tc.note) || (tc.note == "" && note != "") {
			t.Errorf("%s: notes %q, want %q", tc.name, note, tc.note)
		}
	}
}

func TestCompareMatchesRows(t *testing.T) {
	then := report(row("b", "zip", 50, 0, 1, 2, 3), row("a", "info", 50, 0, 1, 2, 3), row("c", "list", 50, 0, 1, 2, 3))
	now := report(row("a", "info", 50, 0, 1, 2, 3), row("d", "mod", 50, 0, 1, 2, 3), row("b", "zip", 50, 0, 1, 2, 3))
	rows, regressed := Compare(then, now, 1.5)
	if regressed {
		t.Error("regressed")
	}
	var got []string
	for _, r := range rows {
		got = append(got, r.Upstream+"/"+r.Kind+":"+strings.Join(r.Notes, ","))
	}
	if want := "a/info:,b/zip:,c/list:gone,d/mod:new"; strings.Join(got, ",") != want {
		t.Errorf("rows %v, want %s", got, want)
	}
}

func TestWriteComparison(t *testing.T) {
	rows, _ := Compare(
		report(row("public", "zip", 120, 0, 40, 120, 300), row("internal", "info", 80, 0, 3, 8, 2500)),
		report(row("public", "zip", 98, 0.1, 42, 400, 1500), row("internal", "info", 85, 0, 3.1, 8.2, 2600)),
		1.5)
	var b strings.Builder
	if err := WriteComparison(&b, rows); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out)
	}
	for _, want := range []string{"UPSTREAM", "P50", "P95", "P99", "ERRORS"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("header lacks %s: %q", want, lines[0])
		}
	}
	if !strings.HasPrefix(lines[1], "internal") || strings.Contains(lines[1], "REGRESSED") || !strings.Contains(lines[1], "2.50s → 2.60s") {
		t.Errorf("internal row: %q", lines[1])
	}
	if !strings.HasPrefix(lines[2], "public") || !strings.Contains(lines[2], "REGRESSED: p95 3.3×, p99 5.0×, errors +10.0 points") ||
		!strings.Contains(lines[2], "120ms → 400ms") || !strings.Contains(lines[2], "0.0% → 10.0%") || !strings.Contains(lines[2], "120 → 98") {
		t.Errorf("public row: %q", lines[2])
	}
	t.Logf("\n%s", out)
}
