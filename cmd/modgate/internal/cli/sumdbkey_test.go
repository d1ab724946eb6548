package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const exampleKey = "sum.example.test+c2fb575e+Afe723Se3XAmzMwlQQdca+228IRzAnWgglDVJp1SWDKQ"

// fakeGOROOT is a Go installation whose go command builds in key for
// its default checksum database, as cmd/go/internal/modfetch does.
func fakeGOROOT(t *testing.T, name, key string) string {
	root := t.TempDir()
	dir := filepath.Join(root, "src", "cmd", "go", "internal", "modfetch")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := "package modfetch\n\nvar knownGOSUMDB = map[string]string{\n\t\"" + name + "\": \"" + key + "\",\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "key.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestSumDBKey: artifacts are verified with the key GOSUMDB gives, the
// config's, or the go command's own for the database it knows; a key for
// another database is refused; a database without a key runs unverified.
func TestSumDBKey(t *testing.T) {
	defer func(old string) { builtinSumDBKeys = old }(builtinSumDBKeys)
	builtinSumDBKeys = "sum.built.example.test+c0ffee00+AAAA sum.other.example.test/x+12345678+BBBB"
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		file    string
		want    string
		wantErr string
	}{
		{name: "go env GOSUMDB name+key", want: exampleKey},
		{name: "--sumdb name+key", env: map[string]string{"GOENV_GOSUMDB": "off"}, args: []string{"--sumdb", exampleKey}, want: exampleKey},
		{name: "MODGATE_SUMDB_KEY", env: map[string]string{"GOENV_GOSUMDB": "sum.example.test", "MODGATE_SUMDB_KEY": exampleKey}, want: exampleKey},
		{name: "config sumdb.key", env: map[string]string{"GOENV_GOSUMDB": "off"}, file: "sumdb: {name: sum.example.test, key: " + exampleKey + "}\n", want: exampleKey},
		{name: "the go command's own key", env: map[string]string{"GOENV_GOSUMDB": "sum.example.test", "GOROOT": "fake"}, want: exampleKey},
		{name: "no key known", env: map[string]string{"GOENV_GOSUMDB": "sum.other.example.test", "GOROOT": "fake"}, want: ""},
		{name: "the key modgate was built with", env: map[string]string{"GOENV_GOSUMDB": "sum.built.example.test", "GOROOT": "/nonexistent"}, wantErr: "sum.built.example.test+c0ffee00+AAAA"},
		{name: "a key for another database", args: []string{"--sumdb", "sum.other.example.test"}, env: map[string]string{"MODGATE_SUMDB_KEY": exampleKey}, wantErr: "sumdb.key"},
		{name: "not a key", env: map[string]string{"GOENV_GOSUMDB": "sum.example.test+nokey"}, wantErr: "sumdb.key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env["GOROOT"] == "fake" {
				tt.env["GOROOT"] = fakeGOROOT(t, "sum.example.test", exampleKey)
			}
			_, sc, err := loadSidecar(t, tt.file, tt.env, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v; want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sc.SumDBKey != tt.want {
				t.Errorf("SumDBKey %q; want %q", sc.SumDBKey, tt.want)
			}
		})
	}
}
