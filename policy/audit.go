package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/modgate/modgate/sidecar/wire"
)

// AuditEntry is one line of the audit log, one per answer. The
// fields and their order are a contract (README.md, Architecture): tools
// parse these lines.
type AuditEntry struct {
	Time       time.Time     `json:"time"` // if zero, the time of Log; written in UTC
	TraceID    string        `json:"trace_id,omitempty"`
	SpanID     string        `json:"span_id,omitempty"`
	Client     string        `json:"client,omitempty"`   // remote address
	Identity   string        `json:"identity,omitempty"` // Request.Identity
	Mode       wire.Mode     `json:"mode,omitempty"`     // reverse, forward or mitm
	Kind       wire.Kind     `json:"kind"`
	Module     string        `json:"module,omitempty"`
	Version    string        `json:"version,omitempty"`
	Host       string        `json:"host,omitempty"`
	Upstream   string        `json:"upstream,omitempty"`
	Decision   wire.Decision `json:"decision"` // Decision.Word() when policy decided
	Rule       int           `json:"rule"`     // Decision.Rule: 0 is the default
	Reason     string        `json:"reason,omitempty"`
	Status     int           `json:"status"`
	Bytes      int64         `json:"bytes"`
	DurationMS float64       `json:"duration_ms"`

	// ClaimedIdentity is the name a refused login gave (a user name that
	// did not log in), in place of identity: never an identity.
	ClaimedIdentity string `json:"claimed_identity,omitempty"`
}

// AuditOptions configures NewAuditLog. The zero value is usable.
type AuditOptions struct {
	// Stdout is where the path "-" writes. It is required for "-": this
	// package touches no process globals, so the caller passes os.Stdout.
	Stdout io.Writer

	// MaxSizeMB is the size at which a log file is rotated. If zero, 100.
	MaxSizeMB int

	// MaxBackups is how many rotated files are kept. If zero, 5; if
	// negative, all of them.
	MaxBackups int

	// FlushInterval bounds how long a line may wait in the buffer before it
	// is written, so that lines are batched under load but still reach a
	// "tail -f" promptly. If zero, one second (as Envoy's access log); if
	// negative, every line is written as it is logged.
	FlushInterval time.Duration
}

// ErrAuditClosed is returned by AuditLog methods called after Close.
var ErrAuditClosed = errors.New("policy: audit log closed")

// auditBufferSize is the batch size. Lines are only ever written whole, so
// a rotation never splits one across two files.
const auditBufferSize = 64 << 10

// AuditLog writes AuditEntry values as JSON lines. It is safe for
// concurrent use: every line is written whole and none is lost, in the order
// in which Log calls took the lock.
//
// A disabled log (path "") accepts and drops everything; so does a nil
// *AuditLog, so a caller need not check.
type AuditLog struct {
	mu       sync.Mutex
	w        io.Writer // nil when disabled
	closer   io.Closer // the rotating file; nil for "-" (the caller owns stdout)
	interval time.Duration
	buf      []byte
	line     []byte      // the line being encoded, reused
	timer    *time.Timer // pending flush, or nil
	err      error       // a background flush error the next call reports
	closed   bool
}

// NewAuditLog opens the audit log at path: "-" writes to opts.Stdout, ""
// disables the log, anything else is a file, rotated by size (a path that
// is not a regular file, such as /dev/stderr or a FIFO, is written as is).
// The file is opened (and created, mode 0600, with its directory) now, so
// that a bad path fails at start-up rather than at the first request.
func NewAuditLog(path string, opts AuditOptions) (*AuditLog, error) {
	a := &AuditLog{interval: opts.FlushInterval}
	if a.interval == 0 {
		a.interval = time.Second
	}
	switch path {
	case "":
		return a, nil
	case "-":
		if opts.Stdout == nil {
			return nil, errors.New(`policy: audit log "-" needs AuditOptions.Stdout`)
		}
		a.w = opts.Stdout
	default:
		// lumberjack "rotates" whatever it cannot open by renaming it, be it
		// a directory or /dev/stderr; keep it to regular files.
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			return nil, fmt.Errorf("policy: audit log %s is a directory", path)
		} else if err == nil && !fi.Mode().IsRegular() {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return nil, fmt.Errorf("policy: audit log: %w", err)
			}
			a.w, a.closer = f, f
			break
		}
		lj := &lumberjack.Logger{
			Filename:   path,
			MaxSize:    opts.MaxSizeMB,
			MaxBackups: opts.MaxBackups,
		}
		if lj.MaxSize <= 0 {
			lj.MaxSize = 100
		}
		switch {
		case lj.MaxBackups == 0:
			lj.MaxBackups = 5
		case lj.MaxBackups < 0:
			lj.MaxBackups = 0 // lumberjack's "keep all"
		}
		if _, err := lj.Write(nil); err != nil {
			return nil, fmt.Errorf("policy: audit log: %w", err)
		}
		a.w, a.closer = lj, lj
	}
	a.buf = make([]byte, 0, auditBufferSize)
	return a, nil
}

// Enabled reports whether entries go anywhere, so that a caller can skip
// building them.
func (a *AuditLog) Enabled() bool {
	return a != nil && a.w != nil
}

// Log appends one entry. It returns an error after Close, or if an earlier
// write failed (the lines of that write are lost; later ones are not).
func (a *AuditLog) Log(e AuditEntry) error {
	if a == nil {
		return nil
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrAuditClosed
	}
	if a.w == nil {
		return nil
	}
	line, ok := appendAuditLine(a.line[:0], &e)
	if !ok {
		slow := e // only this copy escapes, not every entry
		var err error
		if line, err = encodeAuditLine(&slow); err != nil {
			return fmt.Errorf("policy: audit log: %w", err)
		}
	} else {
		a.line = line
	}

	err := a.takeErr()
	if len(a.buf)+len(line) > cap(a.buf) {
		err = errors.Join(err, a.flushLocked())
	}
	if len(line) > cap(a.buf) {
		_, werr := a.w.Write(line)
		return errors.Join(err, wrapWriteErr(werr))
	}
	a.buf = append(a.buf, line...)
	switch {
	case a.interval < 0:
		err = errors.Join(err, a.flushLocked())
	case a.timer == nil:
		a.timer = time.AfterFunc(a.interval, a.flushLater)
	}
	return err
}

// flushLater runs on the timer's goroutine.
func (a *AuditLog) flushLater() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.timer = nil
	if a.closed {
		return
	}
	if err := a.flushLocked(); err != nil && a.err == nil {
		a.err = err
	}
}

// Flush writes the buffered lines now.
func (a *AuditLog) Flush() error {
	return a.whileOpen(func() error { return errors.Join(a.takeErr(), a.flushLocked()) })
}

// Close writes every line logged before it and closes the file. Later
// calls of Log, Flush and Close return ErrAuditClosed. Close does not close
// AuditOptions.Stdout.
func (a *AuditLog) Close() error {
	return a.whileOpen(func() error {
		a.closed = true
		if a.timer != nil {
			a.timer.Stop()
			a.timer = nil
		}
		err := errors.Join(a.takeErr(), a.flushLocked())
		if a.closer != nil {
			err = errors.Join(err, a.closer.Close())
		}
		return err
	})
}

// whileOpen runs f holding the lock, unless the log is nil (nothing to do)
// or closed (ErrAuditClosed).
func (a *AuditLog) whileOpen(f func() error) error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrAuditClosed
	}
	return f()
}

// encodeAuditLine is encoding/json's line for e, HTML left unescaped (keep
// "<v1.4.2" readable): the definition appendAuditLine follows, and its
// path for the values it leaves to encoding/json.
func encodeAuditLine(e *AuditEntry) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(e) // adds the newline
	return b.Bytes(), err
}

func (a *AuditLog) flushLocked() error {
	if len(a.buf) == 0 || a.w == nil {
		return nil
	}
	_, err := a.w.Write(a.buf)
	// Drop the batch even on error: keeping it would repeat its lines, or
	// grow without bound while the disk is full.
	a.buf = a.buf[:0]
	return wrapWriteErr(err)
}

func (a *AuditLog) takeErr() error {
	err := a.err
	a.err = nil
	return err
}

func wrapWriteErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("policy: audit log: write: %w", err)
}
