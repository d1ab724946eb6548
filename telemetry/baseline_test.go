package telemetry

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// fakeClock moves only when told to. Its Sleep and After are the real
// ones: nothing here waits.
type fakeClock struct {
	wire.SystemClock
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestBaselinePercentiles(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	b := NewBaselines(0, clock)
	rng := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	for range 10000 {
		// A long-tailed latency: mostly tens of milliseconds, sometimes
		// seconds.
		d := time.Duration(math.Exp(rng.NormFloat64()*1.2+math.Log(30)) * float64(time.Millisecond))
		all = append(all, d)
		b.Observe("public", wire.KindZip, d, false)
	}
	b.Observe("public", wire.KindZip, time.Second, true)
	all = append(all, time.Second)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })

	rep := b.Snapshot()
	if len(rep.Rows) != 1 {
		t.Fatalf("rows %+v", rep.Rows)
	}
	row := rep.Rows[0]
	if row.Count != 10001 || row.Errors != 1 || row.ErrorRate != 0.0001 {
		t.Errorf("count %d errors %d rate %v", row.Count, row.Errors, row.ErrorRate)
	}
	for _, p := range []struct {
		q   float64
		got float64
	}{{0.50, row.P50Ms}, {0.95, row.P95Ms}, {0.99, row.P99Ms}} {
		exact := float64(all[int(math.Ceil(p.q*float64(len(all))))-1]) / float64(time.Millisecond)
		if math.Abs(p.got-exact)/exact > 0.06 {
			t.Errorf("p%.0f = %.3f ms, exact %.3f ms: off by more than 6%%", 100*p.q, p.got, exact)
		}
	}
	if rep.WindowSeconds != DefaultBaselineWindow.Seconds() || !rep.Generated.Equal(clock.Now()) {
		t.Errorf("window %v generated %v", rep.WindowSeconds, rep.Generated)
	}
}

func TestBaselineSmallSamplesAreExact(t *testing.T) {
	b := NewBaselines(time.Minute, &fakeClock{now: time.Unix(0, 0)})
	b.Observe("a", wire.KindInfo, 7*time.Millisecond, false)
	row := b.Snapshot().Rows[0]
	if row.P50Ms != 7 || row.P99Ms != 7 {
		t.Errorf("one request of 7 ms: p50 %v p99 %v", row.P50Ms, row.P99Ms)
	}
}

func TestBaselineWindowRolls(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	b := NewBaselines(15*time.Minute, clock)
	for range 10 {
		b.Observe("public", wire.KindList, 100*time.Millisecond, true)
	}
	clock.Advance(10 * time.Minute)
	for range 30 {
		b.Observe("public", wire.KindList, 10*time.Millisecond, false)
	}
	if row := b.Snapshot().Rows[0]; row.Count != 40 || row.Errors != 10 {
		t.Errorf("after 10 min: %+v, want all 40 requests", row)
	}
	clock.Advance(6 * time.Minute) // the first ten are 16 minutes old
	row := b.Snapshot().Rows[0]
	if row.Count != 30 || row.Errors != 0 || row.P99Ms != 10 {
		t.Errorf("after 16 min: %+v, want only the 30 recent requests", row)
	}
	clock.Advance(15 * time.Minute)
	if rows := b.Snapshot().Rows; len(rows) != 0 {
		t.Errorf("after the window: %+v, want no rows", rows)
	}
	// A slot is reused once its time has come round again.
	b.Observe("public", wire.KindList, time.Millisecond, false)
	if row := b.Snapshot().Rows[0]; row.Count != 1 {
		t.Errorf("reused slot: %+v", row)
	}
}

func TestBaselineRowsSorted(t *testing.T) {
	b := NewBaselines(0, nil)
	for _, p := range [][2]string{{"public", "zip"}, {"internal", "zip"}, {"public", "info"}, {"internal", "list"}} {
		b.Observe(p[0], wire.Kind(p[1]), time.Millisecond, false)
	}
	var got [][2]string
	for _, r := range b.Snapshot().Rows {
		got = append(got, [2]string{r.Upstream, r.Kind})
	}
	want := [][2]string{{"internal", "list"}, {"internal", "zip"}, {"public", "info"}, {"public", "zip"}}
	if len(got) != 4 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("rows %v, want %v", got, want)
	}
}

func TestBaselineObserveDoesNotAllocate(t *testing.T) {
	b := NewBaselines(0, &fakeClock{now: time.Unix(1_700_000_000, 0)})
	b.Observe("public", wire.KindZip, time.Millisecond, false)
	if n := testing.AllocsPerRun(1000, func() { b.Observe("public", wire.KindZip, 42*time.Millisecond, false) }); n != 0 {
		t.Errorf("Observe allocates %v times per call", n)
	}
}

func TestBaselineConcurrent(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	b := NewBaselines(0, clock)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				b.Observe([]string{"a", "b"}[g%2], wire.KindInfo, time.Duration(i)*time.Microsecond, i%10 == 0)
				if i%100 == 0 {
					b.Snapshot()
					clock.Advance(time.Second)
				}
			}
		}()
	}
	wg.Wait()
	var total int64
	for _, r := range b.Snapshot().Rows {
		total += r.Count
	}
	if total != 8000 {
		t.Errorf("total count %d, want 8000", total)
	}
}

func TestBaselineSeriesCap(t *testing.T) {
	b := NewBaselines(0, nil)
	for i := range maxBaselineSeries + 10 {
		b.Observe(string(rune('a'+i%26))+string(rune(i)), wire.KindInfo, time.Millisecond, false)
	}
	if n := len(b.Snapshot().Rows); n != maxBaselineSeries {
		t.Errorf("%d series, want the cap %d", n, maxBaselineSeries)
	}
}

func TestBaselineHandler(t *testing.T) {
	b := NewBaselines(0, &fakeClock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)})
	b.Observe("public", wire.KindMod, 20*time.Millisecond, false)
	rec := httptest.NewRecorder()
	b.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/baseline", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var raw map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	if raw["generated"] != "2025-01-02T03:04:05Z" || raw["window_seconds"] != 900.0 {
		t.Errorf("report %v", raw)
	}
	row := raw["rows"].([]any)[0].(map[string]any)
	for _, k := range []string{"upstream", "kind", "count", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms"} {
		if _, ok := row[k]; !ok {
			t.Errorf("row lacks %q: %v", k, row)
		}
	}

	// An empty report still has a list of rows, not null.
	rec = httptest.NewRecorder()
	NewBaselines(0, nil).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/baseline", nil))
	var rep BaselineReport
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil || rep.Rows == nil {
		t.Errorf("empty report %s: %v", rec.Body, err)
	}
}

func TestBucketsCoverTheRange(t *testing.T) {
	for _, d := range []time.Duration{time.Microsecond, time.Millisecond, 37 * time.Millisecond, time.Second, time.Minute, 10 * time.Minute} {
		got := bucketValue(bucketOf(d))
		if d > bucketMin && math.Abs(float64(got-d))/float64(d) > 0.05 {
			t.Errorf("%v lands in a bucket valued %v", d, got)
		}
	}
	if bucketOf(time.Hour) != numBuckets-1 {
		t.Error("an hour must land in the last bucket")
	}
}

func BenchmarkBaselineObserve(b *testing.B) {
	bl := NewBaselines(0, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bl.Observe("public", wire.KindZip, 42*time.Millisecond, false)
		}
	})
}
