package sidecar

import (
	"crypto/x509"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestParseClientFiles(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	users, err := parseHtpasswd([]byte("# team A\n\nalice:" + string(hash) + "\n"))
	if err != nil || len(users) != 1 || string(users["alice"]) != string(hash) {
		t.Errorf("htpasswd: %v %v", users, err)
	}
	for in, want := range map[string]string{
		"alice\n":           "line 1: want name:hash (htpasswd -B)",
		"alice:$apr1$x$y\n": "line 1: user alice: not a bcrypt hash: create it with htpasswd -B",
		"a:" + string(hash) + "\na:" + string(hash) + "\n": "line 2: user a is listed twice",
	} {
		if _, err := parseHtpasswd([]byte(in)); err == nil || err.Error() != want {
			t.Errorf("htpasswd %q: %v, want %q", in, err, want)
		}
	}
	tokens, err := parseTokens([]byte("ci tok-1\n# x\nbot tok-2\n"))
	if err != nil || len(tokens) != 2 {
		t.Errorf("tokens: %v %v", tokens, err)
	}
	for in, want := range map[string]string{
		"ci\n":                  `line 1: want "name token"`,
		"ci tok-1\nbot tok-1\n": "line 2: bot has the token of ci",
	} {
		if _, err := parseTokens([]byte(in)); err == nil || err.Error() != want {
			t.Errorf("tokens %q: %v, want %q", in, err, want)
		}
	}
}

// TestPasswordCheckedOnceWithBcrypt: a user's second request with the same
// password does not pay for bcrypt again, and a changed password in the
// file is checked afresh.
func TestPasswordCheckedOnceWithBcrypt(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	c := &clients{cfg: ClientsConfig{HtpasswdFile: "x"}, logins: newLoginLimiter(time.Now)}
	c.htpasswd = &watchedFile[map[string][]byte]{}
	c.htpasswd.val.Store(&map[string][]byte{"alice": hash})
	stamp := c.htpasswd.stampNow()
	c.htpasswd.stamp.Store(&stamp)
	if !c.checkPassword("alice", "pw") || c.checkPassword("alice", "wrong") || c.checkPassword("bob", "pw") {
		t.Fatal("checkPassword got a login wrong")
	}
	if _, ok := c.good.Load("alice"); !ok {
		t.Error("a good login was not remembered")
	}
	other, _ := bcrypt.GenerateFromPassword([]byte("pw2"), bcrypt.MinCost)
	c.htpasswd.val.Store(&map[string][]byte{"alice": other})
	if c.checkPassword("alice", "pw") || !c.checkPassword("alice", "pw2") {
		t.Error("a remembered login outlived its hash")
	}
}

// FuzzClientFiles: whatever a clients file holds, parsing it never panics
// and an error never repeats a secret (a hash or a token) from it.
func FuzzClientFiles(f *testing.F) {
	f.Add("alice:$2a$04$abcdefghijklmnopqrstuu5fYZ0sZiVEo1Wr3Qz0vZ0yXbY1GdH8y\n")
	f.Add("ci tok-secret-1\nbot tok-secret-1\n")
	f.Add("x:$apr1$secret\n#c\n\n y  z  w\n")
	f.Fuzz(func(t *testing.T, data string) {
		// The secrets of each file: hashes after "name:", tokens after
		// "name "; a secret within some line's name may be named.
		names := map[string]bool{}
		var hashes, toks []string
		for _, line := range strings.Split(data, "\n") {
			line = strings.TrimSpace(line)
			if n, h, ok := strings.Cut(line, ":"); ok {
				names[n] = true
				hashes = append(hashes, h)
			}
			if f := strings.Fields(line); len(f) > 0 {
				names[f[0]] = true
				toks = append(toks, f[1:]...)
			}
		}
		inName := func(s string) bool {
			for n := range names {
				if strings.Contains(n, s) {
					return true
				}
			}
			return false
		}
		check := func(err error, secrets []string) {
			if err == nil {
				return
			}
			for _, s := range secrets {
				if len(s) >= 6 && !inName(s) && strings.Contains(err.Error(), s) {
					t.Fatalf("error %q repeats %q", err, s)
				}
			}
		}
		_, err := parseHtpasswd([]byte(data))
		check(err, hashes)
		_, err = parseTokens([]byte(data))
		check(err, toks)
	})
}

// TestRefusalFitsTheGoCommand: the 401's body is what the go command
// prints whole: at most 8 lines, 648 bytes.
func TestRefusalFitsTheGoCommand(t *testing.T) {
	c := &clients{cfg: ClientsConfig{HtpasswdFile: "h", TokensFile: "t", ClientCAFile: "c"}}
	c.htpasswd, c.tokens, c.cas = &watchedFile[map[string][]byte]{}, &watchedFile[map[[32]byte]string]{}, &watchedFile[*x509.CertPool]{}
	r := httptest.NewRequest("GET", "https://modgate.corp.example.test:7443/x/@v/list", nil)
	p := c.refusal(r, false, "wrong user name or password")
	rec := httptest.NewRecorder()
	writeError(rec, p.status, p.code, p.lines...)
	body := rec.Body.String()
	if n := strings.Count(body, "\n"); n > 8 || len(body)+n > 648 || strings.Contains(body, "\n\n") {
		t.Errorf("401 body of %d lines, %d bytes:\n%s", n, len(body), body)
	}
	if !strings.Contains(body, "machine modgate.corp.example.test:7443 login <name> password <password>") {
		t.Errorf("401 body lacks the netrc line:\n%s", body)
	}
}
