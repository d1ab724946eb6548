package cli

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

// Every command and subcommand answers -h and --help on standard output
// with exit status 0, listing the flags it really has with their defaults.
func TestEveryCommandAnswersHelp(t *testing.T) {
	tests := []struct {
		args     []string
		want     []string // in the help
		dontWant []string
	}{
		{args: []string{"run"}, want: []string{"usage: modgate run", "-listen", "(default 127.0.0.1:7070)", "(default 127.0.0.1:7071", "-resolve", "host:port=addr:port", "-cache-dir", "user's cache folder"}},
		{args: []string{"env"}, want: []string{"usage: modgate env", "-shell", "-listen", "-mitm-host"}, dontWant: []string{"-pprof", "-offline", "-log-level", "-audit-log", "-admin "}},
		{args: []string{"doctor"}, want: []string{"usage: modgate doctor", "-scan folder", "-no-probe", "-admin"}, dontWant: []string{"-pprof", "-offline", "-audit-log", "-log-format"}},
		{args: []string{"explain"}, want: []string{"usage: modgate explain"}},
		{args: []string{"version"}, want: []string{"usage: modgate version"}},
		{args: []string{"policy"}, want: []string{"modgate policy check", "modgate policy lint"}},
		{args: []string{"policy", "check"}, want: []string{"usage: modgate policy check", "-kind", "(default \"zip\")"}},
		{args: []string{"policy", "lint"}, want: []string{"usage: modgate policy lint FILE"}},
		{args: []string{"ca"}, want: []string{"modgate ca init", "modgate ca bundle", "modgate ca trust", "modgate ca issue"}},
		{args: []string{"ca", "init"}, want: []string{"usage: modgate ca init", "-ca-dir"}},
		{args: []string{"ca", "path"}, want: []string{"usage: modgate ca path", "-ca-dir"}},
		{args: []string{"ca", "bundle"}, want: []string{"usage: modgate ca bundle", "-out"}},
		{args: []string{"ca", "trust"}, want: []string{"usage: modgate ca trust", "-goos"}},
		{args: []string{"ca", "issue"}, want: []string{"usage: modgate ca issue", "-host", "-out"}},
		{args: []string{"baseline"}, want: []string{"modgate baseline record", "modgate baseline compare"}},
		{args: []string{"baseline", "record"}, want: []string{"-out", "-admin"}},
		{args: []string{"baseline", "compare"}, want: []string{"-baseline", "-max-ratio", "(default 1.5)"}},
		{args: []string{"cache"}, want: []string{"modgate cache ls", "modgate cache rm", "modgate cache warm", "modgate cache du"}},
		{args: []string{"cache", "ls"}, want: []string{"usage: modgate cache ls", "-cache-dir"}},
		{args: []string{"cache", "rm"}, want: []string{"usage: modgate cache rm", "-cache-dir"}},
		{args: []string{"cache", "du"}, want: []string{"usage: modgate cache du"}},
		{args: []string{"cache", "warm"}, want: []string{"usage: modgate cache warm", "-via", "-jobs", "(default 4)"}},
	}
	// A backquoted word in a flag's usage becomes its type in the
	// listing ("-ca-dir modgate ca init"): only real types may show.
	typeRE := regexp.MustCompile(`(?m)^  -[a-z-]+ ([^\n]+)$`)
	types := map[string]bool{"string": true, "value": true, "int": true, "float": true, "duration": true, "folder": true, "file": true}
	for _, tt := range tests {
		for _, h := range []string{"-h", "--help", "help"} {
			args := append(append([]string{}, tt.args...), h)
			if h == "help" {
				if len(tt.args) != 1 {
					continue // modgate help COMMAND, below
				}
				args = []string{"help", tt.args[0]}
			}
			var out, errb bytes.Buffer
			app := &App{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
			code := app.Run(context.Background(), args)
			name := strings.Join(args, " ")
			if code != 0 || errb.Len() > 0 || out.Len() == 0 {
				t.Errorf("modgate %s: exit %d, stdout %d bytes, stderr:\n%s", name, code, out.Len(), &errb)
				continue
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("modgate %s lacks %q:\n%s", name, w, &out)
				}
			}
			for _, w := range tt.dontWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("modgate %s lists %q, which does nothing there:\n%s", name, w, &out)
				}
			}
			for _, m := range typeRE.FindAllStringSubmatch(out.String(), -1) {
				if !types[m[1]] {
					t.Errorf("modgate %s: flag type %q:\n%s", name, m[1], &out)
				}
			}
		}
	}
	// modgate help lists every command.
	var out bytes.Buffer
	app := &App{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }}
	if code := app.Run(context.Background(), []string{"help"}); code != 0 {
		t.Fatalf("modgate help: exit %d", code)
	}
	for name := range app.commands() {
		if !strings.Contains(out.String(), "\n  modgate "+name+" ") {
			t.Errorf("modgate help does not list %s:\n%s", name, &out)
		}
	}
}

// A bad command line is a usage error (exit 2) on standard error.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"policy"}, {"policy", "nope"}, {"ca"}, {"cache"}, {"cache", "nope"}, {"run", "--nope"}, {"policy", "lint"}, {"cache", "rm"}} {
		var out, errb bytes.Buffer
		app := &App{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }, GoEnv: goEnv}
		if code := app.Run(context.Background(), args); code != 2 || errb.Len() == 0 {
			t.Errorf("modgate %s: exit %d, stderr %q; want 2 and a usage", strings.Join(args, " "), code, &errb)
		}
	}
}
