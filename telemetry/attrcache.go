package telemetry

import (
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// optionCache keeps one pre-built attribute set per combination of bounded
// values, so that recording a measurement on the request path neither sorts
// nor hashes attributes nor allocates. The values reaching it have been
// through a closedSet or a cappedSet, so it stays as small as the series it
// stands for. Reads are one atomic load and one map lookup with a typed key
// (a sync.Map would box the key); the map is replaced, never changed.
type optionCache[K comparable] struct {
	mu    sync.Mutex
	m     atomic.Pointer[map[K]*options]
	build func(K) []attribute.KeyValue
}

// options holds the option slices that Add and Record take, built once:
// a variadic argument built at each call would be allocated each time.
type options struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func newOptions(kvs ...attribute.KeyValue) *options {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return &options{add: []metric.AddOption{o}, record: []metric.RecordOption{o}}
}

func (c *optionCache[K]) get(k K) *options {
	if m := c.m.Load(); m != nil {
		if o, ok := (*m)[k]; ok {
			return o
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if o, ok := (*old)[k]; ok {
			return o
		}
	}
	m := make(map[K]*options, 1+lenOfMap(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	o := newOptions(c.build(k)...)
	m[k] = o
	c.m.Store(&m)
	return o
}

func lenOfMap[K comparable, V any](m *map[K]V) int {
	if m == nil {
		return 0
	}
	return len(*m)
}

// counters keeps an atomic counter per combination of bounded values, for
// an observable instrument: the request path adds, collection reads.
type counters[K comparable] struct {
	mu    sync.Mutex
	m     atomic.Pointer[map[K]*counter]
	build func(K) []attribute.KeyValue
}

type counter struct {
	atomic.Int64
	opt metric.ObserveOption
}

func (c *counters[K]) get(k K) *counter {
	if m := c.m.Load(); m != nil {
		if n, ok := (*m)[k]; ok {
			return n
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if n, ok := (*old)[k]; ok {
			return n
		}
	}
	m := make(map[K]*counter, 1+lenOfMap(old))
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	n := &counter{opt: metric.WithAttributeSet(attribute.NewSet(c.build(k)...))}
	m[k] = n
	c.m.Store(&m)
	return n
}

func (c *counters[K]) each(f func(int64, metric.ObserveOption)) {
	if m := c.m.Load(); m != nil {
		for _, n := range *m {
			f(n.Load(), n.opt)
		}
	}
}
