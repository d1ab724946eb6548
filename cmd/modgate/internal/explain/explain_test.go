package explain

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/modgate/modgate/sidecar/wire"
)

var (
	update = flag.Bool("update", false, "rewrite testdata/gocmd/*.golden from what explain prints")
	gen    = flag.Bool("gen", false, "regenerate testdata/gocmd/*.txt by running the go command against local servers (slow: about 30 s)")
)

// fixtureDir holds what the go command printed for its own errors.
const fixtureDir = "testdata/gocmd"

// fixtureRules says, for each fixture, which explanations (rules, in order)
// explain must find. The golden files hold the full text; this table keeps
// an -update from quietly accepting a wrong match.
var fixtureRules = map[string][]string{
	"checksum-mismatch-gosum":   {"checksum-mismatch"},
	"checksum-mismatch-sumdb":   {"checksum-mismatch"},
	"connect-forbidden":         {"connect-refused"},
	"goproxy-off":               {"goproxy-off"},
	"http-response-to-https":    {"http-to-https"},
	"io-timeout":                {"io-timeout"},
	"modgate-not-running":       {"proxy-refused"},
	"no-matching-versions":      {"no-matching-versions"},
	"nothing-wrong":             nil,
	"proxy-429":                 {"rate-limited"},
	"proxy-auth-required":       {"proxy-auth"},
	"proxy-not-found":           {"proxy-not-found"},
	"proxyconnect-refused":      {"proxyconnect"},
	"terminal-prompts-disabled": {"terminal-prompts"},
	"tls-handshake-timeout":     {"tls-handshake-timeout"},
	"unknown-revision":          {"unknown-revision"},
	"x509-unknown-authority":    {"x509-unknown-authority"},
}

func TestGoFixtures(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(fixtureDir, "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in %s (%v)", fixtureDir, err)
	}
	seen := map[string]bool{}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			want, ok := fixtureRules[name]
			if !ok {
				t.Fatalf("fixture %s is not in fixtureRules", name)
			}
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			found := Text(string(data))
			if got := rules(found); !reflect.DeepEqual(got, want) {
				t.Errorf("rules = %q, want %q", got, want)
			}
			if len(found) == 0 {
				return
			}
			var out bytes.Buffer
			Write(&out, found)
			golden := filepath.Join(fixtureDir, name+".golden")
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantOut, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./cmd/modgate/internal/explain -run TestGoFixtures -update)", err)
			}
			if out.String() != string(wantOut) {
				t.Errorf("explain %s printed:\n%s\nwant (%s):\n%s", file, &out, golden, wantOut)
			}
		})
	}
	for name := range fixtureRules {
		if !seen[name] {
			t.Errorf("fixtureRules names %s, which has no fixture %s.txt", name, name)
		}
	}
}

func rules(es []Explanation) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Rule)
	}
	return out
}

// publicHostHashes are the first 8 bytes (hex) of the SHA-256 of the names
// of public module proxies and checksum databases (the go command's
// defaults and the common mirrors). They are hashed so that this file does
// not name them either.
var publicHostHashes = map[string]bool{
	"00a7dc5a0cc38858": true, "9da5f32d96412512": true, "048e76c14ef34200": true, "be57af6b78a7faca": true,
	"d738bc3c3b285b0f": true, "7fa4043c8f9d788b": true, "4937f51ce9345681": true, "c8c04dcc52594ed7": true,
	"dab06815d8c81f11": true, "83ebc76e70e6df34": true,
}

// TestFixturesNameNoPublicHost keeps public module proxies and checksum
// databases out of the fixtures and goldens: the go command's output names
// its defaults, and the generator must have replaced them.
func TestFixturesNameNoPublicHost(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(fixtureDir, "*"))
	hostRE := regexp.MustCompile(`(?i)(?:[a-z0-9-]+\.)+[a-z]{2,}`)
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hostRE.FindAllString(string(data), -1) {
			sum := sha256.Sum256([]byte(strings.ToLower(h)))
			if publicHostHashes[hex.EncodeToString(sum[:8])] {
				t.Errorf("%s names a public module proxy or checksum database (%s...)", file, h[:3])
			}
		}
	}
}

// TestEveryCodeExplained: each code modgate can write has an explanation
// of its own, chosen by the code alone, whatever the prose after it says.
func TestEveryCodeExplained(t *testing.T) {
	for _, code := range wire.Codes() {
		if answerRules[code] == nil {
			t.Errorf("code %s has no explanation in answerRules", code)
		}
		in := "go: example.test/m@v1.0.0: reading http://127.0.0.1:7070/example.test/m/@v/v1.0.0.info: 502 Bad Gateway\n" +
			"\tserver response:\n\t" + wire.FirstLine(code, "words that no rule reads") + "\n"
		got := Text(in)
		if len(got) != 1 || got[0].Rule != string(code) {
			t.Errorf("%s: rules %q, want [%s]", code, rules(got), code)
			continue
		}
		if got[0].Title == "" || got[0].Cause == "" || got[0].Fix == "" {
			t.Errorf("%s: empty title, cause or fix: %+v", code, got[0])
		}
	}
}

// TestCases covers what the real sidecar test does not: modgate's answers
// pasted with the indentation lost, several failures in one output, and
// the go command's words in forms the fixtures do not show.
func TestCases(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		rules    []string
		contains []string
	}{
		{
			name: "policy deny without contact, indentation lost",
			in: "go: github.com/evil/x@v1.0.0: reading http://127.0.0.1:7070/github.com/evil/x/@v/v1.0.0.info: 403 Forbidden\n" +
				"server response: modgate: denied: github.com/evil/x@v1.0.0 denied by policy rule 2 (deny github.com/evil/*): malware, see SEC-123\n",
			rules:    []string{"denied"},
			contains: []string{"rule 2 (deny github.com/evil/*)", "malware, see SEC-123", "modgate policy check github.com/evil/x@v1.0.0"},
		},
		{
			name:     "policy default deny",
			in:       "go: example.test/x@v1.0.0: reading http://127.0.0.1:7070/example.test/x/@v/v1.0.0.info: 403 Forbidden\n\tserver response: modgate: denied: example.test/x@v1.0.0 denied by policy (no rule matched, default deny)\n",
			rules:    []string{"denied"},
			contains: []string{"default"},
		},
		{
			name:     "policy deny in words explain does not know",
			in:       "go: example.test/x@v1.0.0: reading http://127.0.0.1:7070/example.test/x/@v/v1.0.0.info: 403 Forbidden\n\tserver response: modgate: denied: the policy says no\n",
			rules:    []string{"denied"},
			contains: []string{"the policy says no", "modgate policy check example.test/x@v1.0.0"},
		},
		{
			name:     "a sentence of modgate's without a code is not modgate's answer",
			in:       "go: example.test/x@v1.0.0: reading http://127.0.0.1:7070/example.test/x/@v/v1.0.0.info: 403 Forbidden\n\tserver response: modgate: example.test/x@v1.0.0 denied by policy rule 1 (deny *)\n",
			rules:    nil,
			contains: nil,
		},
		{
			name:     "GOPROXY=off in the go command",
			in:       "go: fixture.test/dep01@v1.0.0: module lookup disabled by GOPROXY=off\n",
			rules:    []string{"goproxy-off"},
			contains: []string{"go env -w GOPROXY=http://127.0.0.1:7070"},
		},
		{
			name:     "nothing recognised",
			in:       "go: downloading fixture.test/dep01 v1.0.0\n./main.go:3:8: \"fmt\" imported and not used\n",
			rules:    nil,
			contains: nil,
		},
		{
			name: "several failures: one explanation each, in order",
			in: "go: fixture.test/dep05@v1.0.0: reading http://127.0.0.1:7070/fixture.test/dep05/@v/v1.0.0.info: 403 Forbidden\n" +
				"\tserver response:\n\tmodgate: denied: fixture.test/dep05@v1.0.0 denied by policy rule 1 (deny fixture.test/dep05)\n" +
				"go: fixture.test/nosuch@v1.2.3: reading http://127.0.0.1:7070/fixture.test/nosuch/@v/v1.2.3.info: 404 Not Found\n" +
				"\tserver response:\n\tmodgate: not-found: fixture.test/nosuch@v1.2.3 (.info): not found in any upstream\n\tpublic: 404 Not Found\n",
			rules:    []string{"denied", "not-found"},
			contains: []string{"public does not have it (404)"},
		},
		{
			name: "the same failure for many modules is one finding",
			in: "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep02@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep02/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep03@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep03/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n" +
				"go: fixture.test/dep04@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep04/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\n",
			rules:    []string{"proxy-refused"},
			contains: []string{"(and 3 more failures like it)"},
		},
		{
			name:     "CRLF line ends",
			in:       "go: fixture.test/dep01@v1.0.0: Get \"http://127.0.0.1:7070/fixture.test/dep01/@v/v1.0.0.mod\": dial tcp 127.0.0.1:7070: connect: connection refused\r\n",
			rules:    []string{"proxy-refused"},
			contains: []string{"make run"},
		},
		{
			name:     "a proxy's 400 that is not modgate's",
			in:       "go: fixture.test/dep01@v1.0.0: reading https://mods.corp.example.test/fixture.test/dep01/@v/v1.0.0.info: 400 Bad Request\n\tserver response: bad version\n",
			rules:    []string{"proxy-bad-request"},
			contains: []string{"https://mods.corp.example.test"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			found := Text(tc.in)
			if got := rules(found); !reflect.DeepEqual(got, tc.rules) {
				t.Errorf("rules = %q, want %q", got, tc.rules)
			}
			var out bytes.Buffer
			Write(&out, found)
			for _, s := range tc.contains {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, &out)
				}
			}
		})
	}
}

// FuzzExplain feeds explain arbitrary output: it never panics, and every
// explanation it gives quotes lines that were in the input.
func FuzzExplain(f *testing.F) {
	entries, _ := os.ReadDir(fixtureDir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".txt") {
			b, _ := os.ReadFile(filepath.Join(fixtureDir, e.Name()))
			f.Add(string(b))
		}
	}
	f.Add("go: example.test/m@v1.0.0: reading http://127.0.0.1:7070/x: 502 Bad Gateway\n\tserver response:\n\tmodgate: upstream-failed: x\n\tpublic: 500 Internal Server Error\n")
	f.Add("go: example.test/m@v1.0.0: Get \"https://proxy.example.test/x\": modgate: refused: CONNECT proxy.example.test:443 refused\n")
	f.Fuzz(func(t *testing.T, text string) {
		for _, e := range Text(text) {
			for _, line := range e.Saw {
				if !strings.Contains(text, strings.TrimSpace(line)) {
					t.Fatalf("explanation quotes %q, which is not in the input", line)
				}
			}
		}
	})
}
