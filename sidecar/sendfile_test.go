package sidecar

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/modgate/modgate/sidecar/cache"
)

// fileWriter is a server's ResponseWriter as net/http's: a ReadFrom (which
// hands an *os.File behind at most one LimitedReader to sendfile(2)) and a
// write deadline. It notes what each ReadFrom was given.
type fileWriter struct {
	*httptest.ResponseRecorder
	files     int // ReadFrom calls given a file sendfile can take
	others    int // ReadFrom calls given anything else
	deadlines int
}

func (f *fileWriter) ReadFrom(r io.Reader) (int64, error) {
	src := r
	if lr, ok := r.(*io.LimitedReader); ok {
		src = lr.R
	}
	if _, ok := src.(*os.File); ok {
		f.files++
	} else {
		f.others++
	}
	return f.Body.ReadFrom(r)
}

func (f *fileWriter) SetWriteDeadline(time.Time) error { f.deadlines++; return nil }

// A cached file reaches the server's ReadFrom (sendfile) through every
// writer of send's chain, as the file itself behind one LimitedReader at
// the body's offset, one chunk per write deadline; the access log and
// audit count its bytes.
func TestCachedFileReachesReadFrom(t *testing.T) {
	c, err := cache.Open(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetMemoryLimit(0) // served from its file
	const key = "example.test/m/@v/v1.0.0.zip"
	body := bytes.Repeat([]byte("0123456789abcdef"), (3*sendChunk+sendChunk/2)/16)
	w, _ := c.Create(key, "application/zip")
	w.Write(body)
	if err := w.Commit(int64(len(body)), nil); err != nil {
		t.Fatal(err)
	}
	e, err := c.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	fw := &fileWriter{ResponseRecorder: httptest.NewRecorder()}
	rec := &responseRecorder{ResponseWriter: fw}
	out := &clientWriter{w: newDeadlineWriter(rec, time.Minute)}
	n, err := entryBody{e}.WriteTo(out)
	if err != nil || n != int64(len(body)) || !bytes.Equal(fw.Body.Bytes(), body) {
		t.Fatalf("wrote %d bytes (%v), the body is %d; same bytes: %v", n, err, len(body), bytes.Equal(fw.Body.Bytes(), body))
	}
	if fw.files != 4 || fw.others != 0 {
		t.Errorf("ReadFrom given the file %d times and something else %d times; want the file 4 times (3.5 chunks)", fw.files, fw.others)
	}
	if fw.deadlines != 4 {
		t.Errorf("%d write deadlines for 4 chunks", fw.deadlines)
	}
	if rec.bytes != int64(len(body)) || rec.status != http.StatusOK {
		t.Errorf("recorded %d bytes, status %d", rec.bytes, rec.status)
	}
}
