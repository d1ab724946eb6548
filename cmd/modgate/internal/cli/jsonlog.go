package cli

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// jsonHandler is slog's JSONHandler with a fast path for flat records,
// which is what nearly every line of `modgate run` is (the access log's
// above all): a message and attributes that are strings, integers,
// booleans or durations. Those are encoded here, byte for byte as slog
// encodes them (FuzzJSONHandler compares the two), without slog's
// per-attribute dispatch and state; any other record, and any handler
// derived with WithAttrs or WithGroup, is slog's own.
type jsonHandler struct {
	slog.Handler // slog's JSONHandler, writing to w
	w            *lockedWriter
}

// newJSONHandler is slog.NewJSONHandler(w, opts), faster for flat records.
// With ReplaceAttr or AddSource it is slog's handler alone: the fast path
// knows neither.
func newJSONHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	if opts != nil && (opts.ReplaceAttr != nil || opts.AddSource) {
		return slog.NewJSONHandler(w, opts)
	}
	// One lock for both paths, so that their lines never interleave on a
	// writer that does not lock.
	lw := &lockedWriter{w: w}
	return &jsonHandler{Handler: slog.NewJSONHandler(lw, opts), w: lw}
}

func (h *jsonHandler) Handle(ctx context.Context, r slog.Record) error {
	if !flat(r) {
		return h.Handler.Handle(ctx, r)
	}
	bp := lineBufs.Get().(*[]byte)
	defer lineBufs.Put(bp)
	b := append((*bp)[:0], '{')
	if !r.Time.IsZero() {
		b = append(b, `"time":"`...)
		b = r.Time.Round(0).AppendFormat(b, time.RFC3339Nano) // Round(0): as slog, no monotonic reading
		b = append(b, `",`...)
	}
	b = append(b, `"level":`...)
	b = appendLogString(b, r.Level.String())
	b = append(b, `,"msg":`...)
	b = appendLogString(b, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b = append(b, ',')
		b = appendLogString(b, a.Key)
		b = append(b, ':')
		switch v := a.Value; v.Kind() {
		case slog.KindString:
			b = appendLogString(b, v.String())
		case slog.KindInt64:
			b = strconv.AppendInt(b, v.Int64(), 10)
		case slog.KindUint64:
			b = strconv.AppendUint(b, v.Uint64(), 10)
		case slog.KindBool:
			b = strconv.AppendBool(b, v.Bool())
		case slog.KindDuration:
			b = strconv.AppendInt(b, int64(v.Duration()), 10) // as slog: nanoseconds
		}
		return true
	})
	b = append(b, '}', '\n')
	*bp = b
	_, err := h.w.Write(b)
	return err
}

// flat reports whether jsonHandler encodes r itself: every attribute has
// a key and one of the kinds it writes, and the time is one slog writes
// (a year slog would complain of goes to slog, to complain).
func flat(r slog.Record) bool {
	if y := r.Time.Year(); !r.Time.IsZero() && (y < 0 || y >= 10000) {
		return false
	}
	ok := true
	r.Attrs(func(a slog.Attr) bool {
		switch a.Value.Kind() {
		case slog.KindString, slog.KindInt64, slog.KindUint64, slog.KindBool, slog.KindDuration:
			ok = a.Key != "" // slog drops some attributes without a key
		default:
			ok = false
		}
		return ok
	})
	return ok
}

var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// appendLogString appends s as a JSON string the way slog's JSONHandler
// writes one (log/slog's appendEscapedJSONString): unlike encoding/json,
// it leaves <, > and & alone.
func appendLogString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// lockedWriter makes each Write whole with respect to the others.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
