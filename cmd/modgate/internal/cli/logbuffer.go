package cli

import (
	"io"
	"sync"
	"time"
)

// logBuffer batches the lines of `modgate run`'s log into few writes: one
// write(2) per access log line was a large part of a cache hit's cost. A
// line waits at most logFlushInterval, or until logBufferSize bytes are
// waiting, and Close writes whatever is left, so a log that scrolls by or
// goes to a collector is late by a tenth of a second at most, and nothing
// logged before Close is lost. Lines are written whole: the handlers
// write each record in one call.
type logBuffer struct {
	mu      sync.Mutex
	w       io.Writer
	buf     []byte
	timer   *time.Timer // flushes the batch; armed while buf holds lines
	pending bool        // the timer is armed
	closed  bool
	err     error // a background flush's error, returned by the next Write
}

const (
	logBufferSize    = 64 << 10
	logFlushInterval = 100 * time.Millisecond
)

func newLogBuffer(w io.Writer) *logBuffer {
	b := &logBuffer{w: w, buf: make([]byte, 0, logBufferSize)}
	b.timer = time.AfterFunc(time.Hour, b.flushLater)
	b.timer.Stop()
	return b
}

// Write takes one line. After Close it writes straight through.
func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.w.Write(p)
	}
	err := b.err
	b.err = nil
	if len(b.buf)+len(p) > cap(b.buf) {
		if ferr := b.flushLocked(); err == nil {
			err = ferr
		}
	}
	if len(p) > cap(b.buf) {
		if _, werr := b.w.Write(p); err == nil {
			err = werr
		}
		return len(p), err
	}
	b.buf = append(b.buf, p...)
	if !b.pending {
		b.pending = true
		b.timer.Reset(logFlushInterval)
	}
	return len(p), err
}

func (b *logBuffer) flushLater() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = false
	if err := b.flushLocked(); err != nil && b.err == nil {
		b.err = err
	}
}

// flushLocked writes the batch and drops it, even on error: keeping it
// would repeat its lines.
func (b *logBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// Close writes the lines that wait; later lines are written as they come.
// It does not close the writer underneath.
func (b *logBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.timer.Stop()
	b.pending = false
	err := b.flushLocked()
	if b.err != nil {
		err = b.err
	}
	return err
}

// Unwrap is the writer underneath, for newLogger's look at whether it is
// a terminal.
func (b *logBuffer) Unwrap() io.Writer { return b.w }
