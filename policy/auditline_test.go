package policy

import (
	"bytes"
	"io"
	"math"
	"math/rand/v2"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modgate/modgate/sidecar/wire"
)

// auditStrings are the strings that exercise encoding/json's escaping:
// control bytes, quotes and backslashes, HTML characters (left as they
// are), U+2028 and U+2029, invalid and truncated UTF-8, DEL, multi-byte
// runes.
var auditStrings = []string{
	"", "a", "example.test/lib", "<v1.4.2", "a&b>c", `"quoted"`, `back\slash`,
	"tab\there", "nl\nx", "\r\b\f", "\x00\x01\x1f", "\x7f", "é", "日本語", "🙂",
	"\u2028", "x\u2029y", "\xff", "ok\xc3", "\xe2\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"\uFFFD", "a\u0000b", "</script>",
}

// randomAuditString draws a string of up to 12 pieces from auditStrings
// and random bytes.
func randomAuditString(r *rand.Rand) string {
	var b []byte
	for range r.IntN(12) {
		if r.IntN(3) == 0 {
			b = append(b, byte(r.IntN(256)))
		} else {
			b = append(b, auditStrings[r.IntN(len(auditStrings))]...)
		}
	}
	return string(b)
}

var auditFloats = []float64{
	0, math.Copysign(0, -1), 1.5, -1.5, 1e-6, 9.99999e-7, 1e-7, 1e21, 9.99e20, 1e22, -1e-300,
	math.MaxFloat64, math.SmallestNonzeroFloat64, 0.1, 123456.789, 1.0 / 3,
}

func randomAuditEntry(r *rand.Rand) AuditEntry {
	s := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return randomAuditString(r)
	}
	f := auditFloats[r.IntN(len(auditFloats))]
	if r.IntN(2) == 0 {
		f = math.Float64frombits(r.Uint64())
		if math.IsNaN(f) || math.IsInf(f, 0) {
			f = r.Float64() * 1000
		}
	}
	return AuditEntry{
		Time:     time.Unix(r.Int64N(253402300799), r.Int64N(1e9)).UTC(), // years 1970 to 9999
		TraceID:  s(),
		SpanID:   s(),
		Client:   s(),
		Identity: s(),
		Mode:     wire.Mode(s()),
		Kind:     wire.Kind(s()), Module: s(), Version: s(), Host: s(), Upstream: s(),
		Decision: wire.Decision(s()), Rule: int(r.Int64()), Reason: s(),
		Status: r.IntN(1000) - 100, Bytes: r.Int64() - math.MaxInt64/2, DurationMS: f,
		ClaimedIdentity: s(),
	}
}

// checkAuditLine fails t unless appendAuditLine writes exactly what
// encoding/json writes for e, or leaves e to encoding/json where
// encoding/json fails.
func checkAuditLine(t *testing.T, e AuditEntry) {
	t.Helper()
	want, err := encodeAuditLine(&e)
	prefix := []byte("prefix")
	got, ok := appendAuditLine(bytes.Clone(prefix), &e)
	if !bytes.HasPrefix(got, prefix) {
		t.Fatalf("appendAuditLine lost what dst held: %q", got)
	}
	got = got[len(prefix):]
	if err != nil {
		if ok {
			t.Fatalf("encoding/json fails (%v), appendAuditLine wrote %q", err, got)
		}
		return
	}
	if !ok {
		// Allowed only for times not in UTC, which Log never passes.
		if _, off := e.Time.Zone(); off == 0 {
			t.Fatalf("appendAuditLine refused %+v, which encoding/json encodes as %q", e, want)
		}
		return
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("appendAuditLine:\n%q\nencoding/json:\n%q\nentry %+v", got, want, e)
	}
}

func TestAuditLineMatchesEncodingJSON(t *testing.T) {
	for _, s := range auditStrings {
		checkAuditLine(t, AuditEntry{Time: time.Unix(0, 0).UTC(), Kind: wire.Kind(s), Reason: s, Module: s})
	}
	for _, f := range append(auditFloats, math.NaN(), math.Inf(1), math.Inf(-1)) {
		checkAuditLine(t, AuditEntry{Time: time.Unix(1, 0).UTC(), DurationMS: f})
	}
	for _, tm := range []time.Time{
		{}, time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC), time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC),
		time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600)),
	} {
		checkAuditLine(t, AuditEntry{Time: tm})
	}
	// Every byte and every rune class alone.
	for b := range 256 {
		checkAuditLine(t, AuditEntry{Kind: wire.Kind([]byte{'x', byte(b), 'y'})})
	}
	for r := rune(0); r < 0x3000; r++ {
		checkAuditLine(t, AuditEntry{Kind: wire.Kind(utf8.AppendRune(nil, r))})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		checkAuditLine(t, randomAuditEntry(r))
	}
}

func FuzzAuditLine(f *testing.F) {
	for i, s := range auditStrings {
		f.Add(s, auditStrings[(i+1)%len(auditStrings)], int64(i)*1e15, 1.5*float64(i), i)
	}
	f.Add("\xff\u2028", "", int64(math.MinInt64), math.Inf(1), -1)
	f.Fuzz(func(t *testing.T, s1, s2 string, unixNano int64, ms float64, n int) {
		checkAuditLine(t, AuditEntry{
			Time: time.Unix(0, unixNano).UTC(), TraceID: s1, Client: s2, Kind: wire.Kind(s1 + s2), Module: s2,
			Decision: wire.Decision(s1), Rule: n, Reason: s2 + s1, Status: n / 3, Bytes: unixNano, DurationMS: ms,
			ClaimedIdentity: s1,
		})
	})
}

// BenchmarkAuditLog is one Log call with a full entry, the log writing to
// io.Discard.
func BenchmarkAuditLog(b *testing.B) {
	a, err := NewAuditLog("-", AuditOptions{Stdout: io.Discard, FlushInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	e := AuditEntry{
		Time:    time.Date(2025, 1, 2, 3, 4, 5, 6000000, time.UTC),
		TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", SpanID: "00f067aa0ba902b7",
		Client: "10.0.0.1:5555", Mode: "reverse", Kind: "info", Module: "example.test/lib", Version: "v1.4.1",
		Upstream: "public", Decision: "allow", Rule: 3, Status: 200, Bytes: 123, DurationMS: 0.412,
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := a.Log(e); err != nil {
			b.Fatal(err)
		}
	}
}
