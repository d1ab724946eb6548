package cache

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func put(t *testing.T, c *Cache, key, body string) {
	t.Helper()
	w, err := c.Create(key, "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, body)
	if err := w.Commit(int64(len(body)), nil); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, c *Cache, key string) (string, error) {
	t.Helper()
	e, err := c.Get(key)
	if err != nil {
		return "", err
	}
	defer e.Close()
	b, err := io.ReadAll(e.Body)
	return string(b), err
}

func TestPutGet(t *testing.T) {
	c, err := Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	put(t, c, "example.test/m/@v/v1.0.0.info", `{"Version":"v1.0.0"}`)
	got, err := read(t, c, "example.test/m/@v/v1.0.0.info")
	if err != nil || got != `{"Version":"v1.0.0"}` {
		t.Errorf("got %q, %v", got, err)
	}
	e, _ := c.Get("example.test/m/@v/v1.0.0.info")
	if e.ContentType != "text/plain" || e.Size != 20 {
		t.Errorf("meta %+v", e.Meta)
	}
	e.Close()
	if _, err := c.Get("example.test/m/@v/v2.0.0.info"); !errors.Is(err, ErrNotExist) {
		t.Errorf("missing entry: %v", err)
	}
	for _, bad := range []string{"", "/abs", "a/../b", "a//b", "./a"} {
		if _, err := c.Create(bad, ""); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
}

func TestOnlyCompleteBodiesAreStored(t *testing.T) {
	c, _ := Open(t.TempDir(), 0, nil)
	w, _ := c.Create("example.test/m/@v/v1.0.0.zip", "application/zip")
	io.WriteString(w, "half")
	if err := w.Commit(8, nil); err == nil {
		t.Errorf("a short body was committed")
	}
	w, _ = c.Create("example.test/m/@v/v1.0.0.zip", "application/zip")
	io.WriteString(w, "not a zip")
	if err := w.Commit(-1, func(string) error { return errors.New("not a module zip") }); err == nil || !strings.Contains(err.Error(), "not a module zip") {
		t.Errorf("verify: %v", err)
	}
	w, _ = c.Create("example.test/m/@v/v1.0.0.zip", "application/zip")
	io.WriteString(w, "abandoned")
	w.Abort()
	if _, err := c.Get("example.test/m/@v/v1.0.0.zip"); !errors.Is(err, ErrNotExist) {
		t.Errorf("an incomplete entry is served: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(c.Dir(), "tmp")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestDamagedEntriesAreNeverServed(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func(path string)
	}{
		{"truncated", func(p string) {
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-3)
		}},
		{"a flipped byte", func(p string) {
			b, _ := os.ReadFile(p)
			b[len(b)-2] ^= 0xff
			os.WriteFile(p, b, 0o644)
		}},
		{"bad metadata", func(p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append([]byte("garbage"), b...), 0o644)
		}},
		{"grown", func(p string) {
			f, _ := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			f.WriteString("more")
			f.Close()
		}},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			c, _ := Open(dir, 0, nil)
			const key = "example.test/m/@v/v1.0.0.mod"
			put(t, c, key, "module example.test/m\n")
			damage.do(filepath.Join(dir, "data", key))
			// A fresh process has not hashed it yet.
			c2, _ := Open(dir, 0, nil)
			if got, err := read(t, c2, key); !errors.Is(err, ErrNotExist) {
				t.Errorf("damaged entry served: %q %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "data", key)); err == nil {
				t.Errorf("damaged entry left in place")
			}
		})
	}
}

func TestEvictsLeastRecentlyUsed(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := t.TempDir()
	c, _ := Open(dir, 1700, clock) // four entries of about 400 bytes fit
	body := strings.Repeat("x", 200)
	for i := range 4 {
		put(t, c, "example.test/m/@v/v1.0."+string(rune('0'+i))+".zip", body)
		now = now.Add(time.Minute)
		os.Chtimes(filepath.Join(dir, "data", "example.test/m/@v/v1.0."+string(rune('0'+i))+".zip"), now, now)
	}
	// Use v1.0.0 again: it is now the most recent.
	now = now.Add(time.Minute)
	if _, err := read(t, c, "example.test/m/@v/v1.0.0.zip"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	put(t, c, "example.test/m/@v/v1.0.9.zip", body) // over the limit
	if _, err := c.Get("example.test/m/@v/v1.0.1.zip"); !errors.Is(err, ErrNotExist) {
		t.Errorf("the least recently used entry was kept")
	}
	for _, keep := range []string{"v1.0.0", "v1.0.9"} {
		if _, err := read(t, c, "example.test/m/@v/"+keep+".zip"); err != nil {
			t.Errorf("%s evicted: %v", keep, err)
		}
	}
	if c.Size() > 1700 || c.Evictions() == 0 {
		t.Errorf("size %d, evictions %d", c.Size(), c.Evictions())
	}
}

func TestSharedDirectory(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(dir, 0, nil)
	b, _ := Open(dir, 0, nil)
	put(t, a, "example.test/m/@v/list", "v1.0.0\n")
	if got, err := read(t, b, "example.test/m/@v/list"); err != nil || got != "v1.0.0\n" {
		t.Errorf("b reads a's entry: %q %v", got, err)
	}
	put(t, b, "example.test/m/@v/list", "v1.0.0\nv1.1.0\n") // replaced by another process
	if got, err := read(t, a, "example.test/m/@v/list"); err != nil || got != "v1.0.0\nv1.1.0\n" {
		t.Errorf("a reads b's replacement: %q %v", got, err)
	}
}

func TestReadWhileWriting(t *testing.T) {
	c, _ := Open(t.TempDir(), 0, nil)
	w, _ := c.Create("example.test/m/@v/v1.0.0.zip", "application/zip")
	w.Write([]byte("first "))
	buf := make([]byte, 6)
	if n, _ := w.ReadAt(buf, 0); string(buf[:n]) != "first " {
		t.Errorf("ReadAt while writing: %q", buf[:n])
	}
	w.Abort()
}

// TestKill9DuringWrite kills a process that is writing an entry: what it
// leaves is never served.
func TestKill9DuringWrite(t *testing.T) {
	if os.Getenv("CACHE_KILL_CHILD") != "" {
		c, err := Open(os.Getenv("CACHE_KILL_CHILD"), 0, nil)
		if err != nil {
			os.Exit(2)
		}
		w, _ := c.Create("example.test/m/@v/v1.0.0.zip", "application/zip")
		chunk := bytes.Repeat([]byte("z"), 1<<10)
		for i := 0; ; i++ {
			w.Write(chunk)
			if i == 10 {
				os.WriteFile(filepath.Join(c.Dir(), "writing"), nil, 0o644)
			}
			time.Sleep(time.Millisecond)
		}
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9DuringWrite$")
	cmd.Env = append(os.Environ(), "CACHE_KILL_CHILD="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "writing")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the child never started writing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Kill() // SIGKILL
	cmd.Wait()
	c, err := Open(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("example.test/m/@v/v1.0.0.zip"); !errors.Is(err, ErrNotExist) {
		t.Errorf("an entry killed mid-write is served: %v", err)
	}
}
