package cache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// memClock is a clock the tests move.
type memClock struct{ t time.Time }

func (c *memClock) now() time.Time { return c.t }

// TestHitsServedFromMemory: a small entry read once is then served from
// memory, without its file: deleting the file under the cache does not
// stop hits until the copy is next compared with its file (memRecheck);
// then the hit is a miss.
func TestHitsServedFromMemory(t *testing.T) {
	clock := &memClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	c, _ := Open(dir, 0, clock.now)
	const key = "example.test/m/@v/v1.0.0.info"
	put(t, c, key, `{"Version":"v1.0.0"}`)
	if got, err := read(t, c, key); err != nil || got != `{"Version":"v1.0.0"}` {
		t.Fatalf("first read: %q %v", got, err)
	}
	if n := c.MemoryBytes(); n != 20 {
		t.Fatalf("%d bytes in memory, want 20", n)
	}
	if err := os.Remove(filepath.Join(dir, "data", key)); err != nil {
		t.Fatal(err)
	}
	clock.t = clock.t.Add(memRecheck / 2)
	e, err := c.Get(key)
	if err != nil {
		t.Fatalf("hit with the file gone, before the recheck: %v", err)
	}
	var out bytes.Buffer
	if n, err := e.WriteTo(&out); err != nil || n != 20 || out.String() != `{"Version":"v1.0.0"}` || e.ContentType != "text/plain" {
		t.Errorf("WriteTo from memory: %d %q %v, meta %+v", n, out.String(), err, e.Meta)
	}
	e.Close()
	clock.t = clock.t.Add(memRecheck)
	if got, err := read(t, c, key); !errors.Is(err, ErrNotExist) {
		t.Errorf("served %q (%v) after the file was gone for longer than memRecheck", got, err)
	}
	if n := c.MemoryBytes(); n != 0 {
		t.Errorf("%d bytes still in memory", n)
	}
	// Entries over memEntryMax are never held.
	big := strings.Repeat("z", memEntryMax+1)
	put(t, c, "example.test/m/@v/v1.0.0.zip", big)
	if got, err := read(t, c, "example.test/m/@v/v1.0.0.zip"); err != nil || got != big {
		t.Fatalf("big entry: %d bytes, %v", len(got), err)
	}
	if n := c.MemoryBytes(); n != 0 {
		t.Errorf("an entry of %d bytes held in memory", len(big))
	}
}

// TestMemoryEvictsLeastRecentlyUsedBytes: the copies stay under the
// limit in bytes, the least recently used dropped first.
func TestMemoryEvictsLeastRecentlyUsedBytes(t *testing.T) {
	clock := &memClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	c, _ := Open(dir, 0, clock.now)
	c.SetMemoryLimit(250)
	keys := []string{"example.test/a/@v/list", "example.test/b/@v/list", "example.test/c/@v/list"}
	for _, k := range keys {
		put(t, c, k, strings.Repeat("v", 100))
	}
	read(t, c, keys[0])
	read(t, c, keys[1])
	read(t, c, keys[0]) // a is now used more recently than b
	read(t, c, keys[2]) // 300 bytes: b goes
	if n := c.MemoryBytes(); n != 200 {
		t.Errorf("%d bytes in memory, want 200", n)
	}
	for _, k := range keys {
		os.Remove(filepath.Join(dir, "data", k))
	}
	for i, want := range []bool{true, false, true} {
		if _, err := read(t, c, keys[i]); (err == nil) != want {
			t.Errorf("%s: served from memory %v, want %v", keys[i], err == nil, want)
		}
	}
	c.SetMemoryLimit(0)
	if n := c.MemoryBytes(); n != 0 {
		t.Errorf("limit 0: %d bytes in memory", n)
	}
}

// TestMemoryFollowsTheFiles: Remove, Commit and eviction in this process
// reach the copy at once; another process sharing the directory that
// replaces or removes an entry is seen after memRecheck.
func TestMemoryFollowsTheFiles(t *testing.T) {
	clock := &memClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	a, _ := Open(dir, 0, clock.now)
	b, _ := Open(dir, 0, clock.now)
	const key = "example.test/m/@v/list"
	expect := func(c *Cache, want string) {
		t.Helper()
		got, err := read(t, c, key)
		if want == "" {
			if !errors.Is(err, ErrNotExist) {
				t.Errorf("got %q, %v; want none", got, err)
			}
			return
		}
		if err != nil || got != want {
			t.Errorf("got %q, %v; want %q", got, err, want)
		}
	}
	put(t, a, key, "v1.0.0\n")
	expect(a, "v1.0.0\n")
	put(t, a, key, "v1.0.0\nv1.1.0\n") // Commit in this process
	expect(a, "v1.0.0\nv1.1.0\n")
	a.Remove(key)
	expect(a, "")

	put(t, a, key, "v1.0.0\n")
	expect(a, "v1.0.0\n")
	put(t, b, key, "v1.2.0\n") // another process, the same size
	expect(a, "v1.0.0\n")      // within memRecheck: the copy
	clock.t = clock.t.Add(memRecheck)
	expect(a, "v1.2.0\n")
	b.Remove(key)
	clock.t = clock.t.Add(memRecheck)
	expect(a, "")

	// Eviction on disk in this process drops the copy too.
	c, _ := Open(t.TempDir(), 1000, clock.now)
	put(t, c, "example.test/x/@v/list", strings.Repeat("x", 400))
	expect2 := func(key string, want bool) {
		t.Helper()
		if _, err := c.Get(key); (err == nil) != want {
			t.Errorf("%s served: %v, want %v", key, err == nil, want)
		}
	}
	expect2("example.test/x/@v/list", true)
	// The clock stands still (no recheck): only the eviction can drop it.
	put(t, c, "example.test/y/@v/list", strings.Repeat("y", 400))
	put(t, c, "example.test/z/@v/list", strings.Repeat("z", 400)) // over 1000: x, the oldest, goes
	expect2("example.test/x/@v/list", false)
}

// plainWriter has no ReadFrom, as the server's response writers.
type plainWriter struct{ n int }

func (w *plainWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// TestMemoryHitAllocations: a hit from memory allocates its Entry, not
// readers, a path or a copy buffer.
func TestMemoryHitAllocations(t *testing.T) {
	c, _ := Open(t.TempDir(), 0, nil)
	const key = "example.test/m/@v/v1.0.0.mod"
	put(t, c, key, "module example.test/m\n")
	read(t, c, key)
	var w plainWriter
	allocs := testing.AllocsPerRun(100, func() {
		e, err := c.Get(key)
		if err != nil {
			t.Fatal(err)
		}
		e.WriteTo(&w)
		e.Close()
	})
	if allocs > 1 || w.n != 101*22 {
		t.Errorf("%v allocations per hit (want 1: the entry), %d bytes written", allocs, w.n)
	}
}

func BenchmarkMemoryHit(b *testing.B) {
	c, _ := Open(b.TempDir(), 0, nil)
	const key = "example.test/m/@v/v1.0.0.info"
	w, _ := c.Create(key, "application/json")
	w.Write([]byte(`{"Version":"v1.0.0","Time":"2026-01-02T03:04:05Z"}`))
	w.Commit(-1, nil)
	var pw plainWriter
	b.ReportAllocs()
	for b.Loop() {
		e, err := c.Get(key)
		if err != nil {
			b.Fatal(err)
		}
		e.WriteTo(&pw)
		e.Close()
	}
}
