// Package cache is modgate's artifact cache on local disk. Entries are
// written whole or not at all (a temporary file renamed into place), carry
// their own length and SHA-256, and are checked before they are served, so
// that a crash, a full disk or another process never makes a short or
// corrupt artifact look like a good one. Several processes may share one
// directory: the directory is the only shared state.
package cache

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNotExist is returned for a key that has no good entry.
var ErrNotExist = fs.ErrNotExist

// Meta is what an entry says about itself, on its first line.
type Meta struct {
	Key         string    `json:"key"`
	Size        int64     `json:"size"`
	SHA256      string    `json:"sha256"`
	ContentType string    `json:"content_type,omitempty"`
	Stored      time.Time `json:"stored"`
}

// maxMetaLine bounds the first line of an entry.
const maxMetaLine = 4 << 10

// Cache is one cache directory. Its methods are safe for concurrent use by
// goroutines and processes.
type Cache struct {
	dir      string
	maxBytes int64
	now      func() time.Time

	size      atomic.Int64 // bytes in the directory, as last counted or since
	evictions atomic.Int64
	evictMu   sync.Mutex

	// verified remembers entries whose hash was checked by this process,
	// by key and file identity, so that a big zip is hashed once, not on
	// every hit.
	verifiedMu sync.Mutex
	verified   map[string]fileID

	// mem holds small entries (lists, .info, .mod, lookups, tiles) in
	// memory: a hit is then a map lookup, not five system calls. Entries
	// are immutable or judged by their stored time, so a copy is as good
	// as the file.
	memMu    sync.Mutex
	mem      map[string]*memEntry
	memBytes int64
}

type memEntry struct {
	meta Meta
	body []byte
}

// Limits of the in-memory copies.
const (
	memEntryMax = 64 << 10
	memTotalMax = 32 << 20
)

// touchEvery is how stale a file's mtime may get before a hit refreshes
// it: eviction only needs a rough order of use.
const touchEvery = time.Minute

type fileID struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// dirMode is the mode of the cache's folders: its file names are module
// paths (private ones among them), for this user only. Entries are 0600
// (os.CreateTemp).
const dirMode = 0o700

// Open opens (and creates) the cache in dir, holding at most maxBytes
// (0: no limit). now, if not nil, tells time (tests move it). A dir that
// others may read is made private to its owner, unless it is not this
// user's or is a shared folder like /tmp (sticky): then only the folders
// the cache creates in it are private.
func Open(dir string, maxBytes int64, now func() time.Time) (*Cache, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), dirMode); err != nil {
		return nil, err
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 && st.Mode()&os.ModeSticky == 0 && ownedByMe(st) {
		if err := os.Chmod(dir, st.Mode().Perm()&^0o077); err != nil {
			return nil, err
		}
	}
	if now == nil {
		now = time.Now
	}
	c := &Cache{dir: dir, maxBytes: maxBytes, now: now, verified: map[string]fileID{}, mem: map[string]*memEntry{}}
	size, err := c.count()
	if err != nil {
		return nil, err
	}
	c.size.Store(size)
	return c, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Size returns the bytes the cache holds, as this process knows it.
func (c *Cache) Size() int64 { return c.size.Load() }

// Evictions returns how many entries this process has evicted.
func (c *Cache) Evictions() int64 { return c.evictions.Load() }

// path maps a key (an escaped module proxy path such as
// "example.test/m/@v/v1.0.0.zip") to its file. Keys are checked by the
// caller; this only refuses what could leave the directory.
func (c *Cache) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "\\") || strings.Contains(key, "\x00") {
		return "", fmt.Errorf("cache: bad key %q", key)
	}
	for _, elem := range strings.Split(key, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return "", fmt.Errorf("cache: bad key %q", key)
		}
	}
	return filepath.Join(c.dir, "data", filepath.FromSlash(key)), nil
}

// Entry is an open cache entry. Read its body from Body; Close it.
type Entry struct {
	Meta
	Body     *io.SectionReader
	f        *os.File // nil for an in-memory copy
	fileSize int64
	mtime    time.Time
}

// Close closes the entry's file.
func (e *Entry) Close() error {
	if e.f == nil {
		return nil
	}
	return e.f.Close()
}

// WriteTo writes the entry's body to w, in large chunks.
func (e *Entry) WriteTo(w io.Writer) (int64, error) {
	if e.f == nil {
		return io.Copy(w, e.Body)
	}
	off := e.fileSize - e.Size
	if _, err := e.f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	// Large reads and writes through user space beat sendfile(2) here
	// (BenchmarkCacheZip on 2 cores: about 0.9x the throughput of serving
	// from memory, against 0.7-0.85x with sendfile), so the writer's
	// ReadFrom is bypassed on purpose.
	return io.CopyBuffer(writerOnly{w}, io.LimitReader(e.f, e.Size), *bp)
}

// writerOnly hides a writer's ReadFrom from io.CopyBuffer.
type writerOnly struct{ io.Writer }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Age is how long ago the entry was stored.
func (e *Entry) Age(now time.Time) time.Duration { return now.Sub(e.Stored) }

// Get opens the entry for key. An entry that is damaged (short, too long,
// not what its hash says) is removed and reported as ErrNotExist: it is
// never served. A hit marks the entry as recently used.
func (c *Cache) Get(key string) (*Entry, error) {
	p, err := c.path(key)
	if err != nil {
		return nil, err
	}
	c.memMu.Lock()
	m := c.mem[key]
	c.memMu.Unlock()
	if m != nil {
		return &Entry{Meta: m.meta, Body: io.NewSectionReader(bytes.NewReader(m.body), 0, int64(len(m.body)))}, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, ErrNotExist
	}
	e, err := c.check(key, f)
	if err != nil {
		f.Close()
		os.Remove(p) // damaged: the next fetch replaces it
		return nil, ErrNotExist
	}
	if now := c.now(); now.Sub(e.mtime) > touchEvery {
		os.Chtimes(p, now, now) // LRU across processes: the file's mtime is its last use
	}
	if e.Size <= memEntryMax {
		body := make([]byte, e.Size)
		if _, err := e.Body.ReadAt(body, 0); err == nil {
			c.remember(key, e.Meta, body)
		}
	}
	return e, nil
}

// remember keeps a small entry in memory, forgetting others to stay under
// memTotalMax.
func (c *Cache) remember(key string, meta Meta, body []byte) {
	c.memMu.Lock()
	defer c.memMu.Unlock()
	if old := c.mem[key]; old != nil {
		c.memBytes -= int64(len(old.body))
	}
	for k, m := range c.mem { // map order is random enough for a hot set
		if c.memBytes+int64(len(body)) <= memTotalMax {
			break
		}
		delete(c.mem, k)
		c.memBytes -= int64(len(m.body))
	}
	c.mem[key] = &memEntry{meta: meta, body: body}
	c.memBytes += int64(len(body))
}

// forget drops key's in-memory copy.
func (c *Cache) forget(key string) {
	c.memMu.Lock()
	if m := c.mem[key]; m != nil {
		delete(c.mem, key)
		c.memBytes -= int64(len(m.body))
	}
	c.memMu.Unlock()
}

// check reads an entry's metadata and verifies its body: its length
// always, its hash once per file per process.
func (c *Cache) check(key string, f *os.File) (*Entry, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(io.LimitReader(f, maxMetaLine), maxMetaLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("cache: %s: no metadata line", key)
	}
	var m Meta
	if err := json.Unmarshal(line, &m); err != nil || m.Key != key {
		return nil, fmt.Errorf("cache: %s: bad metadata", key)
	}
	off := int64(len(line))
	if st.Size() != off+m.Size {
		return nil, fmt.Errorf("cache: %s: %d bytes, want %d", key, st.Size()-off, m.Size)
	}
	id := fileID{size: st.Size(), mtime: st.ModTime(), ino: inode(st)}
	c.verifiedMu.Lock()
	seen, ok := c.verified[key]
	c.verifiedMu.Unlock()
	// mtime moves on every hit; the inode and size say whether it is the
	// same file that was hashed.
	if !ok || seen.ino != id.ino || seen.size != id.size {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, off, m.Size)); err != nil {
			return nil, err
		}
		if hex.EncodeToString(h.Sum(nil)) != m.SHA256 {
			return nil, fmt.Errorf("cache: %s: hash mismatch", key)
		}
		c.verifiedMu.Lock()
		c.verified[key] = id
		c.verifiedMu.Unlock()
	}
	return &Entry{Meta: m, Body: io.NewSectionReader(f, off, m.Size), f: f, fileSize: st.Size(), mtime: st.ModTime()}, nil
}

// Writer writes one entry. Nothing is visible under the key until Commit
// succeeds; Abort (or a crash) leaves only a temporary file, which Open
// and eviction sweep away.
type Writer struct {
	c           *Cache
	key, path   string
	tmp         *os.File
	body        *os.File // the same file, opened again to read
	h           hashWriter
	n           int64
	contentType string
	done        bool
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

// Create starts writing the entry for key. The body written so far can be
// read back, while it is written, with ReadAt (single flight streams it to
// waiters that way).
func (c *Cache) Create(key, contentType string) (*Writer, error) {
	p, err := c.path(key)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "entry-*")
	if err != nil {
		return nil, err
	}
	body, err := os.Open(tmp.Name())
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, err
	}
	return &Writer{c: c, key: key, path: p, tmp: tmp, body: body, h: sha256.New(), contentType: contentType}, nil
}

// Write appends to the body.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.tmp.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// ReadAt reads the body written so far.
func (w *Writer) ReadAt(p []byte, off int64) (int, error) { return w.body.ReadAt(p, off) }

// Reader opens the body being written for reading, with a file of its own
// that stays readable after Commit or Abort (on Unix), so that a reader
// that lags behind the writer never loses its place.
func (w *Writer) Reader() (*os.File, error) { return os.Open(w.tmp.Name()) }

// Path is the file the body is being written to, for a check that reads
// it before Commit.
func (w *Writer) Path() string { return w.tmp.Name() }

// SetContentType sets the content type the entry is committed with, when
// it was not known at Create.
func (w *Writer) SetContentType(ct string) { w.contentType = ct }

// Len returns the bytes written so far.
func (w *Writer) Len() int64 { return w.n }

// Commit checks the body (size must be wantSize unless it is -1; verify,
// if not nil, is given the body's file path) and makes the entry visible.
// A body that fails a check is dropped.
func (w *Writer) Commit(wantSize int64, verify func(path string) error) error {
	if w.done {
		return errors.New("cache: writer already finished")
	}
	w.done = true
	defer w.body.Close()
	defer os.Remove(w.tmp.Name()) // no-op once renamed
	if wantSize >= 0 && w.n != wantSize {
		w.tmp.Close()
		return fmt.Errorf("cache: %s: got %d bytes, want %d", w.key, w.n, wantSize)
	}
	if err := w.tmp.Sync(); err != nil {
		w.tmp.Close()
		return err
	}
	if verify != nil {
		if err := verify(w.tmp.Name()); err != nil {
			w.tmp.Close()
			return fmt.Errorf("cache: %s: %w", w.key, err)
		}
	}
	if err := w.tmp.Close(); err != nil {
		return err
	}
	// The entry file: metadata line, then the body, written to a second
	// temporary file and renamed into place in one step.
	meta, _ := json.Marshal(Meta{Key: w.key, Size: w.n, SHA256: hex.EncodeToString(w.h.Sum(nil)), ContentType: w.contentType, Stored: w.c.now().UTC()})
	meta = append(meta, '\n')
	out, err := os.CreateTemp(filepath.Join(w.c.dir, "tmp"), "commit-*")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	if _, err := out.Write(meta); err != nil {
		out.Close()
		return err
	}
	in, err := os.Open(w.tmp.Name())
	if err != nil {
		out.Close()
		return err
	}
	_, err = io.Copy(out, in)
	in.Close()
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(w.path), dirMode); err != nil {
		return err
	}
	var old int64
	if st, err := os.Stat(w.path); err == nil {
		old = st.Size()
	}
	if err := os.Rename(out.Name(), w.path); err != nil {
		return err
	}
	w.c.forget(w.key) // the next Get reads (and remembers) the new entry
	w.c.size.Add(int64(len(meta)) + w.n - old)
	w.c.evict()
	return nil
}

// Abort drops the entry being written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.tmp.Close()
	w.body.Close()
	os.Remove(w.tmp.Name())
}

// Remove deletes the entry for key, if any.
func (c *Cache) Remove(key string) {
	c.forget(key)
	if p, err := c.path(key); err == nil {
		if st, err := os.Stat(p); err == nil && os.Remove(p) == nil {
			c.size.Add(-st.Size())
		}
	}
}

// count walks the directory: the bytes of its entries, removing temporary
// files left by a crash (older than an hour: younger ones may be another
// process's writes in progress).
func (c *Cache) count() (int64, error) {
	var total int64
	err := filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if filepath.Base(filepath.Dir(p)) == "tmp" {
			if c.now().Sub(info.ModTime()) > time.Hour {
				os.Remove(p)
			}
			return nil
		}
		total += info.Size()
		return nil
	})
	return total, err
}

// evict removes the least recently used entries (oldest mtime, across
// every process sharing the directory) until the cache is under its limit.
// It recounts the directory first: other processes write there too.
func (c *Cache) evict() {
	if c.maxBytes <= 0 || c.size.Load() <= c.maxBytes {
		return
	}
	if !c.evictMu.TryLock() {
		return // another goroutine is at it
	}
	defer c.evictMu.Unlock()
	type file struct {
		path  string
		size  int64
		mtime time.Time
	}
	var files []file
	var total int64
	filepath.WalkDir(filepath.Join(c.dir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			files = append(files, file{p, info.Size(), info.ModTime()})
			total += info.Size()
		}
		return nil
	})
	slices.SortFunc(files, func(a, b file) int { return a.mtime.Compare(b.mtime) })
	// Down to 90% of the limit, so that not every write evicts.
	target := c.maxBytes - c.maxBytes/10
	for _, f := range files {
		if total <= target {
			break
		}
		if os.Remove(f.path) == nil {
			total -= f.size
			c.evictions.Add(1)
		}
	}
	c.size.Store(total)
}

// Stored is one entry of a cache directory, as Walk finds it.
type Stored struct {
	Meta
	FileSize int64 // the entry's file: metadata line and body
}

// Walk calls fn for every entry in the cache directory dir, reading only
// each entry's metadata line (bodies are not checked; Get does that). It
// opens nothing for writing, so it may run beside a modgate that uses dir.
// Files that are not entries are skipped.
func Walk(dir string, fn func(Stored) error) error {
	root := filepath.Join(dir, "data")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == root && errors.Is(err, fs.ErrNotExist) {
				return nil // an empty cache
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil // removed meanwhile
		}
		st, serr := f.Stat()
		line, rerr := bufio.NewReaderSize(io.LimitReader(f, maxMetaLine), maxMetaLine).ReadSlice('\n')
		f.Close()
		var m Meta
		if serr != nil || rerr != nil || json.Unmarshal(line, &m) != nil || m.Key == "" {
			return nil
		}
		return fn(Stored{Meta: m, FileSize: st.Size()})
	})
	return err
}
