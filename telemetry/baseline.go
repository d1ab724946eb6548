package telemetry

import (
	"encoding/json"
	"math"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// DefaultBaselineWindow is how far back a baseline reaches unless told
// otherwise: long enough to smooth a burst, short enough to show today's
// upstream rather than last week's.
const DefaultBaselineWindow = 15 * time.Minute

// The window is kept as baselineSlots slots of window/baselineSlots each; the
// oldest slot is dropped whole, so a baseline covers between window minus one
// slot and window.
const baselineSlots = 15

// Latencies are counted in log-spaced buckets: bucket 0 holds everything up
// to bucketMin, bucket i (bucketMin·γ^(i-1), bucketMin·γ^i]. With γ = 1.1 a
// percentile read back from the geometric middle of its bucket is within
// about 5 % of the true value, which is far below the noise of a network.
const (
	bucketMin   = 100 * time.Microsecond
	bucketGamma = 1.1
	// 170 buckets reach past 10 minutes, beyond any upstream timeout.
	numBuckets = 170
)

var logGamma = math.Log(bucketGamma)

// maxBaselineSeries caps the (upstream, kind) pairs a Baselines keeps, so a
// caller that passes unbounded names costs bounded memory; past it,
// observations of new pairs are dropped.
const maxBaselineSeries = 1024

// Baselines keeps, per (upstream, kind), a rolling window of request count,
// error rate and latency percentiles: what "normal" looks like for each
// upstream, to compare against when something feels slow. Create it with
// NewBaselines; it is safe for concurrent use.
type Baselines struct {
	window time.Duration
	slot   time.Duration
	clock  wire.Clock
	series cowMap[seriesKey, *series]
}

type seriesKey struct {
	upstream string
	kind     wire.Kind
}

type series struct {
	mu    sync.Mutex
	slots [baselineSlots]slot
}

type slot struct {
	epoch    int64 // which slot-long interval of time this slot holds
	count    int64
	errors   int64
	min, max time.Duration
	buckets  [numBuckets]uint32
}

// NewBaselines returns baselines over window (if zero,
// DefaultBaselineWindow) on clock (if nil, the system clock).
func NewBaselines(window time.Duration, clock wire.Clock) *Baselines {
	if window <= 0 {
		window = DefaultBaselineWindow
	}
	if clock == nil {
		clock = wire.SystemClock{}
	}
	slot := window / baselineSlots
	if slot <= 0 {
		slot = 1
	}
	return &Baselines{window: window, slot: slot, clock: clock}
}

// Observe records one request to upstream of the given kind that took d and
// failed or not. It allocates nothing once the pair has been seen.
func (b *Baselines) Observe(upstream string, kind wire.Kind, d time.Duration, failed bool) {
	if b == nil {
		return
	}
	s, ok := b.series.getOrAdd(seriesKey{upstream, kind}, maxBaselineSeries, func(seriesKey) *series { return &series{} })
	if !ok {
		return
	}
	epoch := b.epoch(b.clock.Now())
	i := bucketOf(d)
	s.mu.Lock()
	sl := &s.slots[slotIndex(epoch)]
	if sl.epoch != epoch || sl.count == 0 {
		*sl = slot{epoch: epoch, min: d, max: d}
	}
	sl.count++
	if failed {
		sl.errors++
	}
	sl.min = min(sl.min, d)
	sl.max = max(sl.max, d)
	sl.buckets[i]++
	s.mu.Unlock()
}

func (b *Baselines) epoch(t time.Time) int64 {
	return floorDiv(t.UnixNano(), int64(b.slot))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

func slotIndex(epoch int64) int {
	return int(((epoch % baselineSlots) + baselineSlots) % baselineSlots)
}

func bucketOf(d time.Duration) int {
	if d <= bucketMin {
		return 0
	}
	i := int(math.Ceil(math.Log(float64(d)/float64(bucketMin)) / logGamma))
	return min(max(i, 1), numBuckets-1)
}

// bucketValue is the geometric middle of bucket i.
func bucketValue(i int) time.Duration {
	if i == 0 {
		return bucketMin
	}
	return time.Duration(float64(bucketMin) * math.Pow(bucketGamma, float64(i)-0.5))
}

// BaselineReport is a snapshot of every baseline, as /debug/baseline serves
// it and `modgate baseline record` saves it.
type BaselineReport struct {
	// Generated is when the snapshot was taken.
	Generated time.Time `json:"generated"`
	// WindowSeconds is how far back the rows reach.
	WindowSeconds float64 `json:"window_seconds"`
	// Rows are sorted by upstream, then kind; pairs with no request in the
	// window are left out.
	Rows []BaselineRow `json:"rows"`
}

// BaselineRow is the baseline of one (upstream, kind) pair. Latencies are in
// milliseconds, accurate to about 5 %.
type BaselineRow struct {
	Upstream  string  `json:"upstream"`
	Kind      string  `json:"kind"`
	Count     int64   `json:"count"`
	Errors    int64   `json:"errors"`
	ErrorRate float64 `json:"error_rate"`
	P50Ms     float64 `json:"p50_ms"`
	P95Ms     float64 `json:"p95_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

// Snapshot returns the baselines as they stand.
func (b *Baselines) Snapshot() BaselineReport {
	if b == nil {
		return BaselineReport{Rows: []BaselineRow{}}
	}
	now := b.clock.Now()
	rep := BaselineReport{Generated: now.UTC(), WindowSeconds: b.window.Seconds(), Rows: []BaselineRow{}}
	cur := b.epoch(now)
	var merged slot
	for k, s := range b.series.all() {
		s.merge(&merged, cur)
		if merged.count == 0 {
			continue
		}
		rep.Rows = append(rep.Rows, BaselineRow{
			Upstream:  k.upstream,
			Kind:      string(k.kind),
			Count:     merged.count,
			Errors:    merged.errors,
			ErrorRate: round(float64(merged.errors)/float64(merged.count), 4),
			P50Ms:     ms(merged.quantile(0.50)),
			P95Ms:     ms(merged.quantile(0.95)),
			P99Ms:     ms(merged.quantile(0.99)),
		})
	}
	sort.Slice(rep.Rows, func(i, j int) bool {
		a, b := rep.Rows[i], rep.Rows[j]
		if a.Upstream != b.Upstream {
			return a.Upstream < b.Upstream
		}
		return a.Kind < b.Kind
	})
	return rep
}

// quantile returns the latency below which a fraction q of the requests
// fell: the middle of the bucket holding the ceil(q·n)-th request, kept
// within the smallest and largest latency seen.
func (s *slot) quantile(q float64) time.Duration {
	rank := int64(math.Ceil(q * float64(s.count)))
	rank = max(rank, 1)
	var seen int64
	for i, n := range s.buckets {
		seen += int64(n)
		if seen >= rank {
			return min(max(bucketValue(i), s.min), s.max)
		}
	}
	return s.max
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// Handler serves Snapshot as JSON, for the admin listener's
// /debug/baseline.
func (b *Baselines) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(b.Snapshot())
	})
}

// Quantile returns the latency below which a fraction q of upstream's
// requests of kind fell in the window, and how many requests that is: the
// hedging decision reads it on the request path, so it merges one series
// only.
func (b *Baselines) Quantile(upstream string, kind wire.Kind, q float64) (time.Duration, int64) {
	if b == nil {
		return 0, 0
	}
	s, ok := b.series.load(seriesKey{upstream, kind.Normal()})
	if !ok {
		return 0, 0
	}
	var merged slot
	s.merge(&merged, b.epoch(b.clock.Now()))
	if merged.count == 0 {
		return 0, 0
	}
	return merged.quantile(q), merged.count
}

// merge sums the series' slots that are in the window ending at epoch cur
// into m, which it clears first.
func (s *series) merge(m *slot, cur int64) {
	*m = slot{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.slots {
		sl := &s.slots[i]
		if sl.count == 0 || sl.epoch > cur || sl.epoch <= cur-baselineSlots {
			continue
		}
		if m.count == 0 {
			m.min, m.max = sl.min, sl.max
		}
		m.count += sl.count
		m.errors += sl.errors
		m.min = min(m.min, sl.min)
		m.max = max(m.max, sl.max)
		for j, n := range sl.buckets {
			m.buckets[j] += n
		}
	}
}
