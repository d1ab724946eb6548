package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// sameAsSlog logs rec through jsonHandler and through slog's own
// JSONHandler and fails t when the lines differ.
func sameAsSlog(t *testing.T, rec slog.Record) string {
	t.Helper()
	var fast, slow bytes.Buffer
	opts := &slog.HandlerOptions{Level: slog.LevelDebug}
	if err := newJSONHandler(&fast, opts).Handle(context.Background(), rec.Clone()); err != nil {
		t.Fatal(err)
	}
	if err := slog.NewJSONHandler(&slow, opts).Handle(context.Background(), rec.Clone()); err != nil {
		t.Fatal(err)
	}
	if fast.String() != slow.String() {
		t.Fatalf("jsonHandler wrote\n%s\nslog writes\n%s", fast.String(), slow.String())
	}
	return fast.String()
}

// TestJSONHandlerWritesAsSlog: the access log's line, and records the fast
// path leaves to slog, come out as slog writes them.
func TestJSONHandlerWritesAsSlog(t *testing.T) {
	at := time.Date(2026, 12, 7, 7, 8, 33, 123456789, time.UTC)
	access := slog.NewRecord(at, slog.LevelInfo, "request", 0)
	access.AddAttrs(slog.String("method", "GET"), slog.String("path", "/example.test/m/@v/v1.0.0.info"), slog.Int("status", 200),
		slog.Int64("bytes", 97), slog.String("duration", "81µs"), slog.String("mode", "reverse"), slog.String("kind", "info"),
		slog.String("client", "127.0.0.1"), slog.String("cache", "hit"), slog.Bool("b", true), slog.Uint64("u", 1<<63), slog.Duration("d", time.Second))
	line := sameAsSlog(t, access)
	if !strings.HasPrefix(line, `{"time":"2026-12-07T07:08:33.123456789Z","level":"INFO","msg":"request","method":"GET",`) {
		t.Errorf("line: %s", line)
	}

	odd := slog.NewRecord(time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), slog.LevelWarn+1, "a \"quoted\"\n<msg> & \u2028 \xff \x01", 0)
	odd.AddAttrs(slog.String("k\t\"", "v\\\u2029\x7f"))
	sameAsSlog(t, odd)
	sameAsSlog(t, slog.NewRecord(time.Time{}, slog.LevelError, "no time", 0))

	// Not flat: slog's own handler writes these.
	for _, a := range []slog.Attr{slog.Any("err", errors.New("boom")), slog.Float64("f", 0.1), slog.Group("g", slog.Int("i", 1)),
		slog.Time("t", at), slog.String("", "no key"), slog.Any("nil", nil)} {
		r := slog.NewRecord(at, slog.LevelInfo, "msg", 0)
		r.AddAttrs(slog.String("first", "x"), a)
		if flat(r) {
			t.Errorf("%v is taken for flat", a)
		}
		sameAsSlog(t, r)
	}
	sameAsSlog(t, slog.NewRecord(time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC), slog.LevelInfo, "far", 0))
}

// FuzzJSONHandler: whatever a flat record holds, jsonHandler writes what
// slog's JSONHandler writes.
func FuzzJSONHandler(f *testing.F) {
	f.Add("request", "path", "/example.test/m/@v/list", int64(200), uint64(7), true, int64(1500), int64(1765091313123456789), 0)
	f.Add("a\x00\u2028", "k\"\\", "\xff\xfe<>&", int64(-1), uint64(0), false, int64(-5), int64(0), -4)
	f.Fuzz(func(t *testing.T, msg, key, s string, i int64, u uint64, b bool, d, unixNano int64, level int) {
		var at time.Time
		if unixNano != 0 {
			at = time.Unix(0, unixNano).UTC()
		}
		r := slog.NewRecord(at, slog.Level(level), msg, 0)
		r.AddAttrs(slog.String(key, s), slog.Int64("i", i), slog.Uint64("u", u), slog.Bool("b", b), slog.Duration("d", time.Duration(d)), slog.String("s", s))
		sameAsSlog(t, r)
	})
}

// TestJSONHandlerDerived: a handler derived with WithAttrs or WithGroup
// writes as slog's, and through the same lock.
func TestJSONHandlerDerived(t *testing.T) {
	var fast, slow bytes.Buffer
	f := slog.New(newJSONHandler(&fast, nil)).With("component", "x").WithGroup("g")
	s := slog.New(slog.NewJSONHandler(&slow, nil)).With("component", "x").WithGroup("g")
	f.Info("hello", "n", 1)
	s.Info("hello", "n", 1)
	strip := func(b *bytes.Buffer) string { _, rest, _ := strings.Cut(b.String(), `"level"`); return rest }
	if strip(&fast) != strip(&slow) {
		t.Errorf("derived handler wrote %s, slog %s", fast.String(), slow.String())
	}
}
