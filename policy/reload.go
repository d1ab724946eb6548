package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Store holds the current policy of a running modgate and replaces it when
// the file changes. Readers call Load on every request; it is one atomic
// load, and a reload never leaves them with a half-built policy.
//
// A policy file that fails to parse never replaces a working one: the store
// keeps the old policy, returns (or reports) the error, and counts it.
type Store struct {
	// Debounce is how long Watch waits after the last change in the file's
	// directory before it reloads, so that an editor's or a ConfigMap's
	// several steps make one reload. If zero, 100ms.
	Debounce time.Duration

	path     string
	cur      atomic.Pointer[Policy]
	failures atomic.Uint64

	mu       sync.Mutex // serialises reloads, so an older read never wins
	lastData []byte     // what the last reload read, so Watch skips no-op events

	testHookWatching func() // called once Watch has its watches in place
}

// NewStore loads the policy file at path. With path "" the store holds
// Default() and has nothing to reload or watch.
func NewStore(path string) (*Store, error) {
	s := &Store{path: path}
	if path == "" {
		s.cur.Store(Default())
		return s, nil
	}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the policy file's path, or "".
func (s *Store) Path() string { return s.path }

// Load returns the current policy. Callers that make several calls for one
// request (IsPrivate, Route, Decide, DenyMessage) should Load once and use
// that *Policy throughout, so that a reload in between cannot mix two files.
func (s *Store) Load() *Policy {
	if p := s.cur.Load(); p != nil {
		return p
	}
	return Default()
}

// ReloadFailures returns how many reloads failed since the store was made,
// for the telemetry layer to export.
func (s *Store) ReloadFailures() uint64 { return s.failures.Load() }

// Reload reads and parses the file again. If the file cannot be read or
// parsed, the current policy stays and the error (naming the file, line and
// key) is returned. The CLI calls it on SIGHUP.
func (s *Store) Reload() error {
	_, err := s.reload(true)
	return err
}

// reload re-reads the file; unless force, it does nothing (changed false)
// when the content is what the last reload read.
func (s *Store) reload(force bool) (changed bool, err error) {
	if s.path == "" {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	data, err := os.ReadFile(s.path)
	if err != nil {
		if !force && s.lastData == nil {
			return false, nil // still missing: reported already
		}
		s.lastData = nil
		s.failures.Add(1)
		return true, fmt.Errorf("policy: reload: %w", err)
	}
	if !force && s.lastData != nil && bytes.Equal(data, s.lastData) {
		return false, nil
	}
	s.lastData = data
	p, err := Parse(s.path, data)
	if err != nil {
		s.failures.Add(1)
		return true, err
	}
	s.cur.Store(p)
	return true, nil
}

// Watch reloads the policy whenever its file changes, until ctx is done,
// and then returns nil. It blocks; run it on a goroutine of your own, which
// it is the only goroutine of. onResult, if not nil, is called after each
// reload that Watch makes (with nil on success), and with errors of the
// watch itself; it runs on Watch's goroutine.
//
// It watches the file's directory, not the file: editors replace a file by
// renaming a new one over it, and a Kubernetes ConfigMap volume swaps a
// symlink (..data) while the file's own name never changes. Any event in the
// directory (and in the directory the file's symlinks resolve to) starts the
// debounce; then the file is read, and reloaded only if its content differs
// from what the store last read.
//
// With no file (NewStore("")) Watch returns nil at once.
func (s *Store) Watch(ctx context.Context, onResult func(err error)) error {
	if s.path == "" {
		return nil
	}
	report := func(err error) {
		if onResult != nil {
			onResult(err)
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", s.path, err)
	}
	defer w.Close()

	dir := filepath.Dir(s.path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("policy: watch %s: %w", dir, err)
	}
	// The directory the file really lives in, if symlinks lead elsewhere:
	// edits there do not show in dir. It changes with each ConfigMap swap.
	realDir := ""
	rewatch := func() {
		real, err := filepath.EvalSymlinks(s.path)
		if err != nil {
			return
		}
		d := filepath.Dir(real)
		if d == realDir {
			return
		}
		if realDir != "" {
			_ = w.Remove(realDir) // fails harmlessly once the directory is gone
		}
		realDir = ""
		if abs, _ := filepath.Abs(dir); d != abs && d != dir && w.Add(d) == nil {
			realDir = d
		}
	}
	rewatch()
	if s.testHookWatching != nil {
		s.testHookWatching()
	}

	debounce := s.Debounce
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	timer := time.NewTimer(debounce)
	timer.Stop()
	defer timer.Stop()

	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return nil
			}
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				timer.Reset(debounce) // events were lost; look at the file
				continue
			}
			report(fmt.Errorf("policy: watch %s: %w", dir, err))
		case <-timer.C:
			if changed, err := s.reload(false); changed {
				report(err)
			}
			rewatch()
		}
	}
}
