package sidecar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/modgate/modgate/sidecar/cache"
	"github.com/modgate/modgate/sidecar/wire"
)

// The go command prints at most this much of an error body under
// "server response:", and only up to the first blank line
// (cmd/go/internal/web: maxErrorDetailLines, maxErrorDetailBytes). Each
// line after the first costs two more bytes ("\n\t") in its count.
const (
	maxErrorLines = 8
	maxErrorBytes = 8 * 81
)

// writeError answers status with a text/plain body that the go command
// prints whole: the first line starts "modgate: <code>: ", there are at
// most 8 lines and 648 bytes, and no line is blank.
func writeError(w http.ResponseWriter, status int, code wire.Code, lines ...string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	io.WriteString(w, errorBody(code, lines...))
}

// errorBody formats lines as writeError sends them.
func errorBody(code wire.Code, lines ...string) string {
	var b strings.Builder
	n := 0
	for _, line := range lines {
		line = cleanLine(line)
		if line == "" {
			continue
		}
		if n == 0 {
			line = wire.FirstLine(code, line)
		}
		room := maxErrorBytes - b.Len() - 2*n
		if n == maxErrorLines || room < 16 {
			break
		}
		if len(line) > room {
			line = truncate(line, room-3) + "..."
		}
		b.WriteString(line)
		b.WriteByte('\n')
		n++
	}
	if n == 0 {
		b.WriteString(wire.FirstLine(code, "error") + "\n")
	}
	return b.String()
}

// cleanLine keeps what the go command will print: graphic UTF-8 on one line.
func cleanLine(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case !unicode.IsGraphic(r):
			return -1
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

// truncate cuts s to at most n bytes without splitting a rune.
func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:min(n, len(s))]
}

// hopHeaders are meaningful only for a single connection (RFC 9110 7.6.1)
// and are never passed through.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyHeader copies end-to-end headers from src to dst.
// Hop-by-hop headers of src are skipped, never deleted from dst: dst may
// carry modgate's own (Connection: close after a chunked request).
// dst shares src's values, capped so that an Add to dst copies them
// rather than writes into src's: no header here is changed in place, and
// net/http writes a copy of the answer's header.
func copyHeader(dst, src http.Header) {
	var named []string // the headers src's Connection names
	for _, f := range src["Connection"] {
		for _, k := range strings.Split(f, ",") {
			named = append(named, http.CanonicalHeaderKey(strings.TrimSpace(k)))
		}
	}
	for k, vs := range src {
		if slices.Contains(hopHeaders, k) || slices.Contains(named, k) {
			continue
		}
		dst[k] = vs[:len(vs):len(vs)]
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// send writes an answer: status, header and body, size bytes long (-1:
// unknown, the body streams). It is the one writer of the pipeline's
// answers; problems are written by exchange.end. A body that breaks off
// mid-way aborts the connection, so that the client never takes a short
// body for a whole one; a client that goes away is recorded as gone.
func (x *exchange) send(status int, header http.Header, body io.Reader, size int64) error {
	copyHeader(x.w.Header(), header)
	if size >= 0 {
		x.w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	x.w.WriteHeader(status)
	if x.r.Method == http.MethodHead {
		return nil
	}
	x.dw = deadlineWriter{w: x.w, rc: *http.NewResponseController(x.w), idle: x.s.cfg.ClientIdle}
	x.cw = clientWriter{w: &x.dw}
	out := &x.cw
	var n int64
	var err error
	if wt, ok := body.(io.WriterTo); ok {
		n, err = wt.WriteTo(out)
	} else {
		n, err = stream(out, body)
	}
	switch {
	case err == nil:
		return nil
	case out.err != nil || x.r.Context().Err() != nil:
		return clientGone(fmt.Sprintf("client went away after %d bytes", n))
	}
	return aborted(fmt.Sprintf("upstream body broke off after %d bytes; connection aborted: %v", n, err))
}

// sendBytes answers with a body read whole.
func (x *exchange) sendBytes(status int, header http.Header, body []byte) error {
	return x.send(status, header, bytes.NewReader(body), int64(len(body)))
}

// clientWriter notes the error of a write to the client, so that send can
// tell a client that went away from a body that broke off.
type clientWriter struct {
	w   io.Writer
	err error
}

func (c *clientWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// ReadFrom passes the copy on (a cached file, to sendfile(2)). An error
// of it is taken for the client's: sendfile does not say whether the read
// or the write failed, and a cache file that cannot be read is rarer than
// a client that leaves; either way the answer is cut.
func (c *clientWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := c.w.(io.ReaderFrom)
	if !ok {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		return io.CopyBuffer(struct{ io.Writer }{c}, r, *bp)
	}
	n, err := rf.ReadFrom(r)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// entryBody is a cache entry as send's body: written in large chunks.
type entryBody struct{ e *cache.Entry }

func (b entryBody) Read(p []byte) (int, error)         { return b.e.Body.Read(p) }
func (b entryBody) WriteTo(w io.Writer) (int64, error) { return b.e.WriteTo(w) }

// stream copies body to w through a pooled buffer. Which side failed is
// the caller's to tell (send's clientWriter notes failed writes).
func stream(w io.Writer, body io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var written int64
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// deadlineWriter gives a client at most idle to take each write, so that a
// client that stops reading cannot hold a connection, an upstream fetch and
// a goroutine forever.
type deadlineWriter struct {
	w    http.ResponseWriter
	rc   http.ResponseController
	idle time.Duration
}

func newDeadlineWriter(w http.ResponseWriter, idle time.Duration) *deadlineWriter {
	return &deadlineWriter{w: w, rc: *http.NewResponseController(w), idle: idle}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(d.idle)) // not supported: no bound, as before
	return d.w.Write(p)
}

// sendChunk is how much of a ReadFrom a client is given idle to take: the
// size of the writes a cached file was served in before it went through
// sendfile(2), so a slow client is held to the rate it was held to then.
const sendChunk = 1 << 20

// ReadFrom hands r to the writer's ReadFrom (net/http's: sendfile(2) for a
// cached file) sendChunk bytes at a time, renewing the deadline for each.
// A LimitedReader is split into LimitedReaders over the same reader, not
// wrapped in a second one: sendfile sees through one level only.
func (d *deadlineWriter) ReadFrom(r io.Reader) (int64, error) {
	rf, ok := d.w.(io.ReaderFrom)
	if !ok {
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		return io.CopyBuffer(struct{ io.Writer }{d}, r, *bp)
	}
	left := int64(-1) // unknown: until r's end
	if lr, ok := r.(*io.LimitedReader); ok {
		r, left = lr.R, lr.N
		defer func() { lr.N = left }()
	}
	var total int64
	part := &io.LimitedReader{}
	for left != 0 {
		d.rc.SetWriteDeadline(time.Now().Add(d.idle))
		part.R, part.N = r, sendChunk
		if left > 0 {
			part.N = min(left, sendChunk)
		}
		want := part.N
		n, err := rf.ReadFrom(part)
		total += n
		if left > 0 {
			left -= n
		}
		if err != nil || n < want {
			return total, err // n < want: r has ended
		}
	}
	return total, nil
}

// errTooLarge is an upstream answer longer than any artifact of its kind.
var errTooLarge = errors.New("answer too large")

// capReader fails with errTooLarge once more than n bytes have been read
// (n < 0: no limit): an upstream that sends an endless body costs a
// bounded amount.
type capReader struct {
	r io.Reader
	n int64
}

func (c *capReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n < 0 {
		return n, err
	}
	c.n -= int64(n)
	if c.n < 0 {
		return n, fmt.Errorf("%w: more than the limit for its kind", errTooLarge)
	}
	return n, err
}
