package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://mods.example.test", "https://mods.example.test"},
		{"https://ci:pw@mods.example.test/base", "https://ci:xxxxx@mods.example.test/base"},
		{"https://TOKEN@mods.example.test", "https://xxxxx@mods.example.test"},
		{"https://ci:p@ss@mods.example.test", "https://ci:xxxxx@mods.example.test"},
		{"http://ci:pw@mods.example.test/%zz", "http://ci:xxxxx@mods.example.test/%zz"},
		{"direct", "direct"},
	} {
		if got := RedactURL(c.in); got != c.want {
			t.Errorf("RedactURL(%q) = %q; want %q", c.in, got, c.want)
		}
	}
	text := `GOPROXY="https://a:pw1@a.example.test,HTTP://tok@b.example.test|direct" and git+ssh://u:pw2@c.example.test/x, mail@example.test`
	want := `GOPROXY="https://a:xxxxx@a.example.test,HTTP://xxxxx@b.example.test|direct" and git+ssh://u:xxxxx@c.example.test/x, mail@example.test`
	if got := RedactText(text); got != want {
		t.Errorf("RedactText:\n got %s\nwant %s", got, want)
	}
}

// The password leaves the URL that is shown, traced and put in errors, and
// still reaches the upstream.
func TestCredentialsGoAsBasicAuthOnly(t *testing.T) {
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		got = user + ":" + pass
	}))
	defer srv.Close()
	u := newTestUpstream(t, Config{URL: strings.Replace(srv.URL, "http://", "http://ci:pw@", 1)}, newFakeClock())
	if u.URL.User != nil || strings.Contains(u.Source, "pw") || strings.Contains(u.Status().URL, "pw") {
		t.Errorf("the password shows: URL %s, Source %s, Status %+v", u.URL, u.Source, u.Status())
	}
	resp, err := u.Get(context.Background(), "GET", "/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got != "ci:pw" {
		t.Errorf("upstream saw basic auth %q; want ci:pw", got)
	}
	if _, err := New(Config{URL: "ftp://ci:pw@mods.example.test"}, Options{}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("error: %v", err)
	}
	if _, err := New(Config{URL: "http://ci:pw@mods.example.test/%zz"}, Options{}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("error: %v", err)
	}
}
