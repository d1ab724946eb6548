package cli

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The log is written in batches: a line waits for the flush interval (or a
// full buffer), and Close writes whatever waits.
func TestLogBufferBatches(t *testing.T) {
	var out syncBuffer
	b := newLogBuffer(&out)
	b.Write([]byte("one\n"))
	b.Write([]byte("two\n"))
	if out.String() != "" {
		t.Fatalf("written before the flush interval: %q", out.String())
	}
	deadline := time.Now().Add(10 * logFlushInterval)
	for out.String() == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if out.String() != "one\ntwo\n" {
		t.Fatalf("after the flush interval: %q", out.String())
	}

	big := bytes.Repeat([]byte("x"), logBufferSize/2)
	b.Write(big)
	b.Write(big) // fills the buffer exactly
	b.Write([]byte("three\n"))
	if got := len(out.String()); got != len("one\ntwo\n")+logBufferSize {
		t.Errorf("a full buffer is not written at once: %d bytes out", got)
	}
	b.Write([]byte("four\n"))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "three\nfour\n") {
		t.Errorf("Close did not write the last lines: ...%q", out.String()[len(out.String())-20:])
	}
	b.Write([]byte("five\n"))
	if !strings.HasSuffix(out.String(), "four\nfive\n") {
		t.Errorf("a line after Close is not written at once")
	}
}

// Records with nothing to hide (the access log line: strings without a
// credential, numbers) pass through the redacting handler without a copy;
// a credential in one of their strings is still hidden.
func TestRedactHandlerPassesPlainRecords(t *testing.T) {
	h := redactHandler{slog.DiscardHandler}
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	rec.AddAttrs(slog.String("method", "GET"), slog.String("path", "/fixture.test/dep01/@v/v1.0.0.info"), slog.Int("status", 200),
		slog.Int64("bytes", 300), slog.String("duration", "52µs"), slog.String("mode", "reverse"), slog.String("kind", "info"),
		slog.String("client", "127.0.0.1"), slog.String("cache", "hit"))
	if n := testing.AllocsPerRun(100, func() { h.Handle(context.Background(), rec) }); n != 0 {
		t.Errorf("a plain record costs %v allocations in the redacting handler, want 0", n)
	}

	var buf bytes.Buffer
	h = redactHandler{slog.NewJSONHandler(&buf, nil)}
	rec = slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	rec.AddAttrs(slog.String("method", "GET"), slog.String("path", "/https://ci:pw1@a.example.test/x"), slog.Int("status", 200),
		slog.String("header", "Authorization: Bearer tok2-abcdef"))
	h.Handle(context.Background(), rec)
	for _, s := range []string{"pw1", "tok2"} {
		if strings.Contains(buf.String(), s) {
			t.Errorf("log shows %s: %s", s, &buf)
		}
	}
}
