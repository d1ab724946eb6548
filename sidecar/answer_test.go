package sidecar

import (
	"github.com/modgate/modgate/sidecar/wire"

	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// goPrintsWhole reports whether the go command would print body whole
// under "server response:" (cmd/go/internal/web.formatErrorDetail).
func goPrintsWhole(body string) bool {
	if !utf8.ValidString(body) {
		return false
	}
	for _, r := range body {
		if !unicode.IsGraphic(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	n := 0
	for i, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if strings.TrimSpace(line) == "" || i >= 8 {
			return false
		}
		if i > 0 {
			n += 2
		}
		if n+len(line) > 648 {
			return false
		}
		n += len(line)
	}
	return true
}

func TestErrorBody(t *testing.T) {
	long := strings.Repeat("é long reason ", 40)
	tests := []struct {
		name  string
		lines []string
		first string
		count int
	}{
		{"one line", []string{"x denied"}, "modgate: denied: x denied", 1},
		{"blank lines dropped", []string{"a", "", "  ", "b"}, "modgate: denied: a", 2},
		{"newlines flattened", []string{"a\nb\r\nc"}, "modgate: denied: a b  c", 1},
		{"control characters removed", []string{"a\x1b[31mred\x07"}, "modgate: denied: a[31mred", 1},
		{"invalid utf-8 replaced", []string{"a\xffb"}, "modgate: denied: a?b", 1},
		{"too many lines", strings.Split(strings.Repeat("upstream: 500 Internal Server Error\n", 12), "\n"), "modgate: denied: upstream: 500 Internal Server Error", 8},
		{"too long", []string{long, long, long}, "", 0},
		{"nothing", nil, "modgate: denied: error", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := errorBody(wire.Denied, tt.lines...)
			if !goPrintsWhole(body) {
				t.Errorf("the go command would cut or drop this body:\n%s", body)
			}
			if len(body) > 648 {
				t.Errorf("body is %d bytes", len(body))
			}
			lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
			if !strings.HasPrefix(lines[0], "modgate: ") {
				t.Errorf("first line %q does not start with modgate: ", lines[0])
			}
			if tt.first != "" && lines[0] != tt.first {
				t.Errorf("first line = %q; want %q", lines[0], tt.first)
			}
			if tt.count != 0 && len(lines) != tt.count {
				t.Errorf("%d lines; want %d:\n%s", len(lines), tt.count, body)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	rec := httptest.NewRecorder()
	writeError(rec, http.StatusForbidden, wire.Denied, "example.test/m denied")
	if rec.Code != http.StatusForbidden {
		t.Errorf("status %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if rec.Body.String() != "modgate: denied: example.test/m denied\n" {
		t.Errorf("body %q", rec.Body.String())
	}
}

func TestCopyHeaderDropsHopByHop(t *testing.T) {
	src := http.Header{
		"Content-Type":      {"application/zip"},
		"Content-Length":    {"42"},
		"Connection":        {"close, X-Private"},
		"X-Private":         {"secret"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"Etag":              {`"abc"`},
	}
	dst := http.Header{}
	copyHeader(dst, src)
	for _, k := range []string{"Connection", "X-Private", "Keep-Alive", "Transfer-Encoding"} {
		if dst.Get(k) != "" {
			t.Errorf("%s passed through", k)
		}
	}
	for _, k := range []string{"Content-Type", "Content-Length", "Etag"} {
		if dst.Get(k) != src.Get(k) {
			t.Errorf("%s = %q; want %q", k, dst.Get(k), src.Get(k))
		}
	}
}
