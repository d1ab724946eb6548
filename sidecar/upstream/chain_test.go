package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseList(t *testing.T) {
	tests := []struct {
		in   string
		want []Config
		err  string
	}{
		{in: "https://a.example.test,https://b.example.test|direct", want: []Config{
			{URL: "https://a.example.test"},
			{URL: "https://b.example.test", Fallthrough: OnError},
			{URL: "direct"},
		}},
		{in: "a.example.test/path|off", want: []Config{{URL: "https://a.example.test/path", Fallthrough: OnError}, {URL: "off"}}},
		{in: " ,https://a.example.test,, ", want: []Config{{URL: "https://a.example.test"}}},
		{in: "direct,https://never.example.test", want: []Config{{URL: "direct"}}},
		{in: "file:///srv/mods", want: []Config{{URL: "file:///srv/mods"}}},
		{in: "localhost:7070", want: []Config{{URL: "https://localhost:7070"}}},
		{in: "/srv/mods", err: "must be a URL"},
		{in: "nonsense", err: "unknown keyword"},
		{in: "", err: "empty"},
		{in: ",|", err: "empty"},
	}
	for _, tt := range tests {
		got, err := ParseList(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseList(%q) error = %v; want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseList(%q): %v", tt.in, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseList(%q) = %+v; want %+v", tt.in, got, tt.want)
			continue
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], tt.want[i]) {
				t.Errorf("ParseList(%q)[%d] = %+v; want %+v", tt.in, i, got[i], tt.want[i])
			}
		}
	}
}

// fake is an upstream that answers every request with one status and
// counts requests.
type fake struct {
	*httptest.Server
	hits atomic.Int32
}

func newFake(t *testing.T, status int) *fake {
	t.Helper()
	f := &fake{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		io.WriteString(w, http.StatusText(status)+" from fake\n")
	}))
	t.Cleanup(f.Close)
	return f
}

// chainOf builds a chain from GOPROXY syntax where the words ok, 404, 410,
// 500, 503 stand for fakes answering that.
func chainOf(t *testing.T, spec string) (*Chain, map[string]*fake) {
	t.Helper()
	fakes := map[string]*fake{}
	list := spec
	for _, word := range strings.FieldsFunc(spec, func(r rune) bool { return r == ',' || r == '|' }) {
		status := map[string]int{"ok": 200, "404": 404, "410": 410, "500": 500, "503": 503}[word]
		if status == 0 {
			continue
		}
		f := newFake(t, status)
		fakes[word] = f
		list = strings.Replace(list, word, f.URL, 1)
	}
	cfgs, err := ParseList(list)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfgs {
		cfgs[i].Retry.Attempts = 1 // these tests are about the chain, not retries
		for word, f := range fakes {
			if cfgs[i].URL == f.URL {
				cfgs[i].Name = word
			}
		}
	}
	c, err := NewChain(cfgs, Options{Via: "modgate-test"})
	if err != nil {
		t.Fatal(err)
	}
	return c, fakes
}

func TestWalkSemantics(t *testing.T) {
	tests := []struct {
		spec    string
		status  int
		asked   []string
		unasked []string
		stopped bool
		end     Kind
	}{
		{spec: "ok", status: 200, asked: []string{"ok"}},
		{spec: "404,ok", status: 200, asked: []string{"404", "ok"}},
		{spec: "410,ok", status: 200, asked: []string{"410", "ok"}},
		{spec: "500,ok", status: 502, asked: []string{"500"}, unasked: []string{"ok"}, stopped: true},
		{spec: "500|ok", status: 200, asked: []string{"500", "ok"}},
		{spec: "503|404", status: 502, asked: []string{"503", "404"}},
		{spec: "404,410", status: 404, asked: []string{"404", "410"}},
		{spec: "404,direct", status: 404, asked: []string{"404"}, end: Direct},
		{spec: "404,off", status: 403, asked: []string{"404"}, end: Off},
		{spec: "500,direct", status: 502, asked: []string{"500"}, stopped: true},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			c, fakes := chainOf(t, tt.spec)
			res := c.Walk(context.Background(), http.MethodGet, "/fixture.test/a/@v/list", nil, nil)
			if res.Response != nil {
				res.Response.Body.Close()
			}
			if got := res.Status(); got != tt.status {
				t.Errorf("status %d; want %d (attempts %v)", got, tt.status, res.Attempts)
			}
			for _, w := range tt.asked {
				if fakes[w].hits.Load() != 1 {
					t.Errorf("%s asked %d times; want 1", w, fakes[w].hits.Load())
				}
			}
			for _, w := range tt.unasked {
				if fakes[w].hits.Load() != 0 {
					t.Errorf("%s asked; want not", w)
				}
			}
			if res.Stopped != tt.stopped || res.End != tt.end {
				t.Errorf("stopped=%v end=%v; want %v %v", res.Stopped, res.End, tt.stopped, tt.end)
			}
		})
	}
}

func TestAttemptString(t *testing.T) {
	c, _ := chainOf(t, "500|404")
	res := c.Walk(context.Background(), http.MethodGet, "/x.test/a/@v/list", nil, nil)
	got := []string{res.Attempts[0].String(), res.Attempts[1].String()}
	want := []string{"500: 500 Internal Server Error (Internal Server Error from fake)", "404: 404 Not Found (Not Found from fake)"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("attempt %d = %q; want %q", i, got[i], want[i])
		}
	}
}

func TestSkip(t *testing.T) {
	c, fakes := chainOf(t, "ok,404")
	res := c.Walk(context.Background(), http.MethodGet, "/x.test/a/@v/list", nil, func(u *Upstream) error {
		if u.Name == "ok" {
			return errors.New("not private")
		}
		return nil
	})
	if res.Status() != 404 || fakes["ok"].hits.Load() != 0 || fakes["404"].hits.Load() != 1 {
		t.Errorf("status %d, hits ok=%d 404=%d", res.Status(), fakes["ok"].hits.Load(), fakes["404"].hits.Load())
	}
}

func TestViaAppended(t *testing.T) {
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Via"))
	}))
	defer srv.Close()
	u, err := New(Config{URL: srv.URL}, Options{Via: "modgate-abc"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := u.Get(context.Background(), http.MethodGet, "/x", http.Header{"Via": {"1.1 other"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v := got.Load(); v != "1.1 other, 1.1 modgate-abc" {
		t.Errorf("Via = %q", v)
	}
}

func TestHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := NewChain([]Config{{Name: "hang", URL: srv.URL, Timeouts: Timeouts{Header: 100 * time.Millisecond}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Walk(context.Background(), http.MethodGet, "/x.test/a/@v/list", nil, nil)
	if res.Status() != http.StatusGatewayTimeout {
		t.Errorf("status %d; want 504", res.Status())
	}
	if s := res.Attempts[0].String(); s != "hang: no response headers within 100ms" {
		t.Errorf("attempt = %q", s)
	}
}

func TestBodyStall(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "12345")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	u, err := New(Config{URL: srv.URL, Timeouts: Timeouts{Idle: 100 * time.Millisecond}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := u.Get(context.Background(), http.MethodGet, "/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if string(b) != "12345" || !errors.Is(err, ErrStalled) {
		t.Errorf("read %q, %v; want 12345 and ErrStalled", b, err)
	}
	if !isTimeout(err) {
		t.Errorf("a stall is not counted as a timeout")
	}
}

func TestFileUpstream(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "x.test/a/@v"), 0o755)
	os.WriteFile(filepath.Join(dir, "x.test/a/@v/list"), []byte("v1.0.0\n"), 0o644)
	c, err := NewChain([]Config{{URL: "file://" + dir}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	res := c.Walk(context.Background(), http.MethodGet, "/x.test/a/@v/list", nil, nil)
	if res.Response == nil {
		t.Fatalf("no response: %v", res.Attempts)
	}
	b, _ := io.ReadAll(res.Response.Body)
	res.Response.Body.Close()
	if string(b) != "v1.0.0\n" {
		t.Errorf("body %q", b)
	}
	res = c.Walk(context.Background(), http.MethodGet, "/x.test/b/@v/list", nil, nil)
	if res.Status() != 404 {
		t.Errorf("missing file: status %d; want 404", res.Status())
	}
}

func TestNewChainErrors(t *testing.T) {
	for _, cfgs := range [][]Config{
		nil,
		{{URL: "ftp://x.example.test"}},
		{{URL: "file:///does/not/exist"}},
		{{Name: "a", URL: "https://a.example.test"}, {Name: "a", URL: "https://b.example.test"}},
	} {
		if _, err := NewChain(cfgs, Options{}); err == nil {
			t.Errorf("NewChain(%+v) succeeded", cfgs)
		}
	}
	c, err := NewChain([]Config{{URL: "https://a.example.test"}, {URL: "https://a.example.test/other"}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Upstreams()[1].Name; n != "a.example.test-2" {
		t.Errorf("second name %q", n)
	}
}
