package telemetry

import (
	"maps"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// cowMap is a map read on the request path without a lock: a read is one
// atomic load and one map lookup with a typed key (a sync.Map would box the
// key). Adding a key copies the map and swaps the copy in; a map once
// stored is never changed. Every map of this package that grows as values
// are first seen (option sets, counters, capped names, baseline series) is
// one.
type cowMap[K comparable, V any] struct {
	mu sync.Mutex // serialises additions
	m  atomic.Pointer[map[K]V]
}

// load returns k's value, if it has one.
func (c *cowMap[K, V]) load(k K) (v V, ok bool) {
	if m := c.m.Load(); m != nil {
		v, ok = (*m)[k]
	}
	return v, ok
}

// getOrAdd returns k's value, adding newValue(k) when k has none. When max
// is positive and the map already holds max keys, a new key is not added:
// getOrAdd returns the zero V and false.
func (c *cowMap[K, V]) getOrAdd(k K, max int, newValue func(K) V) (V, bool) {
	if v, ok := c.load(k); ok {
		return v, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok := c.load(k); ok {
		return v, true
	}
	var old map[K]V
	if p := c.m.Load(); p != nil {
		old = *p
	}
	if max > 0 && len(old) >= max {
		var zero V
		return zero, false
	}
	m := make(map[K]V, len(old)+1)
	maps.Copy(m, old)
	v := newValue(k)
	m[k] = v
	c.m.Store(&m)
	return v, true
}

// all returns the map as it is now, for reading only; nil if empty.
func (c *cowMap[K, V]) all() map[K]V {
	if m := c.m.Load(); m != nil {
		return *m
	}
	return nil
}

// optionCache keeps one pre-built attribute set per combination of bounded
// values, so that recording a measurement on the request path neither sorts
// nor hashes attributes nor allocates. The values reaching it have been
// through a closedSet or a cappedSet, so it stays as small as the series it
// stands for.
type optionCache[K comparable] struct {
	m     cowMap[K, *options]
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
	o, _ := c.m.getOrAdd(k, 0, func(k K) *options { return newOptions(c.build(k)...) })
	return o
}

// counters keeps an atomic counter per combination of bounded values, for
// an observable instrument: the request path adds, collection reads.
type counters[K comparable] struct {
	m     cowMap[K, *counter]
	build func(K) []attribute.KeyValue
}

type counter struct {
	atomic.Int64
	opt metric.ObserveOption
}

func (c *counters[K]) get(k K) *counter {
	n, _ := c.m.getOrAdd(k, 0, func(k K) *counter {
		return &counter{opt: metric.WithAttributeSet(attribute.NewSet(c.build(k)...))}
	})
	return n
}

func (c *counters[K]) each(f func(int64, metric.ObserveOption)) {
	for _, n := range c.m.all() {
		f(n.Load(), n.opt)
	}
}
