package sidecar

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/upstream"
)

// FuzzCarryBuild: whatever a GOPROXY path or a proxy user name holds, the
// build context is taken off or the request is refused with a 400; it
// never panics, and what reaches the pipeline never starts with /.trace/.
func FuzzCarryBuild(f *testing.F) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, seed := range []string{
		"/.trace/" + tp + "/fixture.test/dep01/@v/list",
		"/.trace/" + tp,
		"/.trace/",
		"/.trace",
		"/.trace//x",
		"/.trace/" + tp + "/.trace/" + tp + "/sumdb/sum.fixture.test/supported",
		"/.trace/" + strings.Repeat("0", 400) + "/x",
		"/fixture.test/dep01/@v/list",
	} {
		f.Add(seed, "alice+trace-"+tp)
	}
	s, err := New(Config{Upstreams: []upstream.Config{{URL: "off"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, path, user string) {
		if !strings.HasPrefix(path, "/") {
			return // not an origin-form path
		}
		var got *http.Request
		h := s.carryBuild(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r }))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, &http.Request{Method: "GET", URL: &url.URL{Path: path}, Header: http.Header{}, Host: "modgate", RemoteAddr: "127.0.0.1:1"})
		traced := path == "/.trace" || strings.HasPrefix(path, "/.trace/")
		switch {
		case got == nil && (!traced || rec.Code != http.StatusBadRequest || !strings.HasPrefix(rec.Body.String(), "modgate: bad-request: ")):
			t.Errorf("path %q: %d %q", path, rec.Code, rec.Body)
		case got != nil && traced && (len(got.URL.Path) >= len(path) || !strings.HasSuffix(path, strings.TrimPrefix(got.URL.Path, "/"))):
			t.Errorf("path %q reached the pipeline as %q", path, got.URL.Path)
		case got != nil && !traced && got.URL.Path != path:
			t.Errorf("path %q changed to %q", path, got.URL.Path)
		}
		// Forward mode: whatever the user name, the request goes on.
		got = nil
		h.ServeHTTP(httptest.NewRecorder(), &http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: "fixture.test", Path: "/x"}, Header: http.Header{
			"Proxy-Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(user+":pw"))},
		}, Host: "fixture.test", RemoteAddr: "127.0.0.1:1"})
		if got == nil {
			t.Fatalf("user %q: a forward request was not passed on", user)
		}
	})
}
