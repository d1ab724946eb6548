package upstream

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://mods.example.test", "https://mods.example.test"},
		{"https://ci:pw@mods.example.test/base", "https://ci:xxxxx@mods.example.test/base"},
		{"https://TOKEN@mods.example.test", "https://xxxxx@mods.example.test"},
		{"https://ci:p@ss@mods.example.test", "https://ci:xxxxx@mods.example.test"},
		{"http://ci:pw@mods.example.test/%zz", "http://xxxxx@mods.example.test/%zz"}, // does not parse
		{"http://ci:p w/x@mods.example.test", "http://xxxxx@mods.example.test"},
		{"direct", "direct"},
		{"ssh://git@git.example.test/repo", "ssh://git@git.example.test/repo"},
		{"ssh://git:pw@git.example.test/repo", "ssh://git:xxxxx@git.example.test/repo"},
	} {
		if got := RedactURL(c.in); got != c.want {
			t.Errorf("RedactURL(%q) = %q; want %q", c.in, got, c.want)
		}
	}
	text := `GOPROXY="https://a:pw1@a.example.test,HTTP://tok@b.example.test|direct" and git+ssh://u:pw2@c.example.test/x, mail@example.test, "https://u:p\"w'3@d.example.test" ssh://git@e.example.test/r`
	want := `GOPROXY="https://a:xxxxx@a.example.test,HTTP://xxxxx@b.example.test|direct" and git+ssh://u:xxxxx@c.example.test/x, mail@example.test, "https://u:xxxxx@d.example.test" ssh://git@e.example.test/r`
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

// FuzzRedact: whatever the password, the URL that carries it, alone or
// quoted in a message, does not show it.
func FuzzRedact(f *testing.F) {
	f.Add("ci", "s3cret", "/base")
	f.Add("", "p@ss/w:rd?#", "/@v/list")
	f.Add("tok en", "\"'<>\\", "")
	f.Fuzz(func(t *testing.T, user, pass, path string) {
		if len(pass) < 4 {
			return
		}
		u := &url.URL{Scheme: "https", User: url.UserPassword(user, pass), Host: "mods.example.test", Path: path}
		raw := u.String()
		// The password as the URL spells it, and as %q quotes that.
		shown := strings.TrimPrefix(strings.SplitN(raw[len("https://"):], "@", 2)[0], url.User(user).String()+":")
		if strings.Count(raw, shown) > 1 || strings.Contains("https://xxxxx@mods.example.test", shown) {
			return // the password's text is also the host's or path's
		}
		for _, out := range []string{RedactURL(raw), RedactText("upstream " + raw + " failed"), RedactText(fmt.Sprintf("bad %q", raw))} {
			if strings.Contains(out, shown) {
				t.Fatalf("%q shows %q", out, shown)
			}
		}
	})
}

func TestRedactHeaderCredentials(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"Authorization: Bearer tok-123456789", "Authorization: Bearer xxxxx"},
		{"authorization=Basic Y2k6c2VjcmV0LXBhc3M=, next", "authorization=Basic xxxxx, next"},
		{`got "Authorization: s3cr3t-raw" back`, `got "Authorization: xxxxx" back`},
		{"PROXY-AUTHORIZATION: Negotiate abcdefgh", "PROXY-AUTHORIZATION: Negotiate xxxxx"},
		{"using Bearer eyJhbGciOi.payload.sig now", "using Bearer xxxxx now"},
		{"basic auth is set up", "basic auth is set up"},
		{"Basic authentication failed", "Basic authentication failed"}, // a word, not a credential
	} {
		if got := RedactText(c.in); got != c.want {
			t.Errorf("RedactText(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}
