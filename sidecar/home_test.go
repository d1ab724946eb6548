package sidecar_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/modgate/modgate/sidecar"
	"github.com/modgate/modgate/sidecar/modtest"
	"github.com/modgate/modgate/sidecar/sidecartest"
	"github.com/modgate/modgate/sidecar/upstream"
)

// Someone who opens the GOPROXY URL in a browser learns what it is and
// where the status page is.
func TestModuleListenerHome(t *testing.T) {
	g := sidecartest.Start(t, nil, sidecar.Config{Admin: "127.0.0.1:0", Upstreams: []upstream.Config{{URL: "off"}}, Version: "v9.9.9"})
	code, body := get(t, g.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("GET /: %d\n%s", code, body)
	}
	for _, want := range []string{"modgate v9.9.9", "GOPROXY", "modgate env", "Status:  http://" + g.AdminAddr + "/"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET / lacks %q:\n%s", want, body)
		}
	}
	// Any other path that is not the protocol stays a 404.
	if code, _ := get(t, g.URL+"/favicon.ico"); code != http.StatusNotFound {
		t.Errorf("GET /favicon.ico: %d", code)
	}
}

// logBuffer collects log lines from the server's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.b.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// With LogRequests, every request is one access log line at info level.
func TestAccessLog(t *testing.T) {
	p := modtest.NewProxy(t, loadFixtures(t))
	for _, on := range []bool{true, false} {
		var logs logBuffer
		g := sidecartest.Start(t, nil, sidecar.Config{
			Upstreams: []upstream.Config{{Name: "fixtures", URL: p.URL}}, LogRequests: on,
			Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		})
		get(t, g.URL+"/fixture.test/dep01/@v/list")
		get(t, g.URL+"/fixture.test/nope/@v/list")
		lines := logs.lines("request")
		if !on {
			if len(lines) != 0 {
				t.Errorf("LogRequests false: %d access log lines", len(lines))
			}
			continue
		}
		if len(lines) != 2 {
			t.Fatalf("%d access log lines, want 2: %v", len(lines), lines)
		}
		first := lines[0]
		if first["level"] != "INFO" || first["method"] != "GET" || first["path"] != "/fixture.test/dep01/@v/list" || first["status"] != float64(200) ||
			first["upstream"] != "fixtures" || first["kind"] != "list" || first["duration"] == nil {
			t.Errorf("access log line: %v", first)
		}
		if lines[1]["status"] != float64(404) {
			t.Errorf("second line: %v", lines[1])
		}
	}
}
