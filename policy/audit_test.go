package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/wire"
)

// syncBuffer is a bytes.Buffer for a writer that the log's timer goroutine
// may also write to.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAuditFields(t *testing.T) {
	var out syncBuffer
	a, err := NewAuditLog("-", AuditOptions{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	d := Decision{Allow: false, Rule: 2, RuleText: "deny example.test/lib versions <v1.4.2", Reason: "CVE fixed in v1.4.2"}
	full := AuditEntry{
		Time:       time.Date(2025, 1, 2, 3, 4, 5, 6000000, time.FixedZone("X", 3600)),
		TraceID:    "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanID:     "00f067aa0ba902b7",
		Client:     "10.0.0.1:5555",
		Identity:   "ci-1",
		Mode:       "reverse",
		Kind:       wire.KindZip,
		Module:     "example.test/lib",
		Version:    "v1.4.1",
		Host:       "proxy.example.test",
		Upstream:   "public",
		Decision:   d.Word(),
		Rule:       d.Rule,
		Reason:     d.Reason,
		Status:     403,
		Bytes:      123,
		DurationMS: 1.5,
	}
	if err := a.Log(full); err != nil {
		t.Fatal(err)
	}
	if err := a.Log(AuditEntry{Time: full.Time, Kind: wire.KindList, Decision: "allow"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	want := `{"time":"2025-01-02T02:04:05.006Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","client":"10.0.0.1:5555","identity":"ci-1","mode":"reverse","kind":"zip","module":"example.test/lib","version":"v1.4.1","host":"proxy.example.test","upstream":"public","decision":"deny","rule":2,"reason":"CVE fixed in v1.4.2","status":403,"bytes":123,"duration_ms":1.5}
{"time":"2025-01-02T02:04:05.006Z","kind":"list","decision":"allow","rule":0,"status":0,"bytes":0,"duration_ms":0}
`
	if got := out.String(); got != want {
		t.Errorf("audit log:\n%s\nwant:\n%s", got, want)
	}
}

func TestAuditTimeDefault(t *testing.T) {
	var out syncBuffer
	a, _ := NewAuditLog("-", AuditOptions{Stdout: &out, FlushInterval: -1})
	before := time.Now()
	if err := a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow"}); err != nil {
		t.Fatal(err)
	}
	var e AuditEntry
	if err := json.Unmarshal([]byte(out.String()), &e); err != nil {
		t.Fatal(err)
	}
	if e.Time.Before(before.Truncate(time.Second)) || e.Time.Location() != time.UTC {
		t.Errorf("time %v, logged after %v", e.Time, before)
	}
	a.Close()
}

func TestAuditConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := NewAuditLog(path, AuditOptions{FlushInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				e := AuditEntry{
					Kind: wire.KindZip, Decision: "allow", Status: 200,
					Module: fmt.Sprintf("example.test/w%d/m%d", w, i),
					Reason: strings.Repeat("x", i%300), // lines of many lengths straddle batches
				}
				if err := a.Log(e); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := make(map[string]bool)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e AuditEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d is not JSON: %v: %q", len(seen)+1, err, sc.Text())
		}
		if seen[e.Module] {
			t.Fatalf("%s logged twice", e.Module)
		}
		seen[e.Module] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != writers*each {
		t.Errorf("%d lines, want %d", len(seen), writers*each)
	}
}

func TestAuditClose(t *testing.T) {
	var out syncBuffer
	a, _ := NewAuditLog("-", AuditOptions{Stdout: &out, FlushInterval: time.Hour})
	for range 3 {
		if err := a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow"}); err != nil {
			t.Fatal(err)
		}
	}
	if out.String() != "" {
		t.Fatal("written before the flush interval")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Errorf("%d lines after Close, want 3", n)
	}
	if out.writes != 1 {
		t.Errorf("%d writes, want one batch", out.writes)
	}
	for name, err := range map[string]error{
		"Log":   a.Log(AuditEntry{}),
		"Flush": a.Flush(),
		"Close": a.Close(),
	} {
		if !errors.Is(err, ErrAuditClosed) {
			t.Errorf("%s after Close = %v, want ErrAuditClosed", name, err)
		}
	}
}

func TestAuditFlushTimer(t *testing.T) {
	var out syncBuffer
	a, _ := NewAuditLog("-", AuditOptions{Stdout: &out, FlushInterval: time.Millisecond})
	defer a.Close()
	if err := a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for out.String() == "" {
		if time.Now().After(deadline) {
			t.Fatal("line not flushed by the timer")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAuditFlush(t *testing.T) {
	var out syncBuffer
	a, _ := NewAuditLog("-", AuditOptions{Stdout: &out, FlushInterval: time.Hour})
	defer a.Close()
	a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow"})
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "\n") != 1 {
		t.Errorf("after Flush: %q", out.String())
	}
}

type failWriter struct{ fail bool }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.fail {
		return 0, errors.New("disk full")
	}
	return len(p), nil
}

func TestAuditWriteError(t *testing.T) {
	w := &failWriter{fail: true}
	a, _ := NewAuditLog("-", AuditOptions{Stdout: w, FlushInterval: -1})
	if err := a.Log(AuditEntry{}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Log to a failing writer = %v", err)
	}
	w.fail = false
	if err := a.Log(AuditEntry{}); err != nil {
		t.Errorf("Log after the writer recovered = %v", err)
	}
	a.Close()
}

func TestAuditDisabled(t *testing.T) {
	a, err := NewAuditLog("", AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Enabled() {
		t.Error("disabled log says Enabled")
	}
	if err := a.Log(AuditEntry{}); err != nil {
		t.Error(err)
	}
	if err := a.Close(); err != nil {
		t.Error(err)
	}
	var nilLog *AuditLog
	if nilLog.Enabled() || nilLog.Log(AuditEntry{}) != nil || nilLog.Flush() != nil || nilLog.Close() != nil {
		t.Error("nil *AuditLog is not a silent no-op")
	}
}

func TestAuditOpenErrors(t *testing.T) {
	if _, err := NewAuditLog("-", AuditOptions{}); err == nil {
		t.Error(`"-" without Stdout accepted`)
	}
	// A directory where the file should be: lumberjack would rename it.
	dir := t.TempDir()
	if _, err := NewAuditLog(dir, AuditOptions{}); err == nil {
		t.Error("a directory accepted as the audit file")
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("the directory is gone: %v", err)
	}
	// Nowhere to create the file.
	if _, err := NewAuditLog(filepath.Join(fullPolicy, "audit.log"), AuditOptions{}); err == nil {
		t.Error("a path under a regular file accepted")
	}
}

func TestAuditDevice(t *testing.T) {
	a, err := NewAuditLog(os.DevNull, AuditOptions{FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow"}); err != nil {
		t.Error(err)
	}
	if err := a.Close(); err != nil {
		t.Error(err)
	}
}

func TestAuditRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	a, err := NewAuditLog(path, AuditOptions{MaxSizeMB: 1, MaxBackups: 2, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file not created 0600 at start: %v %v", fi, err)
	}
	reason := strings.Repeat("r", 1000)
	const lines = 1500 // about 1.6 MB: one rotation
	for i := range lines {
		if err := a.Log(AuditEntry{Kind: wire.KindZip, Decision: "deny", Rule: i, Reason: reason}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "audit*.log"))
	if len(files) != 2 {
		t.Fatalf("files after rotation: %q", files)
	}
	// Every line whole, in one file or the other, none lost.
	total := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(strings.TrimSuffix(string(data), "\n"), "\n") {
			var e AuditEntry
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("%s: broken line: %v", f, err)
			}
			total++
		}
	}
	if total != lines {
		t.Errorf("%d lines in %d files, want %d", total, len(files), lines)
	}
}

// TestAuditHugeLine logs a line larger than the batch buffer between two
// small ones: it is written on its own, in order.
func TestAuditHugeLine(t *testing.T) {
	var out syncBuffer
	a, _ := NewAuditLog("-", AuditOptions{Stdout: &out, FlushInterval: time.Hour})
	a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow", Rule: 1})
	a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow", Rule: 2, Reason: strings.Repeat("x", 2*auditBufferSize)})
	a.Log(AuditEntry{Kind: wire.KindList, Decision: "allow", Rule: 3})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	for i, line := range lines {
		var e AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil || e.Rule != i+1 {
			t.Errorf("line %d: rule %d, %v", i+1, e.Rule, err)
		}
	}
	if len(lines) != 3 {
		t.Errorf("%d lines, want 3", len(lines))
	}
}
