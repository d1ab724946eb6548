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
	"container/list"
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
	// memory, the least recently used dropped first to stay under memMax
	// bytes: a hit is then a map lookup, not five system calls. The copy
	// is of a file whose identity it remembers; at most every memRecheck
	// a hit compares that with the file (one stat), so that an entry that
	// another process sharing the directory replaced, removed or evicted
	// is read again or reported missing within memRecheck.
	memMu    sync.Mutex
	mem      map[string]*memEntry
	memLRU   list.List // of *memEntry, most recently used first
	memBytes int64
	memMax   int64
	memGen   uint64 // counts forget calls: a copy read before one is not kept
}

type memEntry struct {
	key     string
	meta    Meta
	body    []byte
	at      *bytes.Reader // body, for ReadAt only (shared: ReadAt keeps no state)
	id      fileID        // the file the copy was read from
	checked time.Time     // when id was last compared with the file
	elem    *list.Element
}

// Limits of the in-memory copies: each entry, and all of them.
const (
	memEntryMax     = 64 << 10
	DefaultMemBytes = 64 << 20
)

// memRecheck is how long a hit served from memory trusts the file it was
// read from without looking at it again.
const memRecheck = time.Second

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
	c := &Cache{dir: dir, maxBytes: maxBytes, now: now, verified: map[string]fileID{}, mem: map[string]*memEntry{}, memMax: DefaultMemBytes}
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

// SetMemoryLimit sets how many bytes of small entries the cache keeps in
// memory (DefaultMemBytes unless set; 0 keeps none), dropping the least
// recently used ones now if they are over it.
func (c *Cache) SetMemoryLimit(n int64) {
	c.memMu.Lock()
	defer c.memMu.Unlock()
	c.memMax = max(n, 0)
	c.shrinkLocked(0)
}

// MemoryBytes returns the bytes of entries held in memory.
func (c *Cache) MemoryBytes() int64 {
	c.memMu.Lock()
	defer c.memMu.Unlock()
	return c.memBytes
}

// Evictions returns how many entries this process has evicted.
func (c *Cache) Evictions() int64 { return c.evictions.Load() }

// path maps a key (an escaped module proxy path such as
// "example.test/m/@v/v1.0.0.zip") to its file. Keys are checked by the
// caller; this only refuses what could leave the directory.
func (c *Cache) path(key string) (string, error) {
	if !goodKey(key) {
		return "", fmt.Errorf("cache: bad key %q", key)
	}
	return filepath.Join(c.dir, "data", filepath.FromSlash(key)), nil
}

// goodKey reports whether key stays inside the directory: no empty, "."
// or ".." element, no leading slash, backslash or NUL. It allocates
// nothing (a hit from memory checks it too).
func goodKey(key string) bool {
	if key == "" || strings.HasPrefix(key, "/") || strings.ContainsAny(key, "\\\x00") {
		return false
	}
	for elem := range strings.SplitSeq(key, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
	}
	return true
}

// Entry is an open cache entry. Read its body from Body; Close it.
type Entry struct {
	Meta
	Body     *io.SectionReader
	f        *os.File // nil for an in-memory copy
	mem      []byte   // the in-memory copy's body
	fileSize int64
	id       fileID
	section  io.SectionReader // Body of an in-memory copy
}

// Close closes the entry's file.
func (e *Entry) Close() error {
	if e.f == nil {
		return nil
	}
	return e.f.Close()
}

// Bytes returns the body of an in-memory copy, which its caller must not
// modify (every hit shares it); ok is false for an entry read from its
// file.
func (e *Entry) Bytes() (body []byte, ok bool) {
	return e.mem, e.f == nil && e.mem != nil
}

// WriteTo writes the entry's body to w: through w's ReadFrom when it has
// one (sendfile for a server's connection), else in large chunks; an
// in-memory copy in one Write.
func (e *Entry) WriteTo(w io.Writer) (int64, error) {
	if e.f == nil {
		// Not io.Copy: without a ReaderFrom on w it would allocate a
		// 32 KiB buffer for every hit.
		n, err := w.Write(e.mem)
		return int64(n), err
	}
	off := e.fileSize - e.Size
	if _, err := e.f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	body := io.LimitReader(e.f, e.Size)
	if rf, ok := w.(io.ReaderFrom); ok {
		// The file, at the body's offset, behind one LimitedReader: what
		// net/http's ReadFrom hands to sendfile(2). With the client in
		// another process (make bench's 256 MiB cached zip, 2 cores, load
		// 6-7) sendfile serves 1.1-1.2 GB/s at 0.18-0.21 s of CPU per
		// transfer, where 1 MiB reads and writes through user space served
		// 0.2-0.4 GB/s at 0.6-1.3 s. BenchmarkCacheZip, whose client
		// shares the process, favours user space (1.6-1.8 against
		// 1.2-1.3 GB/s): its client competes for the same CPUs.
		return rf.ReadFrom(body)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(w, body, *bp)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Age is how long ago the entry was stored.
func (e *Entry) Age(now time.Time) time.Duration { return now.Sub(e.Stored) }

// Get opens the entry for key. An entry that is damaged (short, too long,
// not what its hash says) is removed and reported as ErrNotExist: it is
// never served. A hit marks the entry as recently used.
func (c *Cache) Get(key string) (*Entry, error) {
	if !goodKey(key) {
		return nil, fmt.Errorf("cache: bad key %q", key)
	}
	e, gen := c.fromMemory(key)
	if e != nil {
		return e, nil
	}
	p, err := c.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, ErrNotExist
	}
	e, err = c.check(key, f)
	if err != nil {
		f.Close()
		os.Remove(p) // damaged: the next fetch replaces it
		return nil, ErrNotExist
	}
	now := c.now()
	if now.Sub(e.id.mtime) > touchEvery {
		c.touch(p, &e.id, now)
	}
	if e.Size <= memEntryMax {
		body := make([]byte, e.Size)
		if _, err := e.Body.ReadAt(body, 0); err == nil {
			c.remember(&memEntry{key: key, meta: e.Meta, body: body, at: bytes.NewReader(body), id: e.id, checked: now}, gen)
		}
	}
	return e, nil
}

// touch sets the file's mtime to now: LRU across processes, the file's
// mtime is its last use. id follows.
func (c *Cache) touch(p string, id *fileID, now time.Time) {
	if os.Chtimes(p, now, now) == nil {
		id.mtime = now
	}
}

// fromMemory is the in-memory copy of key, or nil. A copy older
// than memRecheck is first compared with its file: one that is gone, or
// another file now, is dropped (nil: Get reads the file). gen is for
// remember.
func (c *Cache) fromMemory(key string) (_ *Entry, gen uint64) {
	now := c.now()
	c.memMu.Lock()
	m, gen := c.mem[key], c.memGen
	if m == nil {
		c.memMu.Unlock()
		return nil, gen
	}
	c.memLRU.MoveToFront(m.elem)
	id, fresh := m.id, now.Sub(m.checked) < memRecheck && !now.Before(m.checked)
	c.memMu.Unlock()
	if !fresh {
		p, _ := c.path(key)
		st, err := os.Stat(p)
		if err != nil || st.Size() != id.size || inode(st) != id.ino || !st.ModTime().Equal(id.mtime) {
			c.forgetCopy(m)
			return nil, gen
		}
		if now.Sub(id.mtime) > touchEvery {
			c.touch(p, &id, now)
		}
		c.memMu.Lock()
		if c.mem[key] == m {
			m.id, m.checked = id, now
		}
		c.memMu.Unlock()
	}
	e := &Entry{Meta: m.meta, mem: m.body}
	e.section = *io.NewSectionReader(m.at, 0, int64(len(m.body)))
	e.Body = &e.section
	return e, gen
}

// remember keeps a small entry in memory, dropping the least recently
// used ones to stay under memMax, unless something was forgotten since
// gen (a Commit or Remove may have replaced the file m was read from).
func (c *Cache) remember(m *memEntry, gen uint64) {
	size := int64(len(m.body))
	c.memMu.Lock()
	defer c.memMu.Unlock()
	if gen != c.memGen {
		return
	}
	if old := c.mem[m.key]; old != nil {
		c.dropLocked(old)
	}
	if size > c.memMax {
		return
	}
	c.shrinkLocked(size)
	m.elem = c.memLRU.PushFront(m)
	c.mem[m.key] = m
	c.memBytes += size
}

// shrinkLocked drops the least recently used copies until room more bytes
// fit under memMax.
func (c *Cache) shrinkLocked(room int64) {
	for c.memBytes+room > c.memMax && c.memLRU.Len() > 0 {
		c.dropLocked(c.memLRU.Back().Value.(*memEntry))
	}
}

func (c *Cache) dropLocked(m *memEntry) {
	delete(c.mem, m.key)
	c.memLRU.Remove(m.elem)
	c.memBytes -= int64(len(m.body))
}

// forget drops key's in-memory copy.
func (c *Cache) forget(key string) {
	c.memMu.Lock()
	c.memGen++
	if m := c.mem[key]; m != nil {
		c.dropLocked(m)
	}
	c.memMu.Unlock()
}

// forgetCopy drops m if it is still key's copy (not one read since).
func (c *Cache) forgetCopy(m *memEntry) {
	c.memMu.Lock()
	if c.mem[m.key] == m {
		c.dropLocked(m)
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
	return &Entry{Meta: m, Body: io.NewSectionReader(f, off, m.Size), f: f, fileSize: st.Size(), id: id}, nil
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
	if p, err := c.path(key); err == nil {
		if st, err := os.Stat(p); err == nil && os.Remove(p) == nil {
			c.size.Add(-st.Size())
		}
	}
	c.forget(key) // after the file: a Get that read it meanwhile keeps no copy
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
			if rel, err := filepath.Rel(filepath.Join(c.dir, "data"), f.path); err == nil {
				c.forget(filepath.ToSlash(rel))
			}
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
