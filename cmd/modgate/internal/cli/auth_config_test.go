package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// upstreams[].auth: exactly one way, its files there at start-up, each
// error naming the key and its line, never a secret.
func TestLoadUpstreamAuth(t *testing.T) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "password")
	token := filepath.Join(dir, "token")
	netrc := filepath.Join(dir, "netrc")
	writeFile(t, pass, "pw-abcdef123\n")
	writeFile(t, token, "tok-abcdef123\n")
	writeFile(t, netrc, "machine mods.corp.example.test login builder password nrc-abcdef123\n")
	head := "sumdb: {name: \"off\"}\nupstreams:\n  - name: internal\n    url: https://mods.corp.example.test/artifactory/api/go/go-virtual\n"
	env := map[string]string{"NETRC": netrc}

	for _, c := range []struct{ auth, kind string }{
		{"    auth:\n      basic: {username: builder, password_file: " + pass + "}\n", "basic"},
		{"    auth: {bearer_file: " + token + "}\n", "bearer"},
		{"    auth: {netrc: true}\n", "netrc"},
		{"    auth: {command: \"sh -c true\", command_timeout: 5s}\n", "command"},
	} {
		_, sc, err := loadSidecar(t, head+c.auth, env)
		if err != nil {
			t.Errorf("%s: %v", c.kind, err)
			continue
		}
		a := sc.Upstreams[0].Auth
		if a.Kind() != c.kind {
			t.Errorf("%s: loaded %+v", c.kind, a)
		}
		if c.kind == "netrc" && a.Netrc != netrc {
			t.Errorf("netrc file %q; want $NETRC %q", a.Netrc, netrc)
		}
	}

	for _, c := range []struct{ name, auth, want string }{
		{"none", "    auth: {}\n", "modgate.yaml:5: upstreams[1].auth: give one of basic, bearer_file, netrc or command"},
		{"two", "    auth:\n      bearer_file: " + token + "\n      netrc: true\n", "modgate.yaml:5: upstreams[1].auth: bearer_file and netrc: give only one"},
		{"inline password", "    auth:\n      basic: {username: builder, password: hunter2-abcdef}\n", "modgate.yaml:6: upstreams[1].auth.basic.password: unknown key \"password\""},
		{"no username", "    auth:\n      basic:\n        password_file: " + pass + "\n", "modgate.yaml:6: upstreams[1].auth.basic.username: missing"},
		{"missing password file", "    auth:\n      basic:\n        username: builder\n        password_file: " + pass + ".gone\n", "modgate.yaml:8: upstreams[1].auth.basic.password_file: stat " + pass + ".gone: no such file"},
		{"missing token file", "    auth:\n      bearer_file: /no/such/token\n", "modgate.yaml:6: upstreams[1].auth.bearer_file: stat /no/such/token"},
		{"netrc without the host", "    auth:\n      netrc: true\n", "modgate.yaml:6: upstreams[1].auth.netrc: netrc file " + filepath.Join(dir, "other") + " has no machine mods.corp.example.test"},
		{"command not found", "    auth:\n      command: corp-go-auth-missing --x\n", "modgate.yaml:6: upstreams[1].auth.command: auth command: exec: \"corp-go-auth-missing\": executable file not found"},
		{"negative timeout", "    auth: {command: \"sh -c true\", command_timeout: -1s}\n", "modgate.yaml:5: upstreams[1].auth.command_timeout: must not be negative"},
		{"url password too", "    auth: {bearer_file: " + token + "}\n", "the URL carries credentials too"},
	} {
		t.Run(c.name, func(t *testing.T) {
			file, e := head+c.auth, env
			switch c.name {
			case "netrc without the host":
				other := filepath.Join(dir, "other")
				writeFile(t, other, "machine other.example.test login u password secret-abcdef\n")
				e = map[string]string{"NETRC": other}
			case "url password too":
				file = strings.Replace(file, "https://mods", "https://ci:pw-abcdef123@mods", 1)
			}
			_, err := load(t, file, e)
			if err == nil {
				t.Fatalf("accepted; want %q", c.want)
			}
			msg := err.Error()
			if i := strings.Index(msg, "modgate.yaml"); i > 0 {
				msg = msg[i:]
			}
			if !strings.Contains(msg, c.want) {
				t.Errorf("error = %q; want %q", msg, c.want)
			}
			for _, s := range []string{"abcdef", "hunter2"} {
				if strings.Contains(msg, s) {
					t.Errorf("the error shows a secret: %s", msg)
				}
			}
		})
	}
}

// The netrc file is found as the go command finds it.
func TestNetrcPath(t *testing.T) {
	home := t.TempDir()
	env := map[string]string{"HOME": home, "USERPROFILE": home}
	get := func(k string) string { return env[k] }
	if got := netrcPath(get, "linux"); got != filepath.Join(home, ".netrc") {
		t.Errorf("linux: %s", got)
	}
	if got := netrcPath(get, "windows"); got != filepath.Join(home, ".netrc") {
		t.Errorf("windows without _netrc: %s", got)
	}
	if err := os.WriteFile(filepath.Join(home, "_netrc"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := netrcPath(get, "windows"); got != filepath.Join(home, "_netrc") {
		t.Errorf("windows with _netrc: %s", got)
	}
	env["NETRC"] = "/etc/modgate/netrc"
	if got := netrcPath(get, "linux"); got != "/etc/modgate/netrc" {
		t.Errorf("with $NETRC: %s", got)
	}
	if got := netrcPath(func(string) string { return "" }, "linux"); got != "" {
		t.Errorf("no home: %q", got)
	}
}
