package verify

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
)

// memStore is the Store of a verifier given none: verified lookups and
// tiles in memory, the oldest dropped past max bytes.
type memStore struct {
	mu    sync.Mutex
	max   int
	size  int
	data  map[string][]byte
	order []string // insertion order, for dropping the oldest
}

func newMemStore(max int) *memStore { return &memStore{max: max, data: map[string][]byte{}} }

var errNotKept = errors.New("not kept")

func (m *memStore) Get(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.data[name]; ok {
		return d, nil
	}
	return nil, errNotKept
}

func (m *memStore) Put(name string, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.data[name]; ok {
		m.size -= len(old)
	} else {
		m.order = append(m.order, name)
	}
	m.data[name] = data
	m.size += len(data)
	for m.size > m.max && len(m.order) > 0 {
		oldest := m.order[0]
		m.order = m.order[1:]
		m.size -= len(m.data[oldest])
		delete(m.data, oldest)
	}
}

// memTree keeps the latest tree head in memory only.
type memTree struct {
	mu  sync.Mutex
	msg []byte
}

func (t *memTree) Read() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.msg, nil
}

func (t *memTree) Write(data []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.msg = data
	return nil
}

// FileTree keeps the latest tree head in a file (written whole, through a
// temporary file), so that a restarted modgate still knows what the
// database signed before.
type FileTree string

func (f FileTree) Read() ([]byte, error) {
	data, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

func (f FileTree) Write(data []byte) error {
	dir := filepath.Dir(string(f))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".latest-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), string(f))
}
